"""CyclicLR: Smith's cyclical learning rates with PyTorch CyclicLR's numbers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from flax_lr_callbacks import schedules
from flax_lr_callbacks.callbacks.clocks import UNITS, clock, write
from flax_lr_callbacks.callbacks.momentum import MomentumCycling
from flax_lr_callbacks.callbacks.peak import PeakFromFinder
from flax_lr_callbacks.validation import check_bool, check_callable, check_names, check_choice, check_number
from flax_lr_callbacks.callbacks.base import Callback, RunPlan, StepContext
from flax_lr_callbacks.hyperparams import Hyperparams

__all__ = ["CyclicLR", "CyclicState"]

MODES = ("triangular", "triangular2", "exp_range")


class CyclicState(NamedTuple):
    base_lr: jax.Array
    max_lr: jax.Array
    step_size_up: jax.Array
    step_size_down: jax.Array
    gamma: jax.Array
    base_momentum: jax.Array
    max_momentum: jax.Array


class CyclicLR(MomentumCycling, PeakFromFinder, Callback):
    """Cycles the LR between `base_lr` and `max_lr` (and momentum the opposite way).

    Each cycle rises linearly for `step_size_up` steps and falls for `step_size_down`. The
    amplitude is constant (``"triangular"``), halves every cycle (``"triangular2"``), decays as
    ``gamma**step`` (``"exp_range"``), or follows a custom `scale_fn`. Values equal PyTorch's
    `CyclicLR` at every step; see `schedules.cyclic` for the formula.

    Differences from PyTorch: ``max_lr=None`` waits for an `LRFinder`; momentum is written to
    ``momentum`` or ``b1`` (PyTorch's ``use_beta1``), per group; `scale_fn` must be jit-able.

    Args:
      base_lr: lower bound (>= 0).
      max_lr: upper bound (> base_lr), or None to take it from a preceding `LRFinder`.
      step_size_up: steps (>= 1) of the rising half. Default 2000.
      step_size_down: steps (>= 1) of the falling half; default `step_size_up`.
      mode: ``"triangular"`` (default), ``"triangular2"`` or ``"exp_range"``.
      gamma: ``exp_range`` decay per step, in (0, 1]. Default 1.0.
      scale_fn: optional jit-able amplitude ``f(x) -> [0, 1]``; overrides `mode`.
      scale_mode: ``"cycle"`` (x = cycle number, from 1) or ``"iterations"`` (x = step).
      cycle_momentum: also cycle momentum / ``b1``. Default True.
      base_momentum: momentum at the LR peak, in [0, max_momentum]. Default 0.8.
      max_momentum: momentum at the LR floor, in [base_momentum, 1). Default 0.9.
      unit: ``"step"`` (default) or ``"epoch"``.
      groups: optimizer groups to drive (default: all).

    Example:
      >>> cb = CyclicLR(0.001, 0.01, step_size_up=4, cycle_momentum=False)
      >>> [round(float(v), 4) for v in cb.curve(9)["learning_rate"]]
      [0.001, 0.0033, 0.0055, 0.0077, 0.01, 0.0077, 0.0055, 0.0033, 0.001]

    References:
      Smith, "Cyclical Learning Rates for Training Neural Networks", 2015 (arXiv:1506.01186).
    """

    def __init__(
        self,
        base_lr: float,
        max_lr: float | None,
        step_size_up: int = 2000,
        step_size_down: int | None = None,
        mode: Literal["triangular", "triangular2", "exp_range"] = "triangular",
        gamma: float = 1.0,
        scale_fn: Callable[[jax.Array], jax.Array] | None = None,
        scale_mode: Literal["cycle", "iterations"] = "cycle",
        cycle_momentum: bool = True,
        base_momentum: float = 0.8,
        max_momentum: float = 0.9,
        *,
        unit: Literal["step", "epoch"] = "step",
        groups: tuple[str, ...] | None = None,
    ):
        base_lr = check_number("base_lr", base_lr, low=0)
        max_lr = check_number("max_lr", max_lr, low=base_lr, low_open=True, allow_none=True)
        step_size_up = check_number("step_size_up", step_size_up, low=1, integer=True)
        step_size_down = check_number("step_size_down", step_size_down, low=1, integer=True, allow_none=True)
        check_choice("mode", mode, MODES)
        gamma = check_number("gamma", gamma, low=0, high=1, low_open=True)
        if scale_fn is not None and not callable(scale_fn):
            raise TypeError(f"scale_fn must be callable, got {scale_fn!r}")
        check_choice("scale_mode", scale_mode, ("cycle", "iterations"))
        max_momentum = check_number("max_momentum", max_momentum, low=0, high=1, high_open=True)
        base_momentum = check_number("base_momentum", base_momentum, low=0, high=max_momentum)
        check_choice("unit", unit, UNITS)
        self.base_lr, self.max_lr = base_lr, max_lr
        self.step_size_up = step_size_up
        self.step_size_down = step_size_down if step_size_down is not None else step_size_up
        self.mode, self.gamma = mode, gamma
        self.scale_fn = check_callable("scale_fn", scale_fn, allow_none=True)
        self.scale_mode = scale_mode
        self.cycle_momentum = check_bool("cycle_momentum", cycle_momentum)
        self.base_momentum, self.max_momentum = base_momentum, max_momentum
        self.unit = unit
        self.groups = check_names("groups", groups)
        self.sets = ("learning_rate",)

    def init_state(self, plan: RunPlan, hparams: Hyperparams) -> CyclicState:
        peak = self.peak()
        f32 = jnp.float32
        return CyclicState(
            base_lr=f32(self.base_lr), max_lr=f32(jnp.nan if peak is None else peak),
            step_size_up=f32(self.step_size_up), step_size_down=f32(self.step_size_down),
            gamma=f32(self.gamma), base_momentum=f32(self.base_momentum),
            max_momentum=f32(self.max_momentum))

    def check_peak(self, value: float) -> None:
        check_number("max_lr", value, low=self.base_lr, low_open=True)

    def rule(self, ctx: StepContext, hparams: Hyperparams, state: CyclicState):
        h = schedules.cyclic(
            clock(ctx, self.unit), step_size_up=state.step_size_up,
            step_size_down=state.step_size_down, mode=self.mode, gamma=state.gamma,
            scale_fn=self.scale_fn, scale_mode=self.scale_mode)
        lr = state.base_lr + (state.max_lr - state.base_lr) * h
        write(hparams, self.target_groups(hparams, "learning_rate"), "learning_rate", lr)
        momentum = state.max_momentum - (state.max_momentum - state.base_momentum) * h
        self.write_momentum(hparams, momentum)
        return hparams, state

    def __repr__(self) -> str:
        return f"CyclicLR(base_lr={self.base_lr}, max_lr={self.max_lr}, mode={self.mode!r})"
