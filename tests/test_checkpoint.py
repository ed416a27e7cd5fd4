"""Invariant 3: a fit resumed from a checkpoint reproduces the uninterrupted run exactly."""

import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import jax
import numpy as np
import optax
import pytest

from conftest import Crash, CrashAt, loss_fn, make_state
from flax_lr_callbacks import (
    ArrayDataset,
    Callback,
    CheckpointError,
    CosineRestarts,
    CyclicLR,
    GradNormGuard,
    LRFinder,
    LRSchedule,
    ModelCheckpoint,
    OneCycle,
    ReduceLROnPlateau,
    SmoothedPlateau,
    Trainer,
    Warmup,
)

LR_KEY = "hp/default/learning_rate"
MOMENTUM_KEY = "hp/default/momentum"


class Recorder(Callback):
    """Per-step applied hyperparameters, as fetched at log points."""

    def __init__(self):
        self.lr, self.momentum = {}, {}

    def on_log(self, trainer, state, history):
        for step, lr, m in zip(history["step"], history[LR_KEY], history[MOMENTUM_KEY]):
            self.lr[int(step)], self.momentum[int(step)] = float(lr), float(m)


def plateau_reducing():
    # threshold 0.9 (rel): only a 90% improvement counts, so every check after the first is
    # bad; patience 0 reduces at once, then cooldown 1 skips one check.
    return ReduceLROnPlateau("val_loss", factor=0.5, patience=0, threshold=0.9, cooldown=1)


CASES = {
    "schedule_step": lambda: [LRSchedule(optax.cosine_decay_schedule(0.2, 24, alpha=0.1))],
    "schedule_epoch": lambda: [LRSchedule(optax.exponential_decay(0.2, 1, 0.7),
                                          unit="epoch")],
    "one_cycle_momentum": lambda: [OneCycle(0.3, three_phase=True)],
    "cyclic": lambda: [CyclicLR(0.01, 0.2, step_size_up=5, mode="triangular2")],
    "cosine_restarts": lambda: [CosineRestarts(7, t_mult=1.5, peak_decay=0.8, base_lr=0.2)],
    "plateau_mid_cooldown": lambda: [Warmup(OneCycle(0.2, cycle_momentum=False), 4),
                                     plateau_reducing()],
    "lr_finder": lambda: [LRFinder(num_steps=12, plot_path=None), OneCycle(max_lr=None)],
    # In-graph observers: settings that make them act both before and after the resume
    # point (step 12), so their device state is mid-decision in the checkpoint.
    "smoothed_plateau": lambda: [OneCycle(0.3), SmoothedPlateau(patience=2, threshold=0.05,
                                                                cooldown=1, beta=0.5)],
    "grad_norm_guard": lambda: [OneCycle(0.3), GradNormGuard(threshold=1.05, factor=0.7,
                                                             recovery_steps=3,
                                                             warmup_steps=2)],
}


def run(tmp, name, case, *, resume=False, crash_at=None, ckpt_kwargs=None):
    recorder = Recorder()
    callbacks = CASES[case]() + [recorder, ModelCheckpoint(
        tmp / name, **(ckpt_kwargs or {"every_n_steps": 5, "save_top_k": -1}))]
    if crash_at is not None:
        callbacks.append(CrashAt(crash_at))
    data = _data()
    trainer = Trainer(loss_fn, max_epochs=4, callbacks=callbacks, log_every_n_steps=4,
                      enable_progress_bar=False, seed=3)
    out = trainer.fit(make_state(), *data, resume_from="latest" if resume else None)
    return trainer, out, recorder


def _data():
    from conftest import make_data

    d = make_data()
    return ArrayDataset(d, 16, seed=1), ArrayDataset(d, 32, shuffle=False, drop_remainder=False)


def assert_params_equal(a, b):
    """Same structure, shapes, dtypes and bits."""
    chex.assert_trees_all_equal_structs(a, b)
    chex.assert_trees_all_equal_shapes_and_dtypes(a, b)
    chex.assert_trees_all_equal(a, b)


