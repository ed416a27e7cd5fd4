"""Logger failures: raised at once with the logger and the path, never a hang, state kept."""

import errno
import shutil
import threading
import time

import jax
import numpy as np
import pytest
from conftest import loss_fn

from flax_lr_callbacks import (Callback, CSVLogger, LearningRateMonitor, LoggerError,
                               TensorBoardLogger, Trainer)
from flax_lr_callbacks.loggers import writer as writer_lib
from flax_lr_callbacks.plotting import new_figure

STEPS = 12  # two epochs of 6 batches
_reference: dict[int, object] = {}


def fit(logger, data, state, *, callbacks=(), steps=STEPS, resume=None):
    trainer = Trainer(loss_fn, max_epochs=None, max_steps=steps, log_every_n_steps=2,
                      logger=logger,
                      callbacks=[LearningRateMonitor(), *callbacks], enable_progress_bar=False)
    return trainer, trainer.fit(state, data[0], data[1], resume_from=resume)


def reference(steps, data, state):
    """The state after `steps` steps of the same fit without a logger (cached)."""
    if steps not in _reference:
        _reference[steps] = fit(None, data, state, steps=steps)[1]
    return _reference[steps]


def assert_same_state(a, b):
    jax.tree_util.tree_map(np.testing.assert_array_equal, (a.params, a.opt_state),
                           (b.params, b.opt_state))


def within(seconds, fn, *args):
    """fn(*args) in a thread; fails (instead of hanging the suite) if it takes longer."""
    out = {}

    def run():
        try:
            out["value"] = fn(*args)
        except BaseException as e:
            out["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    start = time.monotonic()
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still running after {seconds} s: hung"
    out["seconds"] = time.monotonic() - start
    return out


class Counter(Callback):
    def __init__(self):
        self.steps = 0

    def on_train_batch_end(self, trainer, state):
        self.steps += 1


class At(Callback):
    """Calls `fn(trainer)` once, after step `step`."""

    def __init__(self, step, fn):
        self.step, self.fn = step, fn

    def on_train_batch_end(self, trainer, state):
        if trainer.global_step == self.step:
            self.fn(trainer)


@pytest.mark.parametrize("make", [TensorBoardLogger, CSVLogger])
def test_unwritable_folder_fails_before_any_step(make, data, state, tmp_path):
    """A save_dir under a regular file: LoggerError naming the logger, the full path and the
    OS reason, raised before the first step."""
    (tmp_path / "file").write_text("")
    counter = Counter()
    with pytest.raises(LoggerError) as info:
        fit(make(tmp_path / "file" / "runs"), data, state, callbacks=[counter])
    message = str(info.value)
    assert message.startswith(f"{make.__name__} could not create the folder "
                              f"{tmp_path / 'file' / 'runs'}: Not a directory"), message
    assert isinstance(info.value, OSError) and info.value.errno == errno.ENOTDIR
    assert counter.steps == 0 and info.value.state is None


@pytest.mark.parametrize("make", [TensorBoardLogger, CSVLogger])
def test_read_only_folder_fails_before_any_step(make, data, state, tmp_path, monkeypatch):
    """A folder that exists but refuses writes (the probe file; simulated, since root ignores
    chmod) fails at setup with the run folder and the reason."""
    def refuse(folder):
        raise PermissionError(errno.EACCES, "Permission denied", folder)

    monkeypatch.setattr("flax_lr_callbacks.loggers.run_folder.check_writable", refuse)
    counter = Counter()
    with pytest.raises(LoggerError, match=f"{make.__name__} could not write to its run folder "
                                          f"{tmp_path / 'version_0'}: Permission denied"):
        fit(make(tmp_path), data, state, callbacks=[counter])
    assert counter.steps == 0


def test_list_with_a_bad_logger_closes_the_good_one(data, state, tmp_path):
    """logger=[tb, bad csv]: the CSV error is raised at setup and the TensorBoard file the
    first logger opened is closed."""
    (tmp_path / "file").write_text("")
    tb = TensorBoardLogger(tmp_path / "tb")
    with pytest.raises(LoggerError, match="CSVLogger could not create the folder"):
        fit([tb, CSVLogger(tmp_path / "file")], data, state)
    assert tb.event_file is None  # finalized: the next fit starts a new run


@pytest.mark.parametrize("make", [lambda p: TensorBoardLogger(p),
                                  lambda p: TensorBoardLogger(p, background=False),
                                  lambda p: CSVLogger(p, flush_logs_every_n_steps=1)],
                         ids=["tensorboard", "tensorboard-sync", "csv"])
def test_folder_removed_mid_run(make, data, state, tmp_path):
    """The run folder deleted after step 3: fit raises LoggerError naming the deleted file;
    err.state equals a run of that many steps without a logger."""
    logger = make(tmp_path)
    trainer = None

    def remove(t):
        nonlocal trainer
        trainer = t
        shutil.rmtree(logger.log_dir)

    with pytest.raises(LoggerError) as info:
        fit(logger, data, state, callbacks=[At(3, remove)])
    message = str(info.value)
    assert message.startswith(f"{type(logger).__name__} could not write to "
                              f"{tmp_path / 'version_0'}"), message
    assert "deleted" in message or "No such file or directory" in message, message
    assert trainer.global_step >= 4  # the next log call after the removal found it
    assert f"step {trainer.global_step}; the trained state is err.state" in "".join(
        info.value.__notes__)
    assert_same_state(info.value.state, reference(trainer.global_step, data, state))


def disk_full(real, after):
    """The method `real`, raising ENOSPC after `after` successful calls."""
    calls = []

    def method(*args):
        calls.append(1)
        if len(calls) > after:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args)

    return method


