"""Checks a run's planned hyperparameters once, host side, before the first train step.

`rule_values` runs the callbacks' rules over every planned step in one compiled scan (also
what `preview` draws); `check_plan` refuses a plan with non-finite, negative or absurd values.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from flax_lr_callbacks.callbacks.peak import waiting_for_peak
from flax_lr_callbacks.contract import RunPlan, StepContext
from flax_lr_callbacks.rules import apply_rules

if TYPE_CHECKING:
    from flax_lr_callbacks.callbacks.base import Callback

__all__ = ["LIMITS", "check_plan", "rule_values"]


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def rule_values(callbacks: tuple, base: Any, states: tuple, total_steps: int,
                steps_per_epoch: int) -> Any:
    """The rules' values at steps ``0..total_steps-1`` (one compile per callback list and
    plan: a second fit with the same callbacks reuses it)."""
    def body(states, step):
        ctx = StepContext(step=step, epoch=step // steps_per_epoch,
                          steps_per_epoch=jnp.int32(steps_per_epoch),
                          total_steps=jnp.int32(total_steps))
        values, states = apply_rules(callbacks, ctx, base, states)
        return states, values

    return jax.lax.scan(body, states, jnp.arange(total_steps, dtype=jnp.int32))[1]


# Checked over the plan at fit start (`check_plan`): non-finite or negative values are always
# wrong, and these bounds are far past any working value.
LIMITS = {"learning_rate": 1e3, "momentum": 1.0, "b1": 1.0, "b2": 1.0}


def check_plan(callbacks: Sequence[Callback], base: Any, states: tuple, plan: RunPlan) -> None:
    """Raises ValueError at the first planned step whose value of a scheduled hyperparameter
    is non-finite, negative or past `LIMITS`, naming the callbacks that set it.

    Runs the rules once over the whole plan, host side, before the first train step (plateau
    and other host decisions only scale the planned values down, so they cannot make a good
    plan bad). Callbacks still waiting for an LR finder are checked once it sets their peak.
    """
    if not plan.total_steps or waiting_for_peak(callbacks):
        return
    values = jax.device_get(rule_values(tuple(callbacks), base, states, plan.total_steps,
                                        plan.steps_per_epoch))
    for group, names in values.items():
        for name, series in names.items():
            series = np.asarray(series, np.float64)
            limit = LIMITS.get(name, np.inf)
            bad = ~np.isfinite(series) | (series < 0) | (series > limit)
            if not bad.any():
                continue
            step = int(np.argmax(bad))
            setters = [repr(c) for c in callbacks if name in getattr(c, "sets", ())]
            allowed = f"finite, >= 0 and <= {limit:g}" if np.isfinite(limit) else \
                "finite and >= 0"
            raise ValueError(
                f"{' and '.join(setters) or 'the callbacks'} plan {name}={float(series[step])!r} "
                f"for group {group!r} at step {step} (epoch {step // plan.steps_per_epoch}) "
                f"of this run's {plan.total_steps}; planned values must be {allowed}. Check "
                "the schedule (preview() draws it); an optax schedule evaluated past its "
                "end can give NaN (e.g. polynomial_schedule with a power below 1)")
