"""Pure, jit-able schedule formulas that optax does not have.

Every function maps a count (step or epoch, any numeric array) and parameters (floats or traced
arrays) to a value, so parameters can live in device state and change without retracing.
Counts beyond a schedule's end hold its final value (PyTorch raises instead).

References:
  Smith, "Cyclical Learning Rates for Training Neural Networks", 2015 (arXiv:1506.01186).
  Smith & Topin, "Super-Convergence", 2017 (arXiv:1708.07120).
  Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts", 2017.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

__all__ = [
    "anneal",
    "one_cycle",
    "cyclic",
    "cosine_restarts",
    "inverse_time_decay",
    "piecewise_constant",
]

Anneal = Literal["cos", "linear"]


def anneal(start: ArrayLike, end: ArrayLike, pct: ArrayLike, strategy: Anneal = "cos"):
    """Moves from `start` to `end` as `pct` goes 0 -> 1 (cosine or linear)."""
    if strategy == "cos":
        return end + (start - end) / 2.0 * (jnp.cos(jnp.pi * pct) + 1.0)
    # Lerp form: exact at both ends in float32 (start + (end - start) * pct is not at pct=1).
    return (1.0 - pct) * start + pct * end


def _phases(count, ends: Sequence, values: Sequence, strategy: Anneal):
    """PyTorch OneCycleLR's phase walk: phase i anneals values[i] -> values[i+1] until ends[i].

    A phase starts where the previous one ended; the first phase whose end is >= count is used
    and the last phase takes every later count (its pct clipped to 1).
    """
    count = jnp.asarray(count, jnp.float32)
    start = jnp.float32(0.0)
    results = []
    for i, end in enumerate(ends):
        span = end - start
        pct = jnp.where(span > 0, (count - start) / jnp.where(span > 0, span, 1.0), 1.0)
        results.append(anneal(values[i], values[i + 1], jnp.clip(pct, 0.0, 1.0), strategy))
        start = end
    out = results[-1]
    for i in reversed(range(len(ends) - 1)):
        out = jnp.where(count <= ends[i], results[i], out)
    return out


def one_cycle(
    count: ArrayLike,
    *,
    total_steps: ArrayLike,
    max_value: ArrayLike,
    pct_start: ArrayLike = 0.3,
    div_factor: ArrayLike = 25.0,
    final_div_factor: ArrayLike = 1e4,
    anneal_strategy: Anneal = "cos",
    three_phase: bool = False,
    momentum: tuple[ArrayLike, ArrayLike] | None = None,
):
    """PyTorch `OneCycleLR` at `count`: the LR, or ``(lr, momentum)`` if `momentum` is given.

    Phases (T = total_steps, p = pct_start, initial = max / div, min = initial / final_div):

    * two-phase: initial -> max until step ``p*T - 1``, then max -> min until ``T - 1``;
    * three-phase: initial -> max until ``p*T - 1``, max -> initial until ``2*p*T - 2``, then
      initial -> min until ``T - 1``.

    Momentum ``(base, max)`` moves the opposite way: max -> base -> max (three-phase: max ->
    base -> max -> max).
    """
    t = jnp.asarray(total_steps, jnp.float32)
    p = jnp.asarray(pct_start, jnp.float32)
    initial = max_value / div_factor
    minimum = initial / final_div_factor
    if three_phase:
        ends = (p * t - 1.0, 2.0 * p * t - 2.0, t - 1.0)
        lr_values = (initial, max_value, initial, minimum)
    else:
        ends = (p * t - 1.0, t - 1.0)
        lr_values = (initial, max_value, minimum)
    lr = _phases(count, ends, lr_values, anneal_strategy)
    if momentum is None:
        return lr
    base_m, max_m = momentum
    m_values = (max_m, base_m, max_m, max_m) if three_phase else (max_m, base_m, max_m)
    return lr, _phases(count, ends, m_values, anneal_strategy)


def cyclic(
    count: ArrayLike,
    *,
    step_size_up: ArrayLike,
    step_size_down: ArrayLike,
    mode: Literal["triangular", "triangular2", "exp_range"] = "triangular",
    gamma: ArrayLike = 1.0,
    scale_fn: Callable[[jax.Array], jax.Array] | None = None,
    scale_mode: Literal["cycle", "iterations"] = "cycle",
):
    """PyTorch `CyclicLR`'s position at `count`: returns ``h`` in [0, 1] (times the amplitude
    scale), so ``lr = base + (max - base) * h`` and ``momentum = max_m - (max_m - base_m) * h``.

    ``cycle = floor(1 + count / (up + down))``, ``x = 1 + count / (up + down) - cycle``; the
    height rises linearly over the first ``up / (up + down)`` of the cycle and falls after.
    Amplitude: triangular 1; triangular2 ``1 / 2**(cycle - 1)``; exp_range ``gamma**count``;
    or a custom `scale_fn` of the cycle number (or of `count` with ``scale_mode="iterations"``).
    """
    count = jnp.asarray(count, jnp.float32)
    total = step_size_up + step_size_down
    ratio = step_size_up / total
    cycle = jnp.floor(1.0 + count / total)
    x = 1.0 + count / total - cycle
    height = jnp.where(x <= ratio, x / ratio, (x - 1.0) / (ratio - 1.0))
    if scale_fn is None:
        if mode == "triangular":
            return height
        if mode == "triangular2":
            return height / 2.0 ** (cycle - 1.0)
        return height * jnp.asarray(gamma, jnp.float32) ** count
    arg = cycle if scale_mode == "cycle" else count
    return height * scale_fn(arg)


def _restart_index(count, t_0, t_mult):
    """Index n of the cycle holding `count` and that cycle's (start, length)."""
    geometric = jnp.abs(t_mult - 1.0) > 1e-6
    safe_mult = jnp.where(geometric, t_mult, 2.0)

    def start_of(n):
        return jnp.where(geometric, t_0 * (safe_mult ** n - 1.0) / (safe_mult - 1.0), t_0 * n)

    n_geo = jnp.floor(jnp.log(count / t_0 * (safe_mult - 1.0) + 1.0) / jnp.log(safe_mult))
    n = jnp.where(geometric, n_geo, jnp.floor(count / t_0))
    n = jnp.maximum(n, 0.0)
    # float32 logs can land one cycle off exactly at a restart; settle it on the boundaries.
    n = jnp.where(start_of(n + 1.0) <= count, n + 1.0, n)
    n = jnp.where(start_of(n) > count, n - 1.0, n)
    length = jnp.where(geometric, t_0 * safe_mult ** n, t_0)
    return n, start_of(n), length