@pytest.mark.parametrize("case", sorted(CASES))
def test_resume_reproduces_uninterrupted_run(tmp_path, case):
    full, full_out, full_rec = run(tmp_path, "full", case)
    with pytest.raises(Crash):
        run(tmp_path, "crashed", case, crash_at=14)  # mid-epoch 2 (6 steps per epoch)
    # latest checkpoint before the crash: step 12, the end of epoch 1 (saved after validation)
    saved = sorted(int(p.name) for p in (tmp_path / "crashed").iterdir() if p.name.isdigit())
    assert saved == [5, 6, 10, 12]
    resumed, out, rec = run(tmp_path, "crashed", case, resume=True)
    assert resumed.resumed_from.endswith("/12")
    assert_params_equal(out.params, full_out.params)
    assert_params_equal(out.opt_state, full_out.opt_state)
    # the resumed run logs the whole window around the resume point (steps 12..23)
    assert sorted(rec.lr) == list(range(12, 24))
    assert {s: full_rec.lr[s] for s in rec.lr} == rec.lr
    assert {s: full_rec.momentum[s] for s in rec.momentum} == rec.momentum
    assert resumed.num_step_traces == 1 and resumed.num_step_compiles == 1
    assert resumed.global_step == full.global_step == 24
    for a, b in zip(full.callbacks, resumed.callbacks):
        assert a.state_dict() == b.state_dict() or isinstance(a, ModelCheckpoint)
    if case == "plateau_mid_cooldown":
        with open(tmp_path / "crashed" / "12" / "meta" / "metadata") as f:
            meta = json.load(f)
        plateau = next(c for c in meta["callbacks"] if c["type"] == "ReduceLROnPlateau")
        assert plateau["state"]["state"]["cooldown_counter"] > 0  # really mid-cooldown
        assert len(full.callbacks[1].reductions) >= 2
    if case == "lr_finder":
        assert resumed.callbacks[0].result.suggestion == full.callbacks[0].result.suggestion


def test_resume_mid_epoch_checkpoint(tmp_path):
    """Resuming from a mid-epoch step continues at the next batch of that epoch."""
    full, full_out, full_rec = run(tmp_path, "full", "one_cycle_momentum")
    with pytest.raises(Crash):
        run(tmp_path, "crashed", "one_cycle_momentum", crash_at=9,
            ckpt_kwargs={"every_n_steps": 4, "every_n_epochs": None, "save_top_k": 2})
    assert sorted(int(p.name) for p in (tmp_path / "crashed").iterdir()) == [4, 8]
    resumed, out, rec = run(tmp_path, "crashed", "one_cycle_momentum", resume=True,
                            ckpt_kwargs={"every_n_steps": 4, "every_n_epochs": None,
                                         "save_top_k": 2})
    assert resumed.resumed_from.endswith("/8")
    assert_params_equal(out.params, full_out.params)
    assert {s: full_rec.lr[s] for s in rec.lr} == rec.lr and min(rec.lr) == 8
    assert resumed.num_step_compiles == 1
    # save_top_k=2 without a monitor: only the two newest remain (the final save at step 24
    # included)
    assert sorted(int(p.name) for p in (tmp_path / "crashed").iterdir()) == [20, 24]


def test_monitor_keeps_best(tmp_path):
    ckpt = ModelCheckpoint(tmp_path / "c", save_top_k=1, monitor="val_loss", mode="max")
    trainer = Trainer(loss_fn, max_epochs=3, callbacks=[OneCycle(0.2), ckpt],
                      enable_progress_bar=False)
    trainer.fit(make_state(), *_data())
    kept = sorted(int(p.name) for p in (tmp_path / "c").iterdir())
    assert ckpt.best_step in kept and 18 in kept and len(kept) <= 2
    assert ckpt.best_path == tmp_path / "c" / str(ckpt.best_step)


def test_iterable_data_resume_skips_consumed_batches(tmp_path):
    """Plain re-iterable data (no random access, no get_state) is re-read and skipped."""
    ds, val = _data()

    class Plain:
        def __iter__(self):
            batches = ds.for_epoch(0)
            return (batches[i] for i in range(len(batches)))

    def fit(name, resume=False, crash=None):
        cbs = [OneCycle(0.2), ModelCheckpoint(tmp_path / name, every_n_steps=4)]
        cbs += [CrashAt(crash)] if crash else []
        trainer = Trainer(loss_fn, max_epochs=2, steps_per_epoch=6, callbacks=cbs,
                          enable_progress_bar=False)
        return trainer.fit(make_state(), Plain(), resume_from="latest" if resume else None)

    full = fit("full")
    with pytest.raises(Crash):
        fit("b", crash=5)
    assert_params_equal(fit("b", resume=True).params, full.params)


