"""LRSchedule: any optax schedule (or ``step -> value`` function), evaluated in-graph."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flax_lr_callbacks.callbacks.clocks import UNITS, clock, horizon, write
from flax_lr_callbacks.validation import check_names, check_str, check_choice, check_number
from flax_lr_callbacks.callbacks.base import Callback, RunPlan, StepContext
from flax_lr_callbacks.hyperparams import Hyperparams

__all__ = ["LRSchedule"]

Unit = Literal["step", "epoch"]


class PeakScale(NamedTuple):
    scale: jax.Array  # multiplies the schedule; set by `set_peak`


class LRSchedule(Callback):
    """Sets a hyperparameter from a schedule at every step, inside the jitted train step.

    The schedule is traced into the step, so it costs no host work and never retraces. With
    ``unit="epoch"`` it reads the epoch instead of the step (``schedule(step //
    steps_per_epoch)``): the value changes at the first step of each epoch, which is what
    PyTorch's per-epoch ``scheduler.step()`` and Keras' ``LearningRateScheduler`` give.

    The clock is the Trainer's step of this fit (0-based; a resume restores it), not the
    optimizer's own count, so it is also exact under `optax.MultiSteps` (one call per
    micro-batch) and needs no `inject_hyperparams` schedule, which callbacks could not change.

    Args:
      schedule: an optax schedule or any jit-able ``count -> value`` function.
      unit: ``"step"`` (default) or ``"epoch"``.
      hyperparam: the injected hyperparameter to set (default ``"learning_rate"``).
      groups: optimizer groups to set (default: every group that has `hyperparam`).

    *Peak hook.* ``set_peak(trainer, value)`` (called by `LRFinder`) rescales the schedule so
    its largest value over the planned run equals `value`; the factor is device state, so
    this never recompiles.

    Example:
      >>> import optax
      >>> cb = LRSchedule(optax.cosine_decay_schedule(0.1, 1000), unit="step")
      >>> momentum = LRSchedule(lambda e: 0.9 - 0.01 * e, unit="epoch", hyperparam="momentum")
    """

    replaces_base = True  # its values replace the base value (`peak.overwrites_base`)

    def __init__(
        self,
        schedule: Callable[[jax.Array], Any],
        unit: Unit = "step",
        *,
        hyperparam: str = "learning_rate",
        groups: tuple[str, ...] | None = None,
    ):
        if not callable(schedule):
            raise TypeError(f"schedule must be callable (count -> value), got {schedule!r}")
        check_choice("unit", unit, UNITS)
        self.schedule = schedule
        self.unit = unit
        self.hyperparam = check_str("hyperparam", hyperparam)
        self.sets = (hyperparam,)
        self.groups = check_names("groups", groups)

        self._peak_target: float | None = None

    def _planned_max(self, plan: RunPlan) -> float:
        """The schedule's largest planned value; raises when it cannot be rescaled to a
        peak (not positive or not finite)."""
        count = horizon(plan.total_steps, plan.steps_per_epoch, self.unit)
        values = jax.vmap(self.schedule)(jnp.arange(count))
        top = float(jnp.max(values))
        if not (np.isfinite(top) and top > 0):
            raise ValueError(
                f"{self!r}: cannot rescale to a peak from an LR finder: the schedule's largest "
                f"planned value over the {count} {self.unit}s of the run is {top}, and "
                "rescaling needs a finite value > 0")
        return top

    def init_state(self, plan: RunPlan, hparams: Hyperparams) -> PeakScale:
        scale = 1.0
        if self._peak_target is not None:
            scale = self._peak_target / self._planned_max(plan)
        return PeakScale(scale=jnp.float32(scale))

    def set_peak(self, trainer: Any, value: float) -> None:
        """Rescales the schedule so its planned maximum equals `value` (no recompile)."""
        check_number("peak", value, low=0, low_open=True)
        self._peak_target = float(value)
        if trainer is not None and getattr(trainer, "trainer_state", None) is not None:
            plan = RunPlan(trainer.steps_per_epoch, trainer.total_steps)
            trainer.update_callback_state(self, scale=value / self._planned_max(plan))

    def state_dict(self) -> dict[str, Any]:
        return {"peak_target": self._peak_target}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._peak_target = state_dict.get("peak_target")

    def rule(self, ctx: StepContext, hparams: Hyperparams, state: PeakScale):
        value = self.schedule(clock(ctx, self.unit)) * state.scale
        return write(hparams, self.target_groups(hparams, self.hyperparam), self.hyperparam,
                     value), state

    def __repr__(self) -> str:
        name = getattr(self.schedule, "__name__", type(self.schedule).__name__)
        return f"LRSchedule({name}, unit={self.unit!r}, hyperparam={self.hyperparam!r})"
