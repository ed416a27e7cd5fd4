"""Every schedule of the seed documents is expressible; values at boundary steps.

Step t here is the Trainer's 0-based step; MXNet's 1-based update n is t + 1.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from flax_lr_callbacks import CyclicLR, LRSchedule
from flax_lr_callbacks import recipes as R


def approx(expected, abs=1e-7):
    """Float32 tolerance: XLA may reorder the arithmetic of a jitted schedule."""
    return pytest.approx(expected, rel=1e-5, abs=abs)


def values(schedule, steps):
    f = jax.jit(schedule)
    return [float(f(jnp.int32(t))) for t in steps]


def mx(schedule, updates):
    """Evaluates at MXNet's 1-based update numbers."""
    return values(schedule, [n - 1 for n in updates])


def test_mxnet_factor_halves_after_each_step():
    """FactorScheduler(step=250, factor=0.5): update 250 has 1.0, update 251 has 0.5."""
    s = R.mxnet_factor(1.0, step=250, factor=0.5, stop_factor_lr=0.1)
    assert mx(s, [1, 250, 251, 500, 501, 1000, 1001]) == approx(
        [1, 1, 0.5, 0.5, 0.25, 0.125, 0.1])  # floored at stop_factor_lr


def test_mxnet_multifactor_drops_after_listed_updates():
    """MultiFactorScheduler(step=[250, 750, 900], factor=0.5), as the seed describes."""
    s = R.mxnet_multifactor(1.0, step=[250, 750, 900], factor=0.5)
    assert mx(s, [250, 251, 750, 751, 900, 901]) == approx(
        [1, 0.5, 0.5, 0.25, 0.25, 0.125])


def test_mxnet_poly_and_cosine():
    """PolyScheduler(1000, pwr=2) starts at 0.998001 on update 1 and ends at 0; cosine 0.5 mid."""
    poly = R.mxnet_poly(1000, base_lr=1.0, pwr=2)
    assert mx(poly, [1, 500, 1000, 1500]) == approx([0.998001, 0.25, 0.0, 0.0], abs=1e-6)
    cos = R.mxnet_cosine(1000, base_lr=1.0, final_lr=0.1)
    assert mx(cos, [500, 1000]) == approx([0.55, 0.1], abs=1e-6)


def test_mxnet_warmup_linear_and_constant():
    """Warmup before update `warmup_steps`: linear from begin to base, or constant begin."""
    lin = R.mxnet_cosine(1000, base_lr=1.0, warmup_steps=100, warmup_begin_lr=0.0)
    assert mx(lin, [50, 99, 100, 550]) == approx([0.5, 0.99, 1.0, 0.5], abs=1e-6)
    const = R.mxnet_factor(1.0, step=500, factor=0.5, warmup_steps=100, warmup_begin_lr=0.01,
                           warmup_mode="constant")
    assert mx(const, [1, 99, 100, 501]) == approx([0.01, 0.01, 1.0, 0.5])
    with pytest.raises(ValueError, match="warmup_mode must be one of"):
        R.mxnet_factor(1.0, 10, warmup_mode="cosine")


def test_example_libraries_schedules():
    """jax.example_libraries: inverse time (staircase), piecewise constant, exp/poly via optax."""
    inv = R.example_libraries_inverse_time(0.1, 10, 0.5)
    assert values(inv, [0, 5, 10]) == approx([0.1, 0.1 / 1.25, 0.1 / 1.5])
    stair = R.example_libraries_inverse_time(0.1, 10, 0.5, staircase=True)
    assert values(stair, [9, 10, 25]) == approx([0.1, 0.1 / 1.5, 0.1 / 2.0])
    pc = R.example_libraries_piecewise_constant([10, 20], [1.0, 0.5, 0.1])
    assert values(pc, [0, 10, 11, 20, 21]) == approx([1.0, 1.0, 0.5, 0.5, 0.1])
    exp = optax.exponential_decay(0.1, transition_steps=100, decay_rate=0.5)
    assert values(exp, [0, 100, 250]) == approx([0.1, 0.05, 0.1 * 0.5 ** 2.5])
    poly = optax.polynomial_schedule(0.1, 0.001, power=2, transition_steps=100)
    assert values(poly, [0, 50, 100, 200]) == approx(
        [0.1, 0.001 + 0.099 * 0.25, 0.001, 0.001])