def test_fresh_fit_refuses_directory_with_checkpoints(tmp_path):
    run(tmp_path, "c", "cyclic")
    before = sorted(p.name for p in (tmp_path / "c").iterdir())
    with pytest.raises(CheckpointError, match="already holds checkpoints.*resume_from"):
        run(tmp_path, "c", "cyclic")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == before
    with pytest.raises(CheckpointError, match=r"later checkpoints \[15, 18, 20, 24\]"):
        Trainer(loss_fn, max_epochs=4, log_every_n_steps=4, enable_progress_bar=False, seed=3,
                callbacks=[*CASES["cyclic"](), ModelCheckpoint(
                    tmp_path / "c")]).fit(make_state(), *_data(), resume_from=tmp_path / "c/12")
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == before


def test_resume_without_checkpoint_callback(tmp_path):
    """Checkpoint settings may change on resume, or go: only LR callbacks must match."""
    _, full, _ = run(tmp_path, "c", "cyclic")
    trainer = Trainer(loss_fn, max_epochs=4, log_every_n_steps=4, enable_progress_bar=False,
                      seed=3, callbacks=[CyclicLR(0.01, 0.2, step_size_up=5, mode="triangular2")])
    out = trainer.fit(make_state(), *_data(), resume_from=tmp_path / "c" / "10")
    assert_params_equal(out.params, full.params)


def test_mismatches_are_named(tmp_path):
    run(tmp_path, "c", "cyclic")
    step_dir = tmp_path / "c" / "24"
    data = _data()

    def resume(callbacks, state=None, loss=loss_fn, **kw):
        trainer = Trainer(loss, callbacks=callbacks, enable_progress_bar=False,
                          log_every_n_steps=4, **{"max_epochs": 4, **kw})
        return trainer.fit(state or make_state(), *data, resume_from=step_dir)

    with pytest.raises(CheckpointError, match=r"stateful callbacks: checkpoint \['CyclicLR'\], "
                                              r"this Trainer \['OneCycle'\]"):
        resume([OneCycle(0.2)])
    with pytest.raises(CheckpointError, match="total_steps: checkpoint 24, this fit 30"):
        resume([CyclicLR(0.01, 0.2, step_size_up=5), ModelCheckpoint(tmp_path / "c")],
               max_epochs=5)
    import flax.linen as nn
    from flax.training.train_state import TrainState

    class Wider(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Dense(3)(nn.relu(nn.Dense(32)(x)))

    def wide_loss(params, batch):
        logits = Wider().apply(params, batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    params = Wider().init(jax.random.PRNGKey(0), np.zeros((1, 4), np.float32))
    wide = TrainState.create(apply_fn=None, params=params, tx=make_state().tx)
    with pytest.raises(CheckpointError, match=r"Dense_1'\]\['kernel'\]: checkpoint "
                                              r"float32\[4, 16\], this state float32\[4, 32\]"):
        resume([CyclicLR(0.01, 0.2, step_size_up=5), ModelCheckpoint(tmp_path / "c")],
               state=wide, loss=wide_loss)
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        Trainer(loss_fn, enable_progress_bar=False).fit(make_state(), *data,
                                                        resume_from=tmp_path)
    with pytest.raises(CheckpointError, match="no such directory"):
        Trainer(loss_fn, enable_progress_bar=False).fit(make_state(), *data,
                                                        resume_from=tmp_path / "nope")
    with pytest.raises(CheckpointError, match="exactly one ModelCheckpoint"):
        Trainer(loss_fn, enable_progress_bar=False).fit(make_state(), *data,
                                                        resume_from="latest")


@pytest.mark.parametrize("damage", ["array_index", "meta_json"])
def test_corrupt_checkpoint_is_reported(tmp_path, damage):
    run(tmp_path, "c", "cyclic")
    step = tmp_path / "c" / "24"
    if damage == "array_index":
        manifests = list((step / "state").rglob("manifest.ocdbt"))
        assert manifests
        for f in manifests:
            f.write_bytes(b"garbage")
    else:
        (step / "meta" / "metadata").write_text('{"format": 1, "leaves": [')
    with pytest.raises(CheckpointError, match="checkpoint .*24 is damaged and could not be read"):
        run(tmp_path, "c", "cyclic", resume=True)
    assert step.is_dir()  # nothing deleted or overwritten
    time.sleep(0.5)
    gc.collect()


def test_resume_finished_run_returns_its_state(tmp_path):
    _, out, _ = run(tmp_path, "c", "cyclic")
    trainer, again, _ = run(tmp_path, "c", "cyclic", resume=True)
    assert_params_equal(again.params, out.params)
    assert trainer.global_step == 24


def test_bad_arguments():
    with pytest.raises(ValueError, match="every_n_steps must be an int >= 1, got "
                                         "every_n_steps=0"):
        ModelCheckpoint("x", every_n_steps=0)
    with pytest.raises(ValueError, match="save_top_k must be an int >= -1, got save_top_k=-2"):
        ModelCheckpoint("x", save_top_k=-2)
    with pytest.raises(ValueError, match="save_top_k=0 with save_last=False"):
        ModelCheckpoint("x", save_top_k=0, save_last=False)
    with pytest.raises(ValueError, match="mode must be one of"):
        ModelCheckpoint("x", mode="best")


# ------------------------------------------------------------------ crash test (SIGKILL)
CHILD = Path(__file__).with_name("crash_child.py")


def _child(tmp, out, *, resume=False, pause_at=None, slow_commit=False):
    # the child imports the same flax_lr_callbacks as this process (a checkout on PYTHONPATH)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).parent), str(Path(__file__).parents[1]),
         os.environ.get("PYTHONPATH", "")]))
    args = [sys.executable, str(CHILD), str(tmp / "ckpt"), str(out)]
    args += ["--resume"] if resume else []
    args += ["--pause-at", str(pause_at)] if pause_at else []
    args += ["--slow-commit"] if slow_commit else []
    watch = pause_at is not None or slow_commit
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE if watch else subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, text=True)


