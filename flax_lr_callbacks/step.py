"""The pure pieces of the Trainer's train step: carried state, loss calling, records.

`Trainer` jits `train_step` once per fit. The LR side (rules, clock, `observe` faces) is
`lr_state`'s, shared with the drop-in `LRCallbacks`; this module adds the train state's
update, the per-step PRNG key, the NaN policy and the record buffer around it.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flax_lr_callbacks import hyperparams as hp_lib
from flax_lr_callbacks import lr_state as lr_lib
from flax_lr_callbacks import nan_policy as nan_lib
from flax_lr_callbacks.contract import hparam_key
from flax_lr_callbacks.data import on_device
from flax_lr_callbacks.lr_state import LRState

if TYPE_CHECKING:  # annotations only: Callback.curve -> preview -> this module
    from flax_lr_callbacks.callbacks.base import Callback

__all__ = ["TrainerState", "LossFn", "train_step", "fused_steps", "record", "record_keys",
           "empty_buffer", "eval_sums"]


class TrainerState(NamedTuple):
    """Everything the Trainer's jitted step carries from one step to the next."""

    train_state: Any  # e.g. flax TrainState (params, opt_state with injected hparams, step)
    lr_state: LRState  # base hparams, callback states, the schedule clock (step of this fit)
    key: jax.Array  # base PRNG key; step t uses fold_in(key, t)
    # Ring buffer of per-step records: float32 [log_every_n_steps, fields], one row per step,
    # columns: the sorted names of `record` (the Trainer keeps them: `record_keys`).
    buffer: jax.Array
    nonfinite: Any = None  # nan_policy.NonFinite: first non-finite step and their count

    # Read-only aliases for the fields that moved into `lr_state` (issue 15); each warns.
    step = property(lambda self: _moved(self, "step"), doc="Deprecated: ts.lr_state.step")
    base_hparams = property(lambda self: _moved(self, "base_hparams"),
                            doc="Deprecated: ts.lr_state.base_hparams")
    callback_states = property(lambda self: _moved(self, "callback_states"),
                               doc="Deprecated: ts.lr_state.callback_states")
    steps_per_epoch = property(lambda self: _moved(self, "steps_per_epoch"),
                               doc="Deprecated: ts.lr_state.steps_per_epoch")
    total_steps = property(lambda self: _moved(self, "total_steps"),
                           doc="Deprecated: ts.lr_state.total_steps")


def _moved(ts: TrainerState, name: str) -> Any:
    """``ts.lr_state.<name>``, with a DeprecationWarning naming that path."""
    warnings.warn(f"TrainerState.{name} is deprecated; read ts.lr_state.{name} (the LR state "
                  "moved into TrainerState.lr_state)", DeprecationWarning, stacklevel=3)
    return getattr(ts.lr_state, name)


class LossFn:
    """A user ``loss_fn`` normalized to ``(params, batch, rng) -> (loss, metrics)``.

    ``rng`` is passed only when the user's function has an ``rng`` parameter.
    """

    def __init__(self, fn: Callable[..., Any]):
        if not callable(fn):
            raise TypeError(f"loss_fn must be callable, got {fn!r}")
        self.fn = fn
        self.takes_rng = "rng" in inspect.signature(fn).parameters

    def __call__(self, params: Any, batch: Any, rng: jax.Array | None):
        out = self.fn(params, batch, rng=rng) if self.takes_rng else self.fn(params, batch)
        loss, metrics = out if isinstance(out, tuple) and len(out) == 2 else (out, {})
        if isinstance(out, (list, tuple)) and not (isinstance(out, tuple) and len(out) == 2
                                                   and isinstance(metrics, dict)):
            raise TypeError(
                f"loss_fn must return loss or the tuple (loss, {{name: scalar}}); "
                f"{_name(self.fn)} returned a {type(out).__name__} of {len(out)} items "
                f"({', '.join(_kind(x) for x in out)})")
        _check_scalar(self.fn, "loss", loss)
        for k, v in metrics.items():
            _check_scalar(self.fn, f"metric {k!r}", v)
        return loss, metrics


def _name(fn: Any) -> str:
    return f"loss_fn {getattr(fn, '__qualname__', repr(fn))}"


def _kind(x: Any) -> str:
    return "array" if hasattr(x, "shape") else type(x).__name__


