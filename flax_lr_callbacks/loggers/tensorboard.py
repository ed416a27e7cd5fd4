"""TensorBoardLogger: versioned run folders of scalars, hyperparameters and figures (tensorboardX)."""

from __future__ import annotations

import os
import queue
import threading
import time
import uuid
from collections.abc import Mapping
from typing import Any

import numpy as np

from flax_lr_callbacks.loggers.base import RunFolder, VersionedRun, is_writer_process
from flax_lr_callbacks.loggers.event_file import EventFile

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

    Events are written by `EventFile`, which encodes a window of scalars in one vectorised
    NumPy pass (about 3 us per value; tensorboardX's `add_scalar` takes about 45 us, more than
    a small model's step when the LR monitor logs every step). `log_series` hands a whole
    window over at once. With `background` (default) the calls only queue the values and one
    worker thread writes them, so the training loop goes on at once.

    Args:
      save_dir: folder that holds the runs (created if missing).
      name: optional experiment sub-folder of `save_dir`. Default None (no sub-folder).
      version: None (default): the next free ``version_N``; an int N: ``version_N``; a str:
        that folder name. A given version is reused as it is (its files are kept; a new event
        file is added).
      flush_secs: seconds between background flushes. Default 10.
      background: write from a worker thread (default True); False writes in the caller.

    Example:
      >>> logger = TensorBoardLogger("runs/demo", name="sgd")  # doctest: +SKIP
      >>> logger.log_dir  # doctest: +SKIP
      'runs/demo/sgd/version_0'
    """

    def __init__(self, save_dir: str | os.PathLike, name: str | None = None,
                 version: int | str | None = None, *, flush_secs: int = 10,
                 background: bool = True):
        if isinstance(flush_secs, bool) or not isinstance(flush_secs, (int, float)) or (
                flush_secs <= 0):
            raise ValueError(f"flush_secs must be a number > 0, got flush_secs={flush_secs!r}")
        self._run = RunFolder(save_dir, name, version)
        self.flush_secs = flush_secs
        self.background = background
        self._writer = None
        self._folder: str | None = None
        self._tags: set[str] = set()  # scalar tags written in this run
        self._queue: queue.Queue | None = None
        self._worker: threading.Thread | None = None
        self._error: BaseException | None = None

    def _submit(self, fn: Any, *args: Any) -> None:
        if self._error is not None:
            raise RuntimeError("TensorBoardLogger's writer thread failed") from self._error
        if self._folder is None:
            self._folder = self._run.ensure_dir()
        if not self.background:
            fn(*args)
            return
        if self._worker is None:
            self._queue = queue.Queue()
            self._worker = threading.Thread(target=self._work, name="tensorboard-writer",
                                            daemon=True)
            self._worker.start()
        self._queue.put((fn, args))

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                item[0](*item[1])
            except BaseException as e:  # reported on the next call or at finalize
                self._error = e

    def _add_scalars(self, metrics: dict[str, float], step: int) -> None:
        self.writer.write_scalars({k: np.float32([v]) for k, v in metrics.items()},
                                  np.int64([step]))

    @property
    def writer(self) -> EventFile:
        """The run's `EventFile`, opened on first use (scalars are encoded in bulk there)."""
        if self._writer is None:
            self._writer = EventFile(self._folder, suffix=f".{uuid.uuid4().hex[:8]}",
                                     flush_secs=self.flush_secs)
        return self._writer

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Adds one scalar per entry at `step`."""
        if not is_writer_process():
            return
        values = {k: float(v) for k, v in metrics.items()}
        self._tags.update(values)
        self._submit(self._add_scalars, values, int(step))

    def log_series(self, series: Mapping[str, Any], steps: Any) -> None:
        """Adds ``series[tag][i]`` at ``steps[i]`` for every tag: a window of per-step values
        (the LR monitor's) encoded in one vectorised pass by the writer thread."""
        if not is_writer_process():
            return
        steps = np.asarray(steps, np.int64)
        columns = {k: np.asarray(v, np.float32) for k, v in series.items()}
        for tag, values in columns.items():
            if values.shape != steps.shape:
                raise ValueError(f"log_series: {tag!r} has {values.shape} values for "
                                 f"{steps.shape} steps")
        self._tags.update(columns)
        self._submit(self._write_series, columns, steps, time.time())

    def _write_series(self, columns: dict[str, np.ndarray], steps: np.ndarray,
                       wall_time: float) -> None:
        self.writer.write_scalars(columns, steps, wall_time)

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
        self._tags.update(new)

        def write():
            # SummaryWriter.add_hparams opens a second writer in a sub-folder without our
            # unique file suffix; writing the three summaries here keeps one file per run.
            for summary in hparams(clean, metrics):
                self.writer.write_summary(summary, 0)
            self._add_scalars(new, 0)

        self._submit(write)

    def log_figure(self, tag: str, figure: Any, step: int = 0) -> None:
        """Adds a matplotlib figure as an image.

        The figure is rendered here, in the caller's thread: matplotlib's text layout is not
        thread-safe, and the caller may draw another figure while the writer works.
        """
        if not is_writer_process():
            return
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else (
            FigureCanvasAgg(figure))
        canvas.draw()
        image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
        from tensorboardX.summary import image as image_summary

        self._submit(lambda: self.writer.write_summary(
            image_summary(tag, image, dataformats="HWC"), step))

    def finalize(self) -> None:
        """Writes what is queued, then flushes and closes: the run is complete. A later log
        call starts the next run (the next free version when `version` was None)."""
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()
            self._worker = self._queue = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self._folder = None
        self._tags = set()
        self._run.end_run()
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError("TensorBoardLogger's writer thread failed") from error
