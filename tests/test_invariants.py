"""The three invariants: one compile, no hidden host sync (resume is tested with checkpoints)."""

import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from compiles import count_compiles
from conftest import loss_fn
from host_sync import count_host_transfers

from flax_lr_callbacks import (ArrayDataset, Callback, CosineRestarts, CyclicLR,
                               LearningRateMonitor, LRSchedule, OneCycle, ReduceLROnPlateau,
                               Sequential, TensorBoardLogger, Trainer, Warmup)
from flax_lr_callbacks.compiled import CompiledSteps
from flax_lr_callbacks.trainer import Trainer as TrainerCls


def all_callbacks():
    return [
        LRSchedule(optax.cosine_decay_schedule(0.1, 30), unit="step"),
        LRSchedule(lambda e: 0.9 - 0.05 * e, unit="epoch", hyperparam="momentum"),
        LearningRateMonitor(),
    ]


def every_lr_callback():
    return [
        Sequential([Warmup(OneCycle(0.2), warmup_steps=3), CyclicLR(0.01, 0.1, 2),
                    CosineRestarts(t_0=3, t_mult=2)], boundaries=[8, 12]),
        ReduceLROnPlateau(patience=0, factor=0.5, cooldown=1),
        LearningRateMonitor(),
    ]


@pytest.mark.parametrize("make_callbacks", [all_callbacks, every_lr_callback],
                         ids=["schedules-step-and-epoch", "every-lr-callback"])
def test_one_compile_per_fit_with_every_lr_callback(make_callbacks, data, state, tmp_path,
                                                    monkeypatch):
    """A whole fit traces and compiles the train step exactly once; a second fit compiles
    nothing at all."""
    # chex raises at a second trace of the step, wherever it happens
    chex.clear_trace_counter()
    monkeypatch.setattr(CompiledSteps, "_step", chex.assert_max_traces(CompiledSteps._step, n=1))
    train, val = data
    trainer = Trainer(loss_fn, max_epochs=5, log_every_n_steps=4, callbacks=make_callbacks(),
                      logger=TensorBoardLogger(tmp_path), enable_progress_bar=True)
    trainer.fit(state, train, val)
    assert trainer.num_step_traces == 1 and trainer.num_step_compiles == 1
    with count_compiles() as compiles:
        trainer.fit(state, train, val)
    assert compiles == []
    assert trainer.num_step_traces == 1 and trainer.num_step_compiles == 1


def test_probe_catches_every_conversion():
    """The host-sync probe sees float(), item(), np.asarray and device_get (so it can fail)."""
    seen = []
    x = jnp.arange(3.0) + 1
    with count_host_transfers(seen.append):
        float(x[0]); x[1].item(); np.asarray(x); jax.device_get(x); bool(x[0] > 0)
    assert len(seen) == 5, seen


class SyncEveryStep(Callback):
    """A badly written callback: pulls the loss to the host at every step."""

    def on_train_batch_end(self, trainer, state):
        float(trainer.trainer_state.buffer[0, 0])


def _transfers_outside_log_points(monkeypatch, callbacks, data, state):
    events = []
    allowed = [0]
    for name in ("_log_point", "validate", "init_trainer_state"):
        orig = getattr(TrainerCls, name)

        def wrapped(self, *a, _orig=orig, **k):
            allowed[0] += 1
            try:
                return _orig(self, *a, **k)
            finally:
                allowed[0] -= 1
        monkeypatch.setattr(TrainerCls, name, wrapped)
    trainer = Trainer(loss_fn, max_epochs=3, log_every_n_steps=4, callbacks=callbacks)
    train, val = data

    def on_transfer(kind):
        if not allowed[0]:
            events.append((trainer.global_step, kind))

    with count_host_transfers(on_transfer):
        trainer.fit(state, train, val)
    return events


@pytest.mark.parametrize("make_callbacks", [all_callbacks, every_lr_callback],
                         ids=["schedules-step-and-epoch", "every-lr-callback"])
def test_no_host_sync_between_log_points(make_callbacks, monkeypatch, data, state):
    """Device values reach the host only at log points and validation, never per step."""
    events = _transfers_outside_log_points(monkeypatch, make_callbacks(), data, state)
    assert events == []


def test_no_host_sync_probe_detects_a_syncing_callback(monkeypatch, data, state):
    """The same check fails for a callback that syncs every step."""
    events = _transfers_outside_log_points(
        monkeypatch, all_callbacks() + [SyncEveryStep()], data, state)
    assert len(events) >= 18  # one per step of 3 epochs x 6 steps


def _slow(x):
    # ~tens of ms of device work per step, independent of the model.
    m = jnp.eye(192) * 0.5 + x.mean() * 1e-3
    return jax.lax.fori_loop(0, 120, lambda i, a: jnp.tanh(a @ m), m).sum()


def slow_loss_fn(params, batch):
    loss, metrics = loss_fn(params, batch)
    return loss + 1e-30 * _slow(batch["x"]), metrics


class DispatchTimes(Callback):
    def __init__(self):
        self.times = []

    def on_train_batch_end(self, trainer, state):
        self.times.append(time.perf_counter())


def test_slow_step_does_not_block_the_python_loop(state):
    """Async dispatch: the loop queues several slow steps before the first one finishes."""
    d = {"x": np.random.default_rng(0).normal(size=(128, 4)).astype(np.float32),
         "y": np.zeros(128, np.int32)}
    train = ArrayDataset(d, 16)  # 8 steps per epoch
    probe = DispatchTimes()
    trainer = Trainer(slow_loss_fn, max_epochs=2, log_every_n_steps=8, callbacks=[probe],
                      enable_progress_bar=False)
    trainer.fit(state, train)  # compile + warm up
    probe.times.clear()
    start = time.perf_counter()
    trainer.fit(state, train)
    epoch_one = probe.times[:8]
    step_time = (probe.times[-1] - start) / 16  # average device time per step, end to end
    dispatch_time = epoch_one[6] - epoch_one[0]  # 6 steps queued, no log point in between
    assert step_time > 0.005, f"slow step too fast to measure: {step_time=}"
    assert dispatch_time < 2 * step_time, (dispatch_time, step_time)
