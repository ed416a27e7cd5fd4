"""GradNormGuard: scale the LR down after a gradient-norm spike and recover, all in-graph."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from flax_lr_callbacks.callbacks.clocks import write
from flax_lr_callbacks.validation import check_names, check_str, check_number
from flax_lr_callbacks.callbacks.base import Callback, Observation, RunPlan, StepContext
from flax_lr_callbacks.hyperparams import Hyperparams

__all__ = ["GradNormGuard", "GradNormGuardState"]


class GradNormGuardState(NamedTuple):
    ema: jax.Array  # float32, biased EMA of the gradient norm over non-spike steps
    count: jax.Array  # int32, non-spike steps seen (bias correction and warmup)
    scale: jax.Array  # float32, multiplier applied to the LR from the next step on
    num_spikes: jax.Array  # int32


class GradNormGuard(Callback):
    """Cuts the LR for the next steps when the gradient norm spikes, then recovers.

    After each gradient update it compares the global gradient norm with a bias-corrected
    EMA of the norms of earlier non-spike steps. A spike (``norm > threshold * ema``, or a
    non-finite norm) multiplies the LR scale by `factor` (down to `min_scale`); every
    non-spike step multiplies it by ``factor ** (-1 / recovery_steps)`` up to 1, so one spike
    is fully undone after `recovery_steps` calm steps. Spikes do not enter the EMA. Nothing
    leaves the device: the norm is computed once in the step (only because this callback
    asks for it), and the decision is device state, checkpointed and resumed exactly.

    The step in which the spike happens has already been applied with the old LR; the guard
    protects the steps after it (a spike is often followed by more). With
    ``Trainer(nan_policy="skip")`` a non-finite step is not applied but still counts as a
    spike here, so repeated NaN gradients cut the LR. It is a modifier and
    composes with any schedule: applied LR = scheduled LR x scale.

    Args:
      threshold: spike when the norm exceeds this x its running average (> 1). Default 3.
      factor: LR multiplier per spike, in (0, 1). Default 0.5.
      recovery_steps: calm steps to undo one spike (>= 1). Default 20.
      warmup_steps: calm steps observed before spikes are judged (>= 1). Default 10.
      beta: EMA factor of the norm in [0, 1). Default 0.9.
      min_scale: lower bound of the scale, in (0, 1]. Default 1e-3.
      hyperparam: the hyperparameter to scale. Default ``"learning_rate"``.

    Example:
      >>> cb = GradNormGuard(threshold=2.0, factor=0.5, recovery_steps=2, warmup_steps=2)
      >>> s = cb.init_state(None, {})
      >>> for norm in [1.0, 1.0, 5.0, 1.0, 1.0]:
      ...     s = cb.observe(None, Observation(jnp.float32(0), {}, jnp.float32(norm)), s)
      ...     print(round(float(s.scale), 4))
      1.0
      1.0
      0.5
      0.7071
      1.0
    """

    observes = ("grad_norm",)
    observes_rejected = True  # a step nan_policy rejects for a non-finite norm is a spike

    def __init__(self, threshold: float = 3.0, factor: float = 0.5, recovery_steps: int = 20,
                 warmup_steps: int = 10, *, beta: float = 0.9, min_scale: float = 1e-3,
                 hyperparam: str = "learning_rate", groups: tuple[str, ...] | None = None):
        threshold = check_number("threshold", threshold, low=1, low_open=True)
        factor = check_number("factor", factor, low=0, high=1, low_open=True, high_open=True)
        recovery_steps = check_number("recovery_steps", recovery_steps, low=1, integer=True)
        warmup_steps = check_number("warmup_steps", warmup_steps, low=1, integer=True)
        beta = check_number("beta", beta, low=0, high=1, high_open=True)
        min_scale = check_number("min_scale", min_scale, low=0, high=1, low_open=True)
        self.threshold, self.factor = threshold, factor
        self.recovery_steps, self.warmup_steps = recovery_steps, warmup_steps
        self.beta, self.min_scale = beta, min_scale
        self.hyperparam = check_str("hyperparam", hyperparam)
        self.groups = check_names("groups", groups)
        self.scales = (hyperparam,)

    def init_state(self, plan: RunPlan | None, hparams: Hyperparams) -> GradNormGuardState:
        return GradNormGuardState(ema=jnp.float32(0.0), count=jnp.int32(0),
                                  scale=jnp.float32(1.0), num_spikes=jnp.int32(0))

    def rule(self, ctx: StepContext, hparams: Hyperparams, state: GradNormGuardState):
        for g in self.target_groups(hparams, self.hyperparam):
            write(hparams, [g], self.hyperparam, hparams[g][self.hyperparam] * state.scale)
        return hparams, state

    def observe(self, ctx: StepContext, obs: Observation,
                state: GradNormGuardState) -> GradNormGuardState:
        norm = jnp.asarray(obs.grad_norm, jnp.float32)
        seen = state.count.astype(jnp.float32)
        average = state.ema / jnp.maximum(1 - jnp.float32(self.beta) ** seen, 1e-30)
        judged = state.count >= self.warmup_steps
        spike = ~jnp.isfinite(norm) | (judged & (norm > self.threshold * average))
        calm = ~spike
        recover = math.exp(-math.log(self.factor) / self.recovery_steps)
        return GradNormGuardState(
            ema=jnp.where(calm, self.beta * state.ema + (1 - self.beta) * norm, state.ema),
            count=state.count + calm.astype(jnp.int32),
            scale=jnp.where(spike, jnp.maximum(state.scale * self.factor, self.min_scale),
                            jnp.minimum(state.scale * recover, 1.0)).astype(jnp.float32),
            num_spikes=state.num_spikes + spike.astype(jnp.int32))

    def __repr__(self) -> str:
        return f"GradNormGuard(threshold={self.threshold}, factor={self.factor})"