@pytest.mark.parametrize("background", [True, False])
def test_write_error_surfaces_with_state(background, data, state, tmp_path, monkeypatch):
    """The writer raising (disk full) stops the fit at a later log call with the event file,
    the reason and errno; the state equals a run of that many steps."""
    monkeypatch.setattr(writer_lib.EventFile, "append", disk_full(writer_lib.EventFile.append, 5))
    logger = TensorBoardLogger(tmp_path, background=background)
    trainer = Trainer(loss_fn, max_epochs=None, max_steps=STEPS, log_every_n_steps=2,
                      logger=logger,
                      callbacks=[LearningRateMonitor()], enable_progress_bar=False)
    out = within(60, trainer.fit, state, *data)
    error = out.get("error")
    assert isinstance(error, LoggerError), out
    assert str(error).startswith(f"TensorBoardLogger could not write to {tmp_path}/version_0/"
                                 "events.out.tfevents."), str(error)
    assert str(error).endswith(": No space left on device") and error.errno == errno.ENOSPC
    assert isinstance(error.__cause__, OSError)
    assert trainer.global_step < STEPS
    assert_same_state(error.state, reference(trainer.global_step, data, state))


def test_dead_writer_thread_is_an_error(data, state, tmp_path, monkeypatch):
    """A writer thread that ended by itself is reported at the next call, not waited on."""
    monkeypatch.setattr(writer_lib.WriterThread, "_run", lambda self: None)
    out = within(60, fit, TensorBoardLogger(tmp_path), data, state)
    assert isinstance(out.get("error"), LoggerError), out
    assert "the writer thread stopped unexpectedly" in str(out["error"])


def test_stuck_writer_never_hangs_fit(data, state, tmp_path, monkeypatch):
    """A write that never returns (a hung disk): fit still ends, within stall_timeout of the
    end, raising LoggerError with the whole run's state."""
    release = threading.Event()

    def stuck(self, *args):
        release.wait()

    monkeypatch.setattr(writer_lib.EventFile, "add", stuck)
    monkeypatch.setattr(TensorBoardLogger, "stall_timeout", 0.3)
    try:
        out = within(60, fit, TensorBoardLogger(tmp_path), data, state)
    finally:
        release.set()
    error = out.get("error")
    assert isinstance(error, LoggerError), out
    assert "the writer thread made no progress for 0.3 s" in str(error)
    assert "Training finished at step 12" in "".join(error.__notes__)
    assert_same_state(error.state, reference(STEPS, data, state))


def test_full_queue_of_a_stuck_writer_raises_at_the_call(tmp_path, monkeypatch):
    """With the queue full and the writer stuck, log_metrics raises after stall_timeout."""
    release = threading.Event()
    monkeypatch.setattr(writer_lib.EventFile, "append", lambda self, *a: release.wait())
    monkeypatch.setattr(TensorBoardLogger, "stall_timeout", 0.2)
    monkeypatch.setattr(writer_lib, "MAX_QUEUED", 2)
    logger = TensorBoardLogger(tmp_path)
    try:
        def log_many():
            for step in range(10):
                logger.log_metrics({"x": 1.0}, step)

        out = within(30, log_many)
        assert isinstance(out.get("error"), LoggerError), out
        assert "no progress for 0.2 s (2 writes waiting)" in str(out["error"])
        assert within(30, logger.finalize).get("error") is None  # already reported
    finally:
        release.set()


