"""Checkpoint safety: one run per directory (lock), settings compared at resume, short errors
for damaged checkpoints, and non-finite scores never ranked best or left as the only copy."""

import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from conftest import Crash, CrashAt, loss_fn, make_data, make_state
from flax_lr_callbacks import (
    ArrayDataset,
    Callback,
    CheckpointError,
    ModelCheckpoint,
    OneCycle,
    ReduceLROnPlateau,
    Trainer,
)
from flax_lr_callbacks import checkpoint_lock

CHILD = Path(__file__).with_name("crash_child.py")


def _steps(directory):
    return sorted(int(p.name) for p in Path(directory).iterdir() if p.name.isdigit())


def _fit(ckpt, *, callbacks=None, seed=0, resume=None, epochs=3, val=None, **ckpt_kwargs):
    d = make_data()
    callbacks = [OneCycle(0.1)] if callbacks is None else callbacks
    if ckpt is not None:
        callbacks = callbacks + [ModelCheckpoint(ckpt, **ckpt_kwargs)]
    trainer = Trainer(loss_fn, max_epochs=epochs, callbacks=callbacks, seed=seed,
                      enable_progress_bar=False, log_every_n_steps=3)
    out = trainer.fit(make_state(), ArrayDataset(d, 16, seed=1), val, resume_from=resume)
    return trainer, out


