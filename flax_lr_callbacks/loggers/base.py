"""The logger protocol, run folders with versions, and a list of loggers acting as one.

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
import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

import jax

from flax_lr_callbacks.loggers.errors import LoggerError, check_writable

__all__ = ["Logger", "LoggerCollection", "LoggerError", "RunFolder", "combine_loggers",
           "is_writer_process", "log_series"]

_REQUIRED = ("log_metrics", "log_hyperparams", "finalize")


@runtime_checkable
class Logger(Protocol):
    """What `Trainer` calls on a logger (`log_figure` is optional and looked up when used)."""

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_hyperparams(self, params: Mapping[str, Any],
                        metrics: Mapping[str, float] | None = None) -> None: ...

    def finalize(self) -> None: ...


def is_writer_process() -> bool:
    """True on the JAX process that writes logs (process 0)."""
    return jax.process_index() == 0


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


_VERSION = re.compile(r"version_(\d+)$")


class RunFolder:
    """Lightning's run layout: ``save_dir/name/version_N`` (``save_dir/version_N`` when `name`
    is None or empty).

    With ``version=None`` the folder is the next free ``version_N``, claimed (created) when it
    is first used, so two runs never share one: a run is everything logged until `finalize`,
    and the first write after that claims a new version (`log_dir` names the finished run
    until then). An int `version` means
    ``version_<version>``; a string is the folder name as given. Both are reused as they are.
    """

    def __init__(self, save_dir: str | os.PathLike, name: str | None, version: int | str | None):
        if not isinstance(save_dir, (str, os.PathLike)):
            raise TypeError(f"save_dir must be a path, got save_dir={save_dir!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got name={name!r}")
        if version is not None and (isinstance(version, bool) or not isinstance(
                version, (int, str)) or (isinstance(version, int) and version < 0)
                or version == ""):
            raise ValueError(f"version must be None, an int >= 0 or a non-empty str, got "
                             f"version={version!r}")
        self.save_dir = os.fspath(save_dir)
        self.name = name
        self._version_arg = version
        self._version: int | str | None = version
        self._wrote = False  # something was written in the current run
        self._leader: RunFolder | None = None
        self._ended = False  # that run was finalized; the next write starts another

    @property
    def root_dir(self) -> str:
        """``save_dir/name`` (or `save_dir` without a name): where the versions go."""
        return os.path.join(self.save_dir, self.name) if self.name else self.save_dir

    def follow(self, leader: RunFolder) -> None:
        """Use `leader`'s automatic version (loggers of one list share a run folder)."""
        self._leader = leader

    @property
    def version(self) -> int | str:
        """This run's version (claims the next free one when it was None)."""
        if self._leader is not None:
            return self._leader.version
        if self._version is None:
            self._claim()
        return self._version

    @property
    def log_dir(self) -> str:
        """This run's folder, e.g. ``runs/version_0``."""
        v = self.version
        return os.path.join(self.root_dir, f"version_{v}" if isinstance(v, int) else v)

    def _claim(self) -> None:
        root = self.root_dir
        if not is_writer_process():  # others never write; they only need a name
            self._version = _next_version(root)
            return
        os.makedirs(root, exist_ok=True)
        n = _next_version(root)
        while True:
            try:
                os.mkdir(os.path.join(root, f"version_{n}"))  # atomic: one claimant wins
            except FileExistsError:  # another run's, or a file of that name: try the next
                n = max(n + 1, _next_version(root))
                continue
            self._version = n
            return

    def ensure_dir(self) -> str:
        """The folder to write into (created if needed); after `end_run`, an automatic
        version moves on to the next free one first."""
        if self._leader is not None:  # the leader is called first and moves on first
            folder = self._leader.log_dir
            os.makedirs(folder, exist_ok=True)
            return folder
        if self._ended and self._version_arg is None:
            self._version = None
        self._ended = False
        folder = self.log_dir
        os.makedirs(folder, exist_ok=True)
        self._wrote = True
        return folder

    def end_run(self) -> None:
        """The run is over. `log_dir` still names it until the next write."""
        self._ended, self._wrote = self._wrote, False


class VersionedRun:
    """Mixin for loggers that write into a `RunFolder` (``self._run``): its folder names."""

    _run: RunFolder

    @property
    def save_dir(self) -> str:
        return self._run.save_dir

    @property
    def name(self) -> str | None:
        return self._run.name

    @property
    def root_dir(self) -> str:
        """``save_dir/name``: the folder to point ``tensorboard --logdir`` at."""
        return self._run.root_dir

    @property
    def version(self) -> int | str:
        """This run's version (the next free one is claimed on first use)."""
        return self._run.version

    @property
    def log_dir(self) -> str:
        """This run's folder (its event or CSV file, and e.g. the LR finder's PNG)."""
        return self._run.log_dir

    def _prepare_dir(self) -> str:
        """This run's folder, created and checked writable; `LoggerError` naming it if not."""
        try:
            folder = self._run.ensure_dir()
        except OSError as e:
            raise LoggerError.wrap(self, "create the folder", os.path.abspath(
                e.filename if e.filename else self._run.root_dir), e)
        try:
            check_writable(folder)
        except OSError as e:
            raise LoggerError.wrap(self, "write to its run folder", os.path.abspath(folder),
                                   e)
        return folder


def _next_version(root: str) -> int:
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return 0
    found = [int(m.group(1)) for n in names if (m := _VERSION.match(n))
             and os.path.isdir(os.path.join(root, n))]
    return max(found) + 1 if found else 0
