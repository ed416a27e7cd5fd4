"""The pure pieces of the train step: carried state, loss calling, rules, records.

`Trainer` jits `train_step` once per fit; the same functions serve anyone who wants the
callbacks' in-graph behaviour inside a hand-written step.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flax_lr_callbacks import hyperparams as hp_lib
from flax_lr_callbacks import nan_policy as nan_lib
from flax_lr_callbacks.contract import Observation, StepContext, hparam_key
from flax_lr_callbacks.rules import apply_rules, check_setters, observe_all, requested_norms

if TYPE_CHECKING:  # annotations only: Callback.curve -> preview -> this module
    from flax_lr_callbacks.callbacks.base import Callback

__all__ = ["TrainerState", "LossFn", "step_context", "train_step", "fused_steps", "record",
           "record_keys", "empty_buffer", "eval_sums"]


class TrainerState(NamedTuple):
    """Everything the jitted train step carries from one step to the next."""

    train_state: Any  # e.g. flax TrainState (params, opt_state with injected hparams, step)
    base_hparams: hp_lib.Hyperparams  # values rules start from each step
    callback_states: tuple  # one device pytree per callback
    key: jax.Array  # base PRNG key; step t uses fold_in(key, t)
    step: jax.Array  # int32 step of this fit (the schedule clock)
    steps_per_epoch: jax.Array
    total_steps: jax.Array
    # Ring buffer of per-step records: float32 [log_every_n_steps, fields], one row per step,
    # columns: the sorted names of `record` (the Trainer keeps them: `record_keys`).
    buffer: jax.Array
    nonfinite: Any = None  # nan_policy.NonFinite: first non-finite step and their count


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


def init_rule_state(callbacks: Sequence[Callback], opt_state: Any, plan: Any, *,
                    base: hp_lib.Hyperparams | None = None
                    ) -> tuple[hp_lib.Hyperparams, tuple]:
    """Configures and checks `callbacks` against `opt_state`; returns fresh float32 copies of
    the base hyperparameters and each callback's initial device state.

    The one set-up sequence, shared by the Trainer, the drop-in `LRCallbacks` and `preview`
    (which has no optimizer: ``opt_state=None`` with the `base` values to start from). The
    copies never alias `opt_state` (a donating step must not free the caller's arrays).
    """
    if opt_state is not None:
        base = hp_lib.get_hyperparams(opt_state)
    for cb in callbacks:
        cb.configure(base)
    for cb in callbacks:
        names = tuple(cb.sets) + tuple(cb.scales)
        if names and opt_state is not None:
            hp_lib.check_targets(opt_state, names, owner=repr(cb), groups=cb.groups)
    check_setters(callbacks, base)
    base = {g: {n: jnp.array(v, jnp.float32, copy=True) for n, v in d.items()}
            for g, d in base.items()}
    states = tuple(jax.tree_util.tree_map(jnp.asarray, cb.init_state(plan, base))
                   for cb in callbacks)
    return base, states


def bound(state: Any, fn: Any) -> Any:
    """`fn` as a function of ``state.params``: NNX states re-assemble the model for it."""
    return state.bind_loss(fn) if fn is not None and hasattr(state, "bind_loss") else fn


def step_context(ts: TrainerState) -> StepContext:
    """The traced counters rules read at step ``ts.step``."""
    return StepContext(step=ts.step, epoch=ts.step // ts.steps_per_epoch,
                       steps_per_epoch=ts.steps_per_epoch, total_steps=ts.total_steps)


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
    hparams, cb_states = apply_rules(callbacks, step_context(ts), ts.base_hparams,
                                     ts.callback_states)
    state = ts.train_state
    state = state.replace(opt_state=hp_lib.set_hyperparams(state.opt_state, hparams))
    # A per-step key only for a loss that takes one (the hash costs a few microseconds).
    rng = jax.random.fold_in(ts.key, ts.step) if loss.takes_rng else None
    (value, metrics), grads = jax.value_and_grad(bound(state, loss), has_aux=True)(
        state.params, batch, rng)

    def update(state, cb_states):
        new = state.apply_gradients(grads=grads)
        return new, observe(callbacks, step_context(ts), cb_states, value, metrics, grads,
                            state.params, new.params)

    nonfinite = ts.nonfinite
    if nan_policy == "ignore":
        state, cb_states = update(state, cb_states)
    else:  # the update runs only when the step may be applied (no select over the state)
        apply, nonfinite = nan_lib.decide(nan_policy, nonfinite, ts.step,
                                          nan_lib.step_is_finite(value, grads, hparams))
        state, cb_states = jax.lax.cond(apply, update, lambda *_: (
            ts.train_state, ts.callback_states), state, cb_states)
    values = record(value, metrics, hparams)
    row = jnp.stack([values[k] for k in sorted(values)])  # one packed row, columns sorted
    return ts._replace(train_state=state, callback_states=cb_states, step=ts.step + 1,
                       nonfinite=nonfinite), row


def _check_rows(rows: jax.Array, buffer: jax.Array) -> None:
    if rows.shape[-1] != buffer.shape[1]:
        raise ValueError(f"the step records {rows.shape[-1]} values but the buffer has "
                         f"{buffer.shape[1]} columns; build it with `empty_buffer`")


def train_step(ts: TrainerState, batch: Any, *, loss: LossFn,
               callbacks: Sequence[Callback], buffer_size: int,
               nan_policy: str = "ignore") -> TrainerState:
    """One step: rules -> write hyperparameters -> gradient update -> record into the buffer."""
    slot = ts.step % buffer_size
    ts, row = _step(ts, batch, loss, callbacks, nan_policy)
    _check_rows(row, ts.buffer)
    return ts._replace(buffer=jax.lax.dynamic_update_slice(
        ts.buffer, row[None], (slot, jnp.zeros_like(slot))))


def global_norm(tree: Any) -> jax.Array:
    """L2 norm over every leaf of `tree`, in float32."""
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.sqrt(sum(jnp.sum(jnp.square(jnp.asarray(x, jnp.float32))) for x in leaves))


def observe(callbacks: Sequence[Callback], ctx: StepContext, states: tuple, loss: Any,
            metrics: dict[str, Any], grads: Any = None, old_params: Any = None,
            new_params: Any = None) -> tuple:
    """Hands a finished step's outcome to the callbacks' `observe` faces; new states.

    Norms are computed only when some callback lists them in `observes` (otherwise this adds
    nothing to the compiled step).
    """
    if not any(cb.has_observe for cb in callbacks):
        return states
    norms = requested_norms(callbacks)
    grad_norm = update_norm = None
    if "grad_norm" in norms:
        if grads is None:
            raise ValueError("a callback observes 'grad_norm'; pass grads=")
        grad_norm = global_norm(grads)
    if "update_norm" in norms:
        if old_params is None or new_params is None:
            raise ValueError("a callback observes 'update_norm'; pass the parameters before "
                             "and after the update")
        update_norm = global_norm(jax.tree_util.tree_map(
            lambda a, b: jnp.asarray(a, jnp.float32) - jnp.asarray(b, jnp.float32),
            new_params, old_params))
    obs = Observation(loss=jnp.asarray(loss, jnp.float32),
                      metrics={k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()},
                      grad_norm=grad_norm, update_norm=update_norm)
    return observe_all(callbacks, ctx, obs, states)


def fused_steps(ts: TrainerState, batches: Sequence[Any], *, loss: LossFn,
                callbacks: Sequence[Callback], buffer_size: int,
                nan_policy: str = "ignore") -> TrainerState:
    """`train_step` over K batches with `lax.scan`; the K record rows go into the buffer in
    one write after the scan (the buffer is not part of the scan's carry).

    `batches` is a sequence of K batch pytrees or one pytree stacked on a leading axis of K.
    A sequence is not stacked: the scan runs over the step index and step i reads batch i
    through a `lax.switch` over the K inputs, so each step copies one batch where stacking
    would write all K of them into a fresh K-times-larger buffer first (on XLA:CPU that
    stack, its page faults included, cost more per step than the MLP step gained by fusing).
    """
    if isinstance(batches, (list, tuple)):
        k = len(batches)
        branches = [lambda j=j: batches[j] for j in range(k)]

        def body(carry, i):
            return _step(carry, jax.lax.switch(i, branches), loss, callbacks, nan_policy)

        xs = jnp.arange(k, dtype=jnp.int32)
    else:
        k = jax.tree_util.tree_leaves(batches)[0].shape[0]

        def body(carry, batch):
            return _step(carry, batch, loss, callbacks, nan_policy)

        xs = batches
    slots = (ts.step + jnp.arange(k)) % buffer_size
    buffer = ts.buffer
    ts, rows = jax.lax.scan(body, ts._replace(buffer=()), xs)  # no buffer in the carry
    _check_rows(rows, buffer)
    return ts._replace(buffer=buffer.at[slots].set(rows, unique_indices=True))


def record_keys(ts: TrainerState, batch: Any, *, loss: LossFn,
                callbacks: Sequence[Callback]) -> tuple[str, ...]:
    """The names of the buffer's columns, sorted: what `record` returns (found by abstract
    evaluation)."""
    def record_only(ts, batch):
        hparams, _ = apply_rules(callbacks, step_context(ts), ts.base_hparams,
                                 ts.callback_states)
        value, metrics = bound(ts.train_state, loss)(ts.train_state.params, batch, ts.key)
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
    value, metrics = bound(state, loss)(state.params, batch, None)
    values = {"loss": value, **metrics}
    if eval_fn is not None:
        values.update(bound(state, eval_fn)(state.params, batch))
    n = jnp.asarray(batch_size(batch), jnp.float32)
    sums = {k: jnp.asarray(v, jnp.float32) * n for k, v in values.items()}
    sums["_count"] = n
    return sums


# ---------------------------------------------------------------------- host-side edits
def _put_like(value: Any, like: jax.Array) -> jax.Array:
    """`value` with the dtype, sharding and committedness of `like`: the same jit signature,
    so no recompile (jit keys its cache on whether an argument is committed, too)."""
    value = np.asarray(value, dtype=like.dtype)
    if not getattr(like, "committed", True):
        return jnp.asarray(value)
    return jax.device_put(value, like.sharding)


def _state_path(callbacks: Sequence[Callback], callback: Callback) -> list[int]:
    """Indices from the callback list down through composites' `children` to `callback`."""
    def find(items, path):
        for i, c in enumerate(items):
            if c is callback:
                return path + [i]
            found = find(getattr(c, "children", ()), path + [i])
            if found:
                return found
        return None

    path = find(callbacks, [])
    if path is None:
        raise ValueError(f"{callback!r} is not among the callbacks")
    return path


def get_callback_state(ts: TrainerState, callbacks: Sequence[Callback],
                       callback: Callback) -> Any:
    """The device state of `callback`, also when nested inside a composite."""
    path = _state_path(callbacks, callback)
    state = ts.callback_states[path[0]]
    for i in path[1:]:
        state = state.children[i]
    return state


def replace_callback_state(ts: TrainerState, callbacks: Sequence[Callback], callback: Callback,
                           **values: Any) -> TrainerState:
    """`ts` with fields of `callback`'s state replaced by host values (dtype/sharding kept)."""
    old = get_callback_state(ts, callbacks, callback)
    if not (hasattr(old, "_asdict") or isinstance(old, dict)):
        raise TypeError(
            f"{callback!r} has a device state of type {type(old).__name__}, which has no named "
            f"fields to write {sorted(values)} into; return a NamedTuple from init_state "
            "(e.g. class MyState(NamedTuple): scale: jax.Array) to write it from host hooks")
    fields = old._asdict() if hasattr(old, "_asdict") else dict(old)
    for name, v in values.items():
        if name not in fields:
            raise KeyError(f"{callback!r} state has no field {name!r}; has {sorted(fields)}")
        fields[name] = _put_like(v, fields[name])
    new = type(old)(**fields) if hasattr(old, "_asdict") else fields

    def rebuild(state, path):
        if not path:
            return new
        children = list(state.children)
        children[path[0]] = rebuild(children[path[0]], path[1:])
        return state._replace(children=tuple(children))

    path = _state_path(callbacks, callback)
    states = list(ts.callback_states)
    states[path[0]] = rebuild(states[path[0]], path[1:])
    return ts._replace(callback_states=tuple(states))


def replace_base_hyperparam(ts: TrainerState, name: str, value: float,
                            group: str | None = None) -> TrainerState:
    """`ts` with the base value of `name` (in `group`, or every group having it) replaced."""
    base = {g: dict(d) for g, d in ts.base_hparams.items()}
    targets = [group] if group else [g for g in base if name in base[g]]
    if not targets or any(name not in base.get(g, {}) for g in targets):
        raise TypeError(f"optimizer has no injectable {name!r} in groups {targets or list(base)}")
    for g in targets:
        base[g][name] = _put_like(value, base[g][name])
    return ts._replace(base_hparams=base)
