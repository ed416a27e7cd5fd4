"""Checkpoint files: one orbax step directory holds everything a fit needs to continue.

Layout of ``<directory>/<global_step>/``:

- ``arrays``: every array leaf of the `TrainerState` (params, opt_state with the injected
  hyperparameters, base hyperparameters, each callback's device state, PRNG key, step
  counters, the unfetched metric buffer), saved as a flat ``{index: array}`` dict. Restoring
  into the shardings of a freshly built state makes checkpoints independent of the device
  count they were written with.
- ``meta``: JSON with the leaf paths/shapes/dtypes (for readable mismatch errors), the host
  counters (global step, epoch, batch within the epoch, log window), `callback_metrics`, every
  stateful callback's host `state_dict`, and the data iterator's state when it has one.

Orbax writes a step into a temporary directory and renames it when complete, so a crash during
a save leaves either the previous checkpoints or the new one, never a half-written one that
looks complete. Temporary leftovers are removed when a manager is opened.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np

from flax_lr_callbacks.callbacks.base import Callback

__all__ = ["CheckpointError", "open_manager", "write", "resolve", "restore", "resume"]

log = logging.getLogger("flax_lr_callbacks")

FORMAT = 1
ARRAYS, META = "arrays", "meta"


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit this Trainer/state."""


def _ocp():
    import orbax.checkpoint as ocp  # imported lazily: orbax is slow to import

    return ocp


def open_manager(directory: str | os.PathLike, *, async_save: bool = True):
    """An orbax `CheckpointManager` for our two items; retention is done by the caller."""
    ocp = _ocp()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None, create=True, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options,
                                 item_names=(ARRAYS, META))


def _is_checkpointer(callback: Callback) -> bool:
    """A `ModelCheckpoint` (it says so; this module does not import the callback)."""
    return getattr(callback, "writes_checkpoints", False)


def stateful(callbacks: list[Callback]) -> list[Callback]:
    """Callbacks whose state must be checkpointed: an in-graph rule or a host `state_dict`.

    `ModelCheckpoint`s are left out: a run may resume with other checkpoint settings, or
    none; their best-so-far is stored separately and restored when one is present.
    """
    return [c for c in callbacks if not _is_checkpointer(c)
            and (c.has_rule or type(c).state_dict is not Callback.state_dict)]


def _saved_tree(trainer: Any) -> Any:
    """The `TrainerState` with callback states keyed by position among stateful callbacks
    (so adding or removing a stateless callback such as the progress bar does not matter)."""
    ts = trainer.trainer_state
    index = {id(c): i for i, c in enumerate(trainer.callbacks)}
    states = {_state_key(k, c): ts.callback_states[index[id(c)]]
              for k, c in enumerate(stateful(trainer.callbacks))}
    return ts._replace(callback_states=states)


def _state_key(k: int, callback: Callback) -> str:
    return f"{k:03d}_{type(callback).__name__}"  # zero-padded: pytree dicts sort their keys


