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

from collections.abc import Mapping

import numpy as np

__all__ = ["crc32c_rows", "scalar_records", "series_records"]


def _crc_table() -> np.ndarray:
    table = np.arange(256, dtype=np.uint32)
    for _ in range(8):  # reflected Castagnoli polynomial
        table = np.where(table & 1, (table >> 1) ^ np.uint32(0x82F63B78), table >> 1)
    return table.astype(np.uint32)


_TABLE = _crc_table()
_PY_TABLE = [int(x) for x in _TABLE]
_MASK_DELTA = np.uint32(0xA282EAD8)
_POSITION_TABLES: dict[tuple[int, int], np.ndarray] = {}


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


def _position_table(length: int, position: int) -> np.ndarray:
    """How byte value b at `position` of a `length`-byte message changes its CRC (a CRC is
    affine in the message bits, so these changes XOR together)."""
    key = (length, position)
    if key not in _POSITION_TABLES:
        rows = np.zeros((256, length), np.uint8)
        rows[:, position] = np.arange(256)
        crc = _crc_columns(rows)
        _POSITION_TABLES[key] = crc ^ crc[0]
    return _POSITION_TABLES[key]


def _mask(crc: np.ndarray) -> np.ndarray:
    crc = crc.astype(np.uint32)
    return ((crc >> 15) | (crc << 17)) + _MASK_DELTA  # uint32 arithmetic wraps


def crc32c_rows(rows: np.ndarray) -> np.ndarray:
    """Masked CRC32C (TFRecord's checksum) of every row of a uint8 ``(n, length)`` array.

    Rows of one window differ in a few columns only (step, value): the first row's CRC is
    computed once and every other row's follows from the columns where it differs, one
    table lookup per such column for all rows at once.
    """
    n, length = rows.shape
    crc = np.full(n, _crc_bytes(rows[0].tobytes()), np.uint32)
    if n > 1:
        for p in np.flatnonzero((rows != rows[0]).any(axis=0)):
            crc ^= _position_table(length, int(p))[rows[:, p] ^ rows[0, p]]
    return _mask(crc)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _varint_columns(values: np.ndarray, width: int) -> np.ndarray:
    """Each of `values` (non-negative int64) as a `width`-byte varint, one row per value."""
    cols = np.empty((len(values), width), np.uint8)
    v = values.astype(np.uint64)
    for j in range(width):
        cols[:, j] = (v & np.uint64(0x7F)).astype(np.uint8) | (0x80 if j < width - 1 else 0)
        v >>= np.uint64(7)
    return cols


def _varint_width(values: np.ndarray) -> np.ndarray:
    bits = np.maximum(np.floor(np.log2(np.maximum(values, 1).astype(np.float64))) + 1, 1)
    return np.ceil(bits / 7).astype(np.int64)


def _frame(data: np.ndarray) -> np.ndarray:
    """TFRecord framing of equal-length records: length, its CRC, data, the data's CRC."""
    n, length = data.shape
    header = np.frombuffer(np.uint64(length).tobytes(), np.uint8)
    header_crc = crc32c_rows(header[None])[0]
    out = np.empty((n, 16 + length), np.uint8)
    out[:, :8] = header
    out[:, 8:12] = np.frombuffer(header_crc.astype("<u4").tobytes(), np.uint8)
    out[:, 12:12 + length] = data
    out[:, 12 + length:] = crc32c_rows(data).astype("<u4")[:, None].view(np.uint8)
    return out


def scalar_records(tag: str, steps: np.ndarray, values: np.ndarray,
                   wall_time: float) -> list[tuple[int, bytes]]:
    """``(step, framed record)`` for every value of one tag, encoded column-wise."""
    steps = np.asarray(steps, np.int64)
    values = np.asarray(values, "<f4")
    name = tag.encode()
    value_msg = b"\x0a" + _varint(len(name)) + name + b"\x15"  # then 4 bytes of float
    summary_head = b"\x0a" + _varint(len(value_msg) + 4) + value_msg
    summary = b"\x2a" + _varint(len(summary_head) + 4) + summary_head
    wall = b"\x09" + np.float64(wall_time).astype("<f8").tobytes() + b"\x10"
    out = []
    widths = _varint_width(steps)
    for width in np.unique(widths):
        pick = np.flatnonzero(widths == width)
        n = len(pick)
        data = np.empty((n, len(wall) + width + len(summary) + 4), np.uint8)
        data[:, :len(wall)] = np.frombuffer(wall, np.uint8)
        data[:, len(wall):len(wall) + width] = _varint_columns(steps[pick], int(width))
        data[:, len(wall) + width:-4] = np.frombuffer(summary, np.uint8)
        data[:, -4:] = values[pick].view(np.uint8).reshape(n, 4)
        framed = _frame(data)
        out.extend((int(steps[i]), framed[k].tobytes()) for k, i in enumerate(pick))
    return out


def series_records(series: Mapping[str, np.ndarray], steps: np.ndarray,
                   wall_time: float) -> bytes:
    """Framed scalar events for every tag of `series` at `steps`, in step order."""
    records = []
    for tag, values in series.items():
        records.extend(scalar_records(tag, steps, values, wall_time))
    records.sort(key=lambda r: r[0])  # stable: tags keep their order within a step
    return b"".join(r[1] for r in records)
