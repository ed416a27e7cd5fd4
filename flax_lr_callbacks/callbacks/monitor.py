"""What `ReduceLROnPlateau` and `EarlyStopping` share: a monitored metric, which direction is
better, when to look at it, and what happens when it is missing or not finite.

A monitored value comes from `trainer.callback_metrics`: ``train_loss`` and ``train_<metric>``
(window means at log points), ``val_loss`` and ``val_<metric>`` (after each validation), and
whatever other callbacks put there. Missing monitors are errors, not silent no-ops:

* at fit start, a ``val_*`` monitor (or ``check_on="validation"``) in a fit that never
  validates (`RunPlan.validates` is False) raises a ValueError;
* at a check, a monitor absent from the metrics raises a KeyError listing the available ones.
  The one exception is a ``val_*`` monitor checked before the first validation has run (a
  step-based ``check_on``): that check is skipped (with one warning when the host cannot tell
  whether validation will run, as in the drop-in `LRCallbacks`).

With a step-based ``check_on``, a ``val_*`` monitor is checked only when a validation ran since
the last check: the same value is never counted twice.

A non-finite value is never counted as a plateau or an improvement: the check is skipped with
a warning naming the monitor, the value and the step (`EarlyStopping` may stop on it instead).
"""

from __future__ import annotations

import math
import warnings
from typing import Any

from flax_lr_callbacks.callbacks.base import Callback
from flax_lr_callbacks.validation import check_choice

__all__ = ["MonitoredCallback", "check_check_on", "check_monitor", "improves", "initial_best"]


def check_check_on(check_on: Any) -> None:
    """``"validation"``, ``"epoch"`` or a step count >= 1 (NumPy ints accepted by callers that
    convert first)."""
    if isinstance(check_on, bool) or not (check_on in ("validation", "epoch") or (
            isinstance(check_on, int) and check_on >= 1)):
        raise ValueError("check_on must be 'validation', 'epoch' or an int >= 1 (steps), "
                         f"got check_on={check_on!r}")


def check_monitor(monitor: Any, mode: Any) -> None:
    if not isinstance(monitor, str) or not monitor:
        raise TypeError(f"monitor must be a non-empty str, got monitor={monitor!r}")
    check_choice("mode", mode, ("min", "max"))


def initial_best(mode: str) -> float:
    """The best value before any check: +inf when lower is better, -inf otherwise."""
    return math.inf if mode == "min" else -math.inf


def improves(value: float, best: float, mode: str, delta: float = 0.0, *,
             relative: bool = False) -> bool:
    """Whether `value` beats `best` by more than `delta` in direction `mode`.

    ``relative=True`` scales the margin by ``|best|`` (sign-safe for negative metrics). Any
    finite value beats an infinite `best` of the right sign (the state before a first check).
    """
    if math.isinf(best):
        return value < best if mode == "min" else value > best
    margin = delta * abs(best) if relative else delta
    return value < best - margin if mode == "min" else value > best + margin


class MonitoredCallback(Callback):
    """Base of callbacks that check one metric at `check_on` points (host hooks).

    Subclasses set `monitor`, `mode`, `check_on` and `strict` in ``__init__``, call
    `start_checks` from a fresh (not resumed) `on_fit_start`, and implement `_check(trainer)`,
    which reads the value with `read_monitor`.
    """

    monitor: str
    mode: str
    check_on: Any = "validation"
    strict: bool = False
    _next_check: int = 0
    _warned_pending: bool = False
    _validations: int = 0  # validations seen this fit
    _checked_validations: int = -1  # `_validations` at the last step-based check of a val_*

    def check_can_appear(self, trainer: Any) -> None:
        """Raises ValueError when the plan says the monitor or the check point never comes."""
        validates = getattr(getattr(trainer, "plan", None), "validates", None)
        if validates is not False:
            return
        if self.monitor.startswith("val_"):
            raise ValueError(
                f"{self!r} monitors {self.monitor!r}, but this fit has no val_data, so it never "
                "appears; pass val_data to fit, or monitor a training metric such as "
                "'train_loss' (with check_on='epoch' or a step count)")
        if self.check_on == "validation":
            raise ValueError(
                f"{self!r} has check_on='validation', but this fit has no val_data, so it "
                "would never check; use check_on='epoch' or a step count")

    def start_checks(self, trainer: Any) -> None:
        """Fresh check bookkeeping for a new fit (a resume keeps the loaded one)."""
        self.check_can_appear(trainer)
        self._next_check = self.check_on if isinstance(self.check_on, int) else 0
        self._warned_pending = False
        self._validations, self._checked_validations = 0, -1

    def check_state(self) -> dict[str, int]:
        """The check bookkeeping, for the subclass's `state_dict` (resume)."""
        return {"next_check": self._next_check, "validations": self._validations,
                "checked_validations": self._checked_validations}

    def load_check_state(self, state_dict: dict[str, Any]) -> None:
        self._next_check = int(state_dict["next_check"])
        # absent from checkpoints written before 0.2: no step-based check had counted one
        self._validations = int(state_dict.get("validations", 0))
        self._checked_validations = int(state_dict.get("checked_validations", -1))

    def on_log(self, trainer: Any, state: Any, history: dict[str, Any]) -> None:
        if isinstance(self.check_on, int) and trainer.global_step >= self._next_check:
            self._next_check = trainer.global_step + self.check_on
            if self.monitor.startswith("val_"):
                # A val_* value changes only at a validation: checking it again between two
                # would count the same value as a new evaluation (Lightning does; we skip).
                if self._validations == self._checked_validations:
                    return
                self._checked_validations = self._validations
            self._check(trainer)

    def on_validation_end(self, trainer: Any, state: Any) -> None:
        self._validations += 1
        if self.check_on == "validation":
            self._check(trainer)

    def on_train_epoch_end(self, trainer: Any, state: Any) -> None:
        if self.check_on == "epoch":
            self._check(trainer)

    def _check(self, trainer: Any) -> None:
        raise NotImplementedError

    def read_monitor(self, trainer: Any, *, finite: bool = True) -> float | None:
        """The monitored value now, or None when this check should be skipped.

        Raises KeyError (listing the available metrics) when the monitor is missing and will
        not appear later. With `finite` (default), warns and returns None for a non-finite
        value; otherwise hands it back for the caller to decide.
        """
        metrics = trainer.callback_metrics
        name = type(self).__name__
        if self.monitor not in metrics:
            message = (f"{name} monitors {self.monitor!r}, which is not among the metrics at "
                       f"step {trainer.global_step}; available metrics: {sorted(metrics)}")
            pending = (self.monitor.startswith("val_")
                       and not any(k.startswith("val_") for k in metrics))
            if self.strict or not pending:
                raise KeyError(message + " (train_loss and train_<metric> of the loss "
                               "function, val_* after validation, and what callbacks log)")
            validates = getattr(getattr(trainer, "plan", None), "validates", None)
            if validates is None and not self._warned_pending:  # may never come: say so once
                warnings.warn(message + "; skipping until validation metrics arrive",
                              RuntimeWarning, stacklevel=3)
                self._warned_pending = True
            return None
        value = float(metrics[self.monitor])
        if finite and not math.isfinite(value):
            warnings.warn(f"{name} ignores {self.monitor}={value} at step {trainer.global_step} "
                          f"(epoch {trainer.current_epoch}): not finite", RuntimeWarning,
                          stacklevel=3)
            return None
        return value
