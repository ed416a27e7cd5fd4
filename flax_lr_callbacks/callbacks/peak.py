"""Schedules whose peak LR an `LRFinder` sets, without recompiling the step."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flax_lr_callbacks.validation import check_number

__all__ = ["PeakFromFinder", "overwrites_base", "takes_lr_peak", "waiting_for_peak"]


class PeakFromFinder:
    """Mixin for schedules whose peak LR an `LRFinder` may set (``<peak_arg>=None``).

    The peak lives in the device state field `peak_arg`, so setting it never recompiles.
    """

    peak_arg = "max_lr"
    peak_required = True  # False: None means "the optimizer's injected value"
    _peak_from_finder: float | None = None

    def peak(self) -> float | None:
        """The peak given to the constructor, else the one an LR finder set (else None)."""
        given = getattr(self, self.peak_arg)
        return given if given is not None else self._peak_from_finder

    def check_peak(self, value: float) -> None:
        """Raises ValueError if `value` cannot be this schedule's peak."""
        check_number(self.peak_arg, value, low=0, low_open=True)

    def set_peak(self, trainer: Any, value: float) -> None:
        """Sets the peak (e.g. from an LR finder) without recompiling the step."""
        self.check_peak(value)
        self._peak_from_finder = float(value)
        if trainer is not None and getattr(trainer, "trainer_state", None) is not None:
            trainer.update_callback_state(self, **{self.peak_arg: value})

    def state_dict(self) -> dict[str, Any]:
        return {"peak_from_finder": self._peak_from_finder}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._peak_from_finder = state_dict.get("peak_from_finder")

    def on_train_epoch_start(self, trainer: Any, state: Any) -> None:
        if trainer.current_epoch == 0 and self.peak_required and self.peak() is None:
            raise ValueError(
                f"{self!r} has {self.peak_arg}=None, which means 'set by an LR finder', but "
                f"nothing set it; put LRFinder() before it in callbacks, or pass "
                f"{self.peak_arg}=<float>"
            )


def takes_lr_peak(callback: Any) -> bool:
    """A schedule of the learning rate that takes a peak (`set_peak`); a momentum or
    weight-decay `LRSchedule` has `set_peak` too and is not one."""
    return hasattr(callback, "set_peak") and "learning_rate" in getattr(callback, "sets", ())


def overwrites_base(callback: Any, name: str) -> bool:
    """Whether `callback` replaces the base value of `name` at every step, so a host write of
    that base never reaches a step: an `LRSchedule` of `name`, or an LR schedule with its peak
    given (``CosineRestarts(base_lr=None)`` reads the base instead). Composites: any child."""
    children = getattr(callback, "children", ())
    if children:
        return any(overwrites_base(c, name) for c in children)
    if isinstance(callback, PeakFromFinder):
        return name == "learning_rate" and (
            callback.peak_required or getattr(callback, callback.peak_arg) is not None)
    return getattr(callback, "replaces_base", False) and callback.hyperparam == name


def waiting_for_peak(callbacks: Sequence[Any]) -> list[Any]:
    """The schedules among `callbacks` (children of composites included) whose peak is None
    and must come from an LR finder."""
    out = []
    for cb in callbacks:
        if isinstance(cb, PeakFromFinder) and cb.peak_required and cb.peak() is None:
            out.append(cb)
        out += waiting_for_peak(getattr(cb, "children", ()))
    return out
