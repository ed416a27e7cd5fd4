"""ArrayDataset(on_device=True): batches gathered inside the step, the same run as host batches."""

import jax
import numpy as np
import pytest

from conftest import Crash, CrashAt, loss_fn, make_data, make_state
from flax_lr_callbacks import (ArrayDataset, LearningRateMonitor, ModelCheckpoint,
                               NonFiniteLossError, OneCycle, ReduceLROnPlateau, Trainer)
from flax_lr_callbacks.data.on_device import OnDeviceBatch
from flax_lr_callbacks.data.source import DataSource


def fit(on_device, k=1, *, ckpt=None, resume=False, crash_at=None, drop_remainder=True):
    monitor = LearningRateMonitor()
    callbacks = [OneCycle(0.3), ReduceLROnPlateau("train_loss", factor=0.5, patience=0,
                                                  threshold=0.9, check_on=12), monitor]
    if ckpt is not None:
        callbacks.append(ModelCheckpoint(ckpt, every_n_steps=5, every_n_epochs=None))
    if crash_at is not None:
        callbacks.append(CrashAt(crash_at))
    trainer = Trainer(loss_fn, max_epochs=4, callbacks=callbacks, steps_per_dispatch=k,
                      log_every_n_steps=12, enable_progress_bar=False)
    data = ArrayDataset(make_data(100), 16, seed=3, on_device=on_device,
                        drop_remainder=drop_remainder)
    state = trainer.fit(make_state(), data, resume_from="latest" if resume else None)
    return trainer, state, monitor


def assert_bitwise(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("k", [1, 3])
def test_on_device_fit_is_the_host_fit(k):
    """Same batches, same order: parameters, LRs and plateau decisions match the host run
    bitwise; one compile of the step (and of the fused call)."""
    _, host, m_host = fit(False)
    trainer, dev, m_dev = fit(True, k)
    assert_bitwise(dev, host)
    assert m_dev.history["lr"] == m_host.history["lr"]
    assert m_dev.history["lr"][0] == list(range(24))
    assert trainer.num_step_traces + trainer.num_fused_traces == 1
    assert trainer.num_step_compiles + trainer.num_fused_compiles == 1


def test_on_device_partial_last_batch():
    """drop_remainder=False: the short last batch of each epoch (100 = 6 x 16 + 4) trains too,
    through the single step (its own shape), as on the host."""
    _, host, _ = fit(False, 3, drop_remainder=False)
    trainer, dev, _ = fit(True, 3, drop_remainder=False)
    assert trainer.global_step == 28
    assert_bitwise(dev, host)
    # the single step runs the short batch and the full ones left before a log point: two
    # shapes, one trace each
    assert trainer.num_fused_traces == 1 and trainer.num_step_traces == 2


def test_on_device_batches_are_each_epochs_permutation():
    """Each epoch's device batches are the host batches' indices: every example once."""
    d = make_data(100)
    ds = ArrayDataset(d, 16, seed=5, on_device=True, drop_remainder=False)
    source = DataSource(ds, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    source.plan(None)
    host = ArrayDataset(d, 16, seed=5, drop_remainder=False)
    for epoch in range(3):
        batches = list(source.epoch(epoch))
        assert all(isinstance(b, OnDeviceBatch) for b in batches)
        seen = np.concatenate([b.index for b in batches])
        assert sorted(seen.tolist()) == list(range(100))
        for i, b in enumerate(batches):
            np.testing.assert_array_equal(d["x"][b.index], host.for_epoch(epoch)[i]["x"])
    # without a sharding (hand-written loops, the LR sweep) the dataset gives host batches
    assert isinstance(DataSource(ds).peek(), dict)


def test_on_device_resume_is_bitwise(tmp_path):
    _, full, _ = fit(True, 3, ckpt=tmp_path / "a")
    with pytest.raises(Crash):
        fit(True, 3, ckpt=tmp_path / "b", crash_at=13)
    trainer, resumed, _ = fit(True, 3, ckpt=tmp_path / "b", resume=True)
    assert trainer.resumed_from is not None
    assert_bitwise(resumed, full)


def test_on_device_arguments_are_checked():
    d = make_data()
    with pytest.raises(TypeError, match="on_device"):
        ArrayDataset(d, 16, on_device="yes")
    with pytest.raises(ValueError, match="on_device=True needs a single process"):
        ArrayDataset(d, 16, on_device=True, process_index=0, process_count=2)


def test_fused_groups_end_at_log_points():
    """An epoch of 7 batches with K=3 shifts the groups against log_every_n_steps=12; a group
    still ends at every log point, so the plateau decides at the same steps as with K=1."""
    t1, s1, m1 = fit(False, 1, drop_remainder=False)
    t3, s3, m3 = fit(True, 3, drop_remainder=False)
    assert [r["step"] for r in t3.callbacks[1].reductions] == [
        r["step"] for r in t1.callbacks[1].reductions] == [24]
    np.testing.assert_array_equal(np.float32(m3.history["lr"][1]), np.float32(m1.history["lr"][1]))
    for a, b in zip(jax.tree_util.tree_leaves(s3), jax.tree_util.tree_leaves(s1)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("policy", ["stop", "skip"])
def test_nan_inside_a_fused_group_is_the_single_step_outcome(policy):
    """A NaN loss at step 4, inside the fused group of steps 3-5: the group is redone with the
    per-step check, and the outcome (error step or skip count, and the state) is bitwise that of
    single steps on host batches."""
    from test_nan_policy import nan_at_example, recorded

    def run(on_device, k):
        d = make_data(96)
        d["i"] = np.arange(96, dtype=np.int32)
        data = ArrayDataset(d, 16, shuffle=False, on_device=on_device)
        trainer = Trainer(nan_at_example(4 * 16), max_epochs=2, log_every_n_steps=6,
                          steps_per_dispatch=k, nan_policy=policy, enable_progress_bar=False)
        if policy == "stop":
            with pytest.raises(NonFiniteLossError) as info:
                trainer.fit(make_state(), data)
            return info.value.state, info.value.step
        with recorded():
            state = trainer.fit(make_state(), data)
        return state, trainer.callback_metrics["train/skipped_steps"]

    single, what = run(False, 1)
    fused, fused_what = run(True, 3)
    assert fused_what == what == (4 if policy == "stop" else 2.0)
    assert_bitwise(fused, single)


def test_on_device_needs_one_process(monkeypatch):
    """A dataset built for one process (or before jax.distributed started) is refused when
    the job has several: each process would train on whole batches, not its slice."""
    ds = ArrayDataset(make_data(), 16, on_device=True, process_index=0, process_count=1)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    with pytest.raises(ValueError, match="on_device=True, which needs a single process"):
        DataSource(ds, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0]))


def test_lr_find_reads_device_batches():
    """The sweep gathers `OnDeviceBatch` inputs too (e.g. `device_batches` passed as data)."""
    ds = ArrayDataset(make_data(), 16, seed=1, on_device=True)
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    batches = ds.device_batches(0, sharding)
    trainer = Trainer(loss_fn, enable_progress_bar=False)
    device = trainer.lr_find(make_state(), [batches[i] for i in range(len(batches))],
                             num_steps=12, progress=False)
    host = trainer.lr_find(make_state(), [ds.for_epoch(0)[i] for i in range(len(ds))],
                           num_steps=12, progress=False)
    np.testing.assert_array_equal(device.losses, host.losses)
