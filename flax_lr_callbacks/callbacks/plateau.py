"""ReduceLROnPlateau: a modifier that scales whatever schedule is active when a metric stalls."""

from __future__ import annotations

import logging
import math
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from flax_lr_callbacks.callbacks.clocks import write
from flax_lr_callbacks.callbacks.monitor import (MonitoredCallback, check_check_on,
                                                 check_monitor, improves, initial_best)
from flax_lr_callbacks.validation import (as_scalar, check_bool, check_choice, check_names,
                                          check_number, check_str)
from flax_lr_callbacks.callbacks.base import RunPlan, StepContext, parse_hparam_key
from flax_lr_callbacks.hyperparams import Hyperparams

__all__ = ["ReduceLROnPlateau", "PlateauState"]

log = logging.getLogger("flax_lr_callbacks")


class PlateauState(NamedTuple):
    """The whole decision state; `update` returns a new one (never mutates)."""

    best: float
    num_bad: int  # bad evaluations since the last improvement (or reduction)
    cooldown_counter: int  # evaluations left in which bad ones are not counted
    scale: float  # multiplier applied to the scheduled value
    num_evals: int


class ScaleState(NamedTuple):
    scale: jax.Array



def check_plateau_args(mode: str, factor: float, patience: int, threshold: float,
                       threshold_mode: str, cooldown: int, min_lr: float) -> tuple:
    """The arguments every plateau rule shares (`ReduceLROnPlateau`, `SmoothedPlateau`),
    checked and returned in plain Python form, in the order given."""
    check_choice("mode", mode, ("min", "max"))
    factor = check_number("factor", factor, low=0, high=1, low_open=True, high_open=True)
    patience = check_number("patience", patience, low=0, integer=True)
    threshold = check_number("threshold", threshold, low=0)
    check_choice("threshold_mode", threshold_mode, ("rel", "abs"))
    cooldown = check_number("cooldown", cooldown, low=0, integer=True)
    min_lr = check_number("min_lr", min_lr, low=0)
    return mode, factor, patience, threshold, threshold_mode, cooldown, min_lr


def scale_with_floor(callback: Any, hparams: Hyperparams, scale: jax.Array) -> Hyperparams:
    """A plateau modifier: ``max(base * scale, min(base, min_lr))`` on `callback.hyperparam`
    of each group it targets (a reduction never lifts a schedule that is already lower)."""
    for g in callback.target_groups(hparams, callback.hyperparam):
        base = hparams[g][callback.hyperparam]
        floor = jnp.minimum(base, callback.min_lr)
        write(hparams, [g], callback.hyperparam, jnp.maximum(base * scale, floor))
    return hparams

