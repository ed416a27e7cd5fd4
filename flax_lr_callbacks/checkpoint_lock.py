"""One run per checkpoint directory: a lock file ``<directory>/.lock`` held for a fit.

The lock is a small JSON file (pid, host, start time, a random token) created with
``O_CREAT | O_EXCL``, so of two runs starting at once exactly one gets it. A lock whose owner
is gone is stale: on the same host a dead pid (or this process's pid without this process
holding it, as after a container restart) is taken over with a warning; a lock from another
host cannot be checked from here and is refused with the command that removes it.

Orbax renames finished step directories into place and ignores other names, so the lock file
does not disturb it; it is removed when the fit ends, also when the fit fails.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

__all__ = ["LOCK_NAME", "acquire", "release"]

LOCK_NAME = ".lock"
_HELD: dict[str, str] = {}  # lock path -> token, for the locks this process holds now
_OURS: set[str] = set()  # tokens of this process's locks, also while one is being created


def _error(message: str) -> Exception:
    from flax_lr_callbacks.checkpointing import CheckpointError

    return CheckpointError(message)


def _read(path: Path) -> tuple[bytes, dict[str, Any]] | None:
    """The lock's bytes and fields; None when it vanished. A lock being written is empty for
    a moment, so an unreadable one is read again for up to a second."""
    for _ in range(20):
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            owner = json.loads(raw)
            if isinstance(owner, dict):
                return raw, owner
        except ValueError:
            pass
        time.sleep(0.05)
    return raw, {}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:  # a zombie (killed, not yet reaped by its parent) holds nothing
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _describe(owner: dict[str, Any]) -> str:
    return (f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')!r}, started "
            f"{owner.get('started', '?')}")


def _is_stale(owner: dict[str, Any]) -> bool:
    if not owner or owner.get("host") != socket.gethostname():
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int):
        return False
    if pid == os.getpid():  # ours only if this process took it (a restarted container
        return owner.get("token") not in _OURS  # reuses small pids)
    return not _alive(pid)


def _take_over(path: Path, raw: bytes) -> bool:
    """Moves the stale lock `raw` aside (atomic rename); False when another run was faster."""
    aside = path.with_name(f"{LOCK_NAME}.stale.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return False
    if aside.read_bytes() != raw:  # a fresh lock replaced the stale one meanwhile: put it back
        try:
            os.link(aside, path)
        except FileExistsError:
            pass
        aside.unlink()
        return False
    aside.unlink()
    return True


def acquire(directory: str | os.PathLike) -> Path:
    """Creates ``<directory>/.lock`` for this run (the directory too); returns its path.

    Raises `CheckpointError` naming the directory and the owner when another live run holds
    it, or when its owner is on another host."""
    directory = Path(directory).absolute()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / LOCK_NAME
    me = {"pid": os.getpid(), "host": socket.gethostname(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "token": uuid.uuid4().hex}
    _OURS.add(me["token"])  # before the file exists: another thread may read it at once
    try:
        return _create(directory, path, me)
    except BaseException:
        _OURS.discard(me["token"])
        raise


def _create(directory: Path, path: Path, me: dict[str, Any]) -> Path:
    for _ in range(50):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            found = _read(path)
            if found is None:
                continue  # released between our two calls
            raw, owner = found
            if not _is_stale(owner):
                raise _refusal(directory, path, owner) from None
            if _take_over(path, raw):
                warnings.warn(
                    f"checkpoint directory {str(directory)!r} was locked by a run that is no "
                    f"longer running ({_describe(owner)}); taking the lock over",
                    RuntimeWarning, stacklevel=5)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
            f.flush()
            os.fsync(f.fileno())
        _HELD[str(path)] = me["token"]
        return path
    raise _error(f"could not lock checkpoint directory {str(directory)!r}: {path} keeps "
                 "changing (several runs starting there at once?)")


def _refusal(directory: Path, path: Path, owner: dict[str, Any]) -> Exception:
    head = f"checkpoint directory {str(directory)!r} is in use by another run"
    if not owner:
        return _error(f"{head}: its lock file {path} is unreadable. If no run uses this "
                      f"directory, delete {path} and start again")
    if owner.get("host") != socket.gethostname():
        return _error(
            f"{head} ({_describe(owner)}; this is host {socket.gethostname()!r}, so whether it "
            f"still runs cannot be checked from here). Give this run another directory, or, "
            f"if that run has ended, delete the lock file: rm {path}")
    who = ("another fit in this process" if owner.get("pid") == os.getpid()
           else "another process")
    return _error(
        f"{head} ({who}: {_describe(owner)}); two runs writing one directory would replace "
        "each other's checkpoints. Wait for that run to end (then resume_from='latest' "
        "continues it), or give this run another directory")


def release(path: Path) -> None:
    """Removes the lock at `path` if this run still holds it."""
    token = _HELD.pop(str(path), None)
    _OURS.discard(token)
    found = _read(path) if token is not None else None
    if found is not None and found[1].get("token") == token:
        path.unlink(missing_ok=True)
