"""TensorBoard scalar events encoded in bulk, with NumPy (`loggers.writer.EventFile` writes
them).

tensorboardX builds two protobuf objects per scalar, pickles each through a multiprocessing
queue and checksums it with a pure-Python CRC32C: about 45 us per value, which for an LR
monitor logging every step costs more CPU than a small model's step. A scalar event is a
fixed layout (wall time, step, one tag and a float), so a window of values for one tag is one
``(n, record_length)`` byte array here: the fields are written as columns and the CRC32C of
every record runs as one vectorised pass over the columns (a few microseconds per value).
Other summaries (hparams, images) come from tensorboardX's builders and are framed the same
way. The format is TFRecord framing of `Event` protos, as TensorBoard reads it.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import numpy as np

__all__ = ["crc32c_rows", "series_records"]


def _crc_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):  # reflected Castagnoli polynomial
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1)
    return table.astype(np.uint32)


_TABLE = _crc_table()
_PY_TABLE = [int(x) for x in _TABLE]
_MASK_DELTA = np.uint32(0xA282EAD8)


def _crc_columns(rows: np.ndarray) -> np.ndarray:
    """Plain CRC32C of every row of a uint8 ``(n, length)`` array, one column at a time."""
    crc = np.full(rows.shape[0], 0xFFFFFFFF, np.uint32)
    for j in range(rows.shape[1]):
        crc = _TABLE[(crc ^ rows[:, j]) & 0xFF] ^ (crc >> 8)
    return crc ^ np.uint32(0xFFFFFFFF)


def _crc_bytes(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for b in data:
        crc = _PY_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


_STACKS: dict[tuple[int, tuple[int, ...]], tuple[np.ndarray, np.ndarray]] = {}


def _position_tables(length: int, positions: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """`positions` as an index array and a ``(len(positions), 256)`` table: row i says how
    byte value b at ``positions[i]`` of a `length`-byte message changes its CRC (a CRC is
    affine in the message bits, so these changes XOR together). Cached per layout."""
    key = (length, positions)
    found = _STACKS.get(key)
    if found is None:
        if len(_STACKS) > 1024:  # layouts are few (one per tag length); stay bounded anyway
            _STACKS.clear()
        rows = np.zeros((256 * len(positions), length), np.uint8)
        for i, p in enumerate(positions):
            rows[256 * i:256 * (i + 1), p] = np.arange(256)
        crc = _crc_columns(rows).reshape(len(positions), 256)
        found = _STACKS[key] = (np.asarray(positions, np.intp), crc ^ crc[:, :1])
    return found  # a local: another writer thread may clear the cache meanwhile


def _mask(crc: np.ndarray) -> np.ndarray:
    crc = crc.astype(np.uint32)
    return ((crc >> 15) | (crc << 17)) + _MASK_DELTA  # uint32 arithmetic wraps


def crc32c_rows(rows: np.ndarray, columns: tuple[int, ...] | None = None) -> np.ndarray:
    """Masked CRC32C (TFRecord's checksum) of every row of a uint8 ``(n, length)`` array.

    Rows of one window differ in a few columns only (step, value): the first row's CRC is
    computed once and every other row's follows from the columns where it differs (found
    here, or given as `columns`), one table lookup per such column and row, all at once.
    """
    n, length = rows.shape
    crc = np.full(n, _crc_bytes(rows[0].tobytes()), np.uint32)
    if n > 1:
        if columns is None:
            columns = tuple(int(c) for c in np.flatnonzero((rows != rows[0]).any(axis=0)))
        if columns:
            picks, tables = _position_tables(length, columns)
            changes = rows[:, picks] ^ rows[0, picks]
            crc ^= np.bitwise_xor.reduce(tables[np.arange(len(picks)), changes], axis=1)
    return _mask(crc)


def _varint(n: int) -> bytes:
    """Protobuf varint of an int64 (a negative one as its 64-bit two's complement: 10 bytes)."""
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _varint_columns(values: np.ndarray, width: int) -> np.ndarray:
    """Each of `values` (non-negative int64) as a `width`-byte varint, one row per value."""
    cols = np.empty((len(values), width), np.uint8)
    v = values.astype(np.int64).view(np.uint64)
    for j in range(width):
        cols[:, j] = (v & np.uint64(0x7F)).astype(np.uint8) | (0x80 if j < width - 1 else 0)
        v >>= np.uint64(7)
    return cols


def _varint_width(values: np.ndarray) -> np.ndarray:
    """Bytes of each int64's varint: 1 plus its non-zero 7-bit groups above the first (exact
    integer arithmetic; a negative value, as 64-bit two's complement, takes 10)."""
    v = values.astype(np.int64).view(np.uint64)
    return 1 + sum((v >> np.uint64(7 * k) != 0).astype(np.int64) for k in range(1, 10))


_HEADERS: dict[int, np.ndarray] = {}


def _header(length: int) -> np.ndarray:
    """A record's first 12 bytes: its length and the masked CRC32C of that (cached)."""
    if length not in _HEADERS:
        size = struct.pack("<Q", length)
        _HEADERS[length] = np.frombuffer(size + _masked(_crc_bytes(size)), np.uint8)
    return _HEADERS[length]


def _masked(crc: int) -> bytes:
    """One CRC masked as TFRecord stores it (`_mask` for a Python int), little-endian."""
    rotated = ((crc >> 15) | (crc << 17)) & 0xFFFFFFFF
    return struct.pack("<I", (rotated + int(_MASK_DELTA)) & 0xFFFFFFFF)


def _event_head(wall_time: float) -> bytes:
    """An Event's wall-time field and the tag byte of its step field."""
    return b"\x09" + struct.pack("<d", wall_time) + b"\x10"


def _framed(head: bytes, step_columns: np.ndarray, tail: bytes, values: np.ndarray
            ) -> np.ndarray:
    """TFRecord-framed events of one tag, one ``(n, 16 + length)`` row per step: `head`
    (wall time, step field tag), the step as a `width`-byte varint, `tail` (the summary up to
    the float) and the value; then length, CRCs. Only the step and value bytes differ
    between rows."""
    (n, width), length = step_columns.shape, len(head) + step_columns.shape[1] + len(tail) + 4
    out = np.empty((n, 16 + length), np.uint8)
    out[:, :12] = _header(length)
    data = out[:, 12:12 + length]
    data[:, :len(head)] = np.frombuffer(head, np.uint8)
    data[:, len(head):len(head) + width] = step_columns
    data[:, len(head) + width:-4] = np.frombuffer(tail, np.uint8)
    data[:, -4:] = values.view(np.uint8).reshape(n, 4)
    varying = (*range(len(head), len(head) + width), *range(length - 4, length))
    out[:, 12 + length:] = crc32c_rows(data, varying).astype("<u4")[:, None].view(np.uint8)
    return out


_TAILS: dict[str, bytes] = {}


def _summary_tail(tag: str) -> bytes:
    """``Event.summary`` field bytes of a one-value scalar summary, up to the float."""
    found = _TAILS.get(tag)
    if found is not None:
        return found
    if len(_TAILS) > 4096:  # a run logging ever new tags: keep the cache bounded
        _TAILS.clear()
    name = tag.encode()
    value_msg = b"\x0a" + _varint(len(name)) + name + b"\x15"  # then 4 bytes of float
    summary_head = b"\x0a" + _varint(len(value_msg) + 4) + value_msg
    found = _TAILS[tag] = b"\x2a" + _varint(len(summary_head) + 4) + summary_head
    return found


def _one_step(series: Mapping[str, np.ndarray], step: int, wall_time: float) -> bytes:
    """`series_records` for one step, as plain bytes (NumPy's per-call cost dominates here)."""
    head = _event_head(wall_time) + _varint(step)
    out = []
    for tag, value in series.items():
        with np.errstate(over="ignore"):  # beyond float32: inf, as TensorBoard would store it
            data = head + _summary_tail(tag) + np.asarray(value, "<f4").reshape(1).tobytes()
        out += [_header(len(data)).tobytes(), data, _masked(_crc_bytes(data))]
    return b"".join(out)


def series_records(series: Mapping[str, np.ndarray], steps: np.ndarray,
                   wall_time: float) -> bytes:
    """Framed scalar events for every tag of `series` at `steps`, in step order (tags in
    their order within a step).

    Per tag the window is one byte array of equal-length records (one per run of steps
    whose varint has the same width); the tags' arrays side by side, row by row, are the
    records in step order, so the whole window is one ``tobytes``.
    """
    steps = np.asarray(steps, np.int64).reshape(-1)
    if len(steps) == 0 or not series:
        return b""
    if len(steps) == 1:  # one step (a log_metrics call): plain bytes beat NumPy's overhead
        return _one_step(series, int(steps[0]), wall_time)
    order = np.argsort(steps, kind="stable")
    steps = steps[order]
    with np.errstate(over="ignore"):  # beyond float32: inf, as TensorBoard would store it
        columns = [(_summary_tail(tag), np.asarray(v, "<f4").reshape(-1)[order])
                   for tag, v in series.items()]
    head = _event_head(wall_time)
    widths = _varint_width(steps)
    bounds = [0, *(np.flatnonzero(np.diff(widths)) + 1).tolist(), len(steps)]
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        step_columns = _varint_columns(steps[lo:hi], int(widths[lo]))
        blocks = [_framed(head, step_columns, tail, values[lo:hi])
                  for tail, values in columns]
        out.append(np.hstack(blocks).tobytes())
    return b"".join(out)
