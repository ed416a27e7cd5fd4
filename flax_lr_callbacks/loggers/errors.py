"""LoggerError: a logger could not write, with the logger, the path and the reason."""

from __future__ import annotations

import os
import uuid
from typing import Any

__all__ = ["LoggerError", "check_writable"]


class LoggerError(OSError):
    """A logger could not write: the message names the logger, the path and the reason.

    An `OSError`, so ``except OSError`` catches it. ``errno`` is the original error's (None
    when there was no OS error) and the original is chained as ``__cause__``. When
    `Trainer.fit` stops because of it, ``state`` holds the train state trained until then
    (None otherwise).
    """

    def __init__(self, message: str, *, path: str | None = None, errno: int | None = None):
        super().__init__(message)
        self.path = path
        self.errno = errno
        self.state: Any = None

    def __str__(self) -> str:
        return str(self.args[0])

    @classmethod
    def wrap(cls, owner: Any, doing: str, path: str, cause: BaseException) -> LoggerError:
        """``"<owner class> could not <doing> <path>: <reason>"`` with `cause` as the cause."""
        if isinstance(cause, OSError) and cause.strerror:
            reason = cause.strerror
        else:
            reason = f"{type(cause).__name__}: {cause}"
        error = cls(f"{type(owner).__name__} could not {doing} {path}: {reason}", path=path,
                    errno=getattr(cause, "errno", None))
        error.__cause__ = cause
        return error


def check_writable(folder: str) -> None:
    """Creates and removes a probe file in `folder` (OSError when it cannot be written)."""
    probe = os.path.join(folder, f".write-check-{uuid.uuid4().hex[:8]}")
    with open(probe, "xb") as f:
        f.write(b"ok")
    os.remove(probe)
