"""Run folders: Lightning's ``save_dir/name/version_N`` layout, claimed once per run."""

from __future__ import annotations

import os
import re

import jax

from flax_lr_callbacks.loggers.errors import LoggerError, check_writable

__all__ = ["RunFolder", "VersionedRun", "is_writer_process"]


def is_writer_process() -> bool:
    """True on the JAX process that writes logs (process 0)."""
    return jax.process_index() == 0


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
