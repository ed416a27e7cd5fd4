"""Where the Trainer puts things: one device, or data parallel over a mesh (multi-host too).

Data parallel is the default when JAX sees more than one device: a 1-D mesh over all devices
with the axis ``"data"``. Every batch is sharded along its first dimension over that axis;
the train state, the injected hyperparameters and every callback's state are replicated.
Losses and metrics computed in the step are means over the *global* batch, so host decisions
(plateau, finder stop, checkpoints' best) see the same numbers on every process.

Multi-host: call ``jax.distributed.initialize()`` first, give each process its own slice of
every global batch (`ArrayDataset` does this by default: ``process_index`` /
``process_count``), and run the same script on every host. The Trainer assembles global
arrays with `jax.make_array_from_process_local_data`.

Host writes into replicated state go through ``device_put`` with the field's own sharding
(`lr_state._put_like`), so they never change the step's signature.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, SingleDeviceSharding

from flax_lr_callbacks.data.on_device import OnDeviceBatch

__all__ = ["Placement", "default_mesh"]


def default_mesh(axis: str = "data") -> Mesh | None:
    """A 1-D mesh over all devices (all processes), or None with a single device."""
    devices = jax.devices()
    if len(devices) == 1:
        return None
    return Mesh(np.array(devices), (axis,))


class Placement:
    """Shardings of the carried state and of batches for one Trainer."""

    def __init__(self, mesh: Mesh | None, data_axis: str = "data"):
        if mesh is not None and not isinstance(mesh, Mesh):
            raise TypeError(f"mesh must be 'auto', a jax.sharding.Mesh or None, got "
                            f"mesh={mesh!r}")
        if mesh is not None and data_axis not in mesh.axis_names:
            raise ValueError(f"data_axis={data_axis!r} is not an axis of the mesh "
                             f"{mesh.axis_names}")
        self.mesh = mesh
        self.data_axis = data_axis

    @classmethod
    def from_setting(cls, mesh: Any, data_axis: str = "data") -> Placement:
        """For ``Trainer(mesh=...)``: ``"auto"`` is `default_mesh` (data parallel over every
        device when there are several), else a `Mesh` or None (the first device)."""
        auto = isinstance(mesh, str) and mesh == "auto"
        return cls(default_mesh(data_axis) if auto else mesh, data_axis)

    @property
    def num_data_shards(self) -> int:
        return 1 if self.mesh is None else self.mesh.shape[self.data_axis]

    def state_sharding(self) -> jax.sharding.Sharding:
        """Replicated over the mesh, or the first local device."""
        if self.mesh is None:
            return SingleDeviceSharding(jax.local_devices()[0])
        return NamedSharding(self.mesh, PartitionSpec())

    def batch_sharding(self, stacked: bool = False) -> jax.sharding.Sharding:
        if self.mesh is None:
            return SingleDeviceSharding(jax.local_devices()[0])
        spec = (None, self.data_axis) if stacked else (self.data_axis,)
        return NamedSharding(self.mesh, PartitionSpec(*spec))

    def put_group(self, group: Any) -> Any:
        """A fused call's input placed: the ``(K, batch)`` index of an `OnDeviceBatch`, or
        each of a tuple of K batches."""
        if self.mesh is None:
            return group
        if isinstance(group, OnDeviceBatch):
            return self.put_batch(group, stacked=True)
        return tuple(self.put_batch(b) for b in group)

    def put_batch(self, batch: Any, *, strict: bool = True, stacked: bool = False) -> Any:
        """The global batch, sharded along dim 0, from this process's slice of it.

        A batch whose size the data shards do not divide raises with `strict` (training:
        the step compiles for one shape); otherwise it is replicated (a last, partial
        validation batch). ``stacked``: K batches stacked on a new leading axis (dim 1 is
        the batch).
        """
        if self.mesh is None:
            return batch
        if isinstance(batch, OnDeviceBatch):  # the arrays are placed already: shard the index
            return batch.replace(index=self.put_batch(batch.index, strict=strict,
                                                      stacked=stacked))
        n = self.num_data_shards
        local = jax.process_count() > 1
        leaves = jax.tree_util.tree_leaves(batch)
        size = np.shape(leaves[0])[int(stacked)] * (jax.process_count() if local else 1)
        if size % n:
            if strict:
                raise ValueError(
                    f"the global batch size {size} is not divisible by the {n} devices of the "
                    f"mesh axis {self.data_axis!r}; use a batch size that is a multiple of {n}")
            if local:
                raise ValueError(f"a {size}-example batch cannot be split over {n} devices "
                                 "on several processes; drop the remainder")
            return jax.device_put(batch, NamedSharding(self.mesh, PartitionSpec()))
        sharding = self.batch_sharding(stacked)
        if not local:
            return jax.device_put(batch, sharding)
        return jax.tree_util.tree_map(
            lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)
