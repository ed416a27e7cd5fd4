"""Checkpoint format: what one step directory holds, and whether it fits a fit.

Layout of ``<directory>/<global_step>/``:

- ``state``: a named pytree that plain `orbax.checkpoint` restores without this library:
  the train state's own fields at the top (``params``, ``opt_state`` with the injected
  hyperparameters, ``step``, and e.g. ``batch_stats``), ``lr_state`` (the `LRState`: base
  hyperparameters, ``callback_states`` with each stateful callback's device state keyed
  ``"<position>_<type>"``, the schedule clock and plan) and ``trainer`` (PRNG key, the
  unfetched metric buffer, the NaN-policy counters)::

      import orbax.checkpoint as ocp
      tree = ocp.StandardCheckpointer().restore("ckpt/24/state")
      logits = model.apply(tree["params"], x)

  A resume restores into the shardings of a freshly built state, so checkpoints do not
  depend on the device count they were written with.
- ``meta``: JSON with the leaf paths/shapes/dtypes (for readable mismatch errors), the host
  counters (global step, epoch, batch within the epoch, log window), `callback_metrics`, every
  stateful callback's host `state_dict`, and the data iterator's state when it has one.

This module builds both items from a fit (`saved_tree`, `build_meta`) and checks a saved one
against the fit resuming from it (`check_meta`, `changed_settings`, `check_leaves`);
`checkpoint_io` writes and reads them with orbax.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from flax_lr_callbacks.callbacks.base import Callback
from flax_lr_callbacks.loggers.run_config import settings as _run_settings

__all__ = ["CheckpointError", "FORMAT", "STATE", "META", "is_checkpointer", "stateful",
           "saved_tree", "from_saved_tree", "named_leaves", "build_meta", "jsonable",
           "from_json", "check_meta", "changed_settings", "check_settings", "check_leaves"]

# 1: a flat {index: array} "arrays" item; 2: one record array per quantity and no NaN-policy
# counters; 3: "callbacks" and "trainer" (with the LR clock and base values) at the top (all
# three refused with a message); 4: the LR side in "lr_state", as `TrainerState` carries it.
FORMAT = 4
STATE, META = "state", "meta"
_RESERVED = ("lr_state", "trainer")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit this Trainer/state."""


def is_checkpointer(callback: Callback) -> bool:
    """A `ModelCheckpoint` (it says so; this module does not import the callback)."""
    return getattr(callback, "writes_checkpoints", False)


def stateful(callbacks: list[Callback]) -> list[Callback]:
    """Callbacks whose state must be checkpointed: an in-graph rule or a host `state_dict`.

    `ModelCheckpoint`s are left out: a run may resume with other checkpoint settings, or
    none; their best-so-far is stored separately and restored when one is present.
    """
    return [c for c in callbacks if not is_checkpointer(c)
            and (c.has_rule or type(c).state_dict is not Callback.state_dict)]