def cosine_restarts(
    count: ArrayLike,
    *,
    t_0: ArrayLike,
    peak: ArrayLike,
    t_mult: ArrayLike = 1.0,
    eta_min: ArrayLike = 0.0,
    peak_decay: ArrayLike = 1.0,
    max_cycles: ArrayLike | None = None,
):
    """SGDR: cosine from the cycle's peak to `eta_min`, restarting after each cycle.

    Cycle n has length ``t_0 * t_mult**n`` and peak ``peak * peak_decay**n``;
    ``value = eta_min + (peak_n - eta_min) * (1 + cos(pi * t_cur / t_n)) / 2``. Integer
    `t_mult` and ``peak_decay=1`` give PyTorch `CosineAnnealingWarmRestarts`; float `t_mult`
    and `peak_decay` give Keras `CosineDecayRestarts` (`t_mul`, `m_mul`) and timm
    (`cycle_mul`, `cycle_decay`). After `max_cycles` cycles the value stays at `eta_min`.
    """
    count = jnp.asarray(count, jnp.float32)
    t_0 = jnp.asarray(t_0, jnp.float32)
    t_mult = jnp.asarray(t_mult, jnp.float32)
    n, start, length = _restart_index(count, t_0, t_mult)
    peak_n = peak * jnp.asarray(peak_decay, jnp.float32) ** n
    value = eta_min + (peak_n - eta_min) * (1.0 + jnp.cos(jnp.pi * (count - start) / length)) / 2
    if max_cycles is not None:
        value = jnp.where(n >= max_cycles, eta_min, value)
    return value


def inverse_time_decay(
    count: ArrayLike,
    *,
    init_value: ArrayLike,
    decay_steps: ArrayLike,
    decay_rate: ArrayLike,
    staircase: bool = False,
):
    """``init / (1 + decay_rate * count / decay_steps)`` (floored ratio with `staircase`).

    As `jax.example_libraries.optimizers.inverse_time_decay` and Keras `InverseTimeDecay`.
    """
    ratio = jnp.asarray(count, jnp.float32) / decay_steps
    if staircase:
        ratio = jnp.floor(ratio)
    return init_value / (1.0 + decay_rate * ratio)


def piecewise_constant(count: ArrayLike, boundaries: Sequence[float], values: Sequence[float]):
    """``values[k]`` where k is the number of boundaries strictly below `count`.

    As `jax.example_libraries.optimizers.piecewise_constant`: absolute values (len(values) ==
    len(boundaries) + 1) and the change happens at ``count = boundary + 1``. optax's
    `piecewise_constant_schedule` takes multiplicative scales and changes at ``count ==
    boundary``.
    """
    if len(values) != len(boundaries) + 1:
        raise ValueError(
            f"values needs len(boundaries) + 1 = {len(boundaries) + 1} entries, got {len(values)}"
        )
    b = jnp.asarray(boundaries, jnp.float32)
    v = jnp.asarray(values, jnp.float32)
    return v[jnp.sum(jnp.asarray(count, jnp.float32) > b)]
