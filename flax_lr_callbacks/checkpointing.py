"""Checkpoint files: one orbax step directory holds everything a fit needs to continue.

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

Orbax writes a step into a temporary directory and renames it when complete, so a crash during
a save leaves either the previous checkpoints or the new one, never a half-written one that
looks complete. Temporary leftovers are removed when a manager is opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any

import jax
import numpy as np

from flax_lr_callbacks import nan_policy
from flax_lr_callbacks.callbacks.base import Callback
from flax_lr_callbacks.loggers.run_config import settings as _run_settings

__all__ = ["CheckpointError", "open_manager", "write", "resolve", "restore", "resume"]

log = logging.getLogger("flax_lr_callbacks")

# 1: a flat {index: array} "arrays" item; 2: one record array per quantity and no NaN-policy
# counters; 3: "callbacks" and "trainer" (with the LR clock and base values) at the top (all
# three refused with a message); 4: the LR side in "lr_state", as `TrainerState` carries it.
FORMAT = 4
STATE, META = "state", "meta"
_RESERVED = ("lr_state", "trainer")


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable, or does not fit this Trainer/state."""


def _ocp():
    import orbax.checkpoint as ocp  # imported lazily: orbax is slow to import

    return ocp


def open_manager(directory: str | os.PathLike, *, async_save: bool = True,
                 preservation_policy: Any = None):
    """An orbax `CheckpointManager` for our two items; `preservation_policy` (an orbax
    ``checkpoint_managers`` policy) decides which steps it keeps (None: all)."""
    ocp = _ocp()
    options = ocp.CheckpointManagerOptions(
        create=True, enable_async_checkpointing=async_save, cleanup_tmp_directories=True,
        preservation_policy=preservation_policy)
    return ocp.CheckpointManager(Path(directory).absolute(), options=options,
                                 item_names=(STATE, META))


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


def _saved_tree(trainer: Any) -> dict[str, Any]:
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


def _from_saved_tree(trainer: Any, tree: dict[str, Any]) -> Any:
    """The `TrainerState` for `tree` (the inverse of `_saved_tree`)."""
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


def write(manager: Any, trainer: Any, *, epoch_finished: bool,
          metrics: dict[str, float] | None = None) -> int:
    """Saves the running fit as step ``trainer.global_step``; returns that step. `metrics`
    go to orbax (its preservation policy ranks checkpoints by them).

    Only the device-to-host copy blocks (async managers write in the background), so the
    train step may donate its buffers right after this returns.
    """
    ocp = _ocp()
    nan_policy.raise_if_stopped(trainer)  # never save a stopped run
    paths, leaves = _leaves(_saved_tree(trainer))
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
        "settings": _run_settings(trainer, stateful(trainer.callbacks)),
        "checkpointers": {str(c.directory.absolute()): c.state_dict()
                          for c in trainer.callbacks if _is_checkpointer(c)},
        "data_iterator": trainer.data.state(),
    }
    step = trainer.global_step
    manager.save(step, metrics=metrics, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(_saved_tree(trainer)),
        META: ocp.args.JsonSave(_jsonable(meta))}))
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
    steps = _steps(path)
    if not steps:
        raise CheckpointError(f"resume_from={str(resume_from)!r}: no checkpoint in {path}")
    return path, steps[-1]


@contextlib.contextmanager
def _reads_finish_before_loop_closes():
    """Orbax runs each restore in a new event loop and closes it when the first array read
    fails, while tensorstore still completes the other reads: each then calls back into the
    closed loop and prints an "Event loop is closed" traceback (dozens per corrupt step).
    Within this block the loop first waits for those reads (their errors are the same one).
    Orbax internals, pinned in constraints.txt; without them restores run unchanged."""
    try:
        from orbax.checkpoint._src import asyncio_utils
    except ImportError:
        yield
        return
    original = getattr(asyncio_utils, "_run_sync_via_new_loop", None)
    if original is None:
        yield
        return

    def run_and_drain(coro: Any) -> Any:
        loop = asyncio.new_event_loop()
        try:
            asyncio.set_event_loop(loop)
            return loop.run_until_complete(coro)
        finally:
            pending = asyncio.all_tasks(loop)
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            asyncio.set_event_loop(None)
            loop.close()

    asyncio_utils._run_sync_via_new_loop = run_and_drain
    try:
        yield
    finally:
        asyncio_utils._run_sync_via_new_loop = original


