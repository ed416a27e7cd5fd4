"""CosineRestarts: SGDR, cosine annealing with warm restarts."""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from flax_lr_callbacks import schedules
from flax_lr_callbacks.callbacks.clocks import UNITS, clock, write
from flax_lr_callbacks.callbacks.peak import PeakFromFinder
from flax_lr_callbacks.validation import check_names, check_choice, check_number
from flax_lr_callbacks.callbacks.base import Callback, RunPlan, StepContext
from flax_lr_callbacks.hyperparams import Hyperparams

__all__ = ["CosineRestarts", "RestartsState"]


class RestartsState(NamedTuple):
    base_lr: jax.Array  # NaN: use the optimizer's injected value
    t_0: jax.Array
    t_mult: jax.Array
    eta_min: jax.Array
    peak_decay: jax.Array
    max_cycles: jax.Array  # inf: unlimited
    warmup_steps: jax.Array


class CosineRestarts(PeakFromFinder, Callback):
    """Cosine annealing from a peak to `eta_min`, restarting every cycle (SGDR).

    Cycle n lasts ``t_0 * t_mult**n`` and starts at ``base_lr * peak_decay**n``:
    ``lr = eta_min + (peak_n - eta_min) * (1 + cos(pi * t_cur / t_n)) / 2``.

    * PyTorch `CosineAnnealingWarmRestarts(T_0, T_mult, eta_min)`: integer `t_mult`,
      ``peak_decay=1``; identical values at every step (or epoch, with ``unit="epoch"``).
    * timm `CosineLRScheduler(t_initial, cycle_mul, cycle_decay, cycle_limit, lr_min)`: float
      `t_mult`, ``peak_decay=cycle_decay``, ``max_cycles=cycle_limit`` (afterwards the LR
      stays at `eta_min`); identical values.
    * Keras `CosineDecayRestarts(first_decay_steps, t_mul, m_mul, alpha)`: identical with
      ``alpha=0`` (``peak_decay=m_mul``). With ``alpha > 0`` Keras decays the height above the
      floor, ``(1 - alpha) * m_mul**n``, where we (and timm) decay the peak itself; Keras'
      alpha is a fraction of the initial LR (``eta_min = alpha * base_lr``).

    `warmup_steps` (in `unit`s) puts a linear warmup from 0 to the first peak in front; the
    restarts begin after it (timm instead overlaps warmup with the first cycle).

    Args:
      t_0: length of the first cycle, >= 1 (in `unit`s).
      t_mult: cycle length multiplier, >= 1 (float allowed). Default 1.
      eta_min: floor LR, >= 0. Default 0.
      peak_decay: peak multiplier per restart, in (0, 1]. Default 1.
      max_cycles: stop restarting after this many cycles (>= 1), or None.
      warmup_steps: linear warmup length in front, >= 0. Default 0.
      base_lr: first peak; None uses the optimizer's injected learning rate (or a preceding
        `LRFinder`'s suggestion).
      unit: ``"step"`` (default) or ``"epoch"``.
      groups: optimizer groups to drive (default: all).

    Example:
      >>> cb = CosineRestarts(t_0=4, t_mult=2, base_lr=1.0)
      >>> [round(float(v), 3) for v in cb.curve(6)["learning_rate"]]
      [1.0, 0.854, 0.5, 0.146, 1.0, 0.962]

    References:
      Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", ICLR 2017.
    """

    peak_arg = "base_lr"
    peak_required = False

    def __init__(
        self,
        t_0: int,
        t_mult: float = 1.0,
        eta_min: float = 0.0,
        peak_decay: float = 1.0,
        max_cycles: int | None = None,
        warmup_steps: int = 0,
        *,
        base_lr: float | None = None,
        unit: Literal["step", "epoch"] = "step",
        groups: tuple[str, ...] | None = None,
    ):
        t_0 = check_number("t_0", t_0, low=1, integer=True)
        t_mult = check_number("t_mult", t_mult, low=1)
        eta_min = check_number("eta_min", eta_min, low=0)
        peak_decay = check_number("peak_decay", peak_decay, low=0, high=1, low_open=True)
        max_cycles = check_number("max_cycles", max_cycles, low=1, integer=True, allow_none=True)
        warmup_steps = check_number("warmup_steps", warmup_steps, low=0, integer=True)
        base_lr = check_number("base_lr", base_lr, low=eta_min, low_open=True, allow_none=True)
        check_choice("unit", unit, UNITS)
        self.t_0, self.t_mult, self.eta_min = t_0, t_mult, eta_min
        self.peak_decay, self.max_cycles, self.warmup_steps = peak_decay, max_cycles, warmup_steps
        self.base_lr = base_lr
        self.unit = unit
        self.groups = check_names("groups", groups)
        self.sets = ("learning_rate",)

    def init_state(self, plan: RunPlan, hparams: Hyperparams) -> RestartsState:
        peak = self.peak()
        f32 = jnp.float32
        return RestartsState(
            base_lr=f32(jnp.nan if peak is None else peak), t_0=f32(self.t_0),
            t_mult=f32(self.t_mult), eta_min=f32(self.eta_min), peak_decay=f32(self.peak_decay),
            max_cycles=f32(jnp.inf if self.max_cycles is None else self.max_cycles),
            warmup_steps=f32(self.warmup_steps))

    def rule(self, ctx: StepContext, hparams: Hyperparams, state: RestartsState):
        count = clock(ctx, self.unit).astype(jnp.float32)
        warm = state.warmup_steps
        for g in self.target_groups(hparams, "learning_rate"):
            peak = jnp.where(jnp.isnan(state.base_lr), hparams[g]["learning_rate"], state.base_lr)
            lr = schedules.cosine_restarts(
                jnp.maximum(count - warm, 0.0), t_0=state.t_0, peak=peak, t_mult=state.t_mult,
                eta_min=state.eta_min, peak_decay=state.peak_decay, max_cycles=state.max_cycles)
            ramp = peak * count / jnp.maximum(warm, 1.0)
            write(hparams, [g], "learning_rate", jnp.where(count < warm, ramp, lr))
        return hparams, state

    def __repr__(self) -> str:
        return f"CosineRestarts(t_0={self.t_0}, t_mult={self.t_mult}, unit={self.unit!r})"
