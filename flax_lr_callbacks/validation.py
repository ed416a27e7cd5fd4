"""Argument validation shared by every constructor: errors name the argument, the value and
the allowed range or options."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

__all__ = ["check_choice", "check_count", "check_number"]


def check_choice(name: str, value: Any, options: Sequence[Any]) -> None:
    if value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {name}={value!r}")


def check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False,
                 allow_none: bool = False) -> None:
    """Raises ValueError naming `name`, the value and the allowed range."""
    if value is None and allow_none:
        return
    kind = "an int" if integer else "a number"
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
        raise ValueError(f"{name} must be {kind}, got {name}={value!r}")
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    bounds = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be in {bounds}, got {name}={value!r}")
    if high is not None and (value >= high if high_open else value > high):
        raise ValueError(f"{name} must be in {bounds}, got {name}={value!r}")


def check_count(name: str, value: Any, low: int = 1, *, allow_none: bool = False) -> None:
    """Raises ValueError unless `value` is an int >= `low` (a count of steps, epochs, ...)."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {name}={value!r}")
