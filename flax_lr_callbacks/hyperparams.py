"""Find, read and write optax-injected hyperparameters inside any optimizer state.

This is the only module that knows where `optax.inject_hyperparams` keeps its values. Every
callback, the Trainer and the drop-in API go through it, so the traps below are handled once:

* `inject_hyperparams` silently ignores writes to a hyperparameter that was given as a
  schedule (its value is recomputed from the schedule on every update). Targeting one raises a
  `TypeError` that says how to fix it.
* Writes keep the stored dtype, so a Python float written into a float32 slot can never change
  the traced signature of a jitted step (invariant 1: one compile).
* `optax.tree.get/set` match by key name anywhere in the tree, which is ambiguous under
  `multi_transform`. Here the state is walked by path and every injected node becomes a named
  *group*: the `multi_transform` label (or the path of dict keys) leading to it, or
  ``"default"`` when there is a single unlabelled one. `MultiSteps`, `chain`, `masked` and
  nested combinations are found the same way.
* NNX: `nnx.Optimizer.opt_state` keeps optax's structure with each array wrapped in a
  variable. Reads unwrap them; writes assign in place (``variable[...] = value``), which is what
  `nnx.jit` (or ``nnx.split`` + `jax.jit` + ``nnx.merge``) tracks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from flax_lr_callbacks.validation import check_names, check_number

__all__ = ["Hyperparams", "DEFAULT_GROUP", "injectable", "find_groups", "get_hyperparams",
           "set_hyperparams", "get_hyperparam", "set_hyperparam", "check_targets",
           "scheduled_names"]

DEFAULT_GROUP = "default"

# group label -> hyperparameter name -> scalar value
Hyperparams = dict[str, dict[str, jax.Array]]

_INJECT_TYPES = (optax.InjectStatefulHyperparamsState, optax.InjectHyperparamsState)

# Names users schedule; passing a callable for one of these to `injectable` is almost always
# a mistake (our callbacks could no longer write it), so it is refused with a hint.
_SCHEDULABLE = ("learning_rate", "momentum", "b1", "b2", "weight_decay", "eps")


def _is_variable(x: Any) -> bool:
    from flax import nnx

    return isinstance(x, nnx.Variable)


def _unwrap(x: Any) -> Any:
    return x[...] if _is_variable(x) else x


def _is_inject(node: Any) -> bool:
    return isinstance(node, _INJECT_TYPES)


def _path_label(path: tuple) -> str:
    keys = []
    for entry in path:
        if isinstance(entry, jax.tree_util.DictKey):
            keys.append(str(entry.key))
        elif isinstance(entry, jax.tree_util.SequenceKey):
            keys.append(str(entry.idx))
    return "/".join(keys)


def _dict_label(path: tuple) -> str:
    return "/".join(
        str(e.key) for e in path if isinstance(e, jax.tree_util.DictKey)
    )


def _inject_nodes(opt_state: Any) -> list[tuple[tuple, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(opt_state, is_leaf=_is_inject)
    return [(path, node) for path, node in flat if _is_inject(node)]


def find_groups(opt_state: Any) -> dict[str, Any]:
    """Returns ``{group_label: injected_state_node}`` for every injected node in `opt_state`.

    A single unlabelled node is called ``"default"``. Under `optax.multi_transform` the label is
    the partition label. Nodes that dict keys alone cannot tell apart are labelled by their full
    path (sequence indices included).

    Raises:
      TypeError: if `opt_state` holds no injected hyperparameters.
    """
    nodes = _inject_nodes(opt_state)
    if not nodes:
        raise TypeError(
            "optimizer has no injectable hyperparameters; build it with "
            "flax_lr_callbacks.injectable(optax.sgd, learning_rate=0.1) or optax."
            "inject_hyperparams(optax.sgd, hyperparam_dtype=jnp.float32)(learning_rate=0.1)"
        )
    labels = [_dict_label(p) for p, _ in nodes]
    if len(set(labels)) != len(labels):
        labels = [_path_label(p) for p, _ in nodes]
    if len(nodes) == 1:
        labels = [labels[0] or DEFAULT_GROUP]
    labels = [label or DEFAULT_GROUP for label in labels]
    return dict(zip(labels, (n for _, n in nodes)))


def scheduled_names(node: Any) -> frozenset[str]:
    """Names that `inject_hyperparams` recomputes from a schedule on every update."""
    return frozenset(getattr(node, "hyperparams_states", {}) or {})


def get_hyperparams(opt_state: Any) -> Hyperparams:
    """Returns ``{group: {name: value}}`` of every injected hyperparameter. Jit-safe."""
    return {g: {n: _unwrap(v) for n, v in node.hyperparams.items()}
            for g, node in find_groups(opt_state).items()}


def get_hyperparam(opt_state: Any, name: str, group: str | None = None) -> jax.Array:
    """Returns one hyperparameter's value; `group` may be omitted when there is one group."""
    groups = find_groups(opt_state)
    if group is None:
        having = [g for g, n in groups.items() if name in n.hyperparams]
        if len(having) != 1:
            _raise_unknown_or_ambiguous(name, groups, having)
        group = having[0]
    if group not in groups:
        raise TypeError(f"unknown group {group!r}; groups are {sorted(groups)}")
    if name not in groups[group].hyperparams:
        _raise_unknown_or_ambiguous(name, groups, [])
    return _unwrap(groups[group].hyperparams[name])


