"""ModelCheckpoint: periodic orbax checkpoints that a fit can resume from exactly."""

from __future__ import annotations

import logging
import math
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from flax_lr_callbacks import checkpoint_io, checkpoint_lock, checkpointing
from flax_lr_callbacks.validation import check_bool, check_choice, check_count, check_str
from flax_lr_callbacks.callbacks.base import Callback

__all__ = ["ModelCheckpoint"]

log = logging.getLogger("flax_lr_callbacks")


class ModelCheckpoint(Callback):
    """Saves everything a fit needs to continue, so ``fit(..., resume_from=...)`` reproduces
    the uninterrupted run (bitwise on CPU).

    A checkpoint is ``<directory>/<global_step>/`` and holds the train state (params,
    optimizer state with the injected hyperparameters), every callback's device state and host
    `state_dict` (schedule position and peak, plateau best/wait/cooldown/scale, the LR finder's
    result), the PRNG key, the data position and the step/epoch counters. The arrays are a
    named pytree in ``<step>/state`` (``params``, ``opt_state``, ``lr_state``, ``trainer``)
    that plain orbax restores without this library:
    ``ocp.StandardCheckpointer().restore(path / "state")["params"]``. Writes are atomic
    (orbax renames a finished temporary directory), and with ``async_save`` only the copy to
    host memory blocks the loop.

    Which checkpoints stay is orbax's own preservation policy (`CheckpointManagerOptions`),
    with Lightning's meaning of the arguments: `save_top_k` best by `monitor` (the most recent
    ones without a monitor), plus the newest one when `save_last`, so
    ``resume_from="latest"`` always finds where the fit stopped. A checkpoint whose monitored
    value is missing or not finite is never among the best (a warning names the value and
    step), and with `monitor` the newest checkpoint with a finite value is always kept, so a
    run that went NaN can resume from before it did.

    One run owns the directory while it fits: a lock file ``<directory>/.lock`` (pid, host,
    start time) is created at fit start and removed at the end, also when the fit fails. A
    second run into the same directory meanwhile (another process or another Trainer) is
    refused with a `CheckpointError` naming the owner; a lock left by a run that died on this
    host is taken over with a warning. In a multi-process run, process 0 holds the lock.

    Saves happen after all other callbacks' hooks for that step or epoch, whatever this
    callback's place in the list. A save due on the last batch of an epoch is made at the end
    of that epoch (after validation), so the checkpoint also holds the epoch-end decisions. The
    final epoch is always saved when ``save_last``.

    Args:
      directory: where step directories go. A fit that does not resume refuses a directory
        that already holds checkpoints (nothing is overwritten).
      every_n_steps: save every this many steps (None: not step-based).
      every_n_epochs: save at the end of every this many epochs (None: not epoch-based).
        Default 1.
      save_top_k: how many checkpoints to keep, the best by `monitor` (without a monitor: the
        most recent); -1 keeps all, 0 none but the last (with `save_last`). Default 1.
      monitor: metric in `trainer.callback_metrics` (e.g. ``"val_loss"``) to rank
        checkpoints by; None ranks by recency.
      mode: ``"min"`` or ``"max"``: which direction of `monitor` is better.
      save_last: also keep the newest checkpoint whatever its rank, and save at the end of the
        fit even when no interval falls there. Default True.
      async_save: write in a background thread (default True); the loop waits for a pending
        write before the next one and at the end of the fit, also when it fails.

    Attributes:
      best_step, best_score: the best checkpoint's step and metric (when monitoring).
      saved_steps: steps saved by this callback in the current fit.

    Differences: Lightning's `ModelCheckpoint` writes one file per checkpoint, a separate
    ``last.ckpt`` copy for `save_last`, and restores callbacks by state key; here the newest
    step directory is kept instead of a copy. Keras' `ModelCheckpoint` saves weights/models
    only and no callback state. Here one checkpoint restores the whole fit, including the
    data position.

    Example:
      >>> ckpt = ModelCheckpoint("runs/x/ckpt", every_n_steps=500, save_top_k=3,
      ...                        monitor="val_loss")
    """

    writes_checkpoints = True  # how `checkpointing` tells it apart (no import back)

    def __init__(self, directory: str | os.PathLike, *, every_n_steps: int | None = None,
                 every_n_epochs: int | None = 1, save_top_k: int = 1,
                 monitor: str | None = None, mode: Literal["min", "max"] = "min",
                 save_last: bool = True, async_save: bool = True):
        every_n_steps = check_count("every_n_steps", every_n_steps, allow_none=True)
        every_n_epochs = check_count("every_n_epochs", every_n_epochs, allow_none=True)
        save_top_k = check_count("save_top_k", save_top_k, low=-1)
        save_last, async_save = check_bool("save_last", save_last), check_bool(
            "async_save", async_save)
        monitor = check_str("monitor", monitor, allow_none=True)
        if not isinstance(directory, (str, os.PathLike)) or not str(directory):
            raise TypeError(f"directory must be a path (str or os.PathLike), got "
                            f"directory={directory!r}")
        if every_n_steps is None and every_n_epochs is None and not save_last:
            raise ValueError("ModelCheckpoint(every_n_steps=None, every_n_epochs=None, "
                             "save_last=False) would never save; give every_n_steps or "
                             "every_n_epochs, or save_last=True")
        if save_top_k == 0 and not save_last:
            raise ValueError("save_top_k=0 with save_last=False would keep no checkpoint; "
                             "drop the ModelCheckpoint instead")
        check_choice("mode", mode, ("min", "max"))
        self.directory = Path(directory)
        self.every_n_steps = every_n_steps
        self.every_n_epochs = every_n_epochs
        self.save_top_k = save_top_k
        self.monitor = monitor
        self.mode = mode
        self.save_last = save_last
        self.async_save = async_save
        self.best_step: int | None = None
        self.best_score: float | None = None
        self.saved_steps: list[int] = []
        self._manager = None
        self._pending = False
        self._warned = False
        self._lock: Path | None = None

    @property
    def best_path(self) -> Path | None:
        """Directory of the best checkpoint (None until one is saved with `monitor`)."""
        return None if self.best_step is None else self.directory / str(self.best_step)

    def on_fit_start(self, trainer: Any, state: Any) -> None:
        self.saved_steps, self._pending = [], False
        if not getattr(trainer, "resuming", False):
            self.best_step = self.best_score = None
        self._take_lock()
        existing = sorted(int(p.name) for p in self.directory.iterdir()
                          if p.name.isdigit()) if self.directory.is_dir() else []
        resumed = Path(trainer.resumed_from) if getattr(trainer, "resumed_from", None) else None
        if existing and (resumed is None or resumed.parent != self.directory.absolute()):
            raise checkpointing.CheckpointError(
                f"ModelCheckpoint directory {str(self.directory)!r} already holds checkpoints "
                f"{existing}; pass fit(..., resume_from='latest') to continue that run, or "
                "choose another directory (nothing was overwritten)")
        later = [s for s in existing if resumed is not None and s > int(resumed.name)]
        if later:
            raise checkpointing.CheckpointError(
                f"resuming from step {resumed.name}, but {str(self.directory)!r} also holds "
                f"later checkpoints {later} of the run that followed it; resume from the latest,"
                " or move those away first (nothing was overwritten)")
        self._manager = checkpoint_io.open_manager(self.directory, async_save=self.async_save,
                                                   preservation_policy=self._policy())

    def _take_lock(self) -> None:
        """Locks the directory for this fit (`checkpoint_lock`). Orbax's primary process
        (0) takes the lock for a multi-process run; the others learn whether it succeeded."""
        import jax

        error = None
        if jax.process_index() == 0:
            try:
                self._lock = checkpoint_lock.acquire(self.directory)
            except checkpointing.CheckpointError as e:
                error = e
        if jax.process_count() > 1:  # once per fit: every process must stop, or none
            from jax.experimental import multihost_utils

            locked = int(multihost_utils.broadcast_one_to_all(np.int32(error is None)))
            if not locked and error is None:
                error = checkpointing.CheckpointError(
                    f"process 0 could not lock checkpoint directory {str(self.directory)!r} "
                    "(its error names the run that holds it)")
        if error is not None:
            raise error

    def _policy(self) -> Any:
        """Lightning's save_top_k / save_last as an orbax preservation policy."""
        from orbax.checkpoint import checkpoint_managers as cm

        if self.save_top_k == -1:
            return cm.LatestN(n=None)  # None: every step
        policies = [cm.LatestN(n=1)] if self.save_last else []
        if self.save_top_k > 0:
            if self.monitor is None:
                policies.append(cm.LatestN(n=self.save_top_k))
            else:  # BestN keeps the last n after sorting: ascending for max, descending for min
                monitor = self.monitor
                policies.append(cm.BestN(
                    get_metric_fn=lambda metrics: metrics[monitor], n=self.save_top_k,
                    reverse=self.mode == "min", keep_checkpoints_without_metrics=False))
        if self.monitor is not None:
            # only finite scores reach orbax as metrics (`_save`): a run that went NaN keeps
            # its newest finite checkpoint even when save_last/recency would prune it
            policies.append(_LatestScored())
        return cm.AnyPreservationPolicy(policies)

    def on_train_batch_end(self, trainer: Any, state: Any) -> None:
        n = self.every_n_steps
        # a fused dispatch advances several steps at once: save when it crossed a multiple
        if n is None or trainer.global_step % n >= getattr(trainer, "last_dispatch_steps", 1):
            return
        if (trainer.batch_in_epoch >= trainer.steps_per_epoch or trainer.should_stop
                or trainer.global_step >= trainer.total_steps):
            self._pending = True  # the epoch end follows at once: save there, complete
        else:
            self._save(trainer, epoch_finished=False)

    def on_train_epoch_end(self, trainer: Any, state: Any) -> None:
        n = self.every_n_epochs
        last = (trainer.global_step >= trainer.total_steps or trainer.should_stop
                or trainer.current_epoch + 1 >= trainer.max_epochs_planned)
        if self._pending or (n is not None and (trainer.current_epoch + 1) % n == 0) or (
                self.save_last and last):
            self._save(trainer, epoch_finished=True)
        self._pending = False

    def _score(self, trainer: Any) -> float | None:
        if self.monitor is None:
            return None
        if self.monitor not in trainer.callback_metrics:
            if not self._warned:
                warnings.warn(
                    f"ModelCheckpoint monitors {self.monitor!r}, which is not available; "
                    f"available metrics: {sorted(trainer.callback_metrics)}", RuntimeWarning,
                    stacklevel=3)
                self._warned = True
            return None
        return float(trainer.callback_metrics[self.monitor])

    def _save(self, trainer: Any, *, epoch_finished: bool) -> None:
        if trainer.global_step in self.saved_steps:
            return
        score = self._score(trainer)
        if score is not None and not math.isfinite(score):
            warnings.warn(
                f"ModelCheckpoint: {self.monitor}={score} at step {trainer.global_step} is not "
                f"finite; this checkpoint is never ranked best, and the newest checkpoint with a "
                f"finite {self.monitor} is kept", RuntimeWarning, stacklevel=3)
            score = None  # a NaN model is never "best"
        best = self.best_score
        # A tie goes to the newer checkpoint, as orbax's BestN keeps it (the older is pruned)
        if score is not None and (best is None or not math.isfinite(best) or (
                score <= best if self.mode == "min" else score >= best)):
            self.best_step, self.best_score = trainer.global_step, score
        # The best-so-far goes into the checkpoint being written, so update it first.
        step = checkpoint_io.write(
            self._manager, trainer, epoch_finished=epoch_finished,
            metrics=None if score is None else {self.monitor: score})
        self.saved_steps.append(step)
        log.info("ModelCheckpoint: saved step %d to %s", step, self.directory)

    def teardown(self, trainer: Any, state: Any) -> None:
        try:
            if self._manager is not None:
                manager, self._manager = self._manager, None
                try:
                    manager.wait_until_finished()
                finally:
                    manager.close()
        finally:
            if self._lock is not None:
                lock, self._lock = self._lock, None
                checkpoint_lock.release(lock)

    def state_dict(self) -> dict[str, Any]:
        return {"best_step": self.best_step, "best_score": self.best_score}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_step = state_dict["best_step"]
        self.best_score = state_dict["best_score"]
        if self.best_score is not None and not math.isfinite(self.best_score):
            self.best_step = self.best_score = None  # an older version ranked NaN best

    def __repr__(self) -> str:
        return f"ModelCheckpoint({str(self.directory)!r})"


class _LatestScored:
    """An orbax preservation policy: keep the newest checkpoint saved with metrics (for
    `ModelCheckpoint`, the newest whose monitored value was finite)."""

    def should_preserve(self, checkpoints: Any, *, context: Any = None) -> list[bool]:
        scored = [i for i, c in enumerate(checkpoints) if c.metrics is not None]
        return [bool(scored) and i == scored[-1] for i in range(len(checkpoints))]