def _fields(train_state: Any) -> tuple[dict[str, Any], Any]:
    """The train state's top-level children by name (``params``, ``opt_state``, ...) and the
    treedef that puts them back together."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(
        train_state, is_leaf=lambda x: x is not train_state)
    names = []
    for path, _ in flat:
        key = path[0] if path else None
        names.append(str(getattr(key, "name", getattr(key, "key", getattr(key, "idx", "value")))))
    clash = sorted(set(names) & set(_RESERVED))
    if clash or len(set(names)) != len(names):
        raise CheckpointError(f"the train state's fields {names} cannot be checkpointed by "
                              f"name ({clash or 'duplicates'} clash with {list(_RESERVED)})")
    return dict(zip(names, (x for _, x in flat))), treedef


def saved_tree(trainer: Any) -> dict[str, Any]:
    """The named tree saved as ``state``: the `TrainerState` with the train state's fields at
    the top. Callback states are keyed by position among stateful callbacks (adding or
    removing a stateless one such as the progress bar does not matter)."""
    ts = trainer.trainer_state
    lr = ts.lr_state
    index = {id(c): i for i, c in enumerate(trainer.callbacks)}
    states = {_state_key(k, c): lr.callback_states[index[id(c)]]
              for k, c in enumerate(stateful(trainer.callbacks))}
    fields, _ = _fields(ts.train_state)
    return {**fields,
            "lr_state": {"base_hparams": lr.base_hparams, "callback_states": states,
                         "step": lr.step, "steps_per_epoch": lr.steps_per_epoch,
                         "total_steps": lr.total_steps},
            "trainer": {"key": ts.key, "buffer": ts.buffer, "nonfinite": ts.nonfinite}}


def from_saved_tree(trainer: Any, tree: dict[str, Any]) -> Any:
    """The `TrainerState` for `tree` (the inverse of `saved_tree`)."""
    ts = trainer.trainer_state
    names, treedef = _fields(ts.train_state)
    train_state = jax.tree_util.tree_unflatten(treedef, [tree[n] for n in names])
    index = {id(c): i for i, c in enumerate(trainer.callbacks)}
    saved = dict(tree["lr_state"])
    states = list(ts.lr_state.callback_states)
    for k, c in enumerate(stateful(trainer.callbacks)):
        states[index[id(c)]] = saved["callback_states"][_state_key(k, c)]
    saved["callback_states"] = tuple(states)
    return ts._replace(train_state=train_state, lr_state=ts.lr_state._replace(**saved),
                       **tree["trainer"])


def _state_key(k: int, callback: Callback) -> str:
    return f"{k:03d}_{type(callback).__name__}"  # zero-padded: pytree dicts sort their keys


def named_leaves(tree: Any) -> tuple[list[str], list[Any]]:
    """The leaves of `tree` and their key paths (``"['params']['w']"``)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(p) for p, _ in flat], [x for _, x in flat]


