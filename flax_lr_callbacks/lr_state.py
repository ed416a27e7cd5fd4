"""The LR side of a fit's carried state, built and advanced once for every host.

`LRState` holds what the callbacks carry from step to step: the base hyperparameters rules
start from, each callback's device state and the schedule clock. The `Trainer` carries one in
`TrainerState.lr_state` (next to the train state, the PRNG key and the record buffer);
`LRCallbacks` hands one to a hand-written step (with the write-back check fields set). Both
build it with `init`, run the rules with `advance`, feed `observe` faces with `observed`,
and write host values into it with `replace_callback_state` / `replace_base_hyperparam`
(the drop-in places it like the optimizer's values with `placed_like`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flax_lr_callbacks import hyperparams as hp_lib
from flax_lr_callbacks.contract import Observation, StepContext
from flax_lr_callbacks.rules import apply_rules, check_setters, observe_all, requested_norms

if TYPE_CHECKING:  # annotations only: Callback.curve -> preview -> this module
    from flax_lr_callbacks.callbacks.base import Callback

__all__ = ["LRState", "BoundCallbacks", "init", "init_rule_state", "step_context", "advance",
           "observe", "observed", "get_callback_state", "replace_callback_state",
           "replace_base_hyperparam", "placed_like"]


@jax.tree_util.register_static
class BoundCallbacks:
    """The callbacks an `LRState` belongs to, carried as static pytree metadata (no leaves):
    `apply_lr` needs no other argument, and jit keys its cache on these same objects."""

    def __init__(self, callbacks: tuple[Callback, ...]):
        self.items = callbacks

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BoundCallbacks) and len(other.items) == len(self.items) and all(
            a is b for a, b in zip(self.items, other.items))

    def __hash__(self) -> int:
        return hash(tuple(id(c) for c in self.items))


class LRState(NamedTuple):
    """What the LR callbacks carry through a train step (a pytree).

    The last three fields belong to the drop-in `LRCallbacks` (its write-back check and its
    bound callbacks); the Trainer leaves them None (no leaves).
    """

    base_hparams: hp_lib.Hyperparams  # values rules start from each step
    callback_states: tuple  # one device pytree per callback
    step: jax.Array  # int32 steps applied so far (the schedule clock)
    steps_per_epoch: jax.Array
    total_steps: jax.Array
    applied: hp_lib.Hyperparams | None = None  # the values the last `apply` wrote
    stale: jax.Array | None = None  # int32: steps whose optimizer state lacked those values
    callbacks: BoundCallbacks | None = None  # static: what `apply_lr` runs


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
            hp_lib.check_targets(opt_state, names, owner=repr(cb), groups=cb.groups, dtype=True)
    check_setters(callbacks, base)
    base = {g: {n: jnp.array(v, jnp.float32, copy=True) for n, v in d.items()}
            for g, d in base.items()}
    states = tuple(jax.tree_util.tree_map(jnp.asarray, cb.init_state(plan, base))
                   for cb in callbacks)
    return base, states


def init(callbacks: Sequence[Callback], opt_state: Any, plan: Any) -> LRState:
    """A fresh `LRState` at step 0 of `plan` (see `init_rule_state`)."""
    base, states = init_rule_state(callbacks, opt_state, plan)
    return LRState(base_hparams=base, callback_states=states, step=jnp.zeros((), jnp.int32),
                   steps_per_epoch=jnp.asarray(plan.steps_per_epoch, jnp.int32),
                   total_steps=jnp.asarray(plan.total_steps, jnp.int32))


def step_context(lr: LRState) -> StepContext:
    """The traced counters rules read at step ``lr.step``."""
    return StepContext(step=lr.step, epoch=lr.step // lr.steps_per_epoch,
                       steps_per_epoch=lr.steps_per_epoch, total_steps=lr.total_steps)


def advance(callbacks: Sequence[Callback], lr: LRState) -> tuple[hp_lib.Hyperparams, LRState]:
    """Runs the rules for step ``lr.step`` (in-graph); returns the hyperparameters to apply
    and the state with the rules' new callback states and the clock moved on by one."""
    hparams, states = apply_rules(callbacks, step_context(lr), lr.base_hparams,
                                  lr.callback_states)
    return hparams, lr._replace(callback_states=states, step=lr.step + 1)


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


