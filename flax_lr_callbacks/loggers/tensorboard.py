"""TensorBoardLogger: scalars, hyperparameters and figures through tensorboardX."""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from typing import Any

import jax

__all__ = ["TensorBoardLogger"]


class TensorBoardLogger:
    """Writes one TensorBoard event file per run into `log_dir`.

    The file name carries a unique suffix, so two runs into one folder never share a file.
    Only process 0 writes when several JAX processes run. The writer is flushed and closed
    at fit end (`finalize`); read the events after that.

    Args:
      log_dir: folder for the event file (created if missing).
      flush_secs: seconds between background flushes. Default 10.

    Example:
      >>> logger = TensorBoardLogger("runs/demo")  # doctest: +SKIP
    """

    def __init__(self, log_dir: str | os.PathLike, *, flush_secs: int = 10):
        self.log_dir = os.fspath(log_dir)
        self.flush_secs = flush_secs
        self._writer = None

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
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, float(value), global_step=int(step))

    def log_hyperparams(self, params: Mapping[str, Any],
                        metrics: Mapping[str, float] | None = None) -> None:
        """Records the run's configuration (and optionally final metrics) in the HParams tab."""
        if not self._is_writer_process():
            return
        from tensorboardX.summary import hparams

        clean = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                 for k, v in params.items()}
        metrics = {k: float(v) for k, v in (metrics or {}).items()}
        # SummaryWriter.add_hparams opens a second writer in a sub-folder without our unique
        # file suffix; writing the three summaries here keeps one file per run.
        for summary in hparams(clean, metrics):
            self.writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, global_step=0)

    def log_figure(self, tag: str, figure: Any, step: int = 0) -> None:
        """Adds a matplotlib figure as an image."""
        if not self._is_writer_process():
            return
        self.writer.add_figure(tag, figure, global_step=step, close=True)

    def finalize(self) -> None:
        """Flushes and closes the writer; a later log call opens a new file."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
