"""steps_per_dispatch=K: K steps per compiled call, the same run as K=1."""

import jax
import numpy as np
import pytest

from conftest import Crash, CrashAt, loss_fn, make_data, make_state
from flax_lr_callbacks import (ArrayDataset, LearningRateMonitor, ModelCheckpoint,
                               OneCycle, ReduceLROnPlateau, Trainer)


def fit(k, tmp_path=None, resume=False, log_every=12):
    d = make_data()
    monitor = LearningRateMonitor()
    callbacks = [OneCycle(0.3), ReduceLROnPlateau("train_loss", factor=0.5, patience=0,
                                                  threshold=0.9, check_on=12), monitor]
    if tmp_path is not None:
        callbacks.append(ModelCheckpoint(tmp_path, every_n_steps=5, every_n_epochs=None))
    trainer = Trainer(loss_fn, max_epochs=5, callbacks=callbacks, steps_per_dispatch=k,
                      log_every_n_steps=log_every, enable_progress_bar=False)
    state = trainer.fit(make_state(), ArrayDataset(d, 16, seed=2),
                        resume_from="latest" if resume else None)
    return trainer, state, monitor


@pytest.mark.parametrize("k", [4, 6])
def test_fused_run_equals_single_steps(k):
    t1, s1, m1 = fit(1)
    tk, sk, mk = fit(k)
    assert mk.history["lr"][0] == list(range(30))  # every step recorded and logged
    np.testing.assert_array_equal(np.float32(mk.history["lr"][1]), np.float32(m1.history["lr"][1]))
    np.testing.assert_array_equal(np.float32(mk.history["momentum"][1]),
                                  np.float32(m1.history["momentum"][1]))
    assert [r["step"] for r in tk.callbacks[1].reductions] == [
        r["step"] for r in t1.callbacks[1].reductions]
    for a, b in zip(jax.tree_util.tree_leaves(sk), jax.tree_util.tree_leaves(s1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)
    # one fused executable; with 6 batches per epoch and K=4 the 2 left over per epoch run
    # through the single step, which compiles once as well
    assert tk.num_fused_traces == 1 and tk.num_fused_compiles == 1
    assert tk.num_step_compiles == (1 if 6 % k else 0)


def test_fused_checkpoint_resume(tmp_path):
    _, full, _ = fit(4, tmp_path / "a")

    d = make_data()
    trainer = Trainer(loss_fn, max_epochs=5, steps_per_dispatch=4, log_every_n_steps=12,
                      enable_progress_bar=False,
                      callbacks=[OneCycle(0.3), ReduceLROnPlateau(
                          "train_loss", factor=0.5, patience=0, threshold=0.9, check_on=12),
                          LearningRateMonitor(), ModelCheckpoint(
                              tmp_path / "b", every_n_steps=5, every_n_epochs=None),
                          CrashAt(17)])
    with pytest.raises(Crash):
        trainer.fit(make_state(), ArrayDataset(d, 16, seed=2))
    _, resumed, _ = fit(4, tmp_path / "b", resume=True)
    for a, b in zip(jax.tree_util.tree_leaves(resumed), jax.tree_util.tree_leaves(full)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_log_interval_must_be_multiple_of_k():
    with pytest.raises(ValueError, match="log_every_n_steps=10 must be a multiple of "
                                         "steps_per_dispatch=4"):
        Trainer(loss_fn, steps_per_dispatch=4, log_every_n_steps=10)
    with pytest.raises(ValueError, match="steps_per_dispatch must be an int >= 1"):
        Trainer(loss_fn, steps_per_dispatch=0)


def test_fused_group_wrapping_the_record_buffer():
    """A group of K whose rows wrap around the buffer's end (6 batches per epoch, K=4, 8 rows:
    steps 6-9 go to rows 6, 7, 0, 1) still logs every step's values exactly."""
    t1, s1, m1 = fit(1, log_every=8)
    tk, sk, mk = fit(4, log_every=8)
    assert mk.history["lr"][0] == list(range(30))
    np.testing.assert_array_equal(np.float32(mk.history["lr"][1]), np.float32(m1.history["lr"][1]))
    np.testing.assert_array_equal(np.float32(mk.history["momentum"][1]),
                                  np.float32(m1.history["momentum"][1]))
