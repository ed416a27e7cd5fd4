"""OneCycle: Smith & Topin's 1cycle policy with PyTorch OneCycleLR's numbers."""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp

from flax_lr_callbacks import schedules
from flax_lr_callbacks.callbacks.clocks import UNITS, clock, horizon, write
from flax_lr_callbacks.callbacks.momentum import MomentumCycling
from flax_lr_callbacks.callbacks.peak import PeakFromFinder
from flax_lr_callbacks.validation import check_bool, check_names, check_choice, check_number
from flax_lr_callbacks.callbacks.base import Callback, RunPlan, StepContext
from flax_lr_callbacks.hyperparams import Hyperparams

__all__ = ["OneCycle", "OneCycleState"]


class OneCycleState(NamedTuple):
    """Every number of the cycle, on device, so it can change without a retrace."""

    max_lr: jax.Array
    total_steps: jax.Array
    pct_start: jax.Array
    div_factor: jax.Array
    final_div_factor: jax.Array
    base_momentum: jax.Array
    max_momentum: jax.Array


class OneCycle(MomentumCycling, PeakFromFinder, Callback):
    """The 1cycle policy: warm up to `max_lr`, then anneal far below the start.

    Values equal PyTorch's `OneCycleLR` at every step (see `schedules.one_cycle` for the
    phases): it starts at ``max_lr / div_factor``, peaks at step ``pct_start * total - 1`` and
    ends at ``max_lr / div_factor / final_div_factor`` on step ``total - 1``. With
    `cycle_momentum`, momentum moves inversely between `max_momentum` and `base_momentum`; it
    is written to ``momentum`` (SGD-style optimizers) or ``b1`` (Adam family), per group.

    Differences from PyTorch: steps beyond `total_steps` hold the final value instead of
    raising; a `total_steps` shorter than the planned fit is refused at fit start (and by
    `preview`) instead of failing mid-training; ``total_steps=None`` takes the fit's planned
    steps (epochs with ``unit="epoch"``); ``max_lr=None`` waits for an `LRFinder` to set it.

    Args:
      max_lr: peak learning rate (> 0), or None to take it from a preceding `LRFinder`.
      total_steps: cycle length (>= 2) in `unit`s; None uses the planned fit.
      pct_start: fraction of the cycle spent rising, in (0, 1). Default 0.3.
      anneal_strategy: ``"cos"`` (default) or ``"linear"``.
      div_factor: ``initial_lr = max_lr / div_factor`` (> 0). Default 25.
      final_div_factor: ``min_lr = initial_lr / final_div_factor`` (> 0). Default 1e4.
      three_phase: use a third phase to anneal from the initial to the minimum LR.
      cycle_momentum: also cycle momentum / ``b1``. Default True.
      base_momentum: momentum at the LR peak, in [0, max_momentum]. Default 0.85.
      max_momentum: momentum at the start and end, in [base_momentum, 1). Default 0.95.
      unit: ``"step"`` (default) or ``"epoch"``.
      groups: optimizer groups to drive (default: all).

    Example:
      >>> cb = OneCycle(max_lr=0.1, pct_start=0.25)
      >>> lr = cb.curve(100)["learning_rate"]
      >>> round(float(lr[0]), 6), round(float(lr.max()), 6)
      (0.004, 0.1)

    References:
      Smith & Topin, "Super-Convergence: Very Fast Training of Neural Networks Using Large
      Learning Rates", 2017 (arXiv:1708.07120).
    """

    def __init__(
        self,
        max_lr: float | None,
        total_steps: int | None = None,
        pct_start: float = 0.3,
        anneal_strategy: Literal["cos", "linear"] = "cos",
        div_factor: float = 25.0,
        final_div_factor: float = 1e4,
        three_phase: bool = False,
        cycle_momentum: bool = True,
        base_momentum: float = 0.85,
        max_momentum: float = 0.95,
        *,
        unit: Literal["step", "epoch"] = "step",
        groups: tuple[str, ...] | None = None,
    ):
        max_lr = check_number("max_lr", max_lr, low=0, low_open=True, allow_none=True)
        total_steps = check_number("total_steps", total_steps, low=2, integer=True, allow_none=True)
        pct_start = check_number("pct_start", pct_start, low=0, high=1, low_open=True, high_open=True)
        check_choice("anneal_strategy", anneal_strategy, ("cos", "linear"))
        div_factor = check_number("div_factor", div_factor, low=0, low_open=True)
        final_div_factor = check_number("final_div_factor", final_div_factor, low=0, low_open=True)
        max_momentum = check_number("max_momentum", max_momentum, low=0, high=1, high_open=True)
        base_momentum = check_number("base_momentum", base_momentum, low=0, high=max_momentum)
        check_choice("unit", unit, UNITS)
        self.max_lr = max_lr
        self.total_steps = total_steps
        self.pct_start = pct_start
        self.anneal_strategy = anneal_strategy
        self.div_factor = div_factor
        self.final_div_factor = final_div_factor
        self.three_phase = check_bool("three_phase", three_phase)
        self.cycle_momentum = check_bool("cycle_momentum", cycle_momentum)
        self.base_momentum = base_momentum
        self.max_momentum = max_momentum
        self.unit = unit
        self.groups = check_names("groups", groups)
        self.sets = ("learning_rate",)

    def init_state(self, plan: RunPlan, hparams: Hyperparams) -> OneCycleState:
        planned = horizon(plan.total_steps, plan.steps_per_epoch, self.unit)
        total = self.total_steps or planned
        if total < planned:
            raise ValueError(
                f"{self!r} has total_steps={total} {self.unit}s but the run plans {planned}; "
                f"the schedule would end early. Pass total_steps=None (use the plan) or "
                f">= {planned}"
            )
        peak = self.peak()
        f32 = jnp.float32
        return OneCycleState(
            max_lr=f32(jnp.nan if peak is None else peak), total_steps=f32(total),
            pct_start=f32(self.pct_start), div_factor=f32(self.div_factor),
            final_div_factor=f32(self.final_div_factor),
            base_momentum=f32(self.base_momentum), max_momentum=f32(self.max_momentum))

    def rule(self, ctx: StepContext, hparams: Hyperparams, state: OneCycleState):
        lr, momentum = schedules.one_cycle(
            clock(ctx, self.unit), total_steps=state.total_steps, max_value=state.max_lr,
            pct_start=state.pct_start, div_factor=state.div_factor,
            final_div_factor=state.final_div_factor, anneal_strategy=self.anneal_strategy,
            three_phase=self.three_phase, momentum=(state.base_momentum, state.max_momentum))
        write(hparams, self.target_groups(hparams, "learning_rate"), "learning_rate", lr)
        self.write_momentum(hparams, momentum)
        return hparams, state

    def __repr__(self) -> str:
        return f"OneCycle(max_lr={self.max_lr}, total_steps={self.total_steps})"
