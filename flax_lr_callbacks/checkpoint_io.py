"""Checkpoint reading and writing with orbax: managers, saving a fit, restoring one.

What a step directory holds and how a saved one is checked against the fit resuming from it
is `checkpointing`'s; this module moves it to and from disk (`write`, `resolve`, `restore`,
`resume`) and turns orbax's read failures into one `CheckpointError` line.

Orbax writes a step into a temporary directory and renames it when complete, so a crash during
a save leaves either the previous checkpoints or the new one, never a half-written one that
looks complete. Temporary leftovers are removed when a manager is opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np

from flax_lr_callbacks import checkpointing
from flax_lr_callbacks import nan_policy
from flax_lr_callbacks.callbacks.base import Callback
from flax_lr_callbacks.checkpointing import META, STATE, CheckpointError

__all__ = ["open_manager", "write", "resolve", "restore", "resume"]

log = logging.getLogger("flax_lr_callbacks")


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


def write(manager: Any, trainer: Any, *, epoch_finished: bool,
          metrics: dict[str, float] | None = None) -> int:
    """Saves the running fit as step ``trainer.global_step``; returns that step. `metrics`
    go to orbax (its preservation policy ranks checkpoints by them).

    Only the device-to-host copy blocks (async managers write in the background), so the
    train step may donate its buffers right after this returns.
    """
    ocp = _ocp()
    nan_policy.raise_if_stopped(trainer)  # never save a stopped run
    tree = checkpointing.saved_tree(trainer)
    meta = checkpointing.build_meta(trainer, tree, epoch_finished=epoch_finished)
    step = trainer.global_step
    manager.save(step, metrics=metrics, args=ocp.args.Composite(**{
        STATE: ocp.args.StandardSave(tree),
        META: ocp.args.JsonSave(checkpointing.jsonable(meta))}))
    return step


def resolve(resume_from: str | os.PathLike, callbacks: list[Callback]) -> tuple[Path, int]:
    """``(root directory, step)`` for ``resume_from``: ``"latest"`` (the newest checkpoint of
    the `ModelCheckpoint` in `callbacks`), a checkpoint directory (its newest step) or one
    step directory inside it."""
    if str(resume_from) == "latest":
        owners = [c for c in callbacks if checkpointing.is_checkpointer(c)]
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
    """The steps under `root` that hold a meta item (orbax's temporary directories are not
    named by a bare number)."""
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
    """Step `step`'s meta, and its state into `abstract` (shapes and shardings) unless None;
    a failure is one CheckpointError naming the older steps to resume from instead."""
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


def restore(trainer: Any, template_fn: Any, resume_from: str | os.PathLike,
            allow_changed_settings: bool = False) -> dict[str, Any]:
    """Restores a fit into `trainer`; returns the checkpoint's meta (position, iterator).

    `template_fn()` builds a fresh `TrainerState` (after the callbacks' host state is loaded);
    its shapes are checked against the checkpoint and its shardings receive the arrays.
    """
    root, step = resolve(resume_from, trainer.callbacks)
    where = root / str(step)
    meta = checkpointing.from_json(_read(root, step, None)[META])
    checkpointing.check_meta(meta, trainer, where)
    changed = checkpointing.changed_settings(meta, trainer)
    for cb, saved in zip(checkpointing.stateful(trainer.callbacks), meta["callbacks"]):
        cb.load_state_dict(saved["state"])
    for cb in filter(checkpointing.is_checkpointer, trainer.callbacks):
        saved = meta["checkpointers"].get(str(cb.directory.absolute()))
        if saved is not None:  # the same directory: continue its best-so-far
            cb.load_state_dict(saved)
    trainer.trainer_state = template_fn()
    tree = checkpointing.saved_tree(trainer)
    paths, leaves = checkpointing.named_leaves(tree)
    checkpointing.check_leaves(meta, paths, leaves, where)
    checkpointing.check_settings(changed, where, allow_changed_settings)
    abstract = jax.tree_util.tree_map(
        lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype, sharding=x.sharding), tree)
    restored = _read(root, step, abstract)[STATE]
    # orbax hands back the target's structure; rebuild it from the leaves to be sure
    restored = jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(tree),
                                            jax.tree_util.tree_leaves(restored))
    trainer.trainer_state = checkpointing.from_saved_tree(trainer, restored)
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
