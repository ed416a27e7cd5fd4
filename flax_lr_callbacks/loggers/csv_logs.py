"""CSVLogger: one ``metrics.csv`` per run, readable with the csv module, pandas or a spreadsheet."""

from __future__ import annotations

import csv
import errno
import json
import os
from collections.abc import Mapping
from typing import Any

from flax_lr_callbacks.loggers.base import (LoggerError, RunFolder, VersionedRun,
                                            is_writer_process)
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

    `setup` (called by `Trainer.fit` before the first step) creates the run folder and checks
    it can be written. A write that fails, or a ``metrics.csv`` deleted during the run, raises
    `LoggerError` naming the file and the reason; later calls of the run raise it again and
    `finalize` drops the rows still buffered (the file's state is unknown).

    Args:
      save_dir: folder that holds the runs (created if missing).
      name: optional experiment sub-folder. Default None.
      version: None (default): the next free ``version_N``; an int or a str: that version
        (a ``metrics.csv`` already there, as after a resume, is continued, not truncated;
        Lightning's CSVLogger overwrites it).
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
        self._columns: list[str] = []  # the header of this run's metrics.csv, once written
        self._folder: str | None = None  # this run's folder, checked by `setup`
        self._failure: LoggerError | None = None  # raised again at every later call

    @property
    def metrics_path(self) -> str:
        return os.path.join(self.log_dir, self.METRICS_FILE)

    def setup(self) -> None:
        """Creates this run's folder and checks it can be written (`LoggerError` naming the
        path if not). `Trainer.fit` calls it before the first step; a first log call does
        too."""
        if self._failure is not None:
            raise self._failure
        if self._folder is None and is_writer_process():
            self._folder = self._prepare_dir()

    def _fail(self, path: str, error: BaseException) -> None:
        self._failure = LoggerError.wrap(self, "write to", os.path.abspath(path), error)
        raise self._failure

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Adds `metrics` to the row of `step` (a new row if a name is already there)."""
        if not is_writer_process():
            return
        self.setup()
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
        self.setup()
        lines = []
        for key, value in params.items():
            if not isinstance(value, (int, float, str, bool)) or value is None:
                value = str(value)
            # a JSON scalar is a valid YAML scalar (strings double-quoted and escaped)
            lines.append(f"{json.dumps(str(key))}: {json.dumps(value)}\n")
        path = os.path.join(self._folder, self.HPARAMS_FILE)
        try:
            with open(path, "w") as f:
                f.writelines(lines)
        except OSError as e:
            self._fail(path, e)

    def save(self) -> None:
        """Writes the buffered rows (rewriting the file when new columns appeared)."""
        if not self._rows:
            return
        self.setup()
        path = os.path.join(self._folder, self.METRICS_FILE)
        try:
            self._write_rows(path)
        except OSError as e:
            self._fail(path, e)
        self._rows, self._open = [], {}

    def _write_rows(self, path: str) -> None:
        if self._columns and not os.path.exists(path):
            raise FileNotFoundError(errno.ENOENT, "the file was deleted during the run",
                                    path)
        if not self._columns and os.path.exists(path):
            # a fixed `version` whose folder holds an earlier run's file (a resume): continue
            # it, as TensorBoard's event files do, instead of truncating it
            with open(path, newline="") as f:
                self._columns = next(csv.reader(f), [])
        rows = sorted(self._rows, key=lambda r: r["step"])  # stable: call order within a step
        new = sorted({k for r in rows for k in r} - set(self._columns))
        if new:
            old = []
            if self._columns:
                with open(path, newline="") as f:
                    old = list(csv.DictReader(f))
            self._columns = sorted(set(self._columns) | set(new))
            # the whole file again, beside it first: a crash or a full disk mid-write leaves
            # the old file whole
            part = path + ".part"
            with open(part, "w", newline="") as f:
                writer = csv.DictWriter(f, self._columns)
                writer.writeheader()
                writer.writerows(old)
                writer.writerows(rows)
            os.replace(part, path)
        else:
            with open(path, "a", newline="") as f:
                csv.DictWriter(f, self._columns).writerows(rows)

    def finalize(self) -> None:
        """Writes what is buffered; the run is complete (the next call starts a new one).

        A failure an earlier call raised is not raised again (its rows are dropped).
        """
        try:
            if self._failure is None:
                self.save()
        finally:
            self._rows, self._open, self._columns = [], {}, []
            self._folder, self._failure = None, None
            self._run.end_run()

    def __repr__(self) -> str:
        return f"CSVLogger({self.save_dir!r}, name={self.name!r})"