def _raise_unknown_or_ambiguous(name: str, groups: Mapping[str, Any], having: list[str]):
    if having:
        raise TypeError(
            f"hyperparameter {name!r} exists in several groups {having}; pass group=..."
        )
    available = sorted({k for n in groups.values() for k in n.hyperparams})
    example = "learning_rate=0.1" if name == "learning_rate" else f"learning_rate=0.1, {name}=..."
    raise TypeError(
        f"optimizer has no injectable {name!r} (injected: {available}); build it with "
        f"flax_lr_callbacks.injectable(optax.sgd, {example}) or optax.inject_hyperparams("
        f"optax.sgd, hyperparam_dtype=jnp.float32)({example}), using an optimizer that "
        f"takes {name!r}"
    )


def _cast_like(value: Any, like: jax.Array) -> jax.Array:
    # Same dtype as the stored value, so writes never change a jitted step's signature.
    return jnp.asarray(value, dtype=jnp.result_type(_unwrap(like)))


def set_hyperparams(opt_state: Any, values: Mapping[str, Mapping[str, Any]]) -> Any:
    """Returns `opt_state` with ``values[group][name]`` written. Jit-safe; dtype preserved.

    Only the listed groups/names change. Values for scheduled or unknown names raise, because
    optax would otherwise drop them silently. An NNX optimizer's state (variables) is written
    in place, and the same object is returned.
    """
    groups = find_groups(opt_state)
    for group, names in values.items():
        if group not in groups:
            raise TypeError(f"unknown group {group!r}; groups are {sorted(groups)}")
        check_targets(opt_state, names, owner="set_hyperparams", groups=[group])
    node_to_group = {id(n): g for g, n in groups.items()}
    if any(_is_variable(v) for n in groups.values() for v in n.hyperparams.values()):
        for group, names in values.items():  # NNX: assign into the variables
            for name, v in names.items():
                var = groups[group].hyperparams[name]
                var[...] = _cast_like(v, var)
        return opt_state

    def replace(node):
        if not _is_inject(node):
            return node
        group = node_to_group[id(node)]
        if group not in values:
            return node
        hp = dict(node.hyperparams)
        for name, v in values[group].items():
            hp[name] = _cast_like(v, hp[name])
        return node._replace(hyperparams=hp)

    return jax.tree_util.tree_map(replace, opt_state, is_leaf=_is_inject)


def set_hyperparam(opt_state: Any, name: str, value: Any, group: str | None = None) -> Any:
    """Writes one hyperparameter into every group that has it (or only `group`)."""
    groups = find_groups(opt_state)
    targets = [group] if group is not None else [
        g for g, n in groups.items() if name in n.hyperparams
    ]
    if not targets:
        _raise_unknown_or_ambiguous(name, groups, [])
    return set_hyperparams(opt_state, {g: {name: value} for g in targets})