def _check_scalar(fn: Any, what: str, value: Any) -> None:
    """Trace-time check (shapes only, no host sync) that a loss output is one number."""
    shape = getattr(value, "shape", None)
    if shape is None and not isinstance(value, (int, float)):
        raise TypeError(f"{_name(fn)} returned a {type(value).__name__} as its {what}; "
                        "it must be a scalar array")
    if shape not in (None, ()):
        raise ValueError(f"{_name(fn)} returned {what} of shape {tuple(shape)}; it must be a "
                         "scalar (reduce it, e.g. with .mean())")


def bound(state: Any, fn: Any) -> Any:
    """`fn` as a function of ``state.params``: NNX states re-assemble the model for it."""
    return state.bind_loss(fn) if fn is not None and hasattr(state, "bind_loss") else fn


def record(loss: Any, metrics: dict[str, Any], hparams: hp_lib.Hyperparams) -> dict[str, Any]:
    """The per-step values kept in the buffer: loss, ``train_<metric>``, applied hparams."""
    out = {"loss": loss, **{f"train_{k}": v for k, v in metrics.items()}}
    for g, names in hparams.items():
        for n, v in names.items():
            out[hparam_key(g, n)] = v
    return {k: jnp.asarray(v, jnp.float32) for k, v in out.items()}


def _step(ts: TrainerState, batch: Any, loss: LossFn, callbacks: Sequence[Callback],
          nan_policy: str = "ignore") -> tuple[TrainerState, jax.Array]:
    """One step without the buffer write: the new state and this step's record row.

    With `nan_policy` ``"stop"`` or ``"skip"`` (see `nan_policy`), a non-finite step's update
    of the train and callback states is not applied, and ``ts.nonfinite`` counts it.
    """
    t = ts.lr_state.step
    hparams, lr = lr_lib.advance(callbacks, ts.lr_state)
    state = ts.train_state
    state = state.replace(opt_state=hp_lib.set_hyperparams(state.opt_state, hparams))
    # A per-step key only for a loss that takes one (the hash costs a few microseconds).
    rng = jax.random.fold_in(ts.key, t) if loss.takes_rng else None
    batch = on_device.resolve(batch)
    (value, metrics), grads = jax.value_and_grad(bound(state, loss), has_aux=True)(
        state.params, batch, rng)

    def update(state, lr):
        new = state.apply_gradients(grads=grads)
        return new, lr_lib.observed(callbacks, lr, value, metrics, grads, state.params,
                                    new.params)

    def reject(state, lr):  # the clock moves on; the callback states stay as they were,
        # except, under "skip", for callbacks that watch rejected steps (`observes_rejected`;
        # "stop" freezes every state at the last finite step)
        kept = ts.lr_state.callback_states
        watch = [nan_policy == "skip" and getattr(cb, "observes_rejected", False)
                 for cb in callbacks]
        if any(watch):
            seen = lr_lib.observed(callbacks, lr, value, metrics, grads, state.params,
                                   state.params).callback_states
            kept = tuple(new if w else old for w, new, old in zip(watch, seen, kept))
        return ts.train_state, lr._replace(callback_states=kept)

    nonfinite = ts.nonfinite
    if nan_policy in ("ignore", "optimistic"):  # optimistic: the caller decides afterwards
        state, lr = update(state, lr)
    else:  # the update runs only when the step may be applied (no select over the state)
        apply, nonfinite = nan_lib.decide(nan_policy, nonfinite, t,
                                          nan_lib.step_is_finite(value, grads, hparams))
        state, lr = jax.lax.cond(apply, update, reject, state, lr)
    values = record(value, metrics, hparams)
    row = jnp.stack([values[k] for k in sorted(values)])  # one packed row, columns sorted
    ts = ts._replace(train_state=state, lr_state=lr, nonfinite=nonfinite)
    if nan_policy == "optimistic":  # the row and whether the step was finite
        return ts, (row, nan_lib.step_is_finite(value, grads, hparams))
    return ts, row


def _check_rows(rows: jax.Array, buffer: jax.Array) -> None:
    if rows.shape[-1] != buffer.shape[1]:
        raise ValueError(f"the step records {rows.shape[-1]} values but the buffer has "
                         f"{buffer.shape[1]} columns; build it with `empty_buffer`")


def train_step(ts: TrainerState, batch: Any, *, loss: LossFn,
               callbacks: Sequence[Callback], buffer_size: int,
               nan_policy: str = "ignore") -> TrainerState:
    """One step: rules -> write hyperparameters -> gradient update -> record into the buffer."""
    slot = ts.lr_state.step % buffer_size
    ts, row = _step(ts, batch, loss, callbacks, nan_policy)
    _check_rows(row, ts.buffer)
    return ts._replace(buffer=jax.lax.dynamic_update_slice(
        ts.buffer, row[None], (slot, jnp.zeros_like(slot))))