def jsonable(value: Any) -> Any:
    """`value` with NumPy/JAX scalars and arrays turned into plain Python (for JSON)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        return np.asarray(value).tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}  # JSON has no inf/nan
    return value


def from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json(v) for v in value]
    return value


def build_meta(trainer: Any, tree: dict[str, Any], *, epoch_finished: bool) -> dict[str, Any]:
    """The ``meta`` item saved next to `tree` (`saved_tree`) for the running fit (JSON-ready
    after `jsonable`)."""
    paths, values = named_leaves(tree)
    return {
        "format": FORMAT,
        "leaves": [[p, list(np.shape(x)), str(x.dtype)] for p, x in zip(paths, values)],
        "global_step": trainer.global_step,
        "epoch": trainer.current_epoch,
        "batch_in_epoch": trainer.batch_in_epoch,
        "epoch_finished": epoch_finished,
        "window_start": trainer.progress.window_start,
        "steps_per_epoch": trainer.steps_per_epoch,
        "total_steps": trainer.total_steps,
        "log_every_n_steps": trainer.log_every_n_steps,
        "should_stop": trainer.should_stop,
        "callback_metrics": trainer.callback_metrics,
        "callbacks": [{"type": type(c).__name__, "repr": repr(c), "state": c.state_dict()}
                      for c in stateful(trainer.callbacks)],
        "settings": _run_settings(trainer, stateful(trainer.callbacks)),
        "checkpointers": {str(c.directory.absolute()): c.state_dict()
                          for c in trainer.callbacks if is_checkpointer(c)},
        "data_iterator": trainer.data.state(),
    }


def check_meta(meta: dict[str, Any], trainer: Any, where: Path) -> None:
    """Raises CheckpointError naming every setting and callback that differs."""
    if meta.get("format") == 1:
        raise CheckpointError(
            f"{where} was written by flax_lr_callbacks 0.1.0 before checkpoints became named "
            f"pytrees (format 1: a flat 'arrays' item); this version reads format {FORMAT}. "
            "Resume it with the version that wrote it, or start a new fit")
    if meta.get("format") == 2:
        raise CheckpointError(
            f"{where} was written by flax_lr_callbacks before the record buffer was packed and "
            f"the NaN-policy counters were added (format 2); this version reads format "
            f"{FORMAT}. Resume it with the version that wrote it, or start a new fit")
    if meta.get("format") == 3:
        raise CheckpointError(
            f"{where} was written by flax_lr_callbacks before the Trainer and LRCallbacks shared "
            f"one LR state (format 3: callback states under 'callbacks', the LR clock under "
            f"'trainer'); this version reads format {FORMAT}, with both under 'lr_state'. "
            "Resume it with the version that wrote it, or start a new fit")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{where}: unknown checkpoint format {meta.get('format')!r} "
                              f"(this version reads format {FORMAT})")
    problems = []
    for name in ("steps_per_epoch", "total_steps", "log_every_n_steps"):
        if meta[name] != getattr(trainer, name):
            problems.append(f"{name}: checkpoint {meta[name]}, this fit {getattr(trainer, name)}")
    saved = [c["type"] for c in meta["callbacks"]]
    now = [type(c).__name__ for c in stateful(trainer.callbacks)]
    if saved != now:
        problems.append(f"stateful callbacks: checkpoint {saved}, this Trainer {now}")
    if problems:
        raise CheckpointError(f"checkpoint {where} does not match this fit:\n  "
                              + "\n  ".join(problems))


_COMPARED_ABOVE = ("steps_per_epoch", "total_steps", "log_every_n_steps")
_SAME_RESULT = ("steps_per_dispatch",)  # fusing K steps computes the same run
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")  # reprs of functions/objects differ per process


def _comparable(value: Any) -> Any:
    if isinstance(value, str):
        return _ADDRESS.sub("", value)
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return value


def changed_settings(meta: dict[str, Any], trainer: Any) -> list[str]:
    """The Trainer's and stateful callbacks' settings that differ from those saved, read
    before the callbacks load their saved state (checkpoints written before settings were
    saved have none and are not compared)."""
    if "settings" not in meta:
        return []
    saved = meta["settings"]
    now = from_json(jsonable(_run_settings(trainer, stateful(trainer.callbacks))))
    missing = "(not set)"
    return [f"{k}: checkpoint {saved.get(k, missing)!r}, this fit {now.get(k, missing)!r}"
             for k in sorted(set(saved) | set(now))
             if k not in _COMPARED_ABOVE + _SAME_RESULT
             and _comparable(saved.get(k, missing)) != _comparable(now.get(k, missing))]


def check_settings(diffs: list[str], where: Path, allow: bool) -> None:
    """Raises CheckpointError listing `diffs`, or warns with `allow`."""
    if not diffs:
        return
    listed = "\n  " + "\n  ".join(diffs)
    kept = ("The checkpoint's state is restored as saved: values a callback keeps in its state "
            "(e.g. OneCycle's max_lr) and the PRNG key (from the seed) continue from the "
            "checkpoint; the new settings apply only where a callback reads them at run time")
    if allow:
        warnings.warn(f"resuming from {where} with changed settings (allow_changed_settings="
                      f"True):{listed}\n{kept}", UserWarning, stacklevel=4)
        return
    raise CheckpointError(
        f"checkpoint {where} was written with other settings than this fit (setting: "
        f"checkpoint value, this fit's value):{listed}\nConstruct the Trainer and callbacks as "
        "in that run, or accept the change with fit(..., resume_from=..., "
        f"allow_changed_settings=True). {kept}")


def check_leaves(meta: dict[str, Any], paths: list[str], leaves: list[Any],
                  where: Path) -> None:
    saved = {p: (tuple(s), d) for p, s, d in meta["leaves"]}
    now = {p: (tuple(np.shape(x)), str(x.dtype)) for p, x in zip(paths, leaves)}
    problems = [f"{p}: missing from the checkpoint" for p in now if p not in saved]
    problems += [f"{p}: in the checkpoint but not in this state" for p in saved if p not in now]
    problems += [f"{p}: checkpoint {saved[p][1]}{list(saved[p][0])}, "
                 f"this state {now[p][1]}{list(now[p][0])}"
                 for p in now if p in saved and saved[p] != now[p]]
    if problems:
        shown = problems[:10] + ([f"... and {len(problems) - 10} more"]
                                 if len(problems) > 10 else [])
        raise CheckpointError(f"checkpoint {where} does not fit this state (model or "
                              "optimizer differ):\n  " + "\n  ".join(shown))

