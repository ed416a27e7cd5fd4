"""The one place that reads the user's data: epochs of batches, positions, peeks, LR sweeps.

`Trainer.fit`, the LR sweep, validation and `checkpoint_io.resume` all go through a
`DataSource`; nothing else touches the user's data. What an epoch is depends on what was
passed (README, "Data: what an epoch is"):

============  ==========================================  =================================
kind          inputs                                      epoch ``e``, batch ``i``
============  ==========================================  =================================
``epochs``    `ArrayDataset` (anything with ``for_epoch``)  ``data.for_epoch(e)[i]``
``map``       a finite Grain `MapDataset`                 ``data[e * len(data) + i]``:
                                                          Grain continues past its length
                                                          into the next epoch, re-seeding
                                                          every ``shuffle`` per epoch
``map_stream``  a `MapDataset` with ``.repeat()`` inside  ``data[e * steps_per_epoch + i]``
``stream``    an iterator or generator, a Grain           the next ``steps_per_epoch``
              `IterDataset` of a repeated pipeline,       batches of one iterator kept for
              ``ds.to_iter_dataset()`` (read as           the whole fit
              ``ds.repeat().to_iter_dataset()``), a
              `grain.DataLoader`
``iterable``  any other re-iterable (list, class with     a new ``iter(data)`` per epoch
              ``__iter__``, other Grain `IterDataset`)
============  ==========================================  =================================
"""

from __future__ import annotations

import collections
import itertools
import warnings
from collections.abc import Iterator
from typing import Any

import grain
import jax
import numpy as np

from flax_lr_callbacks.data.grain import ArrayDataset
from flax_lr_callbacks.data.kinds import classify, shuffles

__all__ = ["DataSource", "validation_batches"]

_NO_LENGTH = ("{name} has no len(); pass Trainer(steps_per_epoch=...) (the batches of one "
              "epoch)")


def _restorable(it: Any) -> bool:
    return hasattr(it, "get_state") and hasattr(it, "set_state")


def shapes(batch: Any) -> Any:
    """The batch's leaf shapes (host metadata: no transfer)."""
    return jax.tree_util.tree_map(np.shape, batch)