def test_finalize_failure_keeps_state(data, state, tmp_path, monkeypatch):
    """The last flush failing at finalize, after training: LoggerError with err.state equal
    to the trained state of a run without a logger."""
    monkeypatch.setattr(writer_lib.EventFile, "flush", disk_full(writer_lib.EventFile.flush, 0))
    out = within(60, fit, TensorBoardLogger(tmp_path, flush_secs=3600), data, state)
    error = out.get("error")
    assert isinstance(error, LoggerError) and "No space left on device" in str(error), out
    assert_same_state(error.state, reference(STEPS, data, state))


def test_csv_finalize_failure_keeps_state(data, state, tmp_path, monkeypatch):
    """CSVLogger writes its buffered rows at finalize; that write failing keeps the state."""
    monkeypatch.setattr(CSVLogger, "_write_rows", disk_full(CSVLogger._write_rows, 0))
    with pytest.raises(LoggerError, match=f"CSVLogger could not write to "
                                          f"{tmp_path}/version_0/metrics.csv: No space left"
                       ) as info:
        fit(CSVLogger(tmp_path), data, state)
    assert_same_state(info.value.state, reference(STEPS, data, state))


def test_csv_file_deleted_mid_run(tmp_path):
    """metrics.csv deleted while the folder stays: the next write says so (the rows written
    before are gone); later calls raise it again; finalize does not."""
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=1)
    logger.log_metrics({"a": 1.0}, step=0)
    logger.log_metrics({"a": 2.0}, step=1)
    (tmp_path / "version_0" / "metrics.csv").unlink()
    with pytest.raises(LoggerError, match="metrics.csv: the file was deleted during the run"):
        logger.log_metrics({"a": 3.0}, step=2)
    with pytest.raises(LoggerError, match="the file was deleted"):
        logger.log_metrics({"a": 4.0}, step=3)
    logger.finalize()
    logger.log_metrics({"a": 5.0}, step=0)  # a new run works again
    logger.finalize()
    assert (tmp_path / "version_1" / "metrics.csv").read_text().splitlines() == ["a,step",
                                                                                 "5.0,0"]


class Crash(Exception):
    pass


def test_finalize_failure_does_not_hide_the_first_error(data, state, tmp_path, monkeypatch):
    """A callback's crash stays the error raised; the failing finalize becomes a note."""
    monkeypatch.setattr(writer_lib.EventFile, "flush", disk_full(writer_lib.EventFile.flush, 0))

    def crash(trainer):
        raise Crash("boom")

    with pytest.raises(Crash, match="boom") as info:
        fit(TensorBoardLogger(tmp_path, flush_secs=3600), data, state,
            callbacks=[At(3, crash)])
    assert any("The logger's finalize failed too: TensorBoardLogger could not write to"
               in note and "No space left on device" in note for note in info.value.__notes__)


class FailingFinalize:
    """A user's logger whose finalize raises (the Trainer attaches the state all the same)."""

    def log_metrics(self, metrics, step):
        pass

    def log_hyperparams(self, params, metrics=None):
        pass

    def finalize(self):
        raise RuntimeError("upload failed")


def test_custom_logger_finalize_error_keeps_state(data, state):
    """Any error from finalize after training carries the trained state."""
    with pytest.raises(RuntimeError, match="upload failed") as info:
        fit(FailingFinalize(), data, state)
    assert_same_state(info.value.state, reference(STEPS, data, state))


@pytest.mark.parametrize("background", [True, False])
@pytest.mark.parametrize("flush_secs", [float("inf"), float("nan"), 1e300, 0, -1.0])
def test_any_flush_secs_never_hangs(flush_secs, background, data, state, tmp_path):
    """flush_secs=inf made tensorboardX's thread die and fit hang; now every value (set past
    the constructor's check) finishes and every scalar is in the file."""
    from test_tensorboard import read_scalars

    logger = TensorBoardLogger(tmp_path, background=background)
    logger.flush_secs = flush_secs
    out = within(60, fit, logger, data, state)
    assert "error" not in out, out
    assert read_scalars(logger.log_dir)["lr"][0] == list(range(STEPS))


