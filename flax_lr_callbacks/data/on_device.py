"""Batches gathered inside the compiled step from arrays that stay on the device.

An ``ArrayDataset(..., on_device=True)`` is copied to the device once (per placement); each
training batch then travels as its example indices only (``batch_size`` int32 values), and
the step gathers the rows itself. That removes the per-step host gather and host-to-device
copy of the batch, and lets a fused call (``Trainer(steps_per_dispatch=K)``) carry K batches
as one small ``(K, batch_size)`` index array: `benchmarks/overhead.py` measures what that is
worth.

The batches are the ones the host path would build (same permutation, same rows, same order),
so positions, resume and "every batch once per epoch" are unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["OnDeviceBatch", "resolve", "group"]


@dataclasses.dataclass(frozen=True)
class OnDeviceBatch:
    """The rows `index` of the device-resident `arrays` (a pytree of arrays).

    `index` is ``(batch_size,)`` for one step or ``(K, batch_size)`` for K fused steps.
    """

    arrays: Any
    index: Any

    def replace(self, **changes: Any) -> OnDeviceBatch:
        return dataclasses.replace(self, **changes)


jax.tree_util.register_dataclass(OnDeviceBatch, data_fields=["arrays", "index"],
                                 meta_fields=[])


def resolve(batch: Any) -> Any:
    """The batch pytree the loss sees: an `OnDeviceBatch` gathered (inside a trace, that is
    one gather per leaf), anything else unchanged."""
    if not isinstance(batch, OnDeviceBatch):
        return batch
    index = batch.index
    # "clip" is the cheapest gather mode; the indices come from the epoch's permutation, so
    # they are always in range
    return jax.tree_util.tree_map(lambda a: jnp.take(a, index, axis=0, mode="clip"),
                                  batch.arrays)


def group(batches: Sequence[Any]) -> Any:
    """K batches as one fused-call input. Batches gathered from the same device arrays become
    one `OnDeviceBatch` with a ``(K, batch_size)`` index (stacked on the host: K small integer
    rows); anything else becomes a tuple (the fused step reads item i at step i)."""
    first = batches[0]
    if isinstance(first, OnDeviceBatch) and all(
            isinstance(b, OnDeviceBatch) and b.arrays is first.arrays for b in batches):
        return first.replace(index=np.stack([b.index for b in batches]))
    return tuple(batches)
