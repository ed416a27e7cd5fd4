"""EarlyStopping: stop the fit when a monitored metric stops improving, reaches a goal,
diverges, or is not finite."""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

from flax_lr_callbacks.callbacks.monitor import (MonitoredCallback, check_check_on,
                                                 check_monitor, improves, initial_best)
from flax_lr_callbacks.validation import check_count, check_number

__all__ = ["EarlyStopping"]

log = logging.getLogger("flax_lr_callbacks")


def _number(name: str, value: Any, **bounds: Any) -> float | None:
    """`value` as a float (NumPy/JAX scalars accepted), or None; ValueError naming it."""
    if value is None:
        return None
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        value = value.item()
    check_number(name, value, **bounds)
    return float(value)


def _count(name: str, value: Any) -> int:
    if hasattr(value, "item") and getattr(value, "shape", None) == () and not isinstance(
            value, bool):
        value = value.item()
    check_count(name, value, 0)
    return int(value)


class EarlyStopping(MonitoredCallback):
    """Stops the fit when `monitor` has not improved for `patience` checks.

    Lightning's semantics: at each check (``check_on``), in this order,

    1. a non-finite value stops at once (``check_finite``);
    2. a value beyond ``stopping_threshold`` (``<`` in min mode, ``>`` in max) stops: the goal
       is reached;
    3. a value beyond ``divergence_threshold`` (``>`` in min mode, ``<`` in max) stops: the
       run diverged;
    4. a value better than the best by more than ``min_delta`` is an improvement: it becomes
       the best and `wait_count` goes back to 0;
    5. otherwise `wait_count` grows by one, and the fit stops when it reaches `patience`.

    Stopping asks the Trainer to stop after the current step or epoch
    (``trainer.request_stop()``); the epoch-end hooks still run, so a `ModelCheckpoint` saves
    the final state. Why it stopped is logged and kept in `reason`, with `stopped_epoch` and
    `stopped_step`. The decision state (best, wait count, the next check) is saved in
    checkpoints, so a resumed fit stops where the uninterrupted one would. It composes with
    `ReduceLROnPlateau` on the same monitor: give the plateau a smaller patience, and the LR
    is reduced first and the fit stopped if that did not help.

    Differences from Lightning: `min_delta` must be >= 0 (its sign is taken from `mode`, as
    Lightning does after flipping it); `check_on` replaces ``check_on_train_epoch_end``; a
    monitor that can never appear is an error (at fit start when the fit has no validation
    data, else at the first check, listing the available metrics), where Lightning raises or
    warns depending on ``strict``. From Keras: `baseline` (an improvement that does not beat it
    does not reset the wait) and `start_from_epoch` (checks before that epoch are skipped).
    No ``restore_best_weights`` (keep the best with ``ModelCheckpoint(monitor=...)``).

    Args:
      monitor: metric in `trainer.callback_metrics`. Default ``"val_loss"``.
      min_delta: smallest change that counts as an improvement (>= 0). Default 0.
      patience: checks without improvement before stopping (>= 0; 0 stops at the first check
        that does not improve). Default 3.
      mode: ``"min"`` (default) or ``"max"``: which direction is better.
      check_on: ``"epoch"`` (each epoch end, after validation; default), ``"validation"``
        (after each validation) or an int N (every N steps, at log points).
      stopping_threshold: stop as soon as the value is better than this (None: off).
      divergence_threshold: stop as soon as the value is worse than this (None: off).
      check_finite: stop when the value is NaN or infinite. Default True; with False a
        non-finite value is skipped with a warning.
      baseline: a value the monitor must beat for the wait to reset (Keras: a check that
        improves on the best but not on the baseline adds to the wait but never stops).
        Default None.
      start_from_epoch: checks in epochs before this one are skipped (>= 0). Default 0.
      strict: also raise when a ``val_*`` monitor is missing before the first validation.
      verbose: log each improvement (the stop reason is always logged).

    Attributes:
      best_score, wait_count: the decision state (Lightning's names).
      stopped_epoch, stopped_step: where it asked the fit to stop (None if it did not).
      reason: why it stopped (None if it did not).

    Example:
      >>> stop = EarlyStopping(patience=1)
      >>> for v in [1.0, 0.9, 0.95]:
      ...     stop_now, _ = stop.evaluate(v)
      >>> stop_now, stop.best_score, stop.wait_count
      (True, 0.9, 1)
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        min_delta: float = 0.0,
        patience: int = 3,
        mode: Literal["min", "max"] = "min",
        *,
        check_on: Literal["epoch", "validation"] | int = "epoch",
        stopping_threshold: float | None = None,
        divergence_threshold: float | None = None,
        check_finite: bool = True,
        baseline: float | None = None,
        start_from_epoch: int = 0,
        strict: bool = False,
        verbose: bool = False,
    ):
        check_monitor(monitor, mode)
        self.min_delta = _number("min_delta", min_delta, low=0)
        self.patience = _count("patience", patience)
        check_check_on(check_on)
        self.stopping_threshold = _number("stopping_threshold", stopping_threshold)
        self.divergence_threshold = _number("divergence_threshold", divergence_threshold)
        self.baseline = _number("baseline", baseline)
        self.start_from_epoch = _count("start_from_epoch", start_from_epoch)
        for name, flag in (("check_finite", check_finite), ("strict", strict),
                           ("verbose", verbose)):
            if not isinstance(flag, bool):
                raise TypeError(f"{name} must be a bool, got {name}={flag!r}")
        if (self.stopping_threshold is not None and self.divergence_threshold is not None
                and not improves(self.stopping_threshold, self.divergence_threshold, mode)):
            raise ValueError(
                f"stopping_threshold={stopping_threshold} must be better than "
                f"divergence_threshold={divergence_threshold} in mode={mode!r}")
        self.monitor, self.mode, self.check_on = monitor, mode, check_on
        self.check_finite, self.strict, self.verbose = check_finite, strict, verbose
        self._reset()

    def _reset(self) -> None:
        self.best_score = initial_best(self.mode)
        self.wait_count = 0
        self.stopped_epoch: int | None = None
        self.stopped_step: int | None = None
        self.reason: str | None = None
        self._next_check = 0

    # ------------------------------------------------------------------ the decision
    def evaluate(self, value: float) -> tuple[bool, str | None]:
        """One check of `value`: updates `best_score` / `wait_count`; returns
        ``(should_stop, reason)`` (the reason also describes an improvement)."""
        value, best = float(value), self.best_score
        name = self.monitor
        if not math.isfinite(value):
            return True, (f"monitored metric {name}={value} is not finite; previous best "
                          f"{best:.6g}")
        if self.stopping_threshold is not None and improves(
                value, self.stopping_threshold, self.mode):
            return True, (f"stopping threshold reached: {name}={value:.6g} is "
                          f"{'<' if self.mode == 'min' else '>'} {self.stopping_threshold}")
        if self.divergence_threshold is not None and improves(
                self.divergence_threshold, value, self.mode):
            return True, (f"divergence threshold reached: {name}={value:.6g} is "
                          f"{'>' if self.mode == 'min' else '<'} {self.divergence_threshold}")
        if improves(value, best, self.mode, self.min_delta):
            self.best_score = value
            if self.baseline is None or improves(value, self.baseline, self.mode,
                                                 self.min_delta):
                self.wait_count = 0
                return False, f"{name} improved to {value:.6g} (from {best:.6g})"
            self.wait_count += 1  # Keras: an improvement short of the baseline never stops
            return False, (f"{name} improved to {value:.6g}, short of baseline "
                           f"{self.baseline}")
        self.wait_count += 1
        if self.wait_count >= self.patience:
            what = (f"did not beat baseline {self.baseline}" if self.baseline is not None
                    and not improves(self.best_score, self.baseline, self.mode,
                                     self.min_delta) else "did not improve")
            return True, (f"monitored metric {name} {what} in the last {self.wait_count} "
                          f"checks; best {self.best_score:.6g}")
        return False, None

    # ------------------------------------------------------------------ host hooks
    def on_fit_start(self, trainer: Any, state: Any) -> None:
        if getattr(trainer, "resuming", False):  # state_dict came from the checkpoint
            self.check_can_appear(trainer)
            return
        self._reset()
        self.start_checks(trainer)

    def _check(self, trainer: Any) -> None:
        if trainer.current_epoch < self.start_from_epoch or self.stopped_step is not None:
            return
        value = self.read_monitor(trainer, finite=not self.check_finite)
        if value is None:
            return
        stop, reason = self.evaluate(value)
        if not stop:
            if reason is not None and self.verbose:
                log.info("EarlyStopping: %s", reason)
            return
        self.stopped_epoch, self.stopped_step = trainer.current_epoch, trainer.global_step
        self.reason = reason
        log.info("EarlyStopping: %s; stopping at step %d (epoch %d)", reason,
                 trainer.global_step, trainer.current_epoch)
        trainer.request_stop()

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score, "wait_count": self.wait_count,
                "stopped_epoch": self.stopped_epoch, "stopped_step": self.stopped_step,
                "reason": self.reason, **self.check_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = float(state_dict["best_score"])
        self.wait_count = int(state_dict["wait_count"])
        self.stopped_epoch = state_dict["stopped_epoch"]
        self.stopped_step = state_dict["stopped_step"]
        self.reason = state_dict["reason"]
        self.load_check_state(state_dict)

    def __repr__(self) -> str:
        return (f"EarlyStopping(monitor={self.monitor!r}, mode={self.mode!r}, "
                f"patience={self.patience}, min_delta={self.min_delta})")