class DataSource:
    """What the user passed as training data, read as epochs of batches.

    Args:
      data: the training data (see the module table for how each kind is read).
      name: how errors and warnings call it. Default ``"train_data"``.
      sharding: where training batches of an ``ArrayDataset(on_device=True)`` gather from
        (its arrays are placed there); None reads every kind as host batches.
    """

    def __init__(self, data: Any, *, name: str = "train_data", sharding: Any = None,
                 previous: DataSource | None = None):
        self.data, self.name = data, name
        self.on_device = (sharding is not None and isinstance(data, ArrayDataset)
                          and data.on_device)
        if self.on_device and jax.process_count() > 1:
            raise ValueError(f"{name} is an ArrayDataset with on_device=True, which needs a "
                             f"single process; this job has {jax.process_count()}. Use "
                             "on_device=False")
        self.sharding = sharding
        self.steps_per_epoch: int | None = None
        self._it: Any = None  # the live iterator of a stream or of an iterable's epoch
        self._buffer: collections.deque = collections.deque()  # pushed-back batches
        self._pending_state: Any = None  # an iterable's iterator state, set at resume
        self.consumed = 0  # stream batches handed to training (the position of a stream)
        # what a stream iterates (for `ds.to_iter_dataset()`: ds repeated)
        self.kind, self.pass_length, self._stream_of = classify(data)
        if previous is not None and previous.data is data and self.kind == "stream":
            # `previous` (an LR sweep or fit on the same Trainer) pulled these batches from the
            # stream and did not train on them: they are this source's first ones
            self._buffer.extend(previous._buffer)
            previous._buffer.clear()

    # ------------------------------------------------------------------ the plan
    def plan(self, steps_per_epoch: int | None) -> int:
        """Batches per epoch: `steps_per_epoch`, else one pass. Raises when more are asked for
        than one pass holds, or when nothing says how long an epoch is."""
        n = self.pass_length
        if n is not None and n < 1:
            raise ValueError(f"{self.name} is empty ({n} batches per epoch)")
        if steps_per_epoch is None:
            if n is None and self.kind == "map_stream":
                raise ValueError(f"{self.name} repeats without end (a .repeat() pipeline); "
                                 "pass Trainer(steps_per_epoch=...) (the batches of one epoch)")
            if n is None:
                raise ValueError(_NO_LENGTH.format(name=self.name))
            steps_per_epoch = n
        elif n is not None and steps_per_epoch > n:
            raise ValueError(
                f"steps_per_epoch={steps_per_epoch} exceeds the {n} batches of one pass over "
                f"{self.name}; leave steps_per_epoch unset or lower it")
        self.steps_per_epoch = steps_per_epoch
        return steps_per_epoch

    def check(self, total_steps: int, epochs: int) -> None:
        """Fit-start checks: a finite repeated pipeline long enough for the plan, and a warning
        when an epoch would repeat the same order although the pipeline shuffles."""
        if self.kind == "map_stream" and len(self.data) < total_steps:
            raise ValueError(f"{self.name} holds {len(self.data)} batches, fewer than the "
                             f"{total_steps} steps planned; repeat it more or lower max_epochs")
        if self.kind == "iterable" and epochs > 1 and shuffles(self.data):
            warnings.warn(
                f"{self.name} ({type(self.data).__name__}) shuffles but restarts with the same "
                "order every epoch; pass the MapDataset (Grain re-seeds its shuffle per epoch) "
                "or a .repeat()ed pipeline with steps_per_epoch", UserWarning, stacklevel=3)

    def warn_short(self, epoch: int, done: int, step: int, total: int) -> None:
        """The data ended `done` batches into `epoch`, before the plan: says how far the run
        got (the caller stops it)."""
        warnings.warn(
            f"{self.name} ran out in epoch {epoch} after {done} of its {self.steps_per_epoch} "
            f"batches: {step} of the {total} planned steps ran; stopping (schedules did not "
            "reach their end). Pass data with more batches, a .repeat()ed pipeline, or a "
            "smaller steps_per_epoch/max_epochs", UserWarning, stacklevel=4)

    # ------------------------------------------------------------------ reading
    def _open(self) -> Any:
        if self._it is None:
            self._it = iter(self._stream_of)
        return self._it

    def _pull(self) -> Any:
        """The next stream batch (pushed-back ones first); StopIteration at its end."""
        if self._buffer:
            return self._buffer.popleft()
        return next(self._open())

    def peek(self) -> Any:
        """The first batch training will see (its shapes set up the step); consumes nothing."""
        if self.kind == "epochs":
            return self._epoch_batches(0)[0]
        if self.kind in ("map", "map_stream"):
            return self.data[0]
        if self.kind == "iterable":
            for batch in self.data:
                return batch
            raise ValueError(f"{self.name} yielded no batch")
        try:
            batch = self._pull()
        except StopIteration:
            raise ValueError(f"{self.name} yielded no batch") from None
        self._buffer.appendleft(batch)
        return batch

    def epoch(self, epoch: int, start: int = 0) -> Iterator[Any]:
        """The batches of `epoch` from batch `start` on (at most ``steps_per_epoch``); fewer
        only when the data runs out (the Trainer reports that)."""
        spe, d = self.steps_per_epoch, self.data
        if self.kind == "epochs":
            ds = self._epoch_batches(epoch)
            return (ds[i] for i in range(start, spe))
        if self.kind == "map":
            return (d[epoch * self.pass_length + i] for i in range(start, spe))
        if self.kind == "map_stream":
            return (d[epoch * spe + i] for i in range(start, spe))
        if self.kind == "iterable":
            self._it = it = iter(d)
            if start and self._pending_state is not None and _restorable(it):
                it.set_state(self._pending_state)
                self._pending_state = None
                return itertools.islice(it, spe - start)
            return itertools.islice(it, start, spe)
        return self._stream_epoch(spe - start)

    def _epoch_batches(self, epoch: int) -> Any:
        if self.on_device:  # indices into the arrays on the device (`data.on_device`)
            return self.data.device_batches(epoch, self.sharding)
        return self.data.for_epoch(epoch)

    def _stream_epoch(self, n: int) -> Iterator[Any]:
        for _ in range(n):
            try:
                batch = self._pull()
            except StopIteration:
                return
            self.consumed += 1
            yield batch

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> Any:
        """The position beyond ``(epoch, batch)`` a checkpoint needs (JSON-able), or None."""
        if self.kind not in ("stream", "iterable") or self._it is None:
            return None
        it_state = None
        if _restorable(self._it) and not self._buffer:
            it_state = self._it.get_state()
            if isinstance(it_state, bytes):  # grain.DataLoader's iterator state
                it_state = {"bytes": it_state.decode()}
        return {"consumed": self.consumed, "iterator": it_state}

    def restore(self, saved: Any) -> None:
        """Puts the position of `state()` back (before the epoch it was saved in reopens)."""
        if not saved:
            return
        if self.kind == "iterable":
            self._pending_state = saved["iterator"]
            return
        it_state = saved["iterator"]
        it = self._open()
        self.consumed = saved["consumed"]
        if it_state is not None and _restorable(it):
            if isinstance(it_state, dict) and set(it_state) == {"bytes"}:
                it_state = it_state["bytes"].encode()
            self._buffer.clear()
            it.set_state(it_state)
            return
        for k in range(self.consumed):  # a plain iterator: skip what was trained on
            try:
                self._pull()
            except StopIteration:
                raise ValueError(f"{self.name} ran out after {k} batches while skipping the "
                                 f"{self.consumed} trained on before the checkpoint") from None

    # ------------------------------------------------------------------ the LR sweep
    def sweep(self) -> Iterator[Any]:
        """Batches for an LR sweep, as many as it asks for, leaving training's batches alone.

        Random-access and re-iterable data: the sweep reads its own passes (epoch 0, 1, ...).
        A stream: the sweep reads ahead, then a Grain iterator is set back to where it was
        (``get_state``/``set_state``) and any other iterator gets the batches pushed back,
        so training still sees every one. Close the generator to hand them back.
        """
        if self.kind == "epochs":
            for e in itertools.count():
                ds = self.data.for_epoch(e)
                yield from (ds[i] for i in range(len(ds)))
        elif self.kind in ("map", "map_stream"):
            n = len(self.data)
            yield from (self.data[i % n] if self.kind == "map_stream" else self.data[i]
                        for i in itertools.count())
        elif self.kind == "iterable":
            while True:
                produced = False
                for batch in self.data:
                    produced = True
                    yield batch
                if not produced:
                    raise ValueError(f"{self.name} yielded no batch")
        else:
            yield from self._sweep_stream()

    def _sweep_stream(self) -> Iterator[Any]:
        it = self._open()
        kept = list(self._buffer)
        self._buffer.clear()
        state = it.get_state() if _restorable(it) else None
        taken: list[Any] = []
        try:
            for k in itertools.count():
                if k < len(kept):
                    batch = kept[k]
                else:
                    try:
                        batch = next(it)
                    except StopIteration:
                        raise ValueError(f"{self.name} ran out after {k} batches during the "
                                         "LR sweep") from None
                    if state is None:
                        taken.append(batch)
                yield batch
        finally:
            if state is not None:
                it.set_state(state)
            self._buffer.extend(kept + taken)


def validation_batches(data: Any) -> Iterator[Any]:
    """One pass over validation data (epoch 0 of an `ArrayDataset`)."""
    if hasattr(data, "for_epoch"):
        data = data.for_epoch(0)
    if isinstance(data, grain.MapDataset):
        return (data[i] for i in range(len(data)))
    return iter(data)