def _kill_when(proc, marker):
    with proc.stdout:
        for line in proc.stdout:
            if line.startswith(marker):
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
                return line
    raise AssertionError(f"child exited (rc={proc.wait()}) before printing {marker!r}")


def test_sigkill_mid_training_and_mid_save(tmp_path):
    full = _child(tmp_path / "full", tmp_path / "full.npz")
    assert full.wait(timeout=300) == 0
    expected = np.load(tmp_path / "full.npz")

    # 1) killed while training (between saves)
    _kill_when(_child(tmp_path / "a", tmp_path / "a.npz", pause_at=15), "PAUSED")
    assert _child(tmp_path / "a", tmp_path / "a.npz", resume=True).wait(timeout=300) == 0
    # 2) killed during a save: the files are written, the commit rename has not happened
    line = _kill_when(_child(tmp_path / "b", tmp_path / "b.npz", slow_commit=True),
                      "COMMIT 8")
    assert line.strip() == "COMMIT 8"
    assert sorted(p.name for p in (tmp_path / "b" / "ckpt").iterdir()
                  if p.name.isdigit()) == ["4"]  # the interrupted step 8 is not visible
    assert _child(tmp_path / "b", tmp_path / "b.npz", resume=True).wait(timeout=300) == 0

    for name in ("a", "b"):
        got = np.load(tmp_path / f"{name}.npz")
        assert sorted(got) == sorted(expected)
        for k in expected:
            np.testing.assert_array_equal(got[k], expected[k])
        # every checkpoint left on disk is complete and readable
        ckpt = tmp_path / name / "ckpt"
        assert not [p for p in ckpt.iterdir() if "tmp" in p.name]
        for step_dir in (p for p in ckpt.iterdir() if p.name.isdigit()):
            meta = json.loads((step_dir / "meta" / "metadata").read_text())
            assert meta["global_step"] == int(step_dir.name)


def test_grain_iterator_position_is_restored(tmp_path):
    """A Grain IterDataset (no random access): the iterator's get_state goes into the
    checkpoint and set_state puts it back, so resume continues at the next batch."""
    import grain

    ds, _ = _data()
    batches = ds.for_epoch(0)
    iter_ds = grain.MapDataset.range(len(batches)).map(lambda i: batches[i]).to_iter_dataset()

    def fit(name, resume=False, crash=None):
        cbs = [OneCycle(0.2), ModelCheckpoint(tmp_path / name, every_n_steps=4)]
        cbs += [CrashAt(crash)] if crash else []
        trainer = Trainer(loss_fn, max_epochs=2, steps_per_epoch=6, callbacks=cbs,
                          enable_progress_bar=False)
        return trainer.fit(make_state(), iter_ds, resume_from="latest" if resume else None)

    full = fit("full")
    with pytest.raises(Crash):
        fit("b", crash=5)
    meta = json.loads((tmp_path / "b" / "4" / "meta" / "metadata").read_text())
    assert meta["data_iterator"] is not None  # Grain's iterator state was saved
    assert_params_equal(fit("b", resume=True).params, full.params)