def observed(callbacks: Sequence[Callback], lr: LRState, loss: Any, metrics: dict[str, Any],
             grads: Any = None, old_params: Any = None, new_params: Any = None) -> LRState:
    """`observe` for the step `advance` last ran (``lr.step - 1``); the new `LRState`."""
    ctx = step_context(lr._replace(step=lr.step - 1))
    return lr._replace(callback_states=observe(callbacks, ctx, lr.callback_states, loss,
                                               metrics, grads, old_params, new_params))


# ---------------------------------------------------------------------- host-side edits
def _put_like(value: Any, like: jax.Array, what: str) -> jax.Array:
    """`value` with the dtype, sharding and committedness of `like`: the same jit signature,
    so no recompile (jit keys its cache on whether an argument is committed, too). Raises
    for another shape, and for a value an integer or boolean field cannot hold exactly."""
    raw = np.asarray(value)
    if raw.shape != like.shape:
        raise ValueError(f"{what}: a value of shape {raw.shape} for a field of shape "
                         f"{like.shape}; a write keeps the shape (another one would recompile "
                         "the step)")
    value = raw.astype(like.dtype)
    exact = jnp.issubdtype(like.dtype, jnp.integer) or like.dtype == np.bool_
    if exact and not np.array_equal(value.astype(np.float64), raw.astype(np.float64)):
        raise ValueError(f"{what}: {raw.tolist()} does not fit the field's {like.dtype} exactly")
    if not getattr(like, "committed", True):
        return jnp.asarray(value)
    return jax.device_put(value, like.sharding)


def placed_like(lr: LRState, opt_state: Any) -> LRState:
    """`lr` committed to the placement of `opt_state`'s injected values, unchanged when they
    are not committed: jit keys its cache on placement, so the LR state must be committed
    exactly when the optimizer state is."""
    for names in hp_lib.get_hyperparams(opt_state).values():
        for v in names.values():
            if isinstance(v, jax.Array) and v.committed:
                return jax.device_put(lr, v.sharding)
    return lr


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


def get_callback_state(lr: LRState, callbacks: Sequence[Callback], callback: Callback) -> Any:
    """The device state of `callback`, also when nested inside a composite."""
    path = _state_path(callbacks, callback)
    state = lr.callback_states[path[0]]
    for i in path[1:]:
        state = state.children[i]
    return state


def replace_callback_state(lr: LRState, callbacks: Sequence[Callback], callback: Callback,
                           **values: Any) -> LRState:
    """`lr` with fields of `callback`'s state replaced by host values (dtype/sharding kept)."""
    old = get_callback_state(lr, callbacks, callback)
    if not (hasattr(old, "_asdict") or isinstance(old, dict)):
        raise TypeError(
            f"{callback!r} has a device state of type {type(old).__name__}, which has no named "
            f"fields to write {sorted(values)} into; return a NamedTuple from init_state "
            "(e.g. class MyState(NamedTuple): scale: jax.Array) to write it from host hooks")
    fields = old._asdict() if hasattr(old, "_asdict") else dict(old)
    for name, v in values.items():
        if name not in fields:
            raise KeyError(f"{callback!r} state has no field {name!r}; has {sorted(fields)}")
        fields[name] = _put_like(v, fields[name], f"{callback!r}.{name}")
    new = type(old)(**fields) if hasattr(old, "_asdict") else fields

    def rebuild(state, path):
        if not path:
            return new
        children = list(state.children)
        children[path[0]] = rebuild(children[path[0]], path[1:])
        return state._replace(children=tuple(children))

    path = _state_path(callbacks, callback)
    states = list(lr.callback_states)
    states[path[0]] = rebuild(states[path[0]], path[1:])
    return lr._replace(callback_states=tuple(states))


def replace_base_hyperparam(lr: LRState, name: str, value: float,
                            group: str | None = None) -> LRState:
    """`lr` with the base value of `name` (in `group`, or every group having it) replaced."""
    base = {g: dict(d) for g, d in lr.base_hparams.items()}
    targets = [group] if group else [g for g in base if name in base[g]]
    if not targets or any(name not in base.get(g, {}) for g in targets):
        raise TypeError(f"optimizer has no injectable {name!r} in groups {targets or list(base)}")
    for g in targets:
        base[g][name] = _put_like(value, base[g][name], f"base {name!r} of group {g!r}")
    return lr._replace(base_hparams=base)
