"""TensorBoardLogger: scalars, hyperparameters and figures through tensorboardX."""

from __future__ import annotations

import os
import queue
import threading
import uuid
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

__all__ = ["TensorBoardLogger"]


class TensorBoardLogger:
    """Writes one TensorBoard event file per run into `log_dir`.

    The file name carries a unique suffix, so two runs into one folder never share a file.
    Only process 0 writes when several JAX processes run. The writer is flushed and closed
    at fit end (`finalize`); read the events after that.

    Building and writing summaries costs tens of microseconds per scalar; at a log point that
    is hundreds of scalars (the LR monitor logs every step) while the device waits for the next
    dispatch. With `background` (default) the calls only queue the values and one worker
    thread writes them, so the training loop goes on at once.

    Args:
      log_dir: folder for the event file (created if missing).
      flush_secs: seconds between background flushes. Default 10.
      background: write from a worker thread (default True); False writes in the caller.

    Example:
      >>> logger = TensorBoardLogger("runs/demo")  # doctest: +SKIP
    """

    def __init__(self, log_dir: str | os.PathLike, *, flush_secs: int = 10,
                 background: bool = True):
        self.log_dir = os.fspath(log_dir)
        self.flush_secs = flush_secs
        self.background = background
        self._writer = None
        self._queue: queue.Queue | None = None
        self._worker: threading.Thread | None = None
        self._error: BaseException | None = None

    def _submit(self, fn: Any, *args: Any) -> None:
        if self._error is not None:
            raise RuntimeError("TensorBoardLogger's writer thread failed") from self._error
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
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, global_step=step)

    @property
    def writer(self):
        """The tensorboardX `SummaryWriter`, opened on first use."""
        if self._writer is None:
            from tensorboardX import SummaryWriter

            os.makedirs(self.log_dir, exist_ok=True)
            self._writer = SummaryWriter(
                self.log_dir, flush_secs=self.flush_secs,
                filename_suffix=f".{uuid.uuid4().hex[:8]}",
            )
        return self._writer

    @staticmethod
    def _is_writer_process() -> bool:
        return jax.process_index() == 0

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Adds one scalar per entry at `step`."""
        if not self._is_writer_process():
            return
        self._submit(self._add_scalars, {k: float(v) for k, v in metrics.items()}, int(step))

    def log_hyperparams(self, params: Mapping[str, Any],
                        metrics: Mapping[str, float] | None = None) -> None:
        """Records the run's configuration (and optionally final metrics) in the HParams tab."""
        if not self._is_writer_process():
            return
        from tensorboardX.summary import hparams

        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                 for k, v in params.items()}
        metrics = {k: float(v) for k, v in (metrics or {}).items()}
        def write():
            # SummaryWriter.add_hparams opens a second writer in a sub-folder without our
            # unique file suffix; writing the three summaries here keeps one file per run.
            for summary in hparams(clean, metrics):
                self.writer.file_writer.add_summary(summary)
            self._add_scalars(metrics, 0)

        self._submit(write)

    def log_figure(self, tag: str, figure: Any, step: int = 0) -> None:
        """Adds a matplotlib figure as an image.

        The figure is rendered here, in the caller's thread: matplotlib's text layout is not
        thread-safe, and the caller may draw another figure while the writer works.
        """
        if not self._is_writer_process():
            return
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else (
            FigureCanvasAgg(figure))
        canvas.draw()
        image = np.asarray(canvas.buffer_rgba())[..., :3].copy()
        self._submit(lambda: self.writer.add_image(tag, image, global_step=step,
                                                   dataformats="HWC"))

    def finalize(self) -> None:
        """Writes what is queued, then flushes and closes; a later log call opens a new file."""
        if self._worker is not None:
            self._queue.put(None)
            self._worker.join()
            self._worker = self._queue = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError("TensorBoardLogger's writer thread failed") from error
