"""Warmup and Sequential: schedules built from other schedule callbacks, all in-graph."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from flax_lr_callbacks.callbacks.clocks import UNITS, clock, shift_context, to_steps, write
from flax_lr_callbacks.validation import check_choice, check_number, check_str
from flax_lr_callbacks.callbacks.base import HOST_HOOKS, Callback, RunPlan, StepContext
from flax_lr_callbacks.hyperparams import Hyperparams

__all__ = ["Composite", "Warmup", "Sequential"]

class Composite(Callback):
    """A callback made of child schedule callbacks.

    Its device state has a `children` field with the children's states, so a child's state
    can be written through the Trainer (`update_callback_state` finds nested children). Host
    hooks, `configure`, `set_peak` and `state_dict` go to every child.
    """

    children: tuple[Callback, ...] = ()

    @property
    def has_observe(self) -> bool:
        return any(c.has_observe for c in self.children)

    @property
    def observes(self) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(dict.fromkeys(n for c in self.children for n in c.observes))

    def observe(self, ctx: StepContext, obs: Any, state: Any) -> Any:
        """Runs the children's `observe` faces on their states (with the outer clock)."""
        children = tuple(c.observe(ctx, obs, s) if c.has_observe else s
                         for c, s in zip(self.children, state.children))
        return state._replace(children=children)

    def configure(self, hparams: Hyperparams) -> None:
        for child in self.children:
            child.configure(hparams)
        names = []
        for child in self.children:
            names += [n for n in child.sets if n not in names]
        self.sets = tuple(names)

    def target_groups(self, hparams: Hyperparams, name: str) -> list[str]:
        groups: list[str] = []
        for child in self.children:
            if name in child.sets:
                groups += [g for g in child.target_groups(hparams, name) if g not in groups]
        return groups

    def set_peak(self, trainer: Any, value: float) -> None:
        """Forwards an LR finder's suggestion to every child that schedules the learning rate
        and takes a peak (a momentum or weight-decay child keeps its values)."""
        from flax_lr_callbacks.callbacks.peak import takes_lr_peak

        takers = [c for c in self.children if takes_lr_peak(c)]
        if not takers:
            raise TypeError(f"no schedule inside {self!r} takes a peak learning rate")
        for child in takers:
            child.set_peak(trainer, value)

    def state_dict(self) -> dict[str, Any]:
        return {str(i): c.state_dict() for i, c in enumerate(self.children)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for i, c in enumerate(self.children):
            c.load_state_dict(state_dict.get(str(i), {}))


def _forward(hook: str):
    def method(self, trainer, state, *args):
        for child in self.children:
            getattr(child, hook)(trainer, state, *args)
    method.__name__ = hook
    method.__doc__ = f"Calls every child's `{hook}`."
    return method


# Generated from the base class's list, so a new hook cannot be forgotten here.
for _hook in HOST_HOOKS:
    setattr(Composite, _hook, _forward(_hook))


class WarmupState(NamedTuple):
    children: tuple
    warmup_steps: jax.Array
    start_value: jax.Array


class Warmup(Composite):
    """Linear warmup in front of any schedule callback.

    For ``count < warmup_steps`` the LR goes linearly from `start_value` to the wrapped
    schedule's first value; afterwards the wrapped schedule runs from its own step 0 (its
    `total_steps=None` means the run minus the warmup). Like optax's
    `warmup_cosine_decay_schedule` and MXNet's ``LinearWarmUp``; other hyperparameters the
    wrapped schedule sets (momentum) are shifted in time but not warmed.

    Args:
      schedule: the callback to put the warmup in front of.
      warmup_steps: warmup length in `unit`s (>= 1).
      start_value: LR at step 0 (>= 0). Default 0.
      unit: ``"step"`` (default) or ``"epoch"``.
      hyperparam: what to warm up. Default ``"learning_rate"``.

    Example:
      >>> from flax_lr_callbacks import CosineRestarts
      >>> cb = Warmup(CosineRestarts(t_0=10, base_lr=0.1), warmup_steps=5)
      >>> [round(float(v), 3) for v in cb.curve(7)["learning_rate"]]
      [0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.098]
    """

    def __init__(self, schedule: Callback, warmup_steps: int, start_value: float = 0.0, *,
                 unit: Literal["step", "epoch"] = "step", hyperparam: str = "learning_rate"):
        if not isinstance(schedule, Callback) or not schedule.has_rule:
            raise TypeError(f"schedule must be a schedule callback, got {schedule!r}")
        warmup_steps = check_number("warmup_steps", warmup_steps, low=1, integer=True)
        start_value = check_number("start_value", start_value, low=0)
        check_choice("unit", unit, UNITS)
        self.children = (schedule,)
        self.warmup_steps, self.start_value = warmup_steps, start_value
        self.unit, self.hyperparam = unit, check_str("hyperparam", hyperparam)
        self.sets = tuple(schedule.sets)
        self.groups = schedule.groups

    def configure(self, hparams: Hyperparams) -> None:
        super().configure(hparams)
        if not any(self.hyperparam in names for names in hparams.values()):
            available = sorted({n for names in hparams.values() for n in names})
            raise ValueError(
                f"Warmup(hyperparam={self.hyperparam!r}): the optimizer injects no such "
                f"hyperparameter; it injects {available}")

    def init_state(self, plan: RunPlan, hparams: Hyperparams) -> WarmupState:
        warm = self.warmup_steps * (1 if self.unit == "step" else plan.steps_per_epoch)
        inner = RunPlan(plan.steps_per_epoch, max(plan.total_steps - warm, 1))
        return WarmupState(children=(self.children[0].init_state(inner, hparams),),
                           warmup_steps=jnp.float32(self.warmup_steps),
                           start_value=jnp.float32(self.start_value))

    def rule(self, ctx: StepContext, hparams: Hyperparams, state: WarmupState):
        warm_steps = to_steps(state.warmup_steps, ctx, self.unit)
        inner_ctx = shift_context(ctx, warm_steps, ctx.total_steps - warm_steps)
        inner_hp = {g: dict(v) for g, v in hparams.items()}
        inner_hp, inner_state = self.children[0].rule(inner_ctx, inner_hp, state.children[0])
        count = clock(ctx, self.unit).astype(jnp.float32)
        frac = count / state.warmup_steps
        for g in self.target_groups(inner_hp, self.hyperparam):
            target = inner_hp[g][self.hyperparam]
            ramp = state.start_value + (target - state.start_value) * frac
            write(inner_hp, [g], self.hyperparam,
                  jnp.where(count < state.warmup_steps, ramp, target))
        return inner_hp, state._replace(children=(inner_state,))

    def __repr__(self) -> str:
        return f"Warmup({self.children[0]!r}, warmup_steps={self.warmup_steps})"


class SequentialState(NamedTuple):
    children: tuple
    boundaries: jax.Array


class Sequential(Composite):
    """Runs schedule callbacks one after another, like optax's `join_schedules`.

    Callback i runs from ``boundaries[i-1]`` (0 for the first) with its own clock restarted at
    0, and a `total_steps=None` inside it means its segment's length. Boundaries are device
    state, so they can be moved without recompiling.

    Args:
      schedules: two or more schedule callbacks.
      boundaries: ``len(schedules) - 1`` strictly increasing starts, in `unit`s (>= 1).
      unit: ``"step"`` (default) or ``"epoch"``.

    Example:
      >>> from flax_lr_callbacks import LRSchedule
      >>> import optax
      >>> cb = Sequential([LRSchedule(optax.constant_schedule(0.1)),
      ...                  LRSchedule(optax.linear_schedule(0.1, 0.0, 4))], boundaries=[2])
      >>> [round(float(v), 3) for v in cb.curve(6)["learning_rate"]]
      [0.1, 0.1, 0.1, 0.075, 0.05, 0.025]
    """

    def __init__(self, schedules: Sequence[Callback], boundaries: Sequence[int], *,
                 unit: Literal["step", "epoch"] = "step"):
        schedules = tuple(schedules)
        if len(schedules) < 2:
            raise ValueError(f"schedules needs at least 2 callbacks, got {len(schedules)}")
        for s in schedules:
            if not isinstance(s, Callback) or not s.has_rule:
                raise TypeError(f"schedules must be schedule callbacks, got {s!r}")
        boundaries = list(boundaries)
        if len(boundaries) != len(schedules) - 1:
            raise ValueError(f"boundaries needs len(schedules) - 1 = {len(schedules) - 1} "
                             f"entries, got boundaries={boundaries}")
        for b in boundaries:
            check_number("boundaries[i]", b, low=1, integer=True)
        if any(b >= c for b, c in zip(boundaries, boundaries[1:])):
            raise ValueError(f"boundaries must be strictly increasing, got {boundaries=}")
        check_choice("unit", unit, UNITS)
        self.children = schedules
        self.boundaries = boundaries
        self.unit = unit
        self.sets = tuple(dict.fromkeys(n for s in schedules for n in s.sets))

    def init_state(self, plan: RunPlan, hparams: Hyperparams) -> SequentialState:
        per = 1 if self.unit == "step" else plan.steps_per_epoch
        starts = [0] + [b * per for b in self.boundaries]
        ends = starts[1:] + [max(plan.total_steps, starts[-1] + 1)]
        states = tuple(c.init_state(RunPlan(plan.steps_per_epoch, e - s), hparams)
                       for c, s, e in zip(self.children, starts, ends))
        return SequentialState(children=states,
                               boundaries=jnp.asarray(self.boundaries, jnp.int32))

    def rule(self, ctx: StepContext, hparams: Hyperparams, state: SequentialState):
        starts = [jnp.int32(0)] + [to_steps(b, ctx, self.unit) for b in state.boundaries]
        ends = starts[1:] + [ctx.total_steps]
        outputs, new_states = [], []
        for child, child_state, start, end in zip(self.children, state.children, starts, ends):
            child_hp = {g: dict(v) for g, v in hparams.items()}
            child_hp, child_state = child.rule(shift_context(ctx, start, end - start),
                                               child_hp, child_state)
            outputs.append(child_hp)
            new_states.append(child_state)
        result = outputs[0]
        for start, out in zip(starts[1:], outputs[1:]):
            result = jax.tree_util.tree_map(
                lambda new, old: jnp.where(ctx.step >= start, new, old), out, result)
        return result, state._replace(children=tuple(new_states))

    def __repr__(self) -> str:
        return f"Sequential({list(self.children)!r}, boundaries={self.boundaries})"
