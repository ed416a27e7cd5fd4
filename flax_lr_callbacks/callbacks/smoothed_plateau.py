"""SmoothedPlateau: reduce the LR when the smoothed training loss stalls, decided in-graph."""

from __future__ import annotations

import warnings
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flax_lr_callbacks.callbacks.plateau import check_plateau_args, scale_with_floor
from flax_lr_callbacks.validation import check_names, check_str, check_number
from flax_lr_callbacks.callbacks.base import Callback, Observation, RunPlan, StepContext
from flax_lr_callbacks.hyperparams import Hyperparams

__all__ = ["SmoothedPlateau", "SmoothedPlateauState"]


class SmoothedPlateauState(NamedTuple):
    """Device state; every field is updated in-graph after each step."""

    ema: jax.Array  # float32, biased EMA of the monitored value (sign-flipped for "max")
    count: jax.Array  # int32, finite values seen (for the bias correction)
    best: jax.Array  # float32, best smoothed value so far (inf before the first)
    num_bad: jax.Array  # int32, steps since the last improvement (or reduction)
    cooldown_counter: jax.Array  # int32, steps left in which bad steps are not counted
    scale: jax.Array  # float32, multiplier applied to the scheduled LR
    num_reductions: jax.Array  # int32


class SmoothedPlateau(Callback):
    """Multiplies the LR by `factor` when the smoothed training loss stops improving.

    Like `ReduceLROnPlateau`, but the decision runs inside the train step after every
    gradient update, on a bias-corrected exponential moving average of the training loss
    (or of a metric the loss function returns): no host sync, no wait for a log point or a
    validation pass, and the reduced LR applies from the very next step. Patience and
    cooldown count steps. Each step::

        smoothed = EMA_beta(value) / (1 - beta**n)          # n finite values seen
        improved = smoothed < best - threshold * |best|     # "rel"; "abs": - threshold
        num_bad  = 0 if improved else num_bad + 1           # not counted during cooldown
        if num_bad > patience: scale *= factor; cooldown starts; num_bad = 0

    A non-finite value is skipped (neither good nor bad, and it does not enter the EMA or
    count towards cooldown); the host warns about it at the next log point (naming the value
    and step, read from the records fetched there, so no extra transfer). It is a modifier:
    the applied LR is ``max(base * scale, min(base, min_lr))`` for whatever schedule sets the
    base. The whole
    decision state is device state, so it is checkpointed with the model and resumes exactly.
    optax's `contrib.reduce_on_plateau` also decides in-graph, but as an optimizer wrapper on
    the raw loss it is handed; this one composes with the schedule callbacks.

    Args:
      monitor: ``"loss"`` (default) or the name of a metric the loss function returns.
      mode: ``"min"`` (default) or ``"max"``.
      factor: multiplier per reduction, in (0, 1). Default 0.5.
      patience: bad steps tolerated before reducing (>= 0). Default 100.
      threshold: minimum improvement (>= 0). Default 1e-3.
      threshold_mode: ``"rel"`` (default, sign-safe) or ``"abs"``.
      cooldown: steps after a reduction in which bad steps are not counted (>= 0). Default 0.
      min_lr: lower bound of the reduced LR (>= 0). Default 0.
      beta: EMA factor in [0, 1). Default 0.98 (about 50 steps).
      hyperparam: the hyperparameter to scale. Default ``"learning_rate"``.

    Example:
      >>> cb = SmoothedPlateau(patience=2, factor=0.5, beta=0.0)
      >>> s = cb.init_state(None, {})
      >>> for loss in [1.0, 0.5, 0.5, 0.5, 0.5]:
      ...     s = cb.observe(None, Observation(jnp.float32(loss), {}), s)
      >>> float(s.scale), int(s.num_reductions)
      (0.5, 1)
    """

    def __init__(self, monitor: str = "loss", mode: Literal["min", "max"] = "min",
                 factor: float = 0.5, patience: int = 100, threshold: float = 1e-3,
                 threshold_mode: Literal["rel", "abs"] = "rel", cooldown: int = 0,
                 min_lr: float = 0.0, *, beta: float = 0.98,
                 hyperparam: str = "learning_rate", groups: tuple[str, ...] | None = None):
        mode, factor, patience, threshold, threshold_mode, cooldown, min_lr = check_plateau_args(
            mode, factor, patience, threshold, threshold_mode, cooldown, min_lr)
        monitor, hyperparam = check_str("monitor", monitor), check_str("hyperparam", hyperparam)
        beta = check_number("beta", beta, low=0, high=1, high_open=True)
        if not isinstance(monitor, str):
            raise TypeError(f"monitor must be a str, got monitor={monitor!r}")
        self.monitor, self.mode, self.factor, self.patience = monitor, mode, factor, patience
        self.threshold, self.threshold_mode = threshold, threshold_mode
        self.cooldown, self.min_lr, self.beta = cooldown, min_lr, beta
        self.hyperparam = hyperparam
        self.groups = check_names("groups", groups)
        self.scales = (hyperparam,)

    def init_state(self, plan: RunPlan | None, hparams: Hyperparams) -> SmoothedPlateauState:
        return SmoothedPlateauState(
            ema=jnp.float32(0.0), count=jnp.int32(0), best=jnp.float32(jnp.inf),
            num_bad=jnp.int32(0), cooldown_counter=jnp.int32(0), scale=jnp.float32(1.0),
            num_reductions=jnp.int32(0))

    def rule(self, ctx: StepContext, hparams: Hyperparams, state: SmoothedPlateauState):
        return scale_with_floor(self, hparams, state.scale), state

    def _value(self, obs: Observation) -> jax.Array:
        if self.monitor == "loss":
            value = obs.loss
        elif self.monitor in obs.metrics:
            value = obs.metrics[self.monitor]
        else:
            raise KeyError(f"{self!r} monitors {self.monitor!r}, which the loss function does "
                           f"not return; available: {['loss'] + sorted(obs.metrics)}")
        value = jnp.asarray(value, jnp.float32)
        return value if self.mode == "min" else -value

    def observe(self, ctx: StepContext, obs: Observation,
                state: SmoothedPlateauState) -> SmoothedPlateauState:
        value = self._value(obs)
        finite = jnp.isfinite(value)
        ema = jnp.where(finite, self.beta * state.ema + (1 - self.beta) * value, state.ema)
        count = state.count + finite.astype(jnp.int32)
        smoothed = ema / (1 - jnp.float32(self.beta) ** count.astype(jnp.float32))
        best = state.best
        margin = (self.threshold * jnp.abs(best) if self.threshold_mode == "rel"
                  else jnp.float32(self.threshold))
        improved = finite & jnp.where(jnp.isfinite(best), smoothed < best - margin, True)
        best = jnp.where(improved, smoothed, best)
        num_bad = jnp.where(improved, 0, state.num_bad + finite.astype(jnp.int32))
        in_cooldown = finite & (state.cooldown_counter > 0)  # a skipped value is no step of it
        cooldown = jnp.where(in_cooldown, state.cooldown_counter - 1, state.cooldown_counter)
        num_bad = jnp.where(in_cooldown, 0, num_bad)
        reduce = num_bad > self.patience
        return SmoothedPlateauState(
            ema=ema, count=count, best=best,
            num_bad=jnp.where(reduce, 0, num_bad).astype(jnp.int32),
            cooldown_counter=jnp.where(reduce, self.cooldown, cooldown).astype(jnp.int32),
            scale=jnp.where(reduce, state.scale * self.factor, state.scale),
            num_reductions=state.num_reductions + reduce.astype(jnp.int32))

    def on_log(self, trainer: Any, state: Any, history: dict[str, Any]) -> None:
        key = "loss" if self.monitor == "loss" else f"train_{self.monitor}"
        values = history.get(key)
        if values is None:
            return
        bad = ~np.isfinite(values)
        if bad.any():
            first = int(np.argmax(bad))
            warnings.warn(
                f"SmoothedPlateau ignores {bad.sum()} non-finite value(s) of {self.monitor!r} "
                f"in steps {int(history['step'][0])}..{int(history['step'][-1])}, first "
                f"{self.monitor}={values[first]} at step {int(history['step'][first])}",
                RuntimeWarning, stacklevel=2)

    def __repr__(self) -> str:
        return (f"SmoothedPlateau(monitor={self.monitor!r}, factor={self.factor}, "
                f"patience={self.patience})")
