"""Running callbacks' in-graph faces: ordering, setter checks, and checked rule outputs.

Pure functions over any objects with the `Callback` attributes (``has_rule``, ``sets``,
``scales``, ``rule``, ``has_observe``, ``observes``, ``observe``), usable inside any jitted
step; the Trainer, `LRCallbacks` and `preview` all run rules through `apply_rules`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from flax_lr_callbacks.contract import Observation, StepContext
from flax_lr_callbacks.hyperparams import Hyperparams

__all__ = ["NORMS", "apply_rules", "check_rule_output", "check_setters", "check_state_like",
           "observe_all", "requested_norms", "rule_order"]

# Quantities an `observe` face may ask for (in `Callback.observes`); computed once per step,
# and only when some callback asks.
NORMS = ("grad_norm", "update_norm")


def rule_order(callbacks: Sequence[Any]) -> list[int]:
    """Indices of callbacks with a rule: plain ones, then setters, then modifiers."""
    with_rule = [i for i, c in enumerate(callbacks) if c.has_rule]
    setters = [i for i in with_rule if callbacks[i].sets]
    modifiers = [i for i in with_rule if callbacks[i].scales and i not in setters]
    others = [i for i in with_rule if i not in setters and i not in modifiers]
    return others + setters + modifiers


def check_setters(callbacks: Sequence[Any], hparams: Hyperparams) -> None:
    """Raises ValueError when two callbacks set the same hyperparameter in the same group."""
    owners: dict[tuple[str, str], Any] = {}
    for cb in callbacks:
        for name in cb.sets:
            for g in cb.target_groups(hparams, name):
                other = owners.setdefault((g, name), cb)
                if other is not cb:
                    raise ValueError(
                        f"{other!r} and {cb!r} both set {name!r} (group {g!r}); keep one, "
                        "or combine them with Sequential / Warmup"
                    )


def apply_rules(callbacks: Sequence[Any], ctx: StepContext, hparams: Hyperparams,
                states: Sequence[Any]) -> tuple[Hyperparams, tuple]:
    """Runs every callback's rule for one step; returns the hyperparameters and new states.

    `hparams` is not modified (rules get a copy). Pure: usable inside any jitted step.
    """
    hparams = {g: dict(v) for g, v in hparams.items()}
    states = list(states)
    for i in rule_order(callbacks):
        out = callbacks[i].rule(ctx, hparams, states[i])
        hparams, states[i] = check_rule_output(callbacks[i], "rule", out, hparams, states[i])
    return hparams, tuple(states)


def requested_norms(callbacks: Sequence[Any]) -> tuple[str, ...]:
    """The norms (of `NORMS`) some callback with an `observe` face asks for."""
    asked = {n for cb in callbacks if cb.has_observe for n in cb.observes}
    unknown = asked - set(NORMS)
    if unknown:
        raise ValueError(f"observes may list {list(NORMS)}, got {sorted(unknown)}")
    return tuple(n for n in NORMS if n in asked)


def observe_all(callbacks: Sequence[Any], ctx: StepContext, obs: Observation,
                states: Sequence[Any]) -> tuple:
    """Runs every `observe` face after a step; returns the new states. Pure, in-graph."""
    states = list(states)
    for i, cb in enumerate(callbacks):
        if cb.has_observe:
            new = cb.observe(ctx, obs, states[i])
            check_state_like(cb, "observe", new, states[i])
            states[i] = new
    return tuple(states)


def _describe(x: Any) -> str:
    """A short description of what a rule returned, for error messages."""
    if isinstance(x, tuple) and not hasattr(x, "_fields"):
        return f"a tuple of {len(x)}: ({', '.join(_describe(v) for v in x)})"
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"an array {x.dtype}{list(x.shape)}"
    return type(x).__name__


def _leaf_specs(tree: Any) -> tuple[Any, list[tuple[tuple[int, ...], Any]]]:
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    return treedef, [(tuple(jax.numpy.shape(x)), jax.numpy.result_type(x)) for x in leaves]


def check_state_like(callback: Any, where: str, new: Any, old: Any) -> None:
    """Raises TypeError when `new` state differs from `old` in structure, shape or dtype.

    The carried state must keep its signature, or the step would retrace (or `lax.scan`
    would refuse the carry) far from the callback that caused it.
    """
    old_def, old_specs = _leaf_specs(old)
    new_def, new_specs = _leaf_specs(new)
    if old_def != new_def:
        raise TypeError(f"{callback!r}.{where} returned a state of structure {new_def}, but "
                        f"init_state gave {old_def}; return the same NamedTuple (use "
                        "state._replace(...))")
    for (s0, d0), (s1, d1) in zip(old_specs, new_specs):
        if s0 != s1 or d0 != d1:
            raise TypeError(f"{callback!r}.{where} changed a state leaf from {d0}{list(s0)} to "
                            f"{d1}{list(s1)}; cast it back (e.g. jnp.float32(...)) so the step "
                            "keeps one signature")


def check_rule_output(callback: Any, where: str, out: Any, hparams: Hyperparams,
                      state: Any) -> tuple[Hyperparams, Any]:
    """`out` as ``(hparams, state)``, or a TypeError naming `callback` and what it returned."""
    if not (isinstance(out, tuple) and not hasattr(out, "_fields") and len(out) == 2
            and isinstance(out[0], dict)):
        raise TypeError(f"{callback!r}.{where} must return (hparams, state), got "
                        f"{_describe(out)}")
    new_hp, new_state = out
    if set(new_hp) != set(hparams) or any(set(new_hp[g]) != set(hparams[g]) for g in hparams):
        raise TypeError(f"{callback!r}.{where} returned hyperparameters "
                        f"{ {g: sorted(d) for g, d in new_hp.items()} }, expected "
                        f"{ {g: sorted(d) for g, d in hparams.items()} }; change values only")
    check_state_like(callback, where, new_state, state)
    return new_hp, new_state