# ------------------------------------------------------------------ the directory lock
def _child(ckpt, out, *extra):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(CHILD.parent), str(CHILD.parents[1]), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen([sys.executable, str(CHILD), str(ckpt), str(out), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _snapshot(directory):
    return {str(p.relative_to(directory)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in Path(directory).rglob("*") if p.is_file() and p.name != ".lock"}


def test_second_process_is_refused_and_a_killed_owner_is_taken_over(tmp_path):
    ckpt = tmp_path / "ckpt"
    first = _child(ckpt, tmp_path / "first.npz", "--pause-at", "9")
    try:
        assert first.stdout.readline().strip() == "PAUSED"  # after saving steps 4 and 8
        for _ in range(300):  # the async save of step 8 may still be committing
            if _steps(ckpt) == [4, 8] and not [p for p in ckpt.iterdir() if "tmp" in p.name]:
                break
            time.sleep(0.1)
        before = _snapshot(ckpt)
        owner = json.loads((ckpt / ".lock").read_text())
        assert owner["pid"] == first.pid and owner["host"] == socket.gethostname()

        second = _child(ckpt, tmp_path / "second.npz")
        _, err = second.communicate(timeout=300)
        assert second.returncode != 0
        message = err.strip().splitlines()[-1]
        assert message.startswith("flax_lr_callbacks.checkpointing.CheckpointError: "
                                  f"checkpoint directory {str(ckpt)!r} is in use by another "
                                  f"run (another process: pid {first.pid} on host")
        assert "Wait for that run to end" in message and owner["started"] in message
        assert _steps(ckpt) == [4, 8] and _snapshot(ckpt) == before  # nothing replaced
        assert not (tmp_path / "second.npz").exists()
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        first.stdout.close()
        first.stderr.close()
    # the owner died without releasing: the next run on this host takes the lock over
    resumed = _child(ckpt, tmp_path / "resumed.npz", "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    assert f"locked by a run that is no longer running (pid {first.pid} on host" in err
    assert not (ckpt / ".lock").exists()
    assert _steps(ckpt)[-1] == 24


def test_lock_is_atomic_across_processes(tmp_path):
    code = ("import sys, time\nfrom flax_lr_callbacks import checkpoint_lock as L\n"
            "try:\n    L.acquire(sys.argv[1])\nexcept Exception as e:\n"
            "    print('REFUSED', e)\nelse:\n    print('LOCKED')\n    time.sleep(3)\n")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert sorted(o.split()[0] for o in outs) == ["LOCKED", "REFUSED", "REFUSED", "REFUSED"]
    assert all("is in use by another run (another process" in o for o in outs if "REFUSED" in o)


def test_lock_is_atomic_across_threads(tmp_path):
    results, barrier = [], threading.Barrier(8)

    def take():
        barrier.wait()
        try:
            results.append(checkpoint_lock.acquire(tmp_path))
        except CheckpointError as e:
            results.append(e)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    held = [r for r in results if isinstance(r, Path)]
    assert len(held) == 1
    assert all("another fit in this process" in str(r) for r in results if r not in held)
    checkpoint_lock.release(held[0])
    assert not (tmp_path / ".lock").exists()


def test_second_trainer_in_the_same_process_is_refused(tmp_path):
    refused = []

    class StartAnother(Callback):
        def on_train_epoch_end(self, trainer, state):
            if trainer.current_epoch == 0:
                with pytest.raises(CheckpointError) as e:
                    _fit(tmp_path / "c", epochs=1)
                refused.append(str(e.value))

    trainer, _ = _fit(tmp_path / "c", callbacks=[OneCycle(0.1), StartAnother()])
    assert len(refused) == 1
    assert refused[0].startswith(f"checkpoint directory {str(tmp_path / 'c')!r} is in use by "
                                 f"another run (another fit in this process: pid {os.getpid()}")
    assert trainer.global_step == 18 and _steps(tmp_path / "c") == [18]
    assert not (tmp_path / "c" / ".lock").exists()


def test_lock_released_when_fit_raises_and_resume_takes_it_again(tmp_path):
    with pytest.raises(Crash):
        _fit(tmp_path / "c", callbacks=[OneCycle(0.1), CrashAt(8)])
    assert not (tmp_path / "c" / ".lock").exists()
    assert _steps(tmp_path / "c") == [6]
    trainer, _ = _fit(tmp_path / "c", resume="latest")
    assert trainer.resumed_from.endswith("/6") and _steps(tmp_path / "c") == [18]
    assert not (tmp_path / "c" / ".lock").exists()


def _write_lock(directory, **owner):
    directory.mkdir(parents=True, exist_ok=True)
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": "2026-01-01 00:00:00",
             "token": "feed", **owner}
    (directory / ".lock").write_text(json.dumps(owner))


def test_stale_and_foreign_locks(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _write_lock(tmp_path / "dead", pid=gone.pid)
    with pytest.warns(RuntimeWarning, match=rf"no longer running \(pid {gone.pid} on host"):
        _fit(tmp_path / "dead", epochs=1)
    assert _steps(tmp_path / "dead") == [6] and not (tmp_path / "dead" / ".lock").exists()
    # this process's pid, but a lock this process never took (a restarted container)
    _write_lock(tmp_path / "restarted")
    with pytest.warns(RuntimeWarning, match="no longer running"):
        path = checkpoint_lock.acquire(tmp_path / "restarted")
    checkpoint_lock.release(path)
    # another host: cannot be checked, refused with the command that removes it
    _write_lock(tmp_path / "foreign", host="elsewhere-7", pid=1)
    lock = tmp_path / "foreign" / ".lock"
    with pytest.raises(CheckpointError, match=rf"pid 1 on host 'elsewhere-7', started 2026-01-01"
                                              rf" 00:00:00; this is host .*rm {lock}$"):
        _fit(tmp_path / "foreign", epochs=1)
    assert lock.exists() and _steps(tmp_path / "foreign") == []
    # a live process on this host (the parent of this one) keeps its lock
    _write_lock(tmp_path / "live", pid=os.getppid())
    with pytest.raises(CheckpointError, match="another process: pid"):
        _fit(tmp_path / "live", epochs=1)


# ------------------------------------------------------------------ settings at resume
def test_changed_callback_setting_is_listed_and_can_be_accepted(tmp_path):
    with pytest.raises(Crash):
        _fit(tmp_path / "c", callbacks=[OneCycle(0.1), CrashAt(8)])
    with pytest.raises(CheckpointError) as e:
        _fit(tmp_path / "c", callbacks=[OneCycle(0.5, pct_start=0.25)], resume="latest")
    message = str(e.value)
    assert f"checkpoint {tmp_path / 'c' / '6'} was written with other settings" in message
    assert "\n  OneCycle/max_lr: checkpoint 0.1, this fit 0.5\n" in message
    assert "\n  OneCycle/pct_start: checkpoint 0.3, this fit 0.25\n" in message
    assert "allow_changed_settings=True" in message
    assert not (tmp_path / "c" / ".lock").exists() and _steps(tmp_path / "c") == [6]

    d = make_data()
    trainer = Trainer(loss_fn, max_epochs=3, callbacks=[OneCycle(0.5, pct_start=0.25),
                                                        ModelCheckpoint(tmp_path / "c")],
                      enable_progress_bar=False, log_every_n_steps=3)
    with pytest.warns(UserWarning, match=r"with changed settings \(allow_changed_settings=True"
                                         r"\):\n  OneCycle/max_lr: checkpoint 0.1, this fit 0.5"):
        trainer.fit(make_state(), ArrayDataset(d, 16, seed=1), resume_from="latest",
                    allow_changed_settings=True)
    assert trainer.global_step == 18
    with pytest.raises(ValueError, match="allow_changed_settings=True only applies when "
                                         "resuming; pass resume_from"):
        trainer.fit(make_state(), ArrayDataset(d, 16, seed=1), allow_changed_settings=True)


def test_changed_seed_is_listed(tmp_path):
    _fit(tmp_path / "c", seed=3, epochs=2)
    with pytest.raises(CheckpointError, match=r"\n  seed: checkpoint 3, this fit 4\n"):
        _fit(None, seed=4, epochs=2, resume=tmp_path / "c")
    same, _ = _fit(None, seed=3, epochs=2, resume=tmp_path / "c")  # unchanged: no complaint
    assert same.global_step == 12


def test_checkpoint_without_saved_settings_still_resumes(tmp_path):
    with pytest.raises(Crash):
        _fit(tmp_path / "c", callbacks=[OneCycle(0.1), CrashAt(8)])
    meta_file = tmp_path / "c" / "6" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    del meta["settings"]  # as written before settings were saved
    meta_file.write_text(json.dumps(meta))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trainer, _ = _fit(tmp_path / "c", callbacks=[OneCycle(0.5)], resume="latest")
    assert trainer.global_step == 18


# ------------------------------------------------------------------ damaged checkpoints
def test_damaged_checkpoint_message_is_short_and_names_older_steps(tmp_path, capfd,
                                                                   monkeypatch):
    _fit(tmp_path / "c", save_top_k=-1)
    assert _steps(tmp_path / "c") == [6, 12, 18]
    for f in (tmp_path / "c" / "18" / "state").rglob("manifest.ocdbt"):
        f.write_bytes(b"garbage")
    capfd.readouterr()
    pending_at_close, close = [], asyncio.BaseEventLoop.close

    def counting_close(loop):
        pending_at_close.append(sum(not t.done() for t in asyncio.all_tasks(loop)))
        close(loop)

    monkeypatch.setattr(asyncio.BaseEventLoop, "close", counting_close)
    with pytest.raises(CheckpointError) as e:
        _fit(tmp_path / "c", resume="latest")
    monkeypatch.undo()
    message = str(e.value)
    older = tmp_path / "c" / "12"
    assert message.startswith(f"checkpoint {tmp_path / 'c' / '18'} is damaged and could not "
                              "be read (ValueError: DATA_LOSS: ")
    assert message.endswith(f"older checkpoints there: steps [6, 12]; resume from the newest "
                            f"with resume_from={str(older)!r}")
    assert len(message) < 600 and "tensorstore_spec" not in message
    assert e.value.__cause__ is None and e.value.__suppress_context__
    err = capfd.readouterr().err
    assert "Event loop is closed" not in err and "Traceback" not in err
    # The noise came from array reads still pending when orbax closed its event loop after
    # the first failed one (how many were left depends on timing); each called back into the
    # closed loop when it finished. Now every loop closes with no task left.
    assert pending_at_close and not any(pending_at_close)
    # the hint works (without a ModelCheckpoint, the later damaged step is not in the way)
    trainer, _ = _fit(None, resume=older)
    assert trainer.resumed_from == str(older) and trainer.global_step == 18


# ------------------------------------------------------------------ non-finite scores
class NaNFromEpoch:
    """Validation batches whose inputs are NaN from the `epoch`-th validation on (training
    stays finite, so only the monitored val_loss goes bad)."""

    def __init__(self, epoch):
        self.epoch, self.calls = epoch, 0
        self.data = make_data(48, seed=1)

    def __iter__(self):
        self.calls += 1
        x = self.data["x"] * (np.nan if self.calls > self.epoch else 1.0)
        yield {"x": x.astype(np.float32), "y": self.data["y"]}


@pytest.mark.parametrize("save_top_k", [0, 1])
def test_nan_score_is_never_best_and_last_finite_checkpoint_is_kept(tmp_path, save_top_k):
    with pytest.warns(RuntimeWarning) as seen:
        trainer, _ = _fit(tmp_path / "c", epochs=4, val=NaNFromEpoch(2), monitor="val_loss",
                          save_top_k=save_top_k)
    nan_warnings = [str(w.message) for w in seen if "is not finite" in str(w.message)]
    assert nan_warnings == [f"ModelCheckpoint: val_loss=nan at step {s} is not finite; this "
                            "checkpoint is never ranked best, and the newest checkpoint with a "
                            "finite val_loss is kept" for s in (18, 24)]
    ckpt = trainer.callbacks[-1]
    assert math.isnan(trainer.callback_metrics["val_loss"])
    assert ckpt.best_step in (6, 12) and math.isfinite(ckpt.best_score)
    # step 12 (the last finite) survives save_last's pruning; step 24 is the last
    expected = {12, 24} | ({ckpt.best_step} if save_top_k else set())
    assert set(_steps(tmp_path / "c")) == expected
    if save_top_k == 0:
        assert ckpt.best_step == 12  # ranked, but only kept as the newest finite one


def test_nan_best_from_an_older_checkpoint_is_replaced():
    ckpt = ModelCheckpoint("unused", monitor="val_loss")
    ckpt.load_state_dict({"best_step": 12, "best_score": float("nan")})
    assert ckpt.best_step is None and ckpt.best_score is None
    ckpt.load_state_dict({"best_step": 6, "best_score": 0.5})
    assert (ckpt.best_step, ckpt.best_score) == (6, 0.5)


def test_plateau_and_checkpoint_resume_together_after_a_crash(tmp_path):
    """Settings of several stateful callbacks round-trip without a false difference."""
    callbacks = lambda: [OneCycle(0.1), ReduceLROnPlateau("train_loss", patience=1, check_on="epoch")]  # noqa
    with pytest.raises(Crash):
        _fit(tmp_path / "c", callbacks=callbacks() + [CrashAt(8)], seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        trainer, _ = _fit(tmp_path / "c", callbacks=callbacks(), seed=2, resume="latest")
    assert trainer.global_step == 18