def check_targets(
    opt_state: Any,
    names: Iterable[str],
    *,
    owner: str,
    groups: Iterable[str] | None = None,
    dtype: bool = False,
) -> None:
    """Raises a helpful error if `owner` cannot write each of `names` in `groups`.

    Raises:
      ValueError: a group in `groups` is not in the optimizer.
      TypeError: the optimizer is not injected, a name is not injected in a targeted group,
        was given to optax as a schedule, or (with `dtype`) is stored below float32 (bfloat16
        rounds an LR to 3 digits and stores Adam's b2=0.999 as 1.0; an int cannot decay).
    """
    found = find_groups(opt_state)
    selected = list(found) if groups is None else list(groups)
    if unknown := [g for g in selected if g not in found]:  # a typo: that group left alone
        raise ValueError(f"{owner}: groups {unknown} are not in the optimizer; its groups are "
                         f"{sorted(found)}")
    for name in names:
        present = [g for g in selected if g in found and name in found[g].hyperparams]
        if not present:
            _raise_unknown_or_ambiguous(name, {g: found[g] for g in selected if g in found}, [])
        for g in present:
            if name in scheduled_names(found[g]):
                raise TypeError(
                    f"{owner} writes {name!r} (group {g!r}), but the optimizer was given a "
                    f"schedule for it, and optax.inject_hyperparams ignores writes to "
                    f"scheduled hyperparameters. Pass a plain float instead "
                    f"({name}=0.1) and move the schedule into a callback: "
                    f"LRSchedule(schedule, hyperparam={name!r})"
                )
            kind = jnp.result_type(_unwrap(found[g].hyperparams[name]))
            if dtype and not (jnp.issubdtype(kind, jnp.floating) and jnp.finfo(kind).bits >= 32):
                raise TypeError(
                    f"{owner} writes {name!r} (group {g!r}), but the optimizer stores it as "
                    f"{kind}, which cannot hold the values written exactly. Build it with "
                    f"flax_lr_callbacks.injectable(...) (or pass {name} as a float to "
                    "optax.inject_hyperparams(..., hyperparam_dtype=jnp.float32))")


def injectable(
    factory: Callable[..., optax.GradientTransformation],
    *,
    static_args: Iterable[str] = (),
    **hparams: Any,
) -> optax.GradientTransformation:
    """Builds ``factory(**hparams)`` with every numeric argument injected as float32.

    Equivalent to ``optax.inject_hyperparams(factory, hyperparam_dtype=jnp.float32)(...)`` with
    two safety nets: integer values are stored as float32 (an int32 slot could never hold a
    decayed value), and booleans, strings, dtypes and other non-numeric arguments are marked
    static so optax does not mistake them for schedules.

    Args:
      factory: an optax optimizer factory such as `optax.sgd` or `optax.adamw`.
      static_args: extra argument names to keep static (callables that are not schedules).
      **hparams: the factory's arguments.

    Raises:
      TypeError: if a commonly scheduled argument (``learning_rate``, ``momentum``, ``b1``, ...)
        is given as a schedule; pass a float and use `LRSchedule` instead, so callbacks can
        write it.

    Example:
      >>> import optax
      >>> tx = injectable(optax.sgd, learning_rate=0.1, momentum=0.9)
    """
    if not callable(factory):
        raise TypeError(f"factory must be an optax optimizer factory such as optax.sgd, got "
                        f"factory={factory!r}")
    static = set(check_names("static_args", static_args, allow_none=False)
                 if static_args else ())
    values = {}
    for name, value in hparams.items():
        if name in _SCHEDULABLE and not callable(value) and value is not None and (
                np.ndim(value) == 0):
            # a finite number >= 0: "0.1", -0.1 or nan would fail late, deep inside optax
            value = check_number(name, value, low=0)
        if name in static or isinstance(value, bool) or value is None:
            static.add(name)
            values[name] = value
        elif isinstance(value, (int, float, np.integer, np.floating)):
            values[name] = float(value)
        elif isinstance(value, (jax.Array, np.ndarray)):
            values[name] = jnp.asarray(value, jnp.float32)
        elif callable(value) and name in _SCHEDULABLE:
            raise TypeError(
                f"{name} was given a schedule; callbacks cannot write scheduled "
                f"hyperparameters. Pass a float ({name}=0.1) and add "
                f"LRSchedule(schedule, hyperparam={name!r}) to the Trainer's callbacks"
            )
        else:
            static.add(name)
            values[name] = value
    return optax.inject_hyperparams(
        factory, static_args=tuple(sorted(static)), hyperparam_dtype=jnp.float32
    )(**values)