def fused_steps(ts: TrainerState, batches: Sequence[Any], *, loss: LossFn,
                callbacks: Sequence[Callback], buffer_size: int,
                nan_policy: str = "ignore") -> TrainerState:
    """`train_step` over K batches with `lax.scan`; the K record rows go into the buffer in
    one write after the scan (the buffer is not part of the scan's carry).

    `batches` is a sequence of K batch pytrees, one pytree stacked on a leading axis of K, or
    an `OnDeviceBatch` with a ``(K, batch_size)`` index (step i gathers row i of it).
    A sequence is not stacked: the scan runs over the step index and step i reads batch i
    through a `lax.switch` over the K inputs, so each step copies one batch where stacking
    would write all K of them into a fresh K-times-larger buffer first (on XLA:CPU that
    stack, its page faults included, cost more per step than the MLP step gained by fusing).
    """
    if isinstance(batches, on_device.OnDeviceBatch):  # a (K, batch_size) index: rows of K steps
        k, xs = batches.index.shape[0], batches.index

        def batch_at(index):
            return batches.replace(index=index)
    elif isinstance(batches, (list, tuple)):
        k, xs = len(batches), jnp.arange(len(batches), dtype=jnp.int32)
        branches = [lambda j=j: batches[j] for j in range(k)]

        def batch_at(i):
            return jax.lax.switch(i, branches)
    else:
        k, xs = jax.tree_util.tree_leaves(batches)[0].shape[0], batches

        def batch_at(batch):
            return batch

    def run(policy):
        return jax.lax.scan(lambda carry, x: _step(carry, batch_at(x), loss, callbacks, policy),
                            ts._replace(buffer=()), xs)  # no buffer in the carry

    if nan_policy == "ignore":
        new, rows = run("ignore")
    else:
        # Optimistic: the K steps unchecked, then the checked scan only if one of them was
        # not finite or the run had stopped. A per-step `lax.cond` inside the scan made XLA
        # copy the carried state at every step (the fused MLP ran 15% slower); this way a
        # finite group costs one check per step and one copy of the input state per call.
        new, (rows, finite) = run("optimistic")
        ok = jnp.all(finite)
        if nan_policy == "stop":
            ok &= ts.nonfinite.first_step < 0
        new, rows = jax.lax.cond(ok, lambda: (new, rows), lambda: run(nan_policy))
    slots = (ts.lr_state.step + jnp.arange(k)) % buffer_size
    _check_rows(rows, ts.buffer)
    return new._replace(buffer=ts.buffer.at[slots].set(rows, unique_indices=True))


def record_keys(ts: TrainerState, batch: Any, *, loss: LossFn,
                callbacks: Sequence[Callback]) -> tuple[str, ...]:
    """The names of the buffer's columns, sorted: what `record` returns (found by abstract
    evaluation)."""
    def record_only(ts, batch):
        hparams, _ = lr_lib.advance(callbacks, ts.lr_state)
        value, metrics = bound(ts.train_state, loss)(ts.train_state.params,
                                                      on_device.resolve(batch), ts.key)
        return record(value, metrics, hparams)

    return tuple(sorted(jax.eval_shape(record_only, ts, batch)))


def empty_buffer(num_fields: int, buffer_size: int) -> jax.Array:
    """Zeros for `buffer_size` record rows of `num_fields` columns."""
    return jnp.zeros((buffer_size, num_fields), jnp.float32)


def batch_size(batch: Any) -> int:
    """Leading dimension of a batch's first leaf."""
    leaves = jax.tree_util.tree_leaves(batch)
    if not leaves:
        raise ValueError("a batch has no array leaves")
    return int(np.shape(leaves[0])[0])


def eval_sums(state: Any, batch: Any, *, loss: LossFn,
              eval_fn: Callable[[Any, Any], dict[str, Any]] | None) -> dict[str, jax.Array]:
    """Example-weighted sums of the validation loss and metrics of one batch (no rng)."""
    batch = on_device.resolve(batch)
    value, metrics = bound(state, loss)(state.params, batch, None)
    values = {"loss": value, **metrics}
    if eval_fn is not None:
        values.update(bound(state, eval_fn)(state.params, batch))
    n = jnp.asarray(batch_size(batch), jnp.float32)
    sums = {k: jnp.asarray(v, jnp.float32) * n for k, v in values.items()}
    sums["_count"] = n
    return sums
