"""Recipes: the schedules of other systems, as ``step -> value`` functions for `LRSchedule`.

Each function returns a jit-able schedule of the Trainer's 0-based step (or epoch, with
``LRSchedule(..., unit="epoch")``), with the other system's exact numbers.

| system | how to express it |
|---|---|
| every optax schedule | ``LRSchedule(optax.<schedule>(...))`` directly |
| `jax.example_libraries.optimizers` exponential_decay | the identical optax schedule: ``optax.exponential_decay(step_size, decay_steps, decay_rate)`` |
| `jax.example_libraries.optimizers` polynomial_decay | `example_libraries_polynomial` (``optax.polynomial_schedule`` has the same formula but is NaN under jit at and after its last step when ``power < 1``: XLA makes ``count / decay_steps`` slightly above 1; a fit refuses such a plan) |
| `jax.example_libraries` inverse_time_decay (staircase) / piecewise_constant | `example_libraries_inverse_time`, `example_libraries_piecewise_constant` |
| MXNet `FactorScheduler`, `MultiFactorScheduler`, `PolyScheduler`, `CosineScheduler` (warmup linear/constant) | `mxnet_factor`, `mxnet_multifactor`, `mxnet_poly`, `mxnet_cosine` |
| Flax guide's triangular schedule | `flax_triangular` (== `CyclicLR` with equal halves when the cycle length is even) |
| MXNet tutorial's slanted triangular, cosine annealing, linear warm-up / cool-down, one-cycle, cyclical with length and magnitude decay | `mxnet_triangular`, `mxnet_cosine_annealing`, `mxnet_linear_warmup`, `mxnet_linear_cooldown`, `mxnet_one_cycle`, `mxnet_cyclical` |

*Counting.* MXNet calls a scheduler with ``num_update`` starting at 1 for the first update; the
MXNet recipes take our 0-based step ``t`` and evaluate the MXNet formula at ``t + 1``, so the LR
applied at each update is the same. The MXNet tutorial's custom schedules are called with the
1-based iteration index too and are handled the same way (``one_based=True``, the default).
`jax.example_libraries` schedules read the 0-based update count, like ours.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import jax.numpy as jnp

from flax_lr_callbacks import schedules

__all__ = [
    "example_libraries_inverse_time",
    "example_libraries_polynomial",
    "example_libraries_piecewise_constant",
    "flax_triangular",
    "mxnet_factor",
    "mxnet_multifactor",
    "mxnet_poly",
    "mxnet_cosine",
    "mxnet_triangular",
    "mxnet_cosine_annealing",
    "mxnet_linear_warmup",
    "mxnet_linear_cooldown",
    "mxnet_one_cycle",
    "mxnet_cyclical",
]

Schedule = Callable[[jnp.ndarray], jnp.ndarray]


def _f(x):
    return jnp.asarray(x, jnp.float32)


# ----------------------------------------------------------------------- jax.example_libraries
def example_libraries_inverse_time(step_size: float, decay_steps: float, decay_rate: float,
                                   staircase: bool = False) -> Schedule:
    """`optimizers.inverse_time_decay`: ``step_size / (1 + decay_rate * t / decay_steps)``."""
    return lambda t: schedules.inverse_time_decay(
        t, init_value=step_size, decay_steps=decay_steps, decay_rate=decay_rate,
        staircase=staircase)


def example_libraries_polynomial(step_size: float, decay_steps: int, final_step_size: float,
                                 power: float = 1.0) -> Schedule:
    """`optimizers.polynomial_decay`: ``(step_size - final) * (1 - t / decay_steps) ** power
    + final`` for ``t <= decay_steps``, then ``final``. The base is clipped to [0, 1], so the
    value stays finite for any `power` (see the module table on optax's version)."""
    def schedule(t):
        frac = jnp.clip(1.0 - _f(t) / decay_steps, 0.0, 1.0)
        return (step_size - final_step_size) * frac ** power + final_step_size

    return schedule


def example_libraries_piecewise_constant(boundaries: Sequence[float],
                                         values: Sequence[float]) -> Schedule:
    """`optimizers.piecewise_constant`: ``values[#boundaries < t]`` (changes at boundary + 1)."""
    return lambda t: schedules.piecewise_constant(t, boundaries, values)


# ----------------------------------------------------------------------------------- Flax
def flax_triangular(lr_min: float, lr_max: float, steps_per_cycle: int) -> Schedule:
    """The Flax guide's triangular cycle: up for ``top = (n + 1) // 2`` steps, then down."""
    top = (steps_per_cycle + 1) // 2

    def schedule(t):
        c = _f(jnp.asarray(t) % steps_per_cycle)
        up = lr_min + c / top * (lr_max - lr_min)
        down = lr_max - (c - top) / top * (lr_max - lr_min)
        return jnp.where(c < top, up, down)

    return schedule


# ----------------------------------------------------------------------------- MXNet
def _n(t, one_based: bool):
    return _f(t) + (1.0 if one_based else 0.0)


def _mxnet_warmup(n, base_lr, warmup_steps, warmup_begin_lr, warmup_mode):
    if warmup_mode == "linear":
        return warmup_begin_lr + (base_lr - warmup_begin_lr) * n / max(warmup_steps, 1)
    return jnp.full_like(n, warmup_begin_lr)


def _with_warmup(rule, base_lr, warmup_steps, warmup_begin_lr, warmup_mode, one_based):
    if warmup_mode not in ("linear", "constant"):
        raise ValueError(f"warmup_mode must be one of ['linear', 'constant'], got {warmup_mode=}")

    def schedule(t):
        n = _n(t, one_based)
        warm = _mxnet_warmup(n, base_lr, warmup_steps, warmup_begin_lr, warmup_mode)
        return jnp.where(n < warmup_steps, warm, rule(n))

    return schedule


def mxnet_factor(base_lr: float, step: int, factor: float = 1.0, stop_factor_lr: float = 1e-8,
                 warmup_steps: int = 0, warmup_begin_lr: float = 0.0,
                 warmup_mode: Literal["linear", "constant"] = "linear",
                 one_based: bool = True) -> Schedule:
    """`mx.lr_scheduler.FactorScheduler`: ``max(base * factor**floor((n-1)/step), stop)``."""
    return _with_warmup(
        lambda n: jnp.maximum(base_lr * factor ** jnp.floor((n - 1.0) / step), stop_factor_lr),
        base_lr, warmup_steps, warmup_begin_lr, warmup_mode, one_based)


def mxnet_multifactor(base_lr: float, step: Sequence[int], factor: float = 1.0,
                      warmup_steps: int = 0, warmup_begin_lr: float = 0.0,
                      warmup_mode: Literal["linear", "constant"] = "linear",
                      one_based: bool = True) -> Schedule:
    """`MultiFactorScheduler`: ``base * factor**(#steps < n)`` (drops *after* each step)."""
    bounds = jnp.asarray(step, jnp.float32)
    return _with_warmup(
        lambda n: base_lr * factor ** jnp.sum(n[..., None] > bounds, axis=-1).astype(jnp.float32),
        base_lr, warmup_steps, warmup_begin_lr, warmup_mode, one_based)


def _decay_after_warmup(max_update, base_lr, final_lr, warmup_steps, warmup_begin_lr,
                        warmup_mode, one_based, curve):
    """base -> final along ``curve(frac)`` (1 -> 0) over updates warmup..max_update."""
    span = max_update - warmup_steps

    def rule(n):
        frac = jnp.clip((n - warmup_steps) / span, 0.0, 1.0)
        return final_lr + (base_lr - final_lr) * curve(frac)

    return _with_warmup(rule, base_lr, warmup_steps, warmup_begin_lr, warmup_mode, one_based)


def mxnet_poly(max_update: int, base_lr: float = 0.01, pwr: float = 2.0, final_lr: float = 0.0,
               warmup_steps: int = 0, warmup_begin_lr: float = 0.0,
               warmup_mode: Literal["linear", "constant"] = "linear",
               one_based: bool = True) -> Schedule:
    """`PolyScheduler`: ``final + (base - final) * (1 - (n - warmup) / (max - warmup))**pwr``."""
    return _decay_after_warmup(max_update, base_lr, final_lr, warmup_steps, warmup_begin_lr,
                               warmup_mode, one_based, lambda frac: (1.0 - frac) ** pwr)


def mxnet_cosine(max_update: int, base_lr: float = 0.01, final_lr: float = 0.0,
                 warmup_steps: int = 0, warmup_begin_lr: float = 0.0,
                 warmup_mode: Literal["linear", "constant"] = "linear",
                 one_based: bool = True) -> Schedule:
    """`CosineScheduler`: cosine from base to final over ``max_update - warmup`` updates."""
    return _decay_after_warmup(max_update, base_lr, final_lr, warmup_steps, warmup_begin_lr,
                               warmup_mode, one_based,
                               lambda frac: (1.0 + jnp.cos(jnp.pi * frac)) / 2.0)


# ------------------------------------------------------------- MXNet tutorial's custom schedules
def _triangular_at(i, min_lr, max_lr, cycle_length, inc_fraction):
    rise = cycle_length * inc_fraction
    unit = jnp.where(i <= rise, i / rise,
                     jnp.where(i <= cycle_length,
                               (cycle_length - i) / (cycle_length * (1 - inc_fraction)), 0.0))
    return unit * (max_lr - min_lr) + min_lr


def _cosine_at(i, min_lr, max_lr, cycle_length):
    unit = (1.0 + jnp.cos(i * jnp.pi / cycle_length)) / 2.0
    return jnp.where(i <= cycle_length, unit * (max_lr - min_lr) + min_lr, min_lr)


def mxnet_triangular(min_lr: float, max_lr: float, cycle_length: int, inc_fraction: float = 0.5,
                     one_based: bool = True) -> Schedule:
    """Slanted triangle: up for ``inc_fraction`` of the cycle, down after, `min_lr` beyond."""
    return lambda t: _triangular_at(_n(t, one_based), min_lr, max_lr, cycle_length, inc_fraction)


def mxnet_cosine_annealing(min_lr: float, max_lr: float, cycle_length: int,
                           one_based: bool = True) -> Schedule:
    """Cosine from `max_lr` at 0 to `min_lr` at `cycle_length`, `min_lr` beyond."""
    return lambda t: _cosine_at(_n(t, one_based), min_lr, max_lr, cycle_length)


def mxnet_linear_warmup(schedule: Schedule, start_lr: float, length: int,
                        one_based: bool = True) -> Schedule:
    """Linear from `start_lr` to ``schedule(0)`` over `length`, then ``schedule(i - length)``.

    `schedule` is a recipe built with ``one_based=False`` (it receives the shifted index).
    """
    finish = schedule(jnp.float32(0.0))

    def wrapped(t):
        i = _n(t, one_based)
        frac = i / length
        return jnp.where(i <= length, (1.0 - frac) * start_lr + frac * finish,
                         schedule(i - length))

    return wrapped


def mxnet_linear_cooldown(schedule: Schedule, finish_lr: float, start_idx: int, length: int,
                          one_based: bool = True) -> Schedule:
    """``schedule(i)`` until `start_idx`, then linear to `finish_lr` over `length`, then held.

    `schedule` is a recipe built with ``one_based=False`` (it receives the same index).
    """
    start = schedule(jnp.float32(start_idx))

    def wrapped(t):
        i = _n(t, one_based)
        frac = (i - start_idx) / length
        ramp = (1.0 - frac) * start + frac * finish_lr  # lerp: exact at both ends in float32
        return jnp.where(i <= start_idx, schedule(i),
                         jnp.where(i <= start_idx + length, ramp, finish_lr))

    return wrapped


def mxnet_one_cycle(start_lr: float, max_lr: float, cycle_length: int, cooldown_length: int = 0,
                    finish_lr: float | None = None, one_based: bool = True) -> Schedule:
    """The MXNet tutorial's one-cycle: a triangle, then a linear cool-down to `finish_lr`."""
    if (cooldown_length > 0) and (finish_lr is None):
        raise ValueError("finish_lr is required when cooldown_length > 0")
    if (finish_lr is not None) and (cooldown_length == 0):
        raise ValueError("cooldown_length must be > 0 when finish_lr is given")
    tri = mxnet_triangular(start_lr, max_lr, cycle_length, one_based=False)
    finish = start_lr if finish_lr is None else finish_lr
    return mxnet_linear_cooldown(tri, finish, cycle_length, max(cooldown_length, 1), one_based)


def mxnet_cyclical(kind: Literal["triangular", "cosine"], cycle_length: int,
                   cycle_length_decay: float = 1.0, cycle_magnitude_decay: float = 1.0,
                   one_based: bool = True, max_cycles: int = 256, **kwargs: float) -> Schedule:
    """Repeats a triangular or cosine cycle; lengths grow by ``ceil(len * length_decay)`` and
    values scale by ``magnitude_decay**k`` (the whole value, floor included) in cycle k.

    `kwargs` are the cycle's ``min_lr``, ``max_lr`` (and ``inc_fraction`` for triangular).
    """
    if kind not in ("triangular", "cosine"):
        raise ValueError(f"kind must be one of ['triangular', 'cosine'], got {kind=}")
    lengths, starts = [cycle_length], [0]
    while len(lengths) < max_cycles and starts[-1] + lengths[-1] < 2 ** 31:
        starts.append(starts[-1] + lengths[-1])
        lengths.append(math.ceil(lengths[-1] * cycle_length_decay))
    starts_a = jnp.asarray(starts, jnp.float32)
    lengths_a = jnp.asarray(lengths, jnp.float32)

    def schedule(t):
        i = _n(t, one_based)
        k = jnp.sum(starts_a <= i) - 1
        offset, length = i - starts_a[k], lengths_a[k]
        if kind == "triangular":
            v = _triangular_at(offset, kwargs["min_lr"], kwargs["max_lr"], length,
                               kwargs.get("inc_fraction", 0.5))
        else:
            v = _cosine_at(offset, kwargs["min_lr"], kwargs["max_lr"], length)
        return v * cycle_magnitude_decay ** k.astype(jnp.float32)

    return schedule
