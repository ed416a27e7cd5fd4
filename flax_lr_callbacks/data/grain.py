"""In-memory arrays as Grain `MapDataset`s of batches, reshuffled every epoch."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import grain
import jax
import numpy as np

from flax_lr_callbacks.data.on_device import OnDeviceBatch
from flax_lr_callbacks.validation import check_bool, check_count

__all__ = ["ArrayDataset", "as_batches"]


class ArrayDataset:
    """Batches of in-memory arrays, one Grain `MapDataset` per epoch.

    Epoch ``e`` is a random permutation drawn from ``seed + e``: every epoch has a different
    order, and the same seed gives the same orders on every run and every resume. The
    permutation is drawn in one vectorized call and each batch is one fancy-indexing gather,
    because Grain's per-element ``shuffle().batch()`` costs about 1.6 s of Python per
    Fashion-MNIST epoch on a 2-core machine, more than the small CNN's step time allows.

    Random access by batch index is what makes exact resume cheap: the position in an epoch is
    just ``(epoch, batch_index)``, and ``for_epoch(e)[i:]`` continues from batch ``i``.

    Args:
      arrays: a pytree (e.g. ``{"image": x, "label": y}``) of arrays with equal first dims.
      batch_size: examples per batch (>= 1).
      shuffle: reshuffle every epoch (default True). False keeps the stored order.
      seed: base seed of the per-epoch permutations.
      drop_remainder: drop the last incomplete batch (default True; keeps one compiled shape).
      on_device: keep the arrays on the device for `Trainer.fit` (copied at the first fit,
        again only for another placement; the dataset holds the copy) and gather each
        training batch inside the compiled step from its indices
        (`flax_lr_callbacks.data.on_device`): no per-step host gather or batch transfer, and
        fused steps (``steps_per_dispatch``) carry K batches as one small index array. The
        batches are the same as with ``on_device=False`` (default). Costs device memory for
        the whole dataset on every device (a mesh replicates it); single process only. The
        dataset's shape is part of the step's signature: a Trainer that fits another
        on-device dataset of a different size compiles its step again. Iterating the
        dataset yourself (``for_epoch``, validation, the LR sweep) still gives host batches.
      process_index, process_count: multi-host data parallelism. Each process yields its
        contiguous ``batch_size / process_count`` slice of every global batch (the same global
        batches as one process would see). Default: `jax.process_index()` /
        `jax.process_count()`, so a single process gets whole batches.

    Example:
      >>> import numpy as np
      >>> ds = ArrayDataset({"x": np.zeros((10, 2)), "y": np.arange(10)}, batch_size=4)
      >>> len(ds), ds.for_epoch(0)[0]["x"].shape
      (2, (4, 2))
    """

    def __init__(self, arrays: Any, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_remainder: bool = True, on_device: bool = False,
                 process_index: int | None = None, process_count: int | None = None):
        leaves = jax.tree_util.tree_leaves(arrays)
        if not leaves:
            raise ValueError(f"arrays has no array leaves: arrays={arrays!r:.80}")
        sizes = {len(a) for a in leaves}
        if len(sizes) != 1:
            raise ValueError(f"arrays must share their first dimension, got sizes {sorted(sizes)}")
        batch_size = check_count("batch_size", batch_size)
        shuffle, drop_remainder = check_bool("shuffle", shuffle), check_bool(
            "drop_remainder", drop_remainder)
        self.on_device = check_bool("on_device", on_device)
        seed = check_count("seed", seed, low=0)
        process_count = check_count("process_count", process_count, allow_none=True)
        process_index = check_count("process_index", process_index, low=0, allow_none=True)
        self.arrays = jax.tree_util.tree_map(np.asarray, arrays)
        self.num_examples = sizes.pop()
        if drop_remainder and batch_size > self.num_examples:
            raise ValueError(
                f"batch_size={batch_size} exceeds the {self.num_examples} examples with "
                "drop_remainder=True: no batch would be produced"
            )
        self.process_count = jax.process_count() if process_count is None else process_count
        self.process_index = jax.process_index() if process_index is None else process_index
        if not 0 <= self.process_index < self.process_count:
            raise ValueError(f"process_index must be in [0, process_count={self.process_count})"
                             f", got process_index={self.process_index}")
        if self.process_count > 1 and (batch_size % self.process_count or not drop_remainder):
            raise ValueError(
                f"with process_count={self.process_count}, batch_size must be a multiple of it "
                f"and drop_remainder True, got batch_size={batch_size}, "
                f"drop_remainder={drop_remainder}")
        if self.on_device and self.process_count > 1:
            raise ValueError(f"on_device=True needs a single process, got process_count="
                             f"{self.process_count}; use on_device=False")
        if self.on_device and self.num_examples >= 2**31:
            raise ValueError(f"on_device=True indexes examples with int32, but the arrays "
                             f"hold {self.num_examples}; use on_device=False")
        self._placed: tuple[Any, Any] | None = None  # (sharding, device copy of `arrays`)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.drop_remainder = drop_remainder

    def __len__(self) -> int:
        """Batches per epoch."""
        n, b = self.num_examples, self.batch_size
        return n // b if self.drop_remainder else -(-n // b)

    def permutation(self, epoch: int) -> np.ndarray:
        """Example order of `epoch`."""
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.default_rng(self.seed + epoch).permutation(self.num_examples)

    def for_epoch(self, epoch: int) -> grain.MapDataset:
        """The batches of `epoch` as a Grain `MapDataset` (random access, sliceable)."""
        arrays, index = self.arrays, self._batch_indices(epoch)
        return grain.MapDataset.range(len(self)).map(
            lambda i: jax.tree_util.tree_map(lambda a: a[index(i)], arrays))

    def _batch_indices(self, epoch: int, dtype: Any = None) -> Any:
        """``i -> `` the example indices of batch `i` of `epoch` (this process's slice)."""
        order, b = self.permutation(epoch), self.batch_size
        if dtype is not None:
            order = order.astype(dtype)
        local = b // self.process_count
        first = self.process_index * local

        def index(i: int) -> np.ndarray:
            idx = order[i * b:(i + 1) * b]
            if self.process_count > 1:  # this process's slice of the global batch
                idx = idx[first:first + local]
            return idx

        return index

    def device_batches(self, epoch: int, sharding: Any) -> grain.MapDataset:
        """The batches of `epoch` as `OnDeviceBatch` values over the arrays placed with
        `sharding` (the latest placement is kept): what `Trainer.fit` trains on with
        ``on_device=True``."""
        if self._placed is None or self._placed[0] != sharding:
            self._placed = None  # one copy at a time: the old one goes before the new one
            self._placed = (sharding, jax.device_put(self.arrays, sharding))
        arrays, index = self._placed[1], self._batch_indices(epoch, np.int32)
        return grain.MapDataset.range(len(self)).map(
            lambda i: OnDeviceBatch(arrays, index(i)))

    def __iter__(self):
        """Iterates epoch 0 (so an `ArrayDataset` also works where any iterable does)."""
        ds = self.for_epoch(0)
        return (ds[i] for i in range(len(ds)))


def as_batches(arrays: Mapping[str, np.ndarray], batch_size: int) -> ArrayDataset:
    """Unshuffled batches, keeping the last partial one: the usual evaluation split."""
    return ArrayDataset(arrays, batch_size, shuffle=False, drop_remainder=False)
