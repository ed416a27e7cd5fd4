"""Writing a logger's files off the training loop, in bounded time: an event file and a thread.

`EventFile` is one TensorBoard event file written by its caller (no thread of its own: the
tensorboardX writer's thread dies silently on an I/O error or an odd `flush_secs`, after which
its bounded queue blocks the caller forever). `WriterThread` runs a logger's writes in order
on one daemon thread, keeps the first error for the logger to re-raise, and never makes its
caller wait longer than `stall_secs` for a writer that makes no progress.
"""

from __future__ import annotations

import errno
import os
import queue
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["EventFile", "WriterStalled", "WriterThread"]

_STOP = object()
_MAX_WAIT = 60.0  # longest queue wait, whatever flush_secs is (inf, NaN, 1e300)
MAX_QUEUED = 10_000  # jobs waiting before `submit` blocks (for at most stall_secs)


class EventFile:
    """``<folder>/events.out.tfevents.<time>.<host><suffix>``, TFRecord-framed `Event`s.

    The file is created at construction (an `OSError` if it cannot be). `flush` also checks
    that the file still has a name: a run folder deleted during the run is an error rather
    than events written into a file nobody can read.
    """

    def __init__(self, folder: str, suffix: str):
        from tensorboardX.proto import event_pb2

        self._event_pb2 = event_pb2
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}{suffix}"
        self.path = os.path.join(folder, name)
        self._file = open(self.path, "xb")
        self._write(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))

    def add(self, summary: Any, step: int, wall_time: float) -> None:
        """Appends `summary` at `step` (buffered until `flush`)."""
        self._write(self._event_pb2.Event(summary=summary, step=step, wall_time=wall_time))

    def append(self, records: bytes) -> None:
        """Appends already framed records (`event_records.series_records`)."""
        self._file.write(records)

    def _write(self, event: Any) -> None:
        from tensorboardX.record_writer import masked_crc32c

        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(header + struct.pack("<I", masked_crc32c(header)) + data
                         + struct.pack("<I", masked_crc32c(data)))

    def check(self) -> None:
        """FileNotFoundError when the file was deleted (e.g. its run folder removed)."""
        if os.fstat(self._file.fileno()).st_nlink == 0:
            raise FileNotFoundError(errno.ENOENT, "the event file was deleted during the run",
                                    self.path)

    def flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        self.check()

    @property
    def closed(self) -> bool:
        return self._file.closed

    def close(self) -> None:
        """Flushes and closes (closed also when the flush raises)."""
        if self._file.closed:
            return
        try:
            self.flush()
        finally:
            self._file.close()


class WriterStalled(TimeoutError):
    """The writer thread made no progress for `stall_secs` (a hung disk or a stuck write)."""


class WriterThread:
    """Runs write jobs in order on one daemon thread, so the caller never waits for the disk.

    - `submit` queues ``fn(*args)``; it waits only when `maxsize` (default `MAX_QUEUED`) jobs
      are queued, and then at most `stall_secs` without progress (`WriterStalled`).
    - The first job (or flush) that raises is kept in `error`; later jobs are dropped, so the
      queue still drains. The owner re-raises `error` on its next call.
    - `flush()` runs every `flush_secs` while jobs come (any value: inf or NaN mean never,
      <= 0 after every job; an idle thread sleeps until the next job).
      `close` queues a stop; the thread runs `finish()` (also after an error, to release
      files) and ends. `close` waits for that at most `stall_secs` without progress.
    """

    def __init__(self, flush: Callable[[], None], flush_secs: float, *, name: str,
                 finish: Callable[[], None] | None = None, maxsize: int | None = None,
                 stall_secs: float = 30.0):
        self._flush = flush
        self._finish = finish if finish is not None else flush
        self._flush_secs = flush_secs
        self.stall_secs = stall_secs
        self.error: BaseException | None = None
        self.done = 0  # jobs taken off the queue (run or dropped): progress
        self.closed = False  # the thread ended at `close`, as it should
        self._queue: queue.Queue = queue.Queue(MAX_QUEUED if maxsize is None else maxsize)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def died(self) -> bool:
        """The thread ended without being closed and without an `error` (it should not)."""
        return not self._thread.is_alive() and not self.closed and self.error is None

    @property
    def pending(self) -> int:
        return self._queue.qsize()

    def submit(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            self._queue.put((fn, args), timeout=self.stall_secs)
        except queue.Full:
            raise WriterStalled(f"the writer thread made no progress for {self.stall_secs} s "
                                f"({self.pending} writes waiting)") from None

    def close(self) -> None:
        """Runs what is queued and a last flush, then stops; bounded as `submit` is."""
        if not self._thread.is_alive():
            return
        self.submit(_STOP)
        while True:
            before = self.done
            self._thread.join(self.stall_secs)
            if not self._thread.is_alive():
                return
            if self.done == before:
                raise WriterStalled(f"the writer thread made no progress for "
                                    f"{self.stall_secs} s ({self.pending} writes waiting)")

    def _call(self, fn: Callable[..., None], *args: Any, always: bool = False) -> None:
        if self.error is not None and not always:
            return
        try:
            fn(*args)
        except BaseException as e:  # kept for the owner's next call
            self.error = self.error or e

    def _run(self) -> None:
        try:
            next_flush = time.monotonic() + self._flush_secs
            pending = False
            while True:
                wait = None  # nothing to flush: sleep until a job (or the stop) comes
                if pending:
                    wait = next_flush - time.monotonic()
                    wait = _MAX_WAIT if not wait < _MAX_WAIT else max(wait, 0.0)
                try:
                    fn, args = self._queue.get(timeout=wait)
                except queue.Empty:
                    fn = None
                else:
                    self.done += 1
                if fn is _STOP:
                    self._call(self._finish, always=True)
                    self.closed = True
                    return
                if fn is not None:
                    self._call(fn, *args)
                    pending = True
                if time.monotonic() >= next_flush:
                    if pending:
                        self._call(self._flush)
                        pending = False
                    next_flush = time.monotonic() + self._flush_secs
        except BaseException as e:  # a bug here must not pass silently either
            self.error = self.error or e
