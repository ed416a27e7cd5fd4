"""What kind of training data was passed: the table of `data.source`, decided by looking at the
object (and, for Grain pipelines, at the datasets it is built from)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grain

__all__ = ["classify", "shuffles"]


def _lineage(ds: Any) -> Iterator[Any]:
    """`ds` and every Grain dataset it is built from."""
    stack, seen = [ds], set()
    while stack:
        d = stack.pop()
        if id(d) in seen:
            continue
        seen.add(id(d))
        yield d
        stack.extend(getattr(d, "parents", ()))


def _repeat_epochs(ds: Any) -> tuple[bool, int | None]:
    """``(repeated, num_epochs)`` of the first ``.repeat()`` in a Grain pipeline."""
    for d in _lineage(ds):
        if type(d).__name__ == "RepeatMapDataset":
            return True, getattr(d, "_num_epochs", None)
    return False, None


def shuffles(ds: Any) -> bool:
    """Whether a Grain pipeline shuffles anywhere in its lineage."""
    return any("Shuffle" in type(d).__name__ for d in _lineage(ds))


def classify(data: Any) -> tuple[str, int | None, Any]:
    """``(kind, pass_length, stream_of)`` of `data`: its kind in the `data.source` table, the
    batches of one pass (None: unknown), and what a stream iterates (`data` itself, except
    ``ds.to_iter_dataset()``, which continues into ``ds``'s next epochs)."""
    if hasattr(data, "for_epoch"):
        return "epochs", len(data), data
    if isinstance(data, grain.MapDataset):
        repeated, k = _repeat_epochs(data)
        if not repeated:
            return "map", len(data), data
        return "map_stream", (len(data) // k if k else None), data
    if isinstance(data, grain.IterDataset):
        parent = data.parents[0] if data.parents else None
        if type(data).__name__ == "PrefetchIterDataset" and isinstance(
                parent, grain.MapDataset):
            repeated, k = _repeat_epochs(parent)
            if not repeated:  # `ds.to_iter_dataset()`: continue into ds's next epochs
                return "stream", len(parent), parent.repeat().to_iter_dataset(
                    getattr(data, "_read_options", None))
            return "stream", (len(parent) // k if k else None), data
        if _repeat_epochs(data)[0]:
            return "stream", None, data
        return "iterable", None, data
    if isinstance(data, grain.DataLoader):
        return "stream", None, data
    if iter(data) is data:  # a one-shot iterator or generator
        return "stream", None, data
    try:
        return "iterable", len(data), data
    except TypeError:
        return "iterable", None, data