# ------------------------------------------------------------------ orbax-native format
def test_plain_orbax_restores_a_usable_params_tree(tmp_path):
    """Plain orbax, no flax_lr_callbacks: <step>/state is a named tree whose params evaluate
    to the trained model's accuracy."""
    import orbax.checkpoint as ocp
    from conftest import MODEL, make_data

    ckpt = ModelCheckpoint(tmp_path / "c", every_n_epochs=2)
    trainer = Trainer(loss_fn, max_epochs=2, callbacks=[OneCycle(0.3), ckpt],
                      enable_progress_bar=False)
    trained = trainer.fit(make_state(), *_data())
    tree = ocp.StandardCheckpointer().restore((tmp_path / "c" / "12" / "state").absolute())
    assert {"params", "opt_state", "step", "lr_state", "trainer"} <= set(tree)
    assert list(tree["lr_state"]["callback_states"]) == ["000_OneCycle"]
    chex.assert_trees_all_equal(tree["params"], jax.device_get(trained.params))
    d = make_data()

    def accuracy(params):
        return float((MODEL.apply(params, d["x"]).argmax(-1) == d["y"]).mean())

    assert accuracy(tree["params"]) == accuracy(trained.params) > 0.5


def test_save_top_k_by_monitor_plus_last(tmp_path):
    """save_top_k=2 with a monitor keeps the two best (orbax BestN) and the newest."""
    ckpt = ModelCheckpoint(tmp_path / "c", save_top_k=2, monitor="val_loss", mode="max")
    trainer = Trainer(loss_fn, max_epochs=5, callbacks=[OneCycle(0.2), ckpt],
                      enable_progress_bar=False)
    scores = {}

    class Scores(Callback):
        def on_validation_end(self, trainer, state):
            scores[trainer.global_step] = trainer.callback_metrics["val_loss"]

    trainer.callbacks.insert(0, Scores())
    trainer.fit(make_state(), *_data())
    best_two = sorted(scores, key=scores.get)[-2:]
    kept = sorted(int(p.name) for p in (tmp_path / "c").iterdir())
    assert kept == sorted(set(best_two) | {30})
    assert ckpt.best_step == best_two[-1]


@pytest.mark.parametrize("old, match", [
    (1, r"24 was written by flax_lr_callbacks 0.1.0 before .*named pytrees \(format 1"),
    (2, r"24 was written by flax_lr_callbacks before the record buffer was packed .*"
        r"\(format 2\); this version reads format 4"),
    (3, r"24 was written by flax_lr_callbacks before the Trainer and LRCallbacks shared one "
        r"LR state \(format 3: .*\); this version reads format 4, with both under 'lr_state'"),
])
def test_older_formats_are_refused_clearly(tmp_path, old, match):
    """A checkpoint of an older layout names the change and what to do, before any read."""
    run(tmp_path, "c", "cyclic")
    meta_file = tmp_path / "c" / "24" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["format"] = old
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=match):
        run(tmp_path, "c", "cyclic", resume=True)


@pytest.mark.parametrize("mode", ["min", "max"])
def test_best_path_exists_when_scores_tie(tmp_path, mode):
    """Equal scores: orbax keeps the newest of them, so best_step names that one (an older
    best_step would point at a pruned directory)."""
    ckpt = ModelCheckpoint(tmp_path / "c", save_top_k=1, monitor="val_flat", mode=mode,
                           save_last=False)
    trainer = Trainer(loss_fn, max_epochs=3, callbacks=[OneCycle(0.2), ckpt],
                      eval_fn=lambda params, batch: {"flat": 1.0}, enable_progress_bar=False)
    trainer.fit(make_state(), *_data())
    assert ckpt.best_path.is_dir() and ckpt.best_step == 18


def test_progress_bar_ends_at_the_total_after_a_resume(tmp_path):
    """A checkpoint between two log points: the resumed bar counts each step once."""
    from flax_lr_callbacks import ProgressBar

    class Bar(ProgressBar):
        def teardown(self, trainer, state):
            self.final = self._bar.n
            super().teardown(trainer, state)

    def fit(callbacks, resume=False):
        bar = Bar()
        trainer = Trainer(loss_fn, max_epochs=2, log_every_n_steps=4, callbacks=[
            OneCycle(0.2), ModelCheckpoint(tmp_path / "c", every_n_steps=3), bar, *callbacks])
        trainer.fit(make_state(), *_data(), resume_from="latest" if resume else None)
        return trainer, bar

    with pytest.raises(Crash):
        fit([CrashAt(5)])  # the last checkpoint is at step 3, inside the window 0-3
    trainer, bar = fit([], resume=True)
    assert trainer.start_step == 3 and bar.final == trainer.total_steps == 12
