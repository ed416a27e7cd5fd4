"""TensorBoardLogger: versioned run folders of scalars, hyperparameters and figures (tensorboardX)."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from flax_lr_callbacks.loggers.base import (LoggerError, RunFolder, VersionedRun,
                                            is_writer_process)
from flax_lr_callbacks.loggers.writer import EventFile, WriterStalled, WriterThread
from flax_lr_callbacks.validation import check_bool, check_number

__all__ = ["TensorBoardLogger"]


class TensorBoardLogger(VersionedRun):
    """Writes each run into its own TensorBoard run folder, ``save_dir/name/version_N``.

    The layout is Lightning's: with ``name=None`` the versions go straight into `save_dir`
    (``TensorBoardLogger("runs/fmnist")`` writes ``runs/fmnist/version_0``, the next run
    ``version_1``), so two fits into one folder show as two runs and never overwrite each
    other's curves. A run is everything logged until `finalize` (the Trainer calls it at the
    end of `fit`); with ``version=None`` the next fit claims the next free version. Point
    ``tensorboard --logdir`` at `save_dir`. Only JAX process 0 writes.

    What a fit with `LearningRateMonitor` writes: ``lr`` (``lr/<group>`` with several optimizer
    groups), ``momentum`` or ``b1``, ``weight_decay`` when injected, ``train_loss`` and
    ``train_<metric>`` at log points, ``val_loss`` / ``val_<metric>`` per epoch, ``epoch``, and
    at the end the HParams entry (the run's settings, compared by the final validation
    metrics; see `flax_lr_callbacks.loggers.run_config`). The step axis is the 0-based global
    step at which a value applied.

    Building and writing summaries costs tens of microseconds per scalar; at a log point that
    is hundreds of scalars (the LR monitor logs every step) while the device waits for the next
    dispatch. With `background` (default) the calls only queue the values and one worker
    thread writes them, so the training loop goes on at once.

    Failures are loud and bounded in time. `setup` (called by `Trainer.fit` before the first
    step) creates the run folder and the event file, so an unwritable `save_dir` fails before
    training. A write error found by the worker thread (disk full, run folder deleted) or a
    dead thread is raised as `LoggerError` (logger, event file, reason) by the next call;
    the writer then drops further writes, so nothing waits on it. No call waits longer than
    `stall_timeout` for a writer that makes no progress. Unlike tensorboardX's
    `SummaryWriter` (whose own thread dies silently on such errors and then blocks the
    caller), events are written by this logger's thread directly; `event_file` names the
    file.

    Args:
      save_dir: folder that holds the runs (created if missing).
      name: optional experiment sub-folder of `save_dir`. Default None (no sub-folder).
      version: None (default): the next free ``version_N``; an int N: ``version_N``; a str:
        that folder name. A given version is reused as it is (its files are kept; a new event
        file is added).
      flush_secs: seconds between flushes to disk (also without `background`). Default 10.
      background: write from a worker thread (default True); False writes in the caller.

    Example:
      >>> logger = TensorBoardLogger("runs/demo", name="sgd")  # doctest: +SKIP
      >>> logger.log_dir  # doctest: +SKIP
      'runs/demo/sgd/version_0'
    """

    #: Seconds `log_*` and `finalize` wait for a background writer that makes no progress (a
    #: hung disk) before raising `LoggerError`; a class attribute, so tests can shorten it.
    stall_timeout: float = 30.0

    def __init__(self, save_dir: str | os.PathLike, name: str | None = None,
                 version: int | str | None = None, *, flush_secs: int = 10,
                 background: bool = True):
        flush_secs = check_number("flush_secs", flush_secs, low=0, low_open=True)
        background = check_bool("background", background)
        self._run = RunFolder(save_dir, name, version)
        self.flush_secs = flush_secs
        self.background = background
        self._file: EventFile | None = None  # this run's event file, opened by `setup`
        self._tags: set[str] = set()  # scalar tags written in this run
        self._thread: WriterThread | None = None
        self._next_flush = 0.0  # when the caller flushes next (background=False)
        self._failure: LoggerError | None = None  # raised at once at every later call
        self._reported = False  # a call raised `_failure` already

    @property
    def event_file(self) -> str | None:
        """The path of this run's event file (None outside a run: before `setup` or the first
        write, and after `finalize`)."""
        return None if self._file is None else self._file.path

    def setup(self) -> None:
        """Creates this run's folder and event file; `LoggerError` naming the path if it
        cannot. `Trainer.fit` calls it before the first step; a first log call does too."""
        if self._file is not None or not is_writer_process():
            return
        folder = self._prepare_dir()
        try:
            self._file = EventFile(folder, f".{uuid.uuid4().hex[:8]}")
        except OSError as e:
            raise LoggerError.wrap(self, "create an event file in", os.path.abspath(folder),
                                   e) from e

    def _fail(self, error: BaseException) -> LoggerError:
        """Records `error` as this run's failure (the first one counts) and returns it."""
        if self._failure is None:
            path = os.path.abspath(self._file.path if self._file is not None
                                   else self._run.root_dir)
            if isinstance(error, WriterStalled):
                self._failure = LoggerError(
                    f"TensorBoardLogger could not write to {path}: {error}; raising instead "
                    "of waiting on it (TensorBoardLogger.stall_timeout)", path=path)
                self._failure.__cause__ = error
            else:
                self._failure = LoggerError.wrap(self, "write to", path, error)
        return self._failure

    def _fail_from(self, thread: WriterThread) -> None:
        if thread.error is not None:
            self._fail(thread.error)
        elif thread.died:
            self._fail(RuntimeError("the writer thread stopped unexpectedly"))

    def _check(self) -> None:
        """Raises this run's failure: a write error kept by the thread, or a dead thread."""
        thread = self._thread
        if self._failure is None and thread is not None:
            self._fail_from(thread)
        if self._failure is not None:
            self._reported = True
            raise self._failure

    def _submit(self, fn: Any, *args: Any) -> None:
        """Runs ``fn(event_file, *args)`` now or on the writer thread (`background`). The file
        goes with the job: a writer left behind by `finalize` never writes into a later run."""
        self._check()
        self.setup()
        if not self.background:
            try:
                self._write(self._file, fn, args)
                if time.monotonic() >= self._next_flush:
                    self._file.flush()
                    self._next_flush = time.monotonic() + self.flush_secs
            except Exception as e:
                self._fail(e)
                self._check()
            return
        if self._thread is None:
            self._thread = WriterThread(self._file.flush, self.flush_secs,
                                        name="tensorboard-writer", finish=self._file.close,
                                        stall_secs=self.stall_timeout)
        try:
            self._thread.submit(self._write, self._file, fn, args)
        except WriterStalled as e:
            self._fail(e)
            self._check()

    @staticmethod
    def _write(file: EventFile, fn: Any, args: tuple) -> None:
        fn(file, *args)
        file.check()

    @staticmethod
    def _add_scalars(file: EventFile, metrics: dict[str, float], step: int,
                     wall_time: float) -> None:
        from flax_lr_callbacks.loggers.event_records import series_records

        file.append(series_records({k: [v] for k, v in metrics.items()}, [step], wall_time))

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Adds one scalar per entry at `step`."""
        if not is_writer_process():
            return
        values = {k: float(v) for k, v in metrics.items()}
        self._submit(self._add_scalars, values, int(step), time.time())
        self._tags.update(values)

    def log_series(self, series: Mapping[str, Any], steps: Any) -> None:
        """Adds ``series[tag][i]`` at ``steps[i]`` for every tag: a window of per-step values
        (the LR monitor's), encoded in one vectorised pass on the writer thread."""
        if not is_writer_process():
            return
        steps = np.asarray(steps, np.int64)
        columns = {k: np.asarray(v, np.float32) for k, v in series.items()}
        for tag, values in columns.items():
            if values.shape != steps.shape:
                raise ValueError(f"log_series: {tag!r} has {values.shape} values for "
                                 f"{steps.shape} steps")
        self._submit(self._add_series, columns, steps, time.time())
        self._tags.update(columns)

    @staticmethod
    def _add_series(file: EventFile, columns: dict[str, np.ndarray], steps: np.ndarray,
                    wall_time: float) -> None:
        from flax_lr_callbacks.loggers.event_records import series_records

        file.append(series_records(columns, steps, wall_time))

    def log_hyperparams(self, params: Mapping[str, Any],
                        metrics: Mapping[str, float] | None = None) -> None:
        """Records the run's settings in the HParams tab, compared by `metrics`.

        A metric already logged as a scalar in this run (e.g. the last ``val_loss``) is
        referenced, not written again, so the Scalars page gets no one-point charts; others
        are written once at step 0. Values that are not int, float, str or bool are shown
        as their `str`.
        """
        if not is_writer_process():
            return
        from tensorboardX.summary import hparams

        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                 for k, v in params.items()}
        metrics = {k: float(v) for k, v in (metrics or {}).items()}
        new = {k: v for k, v in metrics.items() if k not in self._tags}
        wall_time = time.time()

        def write(file):
            # tensorboardX's add_hparams would open a second event file in a sub-folder;
            # the three summaries go into the run's one file instead.
            for summary in hparams(clean, metrics):
                file.add(summary, 0, wall_time)
            self._add_scalars(file, new, 0, wall_time)

        self._submit(write)
        self._tags.update(new)

    def log_figure(self, tag: str, figure: Any, step: int = 0) -> None:
        """Adds a matplotlib figure as an image.

        The figure is rendered here, in the caller's thread: matplotlib's text layout is not
        thread-safe, and the caller may draw another figure while the writer works. A figure
        that fails to render raises here and queues nothing.
        """
        if not is_writer_process():
            return
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else (
            FigureCanvasAgg(figure))
        canvas.draw()
        image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
        step, wall_time = int(step), time.time()

        def write(file):
            from tensorboardX.summary import image as image_summary

            file.add(image_summary(tag, image, dataformats="HWC"), step, wall_time)

        self._submit(write)

    def finalize(self) -> None:
        """Writes what is queued, then flushes and closes: the run is complete. A later log
        call starts the next run (the next free version when `version` was None).

        Bounded in time: a writer that makes no progress for `stall_timeout` seconds is left
        behind. Raises `LoggerError` for a failure no earlier call reported (a write error
        found at the last flush, a deleted event file), after closing.
        """
        try:
            if self._thread is not None:  # its `finish` closes the file
                try:
                    self._thread.close()
                except WriterStalled as e:  # left behind; it closes the file if it recovers
                    self._fail(e)
                self._fail_from(self._thread)
            if self._file is not None and not (self._thread is not None
                                               and self._thread.alive):
                try:
                    self._file.close()  # without a thread, or after it died
                except Exception as e:
                    self._fail(e)
        finally:
            failure = None if self._reported else self._failure
            self._file = self._thread = None
            self._failure, self._reported, self._next_flush = None, False, 0.0
            self._tags = set()
            self._run.end_run()
        if failure is not None:
            raise failure

    def __repr__(self) -> str:
        return f"TensorBoardLogger({self.save_dir!r}, name={self.name!r})"