def test_flax_triangular_and_cyclic_equivalence():
    """The Flax guide's triangle; with an even cycle it equals CyclicLR with equal halves."""
    s = R.flax_triangular(0.1, 1.0, 10)
    assert values(s, [0, 5, 7, 10, 15]) == approx([0.1, 1.0, 0.64, 0.1, 1.0])
    odd = R.flax_triangular(0.1, 1.0, 9)  # top = 5, falls with slope 1/5
    assert values(odd, [5, 8, 9]) == approx([1.0, 0.46, 0.1])
    cyclic = CyclicLR(0.1, 1.0, step_size_up=5, cycle_momentum=False).curve(40)["learning_rate"]
    np.testing.assert_allclose(values(s, range(40)), cyclic, rtol=1e-6)


def test_mxnet_tutorial_triangle_and_cosine():
    """Slanted triangle 1 -> 2 -> 1 over 1000 with 20% rising; cosine 2 -> 1 over 1000."""
    tri = R.mxnet_triangular(1.0, 2.0, 1000, inc_fraction=0.2)
    assert mx(tri, [100, 200, 600, 1000, 1200]) == approx([1.5, 2.0, 1.5, 1.0, 1.0])
    cos = R.mxnet_cosine_annealing(1.0, 2.0, 1000)
    assert mx(cos, [500, 1000, 1100]) == approx([1.5, 1.0, 1.0], abs=1e-6)


def test_mxnet_tutorial_warmup_cooldown_one_cycle():
    """Warm-up 0 -> 1 over 250 before a multifactor; cool-down; the tutorial's one-cycle."""
    inner = R.mxnet_multifactor(1.0, step=[250, 750, 900], factor=0.5, one_based=False)
    warm = R.mxnet_linear_warmup(inner, start_lr=0.0, length=250)
    assert mx(warm, [125, 250, 251, 501, 1001]) == approx([0.5, 1.0, 1.0, 0.5, 0.25])
    cool = R.mxnet_linear_cooldown(inner, finish_lr=0.001, start_idx=1000, length=500)
    assert mx(cool, [1000, 1250, 1500, 2000]) == approx(
        [0.125, 0.125 + (0.001 - 0.125) / 2, 0.001, 0.001])
    oc = R.mxnet_one_cycle(0.1, 0.5, cycle_length=500, cooldown_length=750, finish_lr=0.001)
    assert mx(oc, [250, 500, 875, 1250, 1300]) == approx(
        [0.5, 0.1, 0.1 + (0.001 - 0.1) / 2, 0.001, 0.001])


def test_mxnet_cyclical_length_and_magnitude_decay():
    """Triangular cycles of 500; SGDR-style cosine with doubling length and halving magnitude."""
    tri = R.mxnet_cyclical("triangular", 500, min_lr=0.5, max_lr=2.0)
    assert mx(tri, [250, 500, 750]) == approx([2.0, 0.5, 2.0])
    sgdr = R.mxnet_cyclical("cosine", 250, cycle_length_decay=2, cycle_magnitude_decay=0.5,
                            min_lr=0.01, max_lr=2.0)
    # cycles start at 0, 250, 750, 1750 with lengths 250, 500, 1000
    assert mx(sgdr, [250, 500, 750, 1750]) == approx(
        [1.0, (0.01 + 1.99 * 0.5) * 0.5, 0.5, 0.25], abs=1e-6)


def test_recipes_run_inside_lrschedule():
    """A recipe is an ordinary LRSchedule (curve evaluates it in-graph)."""
    lr = LRSchedule(R.mxnet_factor(1.0, step=3, factor=0.5)).curve(7)["learning_rate"]
    np.testing.assert_allclose(lr, [1, 1, 1, 0.5, 0.5, 0.5, 0.25])
