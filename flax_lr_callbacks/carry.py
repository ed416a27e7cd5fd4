"""The Trainer's carried state between steps, with its many scalars packed into few arrays.

A jitted call pays on the host for every array it takes and returns: flattening, a runtime
buffer and a Python `jax.Array` per leaf, about 1.5-2.5 us each on a 2-core CPU. The LR side
of the carried `TrainerState` is mostly scalars (base hyperparameters, each callback's
fields, the schedule clock, the NaN counters: 15 of the 29 leaves of the user-style MLP fit),
and a bare optax loop carries none of them. Between steps the Trainer therefore carries a
`Carry`: the train state, key and record buffer as they are, and the scalars of
``(lr_state, nonfinite)`` stacked into one vector per dtype. The jitted step unpacks them in
the graph (scalar reads, free) and packs its outputs again (one small concatenation), so a
step takes and returns 16 leaves instead of 29 (`benchmarks/overhead.py`, issue 17).

The host never sees the packing: `Trainer.trainer_state` is a `TrainerState`, rebuilt from
the `Carry` in one dispatch when something reads it (log points, epoch ends, checkpoints),
and writing it (a callback's host write) makes the next step pack it again. The packed
layout (the scalars' tree structure, dtypes and places) is the `Carry`'s static pytree data,
so jit keys its cache on it: a fit with other callbacks traces anew instead of misreading.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from flax_lr_callbacks.step import TrainerState

__all__ = ["Carry", "CarryHost", "fetch_window", "pack", "split_groups", "stack_groups", "through",
           "unpack"]


class Layout(NamedTuple):
    """Where the leaves of ``(lr_state, nonfinite)`` go: hashable, the `Carry`'s aux data."""

    treedef: Any
    groups: tuple[tuple[str, bool, tuple[int, ...]], ...]  # (dtype, weak, leaf positions)
    others: tuple[int, ...]  # positions of the leaves that are not scalars, kept as they are


@jax.tree_util.register_pytree_node_class
class Carry:
    """`TrainerState` with the scalars of its LR side stacked (see the module docstring)."""

    def __init__(self, train_state: Any, key: Any, buffer: Any, packed: tuple, others: tuple,
                 layout: Layout):
        self.train_state, self.key, self.buffer = train_state, key, buffer
        self.packed, self.others, self.layout = packed, others, layout

    def tree_flatten(self):
        return (self.train_state, self.key, self.buffer, self.packed, self.others), self.layout

    @classmethod
    def tree_unflatten(cls, layout: Layout, children: Any) -> Carry:
        return cls(*children, layout)


def _weak(x: Any) -> bool:
    return bool(getattr(getattr(x, "aval", x), "weak_type", False))


def _split(ts: TrainerState) -> tuple[Layout, list[list[Any]], list[Any]]:
    leaves, treedef = jax.tree_util.tree_flatten((ts.lr_state, ts.nonfinite))
    groups: dict[tuple[str, bool], list[int]] = {}
    others = []
    for i, x in enumerate(leaves):
        if jnp.ndim(x) == 0 and hasattr(x, "dtype"):
            groups.setdefault((jnp.dtype(x.dtype).name, _weak(x)), []).append(i)
        else:
            others.append(i)
    spec = tuple((dtype, weak, tuple(pos)) for (dtype, weak), pos in groups.items())
    return (Layout(treedef, spec, tuple(others)),
            [[leaves[i] for i in pos] for _, _, pos in spec], [leaves[i] for i in others])


def _join(layout: Layout, scalars: Any, others: Any) -> TrainerState | Any:
    leaves: list[Any] = [None] * (sum(len(p) for _, _, p in layout.groups) + len(layout.others))
    for (_, _, pos), values in zip(layout.groups, scalars):
        for i, v in zip(pos, values):
            leaves[i] = v
    for i, v in zip(layout.others, others):
        leaves[i] = v
    return jax.tree_util.tree_unflatten(layout.treedef, leaves)


def stack_groups(groups: tuple) -> tuple:
    """One vector per group of scalars (jitted by `CompiledSteps` for the host side)."""
    return tuple(jnp.stack(g) for g in groups)


def split_groups(packed: tuple) -> tuple:
    """The scalars of each packed vector (the inverse of `stack_groups`)."""
    return tuple(tuple(v[i] for i in range(v.shape[0])) for v in packed)


def pack(ts: TrainerState, stack: Any = stack_groups) -> Carry:
    """`ts` as a `Carry`; `stack` packs the scalar groups (in the graph by default, or the
    jitted host-side `CompiledSteps.pack_scalars`)."""
    layout, scalars, others = _split(ts)
    return Carry(ts.train_state, ts.key, ts.buffer, stack(tuple(tuple(g) for g in scalars)),
                 tuple(others), layout)


def unpack(carry: Carry, split: Any = split_groups) -> TrainerState:
    """The `TrainerState` of `carry`; `split` unpacks the vectors (in the graph by default,
    or the jitted `CompiledSteps.unpack_scalars`)."""
    lr_state, nonfinite = _join(carry.layout, split(carry.packed), carry.others)
    return TrainerState(train_state=carry.train_state, lr_state=lr_state, key=carry.key,
                        buffer=carry.buffer, nonfinite=nonfinite)


def through(ts: Any, step: Any) -> Any:
    """`step` applied to a `TrainerState`, or inside a jitted call to the state of a `Carry`
    (unpacked, stepped and packed again: the result is a `Carry` too)."""
    return pack(step(unpack(ts))) if isinstance(ts, Carry) else step(ts)


def fetch_window(carry: Carry) -> tuple[Any, Any]:
    """The record buffer and the NaN-policy counters of `carry` as host values, in one
    device-to-host transfer (the counters are read out of the packed scalars on the host)."""
    buffer, packed, others = jax.device_get((carry.buffer, carry.packed, carry.others))
    return buffer, _join(carry.layout, split_groups(packed), others)[1]


class CarryHost:
    """`trainer_state` as a `TrainerState` over the `Carry` the steps take and return.

    The host class provides ``steps`` (`CompiledSteps`, whose ``pack_scalars`` and
    ``unpack_scalars`` are the jitted host-side halves)."""

    _state: TrainerState | None = None
    _carry: Carry | None = None

    @property
    def trainer_state(self) -> TrainerState | None:
        """The carried state of the running (or last) fit."""
        if self._state is None and self._carry is not None:
            self._state = unpack(self._carry, self.steps.unpack_scalars)
        return self._state

    @trainer_state.setter
    def trainer_state(self, ts: TrainerState | None) -> None:
        self._state, self._carry = ts, None

    def _carried(self) -> Carry:
        """The `Carry` for the next step (packed from `trainer_state` after a host write)."""
        if self._carry is None:
            self._carry = pack(self._state, self.steps.pack_scalars)
        return self._carry

    def _advance(self, carry: Carry) -> None:
        """Takes a step's output; `trainer_state` is rebuilt from it when next read."""
        self._carry, self._state = carry, None

    def _current_train_state(self) -> Any:
        """The train state without rebuilding the rest (per-step hooks)."""
        return self._carry.train_state if self._carry is not None else getattr(
            self._state, "train_state", None)
