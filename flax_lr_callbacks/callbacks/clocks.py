"""Clocks of the schedule callbacks: which count a schedule reads, and writing its value."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from flax_lr_callbacks.contract import StepContext
from flax_lr_callbacks.hyperparams import Hyperparams

__all__ = ["UNITS", "clock", "horizon", "shift_context", "to_steps", "write"]

UNITS = ("step", "epoch")


def clock(ctx: StepContext, unit: str) -> jax.Array:
    """The count a schedule reads: the step, or the epoch for ``unit='epoch'``."""
    return ctx.step if unit == "step" else ctx.epoch


def horizon(total_steps: int, steps_per_epoch: int, unit: str) -> int:
    """Planned length of a run in `unit`s."""
    return total_steps if unit == "step" else -(-total_steps // steps_per_epoch)


def to_steps(value: Any, ctx: StepContext, unit: str) -> jax.Array:
    """A count in `unit`s as steps (epochs times steps per epoch)."""
    value = jnp.asarray(value, jnp.int32)
    return value if unit == "step" else value * ctx.steps_per_epoch


def shift_context(ctx: StepContext, offset: jax.Array, length: jax.Array) -> StepContext:
    """The context a child schedule sees when it starts `offset` steps in, for `length` steps."""
    step = jnp.maximum(ctx.step - offset, 0)
    return StepContext(step=step, epoch=step // ctx.steps_per_epoch,
                       steps_per_epoch=ctx.steps_per_epoch, total_steps=length)


def write(hparams: Hyperparams, groups: Sequence[str], name: str, value: Any) -> Hyperparams:
    """Sets ``hparams[g][name] = value`` (float32) for each group in `groups`."""
    value = jnp.asarray(value, jnp.float32)
    for g in groups:
        hparams[g][name] = value
    return hparams
