"""Reading a data source epoch by epoch, from any batch on (fits, validation, the LR sweep)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["EpochReader", "steps_per_epoch"]


def steps_per_epoch(data: Any, given: int | None) -> int:
    """`given`, else ``len(data)``; a clear error when neither is known or data is empty."""
    if given is not None:
        return given
    try:
        n = len(data)
    except TypeError:
        raise ValueError("train_data has no len(); pass Trainer(steps_per_epoch=...)") from None
    if n < 1:
        raise ValueError(f"train_data is empty (len(train_data)={n})")
    return n


class EpochReader:
    """Hands out the batches of an epoch and remembers the live iterator (for checkpoints)."""

    def __init__(self) -> None:
        self.iterator: Any = None  # the running epoch's iterator, when data is not indexable

    def batches(self, data: Any, epoch: int, start: int = 0,
                iterator_state: Any = None) -> Iterable[Any]:
        """The batches of `epoch` from batch `start` on.

        Random-access data (Grain `MapDataset`, `ArrayDataset`) jumps straight to `start`.
        An iterator with Grain's ``get_state``/``set_state`` is restored from
        `iterator_state`; any other iterable is re-read and its first `start` batches skipped.
        """
        if hasattr(data, "for_epoch"):
            data = data.for_epoch(epoch)
        if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
            self.iterator = None
            return (data[i] for i in range(start, len(data)))
        it = iter(data)
        self.iterator = it
        if start and iterator_state is not None and hasattr(it, "set_state"):
            it.set_state(iterator_state)
            return it
        return itertools.islice(it, start, None)

    def first_batch(self, data: Any) -> Any:
        """The first batch of epoch 0 (its shapes set up the step)."""
        for batch in self.batches(data, 0):
            return batch
        raise ValueError("train_data yielded no batch")

    def forever(self, data: Any) -> Iterator[Any]:
        """Batches of `data`, epoch after epoch (an LR sweep may be longer than an epoch)."""
        epoch = 0
        while True:
            produced = False
            for batch in EpochReader().batches(data, epoch):
                produced = True
                yield batch
            if not produced:
                raise ValueError("train_data yielded no batch")
            epoch += 1