def _steps(root: Path) -> list[int]:
    return sorted(int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / META).is_dir())


def _short(error: Exception) -> str:
    """The first line of an orbax/tensorstore error, without its spec dumps."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    text = re.split(r" \[tensorstore_spec", text)[0]
    parts = text.split(": ")
    if len(parts) > 4:  # tensorstore nests "Error opening ...: Error reading ...: <cause>"
        text = ": ".join([parts[0], "...", *parts[-3:]])
    return text if len(text) <= 300 else text[:297] + "..."


def _read(root: Path, step: int, abstract: dict[str, Any] | None) -> dict[str, Any]:
    ocp = _ocp()
    items = {META: ocp.args.JsonRestore()}
    if abstract is not None:
        items[STATE] = ocp.args.StandardRestore(abstract)
    checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    try:
        with _reads_finish_before_loop_closes():
            return checkpointer.restore(root / str(step), args=ocp.args.Composite(**items))
    except Exception as e:  # orbax raises many types for unreadable files
        error = e
    finally:
        checkpointer.close()
    older = [s for s in _steps(root) if s < step]
    hint = (f"older checkpoints there: steps {older}; resume from the newest with "
            f"resume_from={str(root / str(older[-1]))!r}" if older
            else "there is no older checkpoint in that directory")
    raise CheckpointError(f"checkpoint {root / str(step)} is damaged and could not be read "
                          f"({type(error).__name__}: {_short(error)}); {hint}") from None


def _check_meta(meta: dict[str, Any], trainer: Any, where: Path) -> None:
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


def _changed_settings(meta: dict[str, Any], trainer: Any) -> list[str]:
    """The Trainer's and stateful callbacks' settings that differ from those saved, read
    before the callbacks load their saved state (checkpoints written before settings were
    saved have none and are not compared)."""
    if "settings" not in meta:
        return []
    saved = meta["settings"]
    now = _from_json(_jsonable(_run_settings(trainer, stateful(trainer.callbacks))))
    missing = "(not set)"
    return [f"{k}: checkpoint {saved.get(k, missing)!r}, this fit {now.get(k, missing)!r}"
             for k in sorted(set(saved) | set(now))
             if k not in _COMPARED_ABOVE + _SAME_RESULT
             and _comparable(saved.get(k, missing)) != _comparable(now.get(k, missing))]


def _check_settings(diffs: list[str], where: Path, allow: bool) -> None:
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


def restore(trainer: Any, template_fn: Any, resume_from: str | os.PathLike,
            allow_changed_settings: bool = False) -> dict[str, Any]:
    """Restores a fit into `trainer`; returns the checkpoint's meta (position, iterator).

    `template_fn()` builds a fresh `TrainerState` (after the callbacks' host state is loaded);
    its shapes are checked against the checkpoint and its shardings receive the arrays.
    """
    root, step = resolve(resume_from, trainer.callbacks)
    where = root / str(step)
    meta = _from_json(_read(root, step, None)[META])
    _check_meta(meta, trainer, where)
    changed = _changed_settings(meta, trainer)
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
    _check_settings(changed, where, allow_changed_settings)
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=x.sharding), tree)
    restored = _read(root, step, abstract)[STATE]
    # orbax hands back the target's structure; rebuild it from the leaves to be sure
    restored = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(tree),
                                            jax.tree_util.tree_leaves(restored))
    trainer.trainer_state = _from_saved_tree(trainer, restored)
    meta["path"] = str(where)
    return meta


def resume(trainer: Any, template_fn: Any, resume_from: str | os.PathLike,
           allow_changed_settings: bool = False) -> tuple[int, int]:
    """`restore`, then the trainer's host counters and data position (``trainer.data``);
    returns ``(epoch, batch)``: where the loop continues."""
    meta = restore(trainer, template_fn, resume_from, allow_changed_settings)
    trainer.resumed_from = meta["path"]
    trainer.global_step = trainer.start_step = meta["global_step"]
    trainer.progress.window_start = meta["window_start"]
    trainer.callback_metrics = dict(meta["callback_metrics"])
    trainer.should_stop = meta["should_stop"]
    epoch, batch = meta["epoch"], meta["batch_in_epoch"]
    if meta["epoch_finished"]:
        epoch, batch = epoch + 1, 0
    trainer.data.restore(meta["data_iterator"])
    log.info("resuming from %s at epoch %d, batch %d (step %d)", trainer.resumed_from, epoch,
             batch, trainer.global_step)
    return epoch, batch
