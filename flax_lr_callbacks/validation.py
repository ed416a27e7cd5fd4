"""Argument validation shared by every public constructor and function.

Each check names the argument, the value and what is allowed, and returns the value in plain
Python form, so a constructor stores ``self.x = check_number("x", x, ...)``:

* numbers and counts accept Python, NumPy and 0-d JAX scalars (``np.float32(0.1)``,
  ``np.int64(3)``, ``jnp.asarray(2)``) and return ``float`` / ``int``; bools are refused;
* sequences of names refuse a bare string (``groups="default"`` would be read letter by
  letter) and return a tuple;
* a wrong *type* raises TypeError, a value of the right type outside the allowed range or
  options raises ValueError (both name the argument).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

__all__ = ["check_bool", "check_callable", "check_choice", "check_count", "check_names",
           "check_number", "check_str", "as_scalar"]

_MISSING = object()


def as_scalar(value: Any) -> Any:
    """A Python bool/int/float for Python, NumPy or 0-d JAX scalars; `value` unchanged
    otherwise (so the caller's type check fails with the original object in the message)."""
    if isinstance(value, (bool, int, float)):
        return value
    if isinstance(value, (np.generic, np.ndarray)) or type(value).__module__.startswith(
            ("jax", "jaxlib")):
        try:
            array = np.asarray(value)
        except Exception:  # a tracer: not a host value
            return value
        if array.shape == () and array.dtype.kind in "biuf":
            return array.item()
    return value


def check_choice(name: str, value: Any, options: Sequence[Any]) -> Any:
    if isinstance(value, (list, dict, set)) or value not in options:
        raise ValueError(f"{name} must be one of {list(options)}, got {name}={value!r}")
    return value


def check_number(name: str, value: Any, *, low: float | None = None, high: float | None = None,
                 low_open: bool = False, high_open: bool = False, integer: bool = False,
                 allow_none: bool = False) -> Any:
    """`value` as an int (``integer=True``) or float inside the bounds; raises naming `name`,
    the value and the allowed range. Non-finite floats are refused."""
    if value is None and allow_none:
        return None
    v = as_scalar(value)
    kind = "an int" if integer else "a number"
    if integer and isinstance(v, float) and v.is_integer() and not isinstance(value, float):
        v = int(v)  # e.g. a float-typed array holding 3.0 is not an int: refused below
    ok_type = isinstance(v, int) if integer else isinstance(v, numbers.Real)
    if isinstance(v, bool) or not ok_type:
        none = " or None" if allow_none else ""
        raise TypeError(f"{name} must be {kind}{none}, got {name}={value!r} "
                        f"({type(value).__name__})")
    if not integer:
        v = float(v)
        if not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {name}={value!r}")
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    bounds = f"{lo}{'-inf' if low is None else low}, {'inf' if high is None else high}{hi}"
    if (low is not None and (v <= low if low_open else v < low)) or (
            high is not None and (v >= high if high_open else v > high)):
        raise ValueError(f"{name} must be in {bounds}, got {name}={value!r}")
    return v


def check_count(name: str, value: Any, low: int = 1, *, allow_none: bool = False) -> Any:
    """`value` as an int >= `low` (a count of steps, epochs, ...)."""
    if value is None and allow_none:
        return None
    v = as_scalar(value)
    if isinstance(v, bool) or not isinstance(v, int):
        none = " or None" if allow_none else ""
        raise TypeError(f"{name} must be an int >= {low}{none}, got {name}={value!r} "
                        f"({type(value).__name__})")
    if v < low:
        raise ValueError(f"{name} must be an int >= {low}, got {name}={value!r}")
    return v


def check_bool(name: str, value: Any) -> bool:
    """`value` as a bool (Python or NumPy bool); strings and numbers are refused."""
    v = as_scalar(value)
    if not isinstance(v, bool):
        raise TypeError(f"{name} must be True or False, got {name}={value!r} "
                        f"({type(value).__name__})")
    return v


def check_str(name: str, value: Any, *, allow_none: bool = False, nonempty: bool = True) -> Any:
    if value is None and allow_none:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {name}={value!r} "
                        f"({type(value).__name__})")
    if nonempty and not value:
        raise ValueError(f"{name} must be a non-empty string, got {name}={value!r}")
    return value


def check_names(name: str, value: Any, *, allow_none: bool = True) -> tuple[str, ...] | None:
    """A sequence of names as a tuple; a bare string is refused (it is not a sequence of
    names here: ``groups="default"`` would mean the groups 'd', 'e', ...)."""
    if value is None and allow_none:
        return None
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} must be a sequence of names, got the string {name}={value!r}; "
                        f"write {name}=({value!r},)")
    try:
        items = tuple(value)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of names, got {name}={value!r}") from None
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"{name} must hold strings, got {item!r} in {name}={value!r}")
    if not items:
        raise ValueError(f"{name} must name at least one entry (or be None), got {name}=()")
    return items


def check_callable(name: str, value: Any, *, allow_none: bool = False,
                   hint: str = "") -> Callable[..., Any] | None:
    if value is None and allow_none:
        return None
    if not callable(value):
        raise TypeError(f"{name} must be callable{hint}, got {name}={value!r} "
                        f"({type(value).__name__})")
    return value
