"""The packed carry: exact round trips, fewer leaves per step, host writes between steps."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from conftest import loss_fn

from flax_lr_callbacks import (Callback, LearningRateMonitor, OneCycle, ReduceLROnPlateau,
                               Trainer)
from flax_lr_callbacks import carry as carry_lib
from flax_lr_callbacks.step import TrainerState


class ScaleState(NamedTuple):
    scale: jax.Array


def _leaves(tree):
    return jax.tree_util.tree_leaves(tree)


def _signature(tree):
    """Structure, shape, dtype and weak type of every leaf."""
    return (jax.tree_util.tree_structure(tree),
            [(jnp.shape(x), jnp.result_type(x), bool(getattr(x, "weak_type", False)))
             for x in _leaves(tree)])


def mixed_state():
    """A TrainerState whose LR side mixes float32, int32 and weak-typed scalars, a vector and
    a None (an empty subtree)."""
    lr_state = {"a": jnp.float32(0.25), "b": jnp.int32(-7), "weak": jnp.asarray(1.5),
                "vec": jnp.arange(3, dtype=jnp.float32), "none": None,
                "nested": (jnp.float32(3.0), jnp.int32(2), jnp.asarray(4))}
    return TrainerState(train_state={"w": jnp.ones((2, 2))}, lr_state=lr_state,
                        key=jax.random.PRNGKey(1), buffer=jnp.zeros((4, 2)),
                        nonfinite=(jnp.int32(-1), jnp.int32(0)))


def test_pack_unpack_round_trip_is_exact_on_host_and_in_graph():
    ts = mixed_state()
    assert jnp.asarray(1.5).weak_type  # the weak leaves really are weak
    carry = carry_lib.pack(ts)
    # float32, int32, weak float and weak int scalars: four vectors; the vector stays a leaf
    assert len(carry.packed) == 4 and len(carry.others) == 1
    back = carry_lib.unpack(carry)
    assert _signature(back) == _signature(ts)
    for a, b in zip(_leaves(back), _leaves(ts)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # inside jit: unpack, step, pack; the values come back and the weak types survive
    stepped = jax.jit(lambda c: carry_lib.through(c, lambda s: s._replace(
        lr_state=jax.tree_util.tree_map(lambda x: x + 1, s.lr_state))))(carry)
    assert isinstance(stepped, carry_lib.Carry) and stepped.layout == carry.layout
    back = carry_lib.unpack(stepped)
    assert _signature(back.lr_state) == _signature(ts.lr_state)
    for a, b in zip(_leaves(back.lr_state), _leaves(ts.lr_state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b) + 1)
    # the counters read on the host from a packed carry
    _, nonfinite = carry_lib.fetch_window(stepped)
    assert [int(x) for x in nonfinite] == [-1, 0]


def test_layout_is_static_so_another_layout_traces_anew():
    """Two carries of different layouts never share a compiled step (no misread scalars)."""
    traces = []

    @jax.jit
    def f(c):
        traces.append(1)
        return carry_lib.through(c, lambda s: s)

    one = carry_lib.pack(mixed_state())
    other_ts = mixed_state()
    other = carry_lib.pack(other_ts._replace(lr_state={**other_ts.lr_state, "b": jnp.float32(2)}))
    f(one), f(one)
    assert len(traces) == 1
    out = carry_lib.unpack(f(other))
    assert len(traces) == 2 and out.lr_state["b"].dtype == jnp.float32
    assert float(out.lr_state["b"]) == 2.0


class HalveAtStep(Callback):
    """Writes its device state from `on_train_batch_end` in the middle of an epoch."""
    scales = ("learning_rate",)

    def __init__(self, at):
        self.at = at

    def init_state(self, plan, hparams):
        return ScaleState(jnp.float32(1.0))

    def rule(self, ctx, hparams, state):
        for g in self.target_groups(hparams, "learning_rate"):
            hparams[g]["learning_rate"] = hparams[g]["learning_rate"] * state.scale
        return hparams, state

    def on_train_batch_end(self, trainer, state):
        if trainer.global_step == self.at:
            trainer.update_callback_state(self, scale=0.5)


def test_trainer_steps_carry_few_leaves_and_host_writes_land_at_the_next_step(data, state):
    mon = LearningRateMonitor()
    trainer = Trainer(loss_fn, max_epochs=2, log_every_n_steps=4, enable_progress_bar=False,
                      callbacks=[HalveAtStep(at=3), ReduceLROnPlateau(patience=5), mon])
    trainer.fit(state, data[0], data[1])
    # the write after step 3 applies from step 4 on (the 4th step, index 3), mid-window
    lr = mon.history["lr"][1]
    np.testing.assert_allclose(lr, [0.1] * 3 + [0.05] * 9, rtol=1e-6)
    assert trainer.num_step_traces == 1 and trainer.num_step_compiles == 1

    # the step takes the train state, key, buffer and a few packed vectors, not every scalar
    ts, carry = trainer.trainer_state, trainer._carried()
    n_scalars = sum(jnp.ndim(x) == 0 for x in _leaves((ts.lr_state, ts.nonfinite)))
    assert n_scalars >= 8
    assert len(_leaves(carry)) == len(_leaves(ts)) - n_scalars + len(carry.packed)
    assert len(carry.packed) <= 2  # float32 and int32
    # the packed carry is what the step was compiled for
    assert trainer.steps.train._cache_size() == 1


def test_trainer_state_read_between_steps_equals_the_carry(data, state):
    """Reading `trainer_state` mid-fit (e.g. a checkpoint) rebuilds exactly the carried values,
    and the fit goes on from the same carry (reading does not repack or retrace)."""
    seen = []

    class Peek(Callback):
        def on_train_batch_end(self, trainer, state):
            if trainer.global_step in (2, 5):
                carry = trainer._carried()
                ts = trainer.trainer_state
                assert trainer._carried() is carry
                packed = jax.device_get(carry.packed)
                flat = [x for v in packed for x in np.asarray(v).tolist()]
                scalars = [float(x) for x in _leaves((ts.lr_state, ts.nonfinite))
                           if jnp.ndim(x) == 0]
                assert sorted(flat) == sorted(scalars)
                seen.append(int(ts.lr_state.step))

    trainer = Trainer(loss_fn, max_epochs=1, enable_progress_bar=False,
                      callbacks=[OneCycle(0.3), Peek()])
    trainer.fit(state, data[0])
    assert seen == [2, 5] and trainer.num_step_traces == 1


def test_fit_result_matches_the_unpacked_step(data, state):
    """The Trainer's packed step and the same step on a plain TrainerState agree bitwise."""
    def run(packed):
        trainer = Trainer(loss_fn, max_epochs=1, enable_progress_bar=False,
                          callbacks=[OneCycle(0.3)])
        if not packed:  # drive the same compiled step with TrainerState in and out
            trainer._carried = lambda: trainer.trainer_state
            trainer._advance = lambda ts: setattr(trainer, "trainer_state", ts)
        return trainer.fit(state, data[0])

    a, b = run(True), run(False)
    for x, y in zip(_leaves(a.params), _leaves(b.params)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