def test_flush_secs_of_a_wrong_type_is_an_error_not_a_hang(data, state, tmp_path):
    """A flush_secs the writer cannot use is a LoggerError naming the cause."""
    logger = TensorBoardLogger(tmp_path)
    logger.flush_secs = "10"
    out = within(60, fit, logger, data, state)
    assert isinstance(out.get("error"), LoggerError), out
    assert "TypeError" in str(out["error"])


def test_figure_failures_do_not_wedge_the_queue(tmp_path, monkeypatch):
    """A figure that fails to render raises in the caller and queues nothing; one that fails
    to encode in the writer is a LoggerError at the next call; finalize returns at once."""
    from test_tensorboard import read_scalars

    logger = TensorBoardLogger(tmp_path)
    fig, ax = new_figure()
    monkeypatch.setattr(fig.canvas, "draw", lambda: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        logger.log_figure("broken", fig)
    logger.log_metrics({"x": 1.0}, step=0)
    logger.finalize()
    assert read_scalars(logger.log_dir)["x"][0] == [0]

    import tensorboardX.summary

    monkeypatch.setattr(tensorboardX.summary, "image", lambda *a, **k: 1 / 0)
    fig2, ax2 = new_figure()
    logger.log_figure("unencodable", fig2)
    deadline = time.monotonic() + 10
    with pytest.raises(LoggerError, match="ZeroDivisionError"):
        while time.monotonic() < deadline:  # the writer reports it to the next call
            logger.log_metrics({"x": 2.0}, step=1)
            time.sleep(0.01)
    assert within(10, logger.finalize)["seconds"] < 5


def test_version_named_file_does_not_loop(tmp_path):
    """A regular file named version_0 is skipped (it made the version claim loop forever)."""
    (tmp_path / "version_0").write_text("")
    out = within(10, lambda: TensorBoardLogger(tmp_path).log_dir)
    assert out["value"] == str(tmp_path / "version_1")


def test_checkpoints_survive_a_logger_failure_and_resume(data, state, tmp_path, monkeypatch):
    """Disk full in the logger mid-run: ModelCheckpoint's writes are complete, and resuming
    from the latest one with a working logger ends bitwise where an unbroken run ends."""
    from flax_lr_callbacks import ModelCheckpoint

    def run(ckpt_dir, logger, resume=False):
        return fit(logger, data, state, callbacks=[ModelCheckpoint(ckpt_dir, every_n_steps=2)],
                   resume="latest" if resume else None)[1]

    full = run(tmp_path / "full", None)
    with monkeypatch.context() as m:
        m.setattr(writer_lib.EventFile, "append", disk_full(writer_lib.EventFile.append, 6))
        with pytest.raises(LoggerError, match="No space left on device") as info:
            run(tmp_path / "broken", TensorBoardLogger(tmp_path / "logs", background=False))
    steps = sorted(int(p.name) for p in (tmp_path / "broken").iterdir() if p.name.isdigit())
    assert steps and 2 <= steps[-1] <= int(info.value.state.step) < STEPS
    resumed = run(tmp_path / "broken", TensorBoardLogger(tmp_path / "logs"), resume=True)
    assert_same_state(resumed, full)


def test_background_writer_flushes_every_flush_secs(tmp_path):
    """Values reach the file within about flush_secs, before finalize (TensorBoard can
    show a run while it trains)."""
    from test_tensorboard import read_scalars

    logger = TensorBoardLogger(tmp_path, flush_secs=0.05)
    logger.log_metrics({"x": 1.0}, step=0)
    time.sleep(0.2)  # the first job is flushed at once; the second within flush_secs
    logger.log_metrics({"x": 2.0}, step=1)
    deadline = time.monotonic() + 10
    while (read_scalars(logger.log_dir).get("x", ([],))[0] != [0, 1]
           and time.monotonic() < deadline):
        time.sleep(0.05)
    assert read_scalars(logger.log_dir)["x"][0] == [0, 1]
    logger.finalize()


def test_a_failed_bulk_write_is_raised_too(data, state, tmp_path, monkeypatch):
    """The LR monitor's windows go through `log_series` (`EventFile.append`): a write error
    there surfaces like any other, with the path and the trained state."""
    monkeypatch.setattr(writer_lib.EventFile, "append",
                        disk_full(writer_lib.EventFile.append, 1))
    with pytest.raises(LoggerError, match="No space left on device") as info:
        fit(TensorBoardLogger(tmp_path / "logs", background=False), data, state)
    assert "events.out.tfevents" in str(info.value)
    assert 2 <= int(info.value.state.step) <= STEPS