def _leaves(tree: Any) -> tuple[list[str], list[Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [jax.tree_util.keystr(p) for p, _ in flat], [x for _, x in flat]


def _jsonable(value: Any) -> Any:
    """`value` with NumPy/JAX scalars and arrays turned into plain Python (for JSON)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        return np.asarray(value).tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}  # JSON has no inf/nan
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def write(manager: Any, trainer: Any, *, epoch_finished: bool) -> int:
    """Saves the running fit as step ``trainer.global_step``; returns that step.

    Only the device-to-host copy blocks (async managers write in the background), so the
    train step may donate its buffers right after this returns.
    """
    ocp = _ocp()
    paths, leaves = _leaves(_saved_tree(trainer))
    data_iter = trainer.data.iterator
    meta = {
        "format": FORMAT,
        "leaves": [[p, list(np.shape(x)), str(x.dtype)] for p, x in zip(paths, leaves)],
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
        "checkpointers": {str(c.directory.absolute()): c.state_dict()
                          for c in trainer.callbacks if _is_checkpointer(c)},
        "data_iterator": data_iter.get_state() if hasattr(data_iter, "get_state") else None,
    }
    arrays = {f"{i:05d}": x for i, x in enumerate(leaves)}
    step = trainer.global_step
    manager.save(step, args=ocp.args.Composite(**{
        ARRAYS: ocp.args.StandardSave(arrays), META: ocp.args.JsonSave(_jsonable(meta))}))
    return step


def resolve(resume_from: str | os.PathLike, callbacks: list[Callback]) -> tuple[Path, int]:
    """``(root directory, step)`` for ``resume_from``: ``"latest"`` (the newest checkpoint of
    the `ModelCheckpoint` in `callbacks`), a checkpoint directory (its newest step) or one
    step directory inside it."""
    if str(resume_from) == "latest":
        owners = [c for c in callbacks if _is_checkpointer(c)]
        if len(owners) != 1:
            raise CheckpointError(
                f"resume_from='latest' needs exactly one ModelCheckpoint among the callbacks "
                f"(found {len(owners)}); pass the checkpoint directory instead")
        resume_from = owners[0].directory
    path = Path(resume_from).absolute()
    if not path.is_dir():
        raise CheckpointError(f"resume_from={str(resume_from)!r}: no such directory")
    if (path / META).is_dir() and path.name.isdigit():
        return path.parent, int(path.name)
    steps = sorted(int(p.name) for p in path.iterdir()
                   if p.name.isdigit() and (p / META).is_dir())
    if not steps:
        raise CheckpointError(f"resume_from={str(resume_from)!r}: no checkpoint in {path}")
    return path, steps[-1]


def _read(root: Path, step: int, abstract: dict[str, Any] | None) -> dict[str, Any]:
    ocp = _ocp()
    items = {META: ocp.args.JsonRestore()}
    if abstract is not None:
        items[ARRAYS] = ocp.args.StandardRestore(abstract)
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        return checkpointer.restore(root / str(step), args=ocp.args.Composite(**items))
    except Exception as e:  # orbax raises many types for unreadable files
        raise CheckpointError(
            f"checkpoint {root / str(step)} could not be read ({type(e).__name__}: {e})"
        ) from e
    finally:
        checkpointer.close()


def _check_meta(meta: dict[str, Any], trainer: Any, where: Path) -> None:
    """Raises CheckpointError naming every setting and callback that differs."""
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{where}: unknown checkpoint format {meta.get('format')!r}")
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


def _check_leaves(meta: dict[str, Any], paths: list[str], leaves: list[Any],
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


def restore(trainer: Any, template_fn: Any, resume_from: str | os.PathLike) -> dict[str, Any]:
    """Restores a fit into `trainer`; returns the checkpoint's meta (position, iterator).

    `template_fn()` builds a fresh `TrainerState` (after the callbacks' host state is loaded);
    its shapes are checked against the checkpoint and its shardings receive the arrays.
    """
    root, step = resolve(resume_from, trainer.callbacks)
    where = root / str(step)
    meta = _from_json(_read(root, step, None)[META])
    _check_meta(meta, trainer, where)
    for cb, saved in zip(stateful(trainer.callbacks), meta["callbacks"]):
        cb.load_state_dict(saved["state"])
    for cb in filter(_is_checkpointer, trainer.callbacks):
        saved = meta["checkpointers"].get(str(cb.directory.absolute()))
        if saved is not None:  # the same directory: continue its best-so-far
            cb.load_state_dict(saved)
    trainer.trainer_state = template_fn()
    tree = _saved_tree(trainer)
    paths, leaves = _leaves(tree)
    _check_leaves(meta, paths, leaves, where)
    abstract = {f"{i:05d}": jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=x.sharding)
                for i, x in enumerate(leaves)}
    arrays = _read(root, step, abstract)[ARRAYS]
    restored = jax.tree_util.tree_unflatten(
        jax.tree_util.tree_structure(tree), [arrays[f"{i:05d}"] for i in range(len(leaves))])
    index = {id(c): i for i, c in enumerate(trainer.callbacks)}
    states = list(trainer.trainer_state.callback_states)
    for k, c in enumerate(stateful(trainer.callbacks)):
        states[index[id(c)]] = restored.callback_states[_state_key(k, c)]
    trainer.trainer_state = restored._replace(callback_states=tuple(states))
    meta["path"] = str(where)
    return meta


def resume(trainer: Any, template_fn: Any, resume_from: str | os.PathLike
           ) -> tuple[int, int, Any]:
    """`restore`, then the trainer's host counters; returns ``(epoch, batch, iterator
    state)``: where the loop continues."""
    meta = restore(trainer, template_fn, resume_from)
    trainer.resumed_from = meta["path"]
    trainer.global_step = trainer.start_step = meta["global_step"]
    trainer.progress.window_start = meta["window_start"]
    trainer.callback_metrics = dict(meta["callback_metrics"])
    trainer.should_stop = meta["should_stop"]
    epoch, batch = meta["epoch"], meta["batch_in_epoch"]
    if meta["epoch_finished"]:
        epoch, batch = epoch + 1, 0
    log.info("resuming from %s at epoch %d, batch %d (step %d)", trainer.resumed_from, epoch,
             batch, trainer.global_step)
    return epoch, batch, meta["data_iterator"]
