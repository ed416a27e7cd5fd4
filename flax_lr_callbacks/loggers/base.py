"""The logger protocol and a list of loggers acting as one (run folders: `run_folder`).

A logger is any object with three methods (a fourth is optional):

- ``log_metrics(metrics: Mapping[str, float], step: int)``: scalars at a 0-based step;
- ``log_hyperparams(params: Mapping[str, Any], metrics: Mapping[str, float] | None = None)``:
  the run's configuration once per fit, with the final metrics it should be compared by;
- ``finalize()``: flush and close at the end of a fit (the next call starts a new run);
- optionally ``log_figure(tag: str, figure, step: int = 0)`` for a matplotlib figure;
- optionally ``setup()``: called by `Trainer.fit` before the first step, to create the run's
  folder and check it can be written, so a bad path fails before any training.
- optionally ``log_series(series: Mapping[str, array], steps: array)``: many steps of
  scalars at once (``series[tag][i]`` at ``steps[i]``); `log_series` below falls back to one
  `log_metrics` call per step for loggers without it.

`Trainer(logger=...)` takes one logger or a list; a list is wrapped in `LoggerCollection`.
Only JAX process 0 should write; `is_writer_process()` tells a logger whether it is that one.

A logger that cannot write raises `LoggerError` (an `OSError`) naming itself, the path and the
reason, at the call that finds it (a background writer's failure at the next call); `fit`
then stops and hands the trained state over as ``err.state``. Unlike Lightning, whose
loggers fail on first write, the file loggers here check their folder at `setup`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from flax_lr_callbacks.loggers.errors import LoggerError
from flax_lr_callbacks.loggers.run_folder import RunFolder, VersionedRun, is_writer_process

__all__ = ["Logger", "LoggerCollection", "LoggerError", "RunFolder", "VersionedRun",
           "combine_loggers", "is_writer_process", "log_series"]

_REQUIRED = ("log_metrics", "log_hyperparams", "finalize")


@runtime_checkable
class Logger(Protocol):
    """What `Trainer` calls on a logger (`log_figure` is optional and looked up when used)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_hyperparams(self, params: Mapping[str, Any],
                        metrics: Mapping[str, float] | None = None) -> None: ...

    def finalize(self) -> None: ...


def log_series(logger: Any, series: Mapping[str, Any], steps: Any) -> None:
    """Logs ``series[tag][i]`` at ``steps[i]``: in one call where `logger` has `log_series`,
    else as one `log_metrics` call per step."""
    if callable(getattr(logger, "log_series", None)):
        logger.log_series(series, steps)
        return
    columns = {tag: [float(v) for v in values] for tag, values in series.items()}
    for i, step in enumerate(steps):
        logger.log_metrics({tag: v[i] for tag, v in columns.items()}, step=int(step))


def _check_logger(logger: Any) -> None:
    missing = [m for m in _REQUIRED if not callable(getattr(logger, m, None))]
    if missing:
        raise TypeError(f"logger must have methods {list(_REQUIRED)}; {logger!r} lacks "
                        f"{missing}")


class LoggerCollection:
    """Several loggers used as one: every call goes to each, in order.

    `finalize` reaches every logger even when one of them raises; the first error is raised
    after all were called. Other calls stop at the first logger that raises. `log_dir` is the
    first logger's that has one (where `LRFinder` puts its PNG). Loggers of the list with the
    same ``save_dir/name`` and an automatic version share one ``version_N`` folder per run
    (e.g. TensorBoard events and ``metrics.csv`` side by side).

    Args:
      loggers: objects with `log_metrics`, `log_hyperparams` and `finalize`.

    Example:
      >>> from flax_lr_callbacks import CSVLogger, TensorBoardLogger
      >>> both = LoggerCollection([TensorBoardLogger("runs"), CSVLogger("runs")])  # doctest: +SKIP
    """

    def __init__(self, loggers: Sequence[Any]):
        loggers = list(loggers)
        leaders: dict[str, RunFolder] = {}
        for logger in loggers:
            _check_logger(logger)
            run = getattr(logger, "_run", None)
            if isinstance(run, RunFolder) and run._version_arg is None:
                key = os.path.abspath(run.root_dir)
                if key in leaders and leaders[key] is not run:
                    run.follow(leaders[key])
                else:
                    leaders.setdefault(key, run)
        self.loggers = loggers

    def __iter__(self):
        return iter(self.loggers)

    def __len__(self) -> int:
        return len(self.loggers)

    @property
    def log_dir(self) -> str | None:
        """The first logger's `log_dir` (None when no logger has one)."""
        for logger in self.loggers:
            folder = getattr(logger, "log_dir", None)
            if folder is not None:
                return folder
        return None

    def setup(self) -> None:
        """Calls `setup` on each logger that has one, in order; when one raises, the loggers
        before it are finalized (their files closed) and the error is raised."""
        for i, logger in enumerate(self.loggers):
            if not callable(getattr(logger, "setup", None)):
                continue
            try:
                logger.setup()
            except BaseException:
                for done in self.loggers[:i]:
                    try:
                        done.finalize()
                    except Exception:  # the setup error is the one to report
                        pass
                raise

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(metrics, step)

    def log_series(self, series: Mapping[str, Any], steps: Any) -> None:
        for logger in self.loggers:
            log_series(logger, series, steps)

    def log_hyperparams(self, params: Mapping[str, Any],
                        metrics: Mapping[str, float] | None = None) -> None:
        for logger in self.loggers:
            logger.log_hyperparams(params, metrics)

    def log_figure(self, tag: str, figure: Any, step: int = 0) -> None:
        for logger in self.loggers:
            if callable(getattr(logger, "log_figure", None)):
                logger.log_figure(tag, figure, step)

    def finalize(self) -> None:
        error = None
        for logger in self.loggers:
            try:
                logger.finalize()
            except Exception as e:  # close the others, then report
                error = error or e
        if error is not None:
            raise error

    def __repr__(self) -> str:
        return f"LoggerCollection({self.loggers!r})"


def combine_loggers(logger: Any) -> Any:
    """None, one logger, or a `LoggerCollection` for a list/tuple of loggers.

    Raises TypeError naming the logger that lacks a required method.
    """
    if logger is None:
        return None
    if isinstance(logger, (str, os.PathLike)):
        raise TypeError(f"logger must be a logger object, got the path logger={logger!r}; "
                        f"write logger=TensorBoardLogger({str(logger)!r}) (or CSVLogger)")
    if isinstance(logger, (list, tuple)):
        return LoggerCollection(logger) if len(logger) != 1 else combine_loggers(logger[0])
    _check_logger(logger)
    return logger
