"""CSVLogger: one ``metrics.csv`` per run, readable with the csv module, pandas or a spreadsheet."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from typing import Any

from flax_lr_callbacks.loggers.base import RunFolder, VersionedRun, is_writer_process
from flax_lr_callbacks.validation import check_count

__all__ = ["CSVLogger"]


class CSVLogger(VersionedRun):
    """Writes ``save_dir/name/version_N/metrics.csv`` and ``hparams.yaml``, as Lightning's
    `CSVLogger` does (same folders and versions as `TensorBoardLogger`).

    Columns are ``step`` and every metric name, sorted (``epoch``, ``lr``, ``train_loss``,
    ``val_loss``, ...); a row holds what was logged for one step, and a cell is empty where
    a metric was not logged at that step. Values logged for the same step in separate calls
    share a row unless a name repeats. When a new metric appears, the file is rewritten with
    the wider header. Rows are buffered and written once `flush_logs_every_n_steps` rows are
    waiting and a later step is logged, and at `finalize`. Only JAX process 0 writes; no pandas needed.

    Args:
      save_dir: folder that holds the runs (created if missing).
      name: optional experiment sub-folder. Default None.
      version: None (default): the next free ``version_N``; an int or a str: that version.
      flush_logs_every_n_steps: buffered rows before a write (>= 1). Default 100.

    Example:
      >>> logger = CSVLogger("runs/demo")  # doctest: +SKIP
      >>> logger.log_metrics({"train_loss": 0.7, "epoch": 0}, step=49)  # doctest: +SKIP
      >>> logger.finalize()  # doctest: +SKIP
    """

    METRICS_FILE = "metrics.csv"
    HPARAMS_FILE = "hparams.yaml"

    def __init__(self, save_dir: str | os.PathLike, name: str | None = None,
                 version: int | str | None = None, *, flush_logs_every_n_steps: int = 100):
        flush_logs_every_n_steps = check_count("flush_logs_every_n_steps",
                                               flush_logs_every_n_steps)
        self._run = RunFolder(save_dir, name, version)
        self.flush_logs_every_n_steps = flush_logs_every_n_steps
        self._rows: list[dict[str, Any]] = []
        self._open: dict[int, int] = {}  # step -> index of its latest buffered row
        self._columns: list[str] = []

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.log_dir, self.METRICS_FILE)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Adds `metrics` to the row of `step` (a new row if a name is already there)."""
        if not is_writer_process():
            return
        if not self._rows and not self._columns:
            self._run.ensure_dir()
        values = {k: v if isinstance(v, int) and not isinstance(v, bool) else float(v)
                  for k, v in metrics.items()}
        step = int(step)
        # Flush only when a later step starts: calls for one log window may come in any order
        # (train metrics at its end, then the LR values of each step in it).
        if len(self._rows) >= self.flush_logs_every_n_steps and step > max(self._open):
            self.save()
        i = self._open.get(step)
        if i is not None and not values.keys() & self._rows[i].keys():
            self._rows[i].update(values)
        else:
            self._open[step] = len(self._rows)
            self._rows.append({"step": step, **values})

    def log_hyperparams(self, params: Mapping[str, Any],
                        metrics: Mapping[str, float] | None = None) -> None:
        """Writes `params` to ``hparams.yaml`` (one ``key: value`` line each).

        `metrics` are already in ``metrics.csv`` (the Trainer passes the last validation
        values), so they are not written again.
        """
        if not is_writer_process():
            return
        folder = self._run.ensure_dir()
        with open(os.path.join(folder, self.HPARAMS_FILE), "w") as f:
            for key, value in params.items():
                if not isinstance(value, (int, float, str, bool)) or value is None:
                    value = str(value)
                # a JSON scalar is a valid YAML scalar (strings double-quoted and escaped)
                f.write(f"{json.dumps(str(key))}: {json.dumps(value)}\n")

    def save(self) -> None:
        """Writes the buffered rows (rewriting the file when new columns appeared)."""
        if not self._rows:
            return
        path = os.path.join(self._run.ensure_dir(), self.METRICS_FILE)
        rows = sorted(self._rows, key=lambda r: r["step"])  # stable: call order within a step
        new = sorted({k for r in rows for k in r} - set(self._columns))
        if new:
            old = []
            if self._columns and os.path.exists(path):
                with open(path, newline="") as f:
                    old = list(csv.DictReader(f))
            self._columns = sorted(set(self._columns) | set(new))
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, self._columns)
                writer.writeheader()
                writer.writerows(old)
                writer.writerows(rows)
        else:
            with open(path, "a", newline="") as f:
                csv.DictWriter(f, self._columns).writerows(rows)
        self._rows, self._open = [], {}

    def finalize(self) -> None:
        """Writes what is buffered; the run is complete (the next call starts a new one)."""
        self.save()
        self._columns = []
        self._run.end_run()

    def __repr__(self) -> str:
        return f"CSVLogger({self.save_dir!r}, name={self.name!r})"