class ReduceLROnPlateau(MonitoredCallback):
    """Multiplies the learning rate by `factor` when `monitor` stops improving.

    The decision follows PyTorch's `ReduceLROnPlateau` exactly: an evaluation improves if it
    beats `best` by more than `threshold`; otherwise it is bad. During `cooldown` evaluations
    after a reduction, bad ones are not counted. On the ``(patience + 1)``-th bad evaluation in a
    row the scale is multiplied by `factor` and cooldown starts.

    It is a *modifier*: the applied LR is ``max(base * scale, min(base, min_lr))``, where
    ``base`` comes from whatever schedule sets the LR (`OneCycle`, `Warmup`, `LRSchedule`, ...)
    or the optimizer's injected value. So it composes with any schedule, `min_lr` bounds the
    reduced LR without ever raising a schedule's own value, and the LR monitor logs the reduced
    LR. The decision is host logic at `check_on` points; the scale is device state (no retrace).

    Differences from PyTorch:
      * ``threshold_mode="rel"`` is sign-safe: improvement means beating ``best`` by
        ``threshold * |best|``. PyTorch's ``best * (1 - threshold)`` inverts for negative
        metrics (a slightly *worse* negative loss counts as better) and never reduces.
      * `eps` compares the LR just applied (the last logged step) with the reduced one, as
        PyTorch does per group; once the floor is reached further reductions are skipped.
      * A non-finite value (NaN, inf) is skipped with a warning; PyTorch counts it as a bad
        epoch (and may reduce on it).
      * A single `scale` for all groups; `min_lr` is one float.
      * Each `fit` starts from a fresh state (a fit is a run; continue a run by resuming from
        a checkpoint). Keras resets on every `fit` call too, PyTorch keeps its object's state.

    Args:
      monitor: metric name in `trainer.callback_metrics` (``"val_loss"`` default).
      mode: ``"min"`` (default) or ``"max"``.
      factor: multiplier per reduction, in (0, 1). Default 0.1.
      patience: bad evaluations tolerated before reducing (>= 0). Default 10.
      threshold: minimum improvement (>= 0). Default 1e-4.
      threshold_mode: ``"rel"`` (default) or ``"abs"``.
      cooldown: evaluations to wait after a reduction (>= 0). Default 0.
      min_lr: lower bound of the reduced LR (>= 0). Default 0.
      eps: reductions changing the LR by no more than this are skipped (>= 0). Default 1e-8.
      check_on: ``"validation"`` (after each validation, default), ``"epoch"`` (each epoch end),
        or an int N (every N steps, at log points; use a train metric such as ``train_loss``;
        a ``val_*`` monitor is then checked only when a validation ran since the last check,
        where Lightning's step interval counts the same value again).
      hyperparam: the hyperparameter to scale. Default ``"learning_rate"``.
      strict: also raise when a ``val_*`` monitor is missing before the first validation
        (by default that check is skipped). A monitor missing at any other check is always
        a KeyError listing the available metrics, and a ``val_*`` monitor in a fit without
        validation data is a ValueError at fit start (see `callbacks.monitor`). A non-finite
        value is skipped with a warning, never counted as a bad evaluation.

    Example:
      >>> cb = ReduceLROnPlateau(patience=1, factor=0.5)
      >>> s = cb.init()
      >>> for loss in [1.0, 0.9, 0.95, 0.95]:
      ...     s, reduced = cb.update(s, loss)
      >>> s.scale, reduced
      (0.5, True)
    """

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: Literal["min", "max"] = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: Literal["rel", "abs"] = "rel",
        cooldown: int = 0,
        min_lr: float = 0.0,
        eps: float = 1e-8,
        *,
        check_on: Literal["validation", "epoch"] | int = "validation",
        hyperparam: str = "learning_rate",
        strict: bool = False,
        groups: tuple[str, ...] | None = None,
    ):
        check_monitor(monitor, mode)
        mode, factor, patience, threshold, threshold_mode, cooldown, min_lr = check_plateau_args(
            mode, factor, patience, threshold, threshold_mode, cooldown, min_lr)
        hyperparam = check_str("hyperparam", hyperparam)
        eps = check_number("eps", eps, low=0)
        check_on = as_scalar(check_on)
        check_check_on(check_on)
        self.monitor, self.mode, self.factor, self.patience = monitor, mode, factor, patience
        self.threshold, self.threshold_mode = threshold, threshold_mode
        self.cooldown, self.min_lr, self.eps = cooldown, min_lr, eps
        self.check_on, self.hyperparam = check_on, hyperparam
        self.strict = check_bool("strict", strict)
        self.groups = check_names("groups", groups)
        self.scales = (hyperparam,)
        self.state = self.init()
        self.reductions: list[dict[str, float]] = []
        self._last_lr: float | None = None
        self._next_check = 0

    # ------------------------------------------------------------------ the pure decision
    def init(self) -> PlateauState:
        """The state before any evaluation."""
        return PlateauState(best=initial_best(self.mode), num_bad=0,
                            cooldown_counter=0, scale=1.0, num_evals=0)

    def is_better(self, value: float, best: float) -> bool:
        """Whether `value` improves on `best` by more than the threshold (sign-safe)."""
        return improves(value, best, self.mode, self.threshold,
                        relative=self.threshold_mode == "rel")

    def update(self, state: PlateauState, value: float,
               current_lr: float | None = None) -> tuple[PlateauState, bool]:
        """One evaluation of the metric: returns the new state and whether it reduced.

        `current_lr` (the LR just applied) enables the `eps` / `min_lr` skip: a reduction that
        would change it by ``<= eps`` is not made. A non-finite `value` changes nothing (it
        is neither an improvement nor a bad evaluation).
        """
        value = float(value)
        if not math.isfinite(value):
            return state, False
        best, num_bad = state.best, state.num_bad
        if self.is_better(value, best):
            best, num_bad = value, 0
        else:
            num_bad += 1
        cooldown = state.cooldown_counter
        if cooldown > 0:
            cooldown -= 1
            num_bad = 0  # bad evaluations in cooldown do not count
        scale, reduced = state.scale, False
        if num_bad > self.patience:
            new_scale = scale * self.factor
            if current_lr is None or current_lr - max(current_lr * self.factor,
                                                      self.min_lr) > self.eps:
                scale, reduced = new_scale, True
            cooldown, num_bad = self.cooldown, 0
        return PlateauState(best, num_bad, cooldown, scale, state.num_evals + 1), reduced

    # ------------------------------------------------------------------ in-graph face
    def init_state(self, plan: RunPlan, hparams: Hyperparams) -> ScaleState:
        return ScaleState(scale=jnp.float32(self.state.scale))

    def rule(self, ctx: StepContext, hparams: Hyperparams, state: ScaleState):
        return scale_with_floor(self, hparams, state.scale), state

    # ------------------------------------------------------------------ host hooks
    def on_fit_start(self, trainer: Any, state: Any) -> None:
        if getattr(trainer, "resuming", False):  # host and device state: from the checkpoint
            self.check_can_appear(trainer)
            return
        self.start_checks(trainer)
        self.state, self.reductions, self._last_lr = self.init(), [], None
        trainer.update_callback_state(self, scale=self.state.scale)

    def on_log(self, trainer: Any, state: Any, history: dict[str, Any]) -> None:
        for key, values in history.items():
            parsed = parse_hparam_key(key)
            if parsed and parsed[1] == self.hyperparam and (
                    self.groups is None or parsed[0] in self.groups):
                self._last_lr = float(values[-1])
                break
        super().on_log(trainer, state, history)

    def _check(self, trainer: Any) -> None:
        value = self.read_monitor(trainer)
        if value is None:
            return
        self.state, reduced = self.update(self.state, value, self._last_lr)
        if reduced:
            trainer.update_callback_state(self, scale=self.state.scale)
            self.reductions.append({"step": trainer.global_step, "epoch": trainer.current_epoch,
                                    "value": value, "scale": self.state.scale})
            log.info("ReduceLROnPlateau: %s=%.6g did not improve on %.6g for %d evaluations; "
                     "LR scale -> %.3g at step %d (epoch %d)", self.monitor, value,
                     self.state.best, self.patience + 1, self.state.scale,
                     trainer.global_step, trainer.current_epoch)

    def state_dict(self) -> dict[str, Any]:
        return {"state": self.state._asdict(), "reductions": list(self.reductions),
                "last_lr": self._last_lr, **self.check_state()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.state = PlateauState(**state_dict["state"])
        self.reductions = list(state_dict["reductions"])
        self._last_lr = state_dict["last_lr"]
        self.load_check_state(state_dict)

    def __repr__(self) -> str:
        return (f"ReduceLROnPlateau(monitor={self.monitor!r}, mode={self.mode!r}, "
                f"factor={self.factor}, patience={self.patience})")
