"""Trainer: a minimal fit/validate loop that hosts LR callbacks inside one jitted step.

The loop is this module; what it runs lives beside it. *One compile*: everything that changes
during a fit (the `lr_state` shared with `LRCallbacks`, the record buffer) is a traced
argument of steps built once per Trainer (`compiled`); host writes keep dtype and sharding
(`runtime`). *No hidden host sync*: per-step records go into a device ring buffer fetched in
one transfer at log points. *Resume*: all of it is one pytree (`TrainerState`), checkpointed
with the host counters, the callbacks' `state_dict`s and the data position (`checkpoint_io`).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax

from flax_lr_callbacks import lr_sweep
from flax_lr_callbacks import nan_policy as nan_lib
from flax_lr_callbacks import step as step_lib
from flax_lr_callbacks.callbacks.base import Callback
from flax_lr_callbacks.compiled import CompiledSteps
from flax_lr_callbacks.contract import RunPlan
from flax_lr_callbacks.data import on_device
from flax_lr_callbacks.data.source import DataSource, shapes
from flax_lr_callbacks.loggers.base import combine_loggers
from flax_lr_callbacks.loggers.run_config import final_metrics, run_config
from flax_lr_callbacks.parallel import Placement
from flax_lr_callbacks.runtime import CallbackHost, arrange_callbacks, end_fit
from flax_lr_callbacks.step import TrainerState
from flax_lr_callbacks.trainer_settings import check_fit_args, checked_settings, run_plan

__all__ = ["Trainer", "TrainerState"]


class Trainer(CallbackHost):
    """Fits a Flax train state with LR callbacks running inside one jitted step.

    Args:
      loss_fn: ``loss_fn(params, batch) -> loss`` or ``-> (loss, {name: scalar})``. If it has an
        ``rng`` parameter it receives a per-step key in training and ``rng=None`` in
        validation (treat ``None`` as deterministic mode).
      max_epochs: epochs to run (>= 1). Default 1.
      max_steps: optional cap on total steps (>= 1); training stops when it is reached.
      steps_per_epoch: batches per epoch; default one pass of the data. Must be given for
        data without a pass length (iterators, generators, infinite pipelines), and may not
        exceed one pass (see `flax_lr_callbacks.data.source`).
      callbacks: `Callback` instances. A `ProgressBar` is added unless one is given or
        ``enable_progress_bar=False``.
      logger: a logger (`TensorBoardLogger`, `CSVLogger`, or any object with `log_metrics`,
        `log_hyperparams`, `finalize`) or a list of them; receives train metrics at log
        points and validation metrics at epoch ends (each with ``epoch``), whatever callbacks
        log, and the run's settings at the end (`loggers.run_config`).
      log_every_n_steps: steps between log points (>= 1). Default 50. Also the size of the
        on-device metric buffer.
      seed: seeds the per-step PRNG keys handed to ``loss_fn(rng=...)``.
      eval_fn: optional ``eval_fn(params, batch) -> {name: scalar}`` for extra validation
        metrics (reported as ``val_<name>``, averaged over examples).
      enable_progress_bar: add a default `ProgressBar`.
      mesh: ``"auto"`` (default): data parallel over all devices when there are several
        (batches sharded over a ``"data"`` axis, state and hyperparameters replicated), one
        device otherwise; a `jax.sharding.Mesh` to choose; None for the first device only.
        Multi-host: see `flax_lr_callbacks.parallel`.
      data_axis: the mesh axis batches are split over. Default ``"data"``.
      steps_per_dispatch: K >= 1 steps fused into one compiled call (`lax.scan` over K
        batches, each step reading its own), for small models where dispatch dominates. It
        pays most with an ``ArrayDataset(on_device=True)``, whose K batches travel as one
        index array: on the MLP of `benchmarks/overhead.py` (2-core CPU), 1.22-1.26x (K=10)
        and 1.26-1.31x (K=50) a bare loop over host batches (1.13-1.23x one gathering on the
        device), against 0.99-1.00x at K=10 on a list of host batches. Schedules stay exact
        per step, every step is recorded; ``on_train_batch_end`` runs once per dispatch
        (``last_dispatch_steps`` says how many steps). `log_every_n_steps` must be a multiple
        of K; a group also ends at log points and epoch ends (the batches short of one run
        singly). On CPU keep K=1 for conv nets (XLA runs convolutions inside `scan` slower).
      nan_policy: what a step with a non-finite loss, gradient or applied hyperparameter does,
        decided in-graph (`flax_lr_callbacks.nan_policy`). ``"stop"`` (default): no update
        from that step on; the next log point raises `NonFiniteLossError` naming the step,
        epoch and batch, with the last finite state as ``.state`` (nothing is checkpointed
        after it). ``"skip"``: such updates are not applied, only counted
        (``train/skipped_steps``, a warning at the first). ``"ignore"``: no check (Lightning's
        and Keras' default; Keras' `TerminateOnNaN` stops but keeps the NaN weights).

    Example:
      >>> trainer = Trainer(loss_fn, max_epochs=3, callbacks=[LRSchedule(sched)])  # doctest: +SKIP
      >>> state = trainer.fit(state, train_data, val_data)  # doctest: +SKIP
    """

    def __init__(
        self,
        loss_fn: Callable[..., Any],
        *,
        max_epochs: int | None = 1,
        max_steps: int | None = None,
        steps_per_epoch: int | None = None,
        callbacks: Sequence[Callback] = (),
        logger: Any = None,
        log_every_n_steps: int = 50,
        seed: int = 0,
        eval_fn: Callable[[Any, Any], dict[str, Any]] | None = None,
        enable_progress_bar: bool = True,
        mesh: Any = "auto",
        data_axis: str = "data",
        steps_per_dispatch: int = 1,
        nan_policy: Literal["stop", "skip", "ignore"] = "stop",
    ):
        self._loss = step_lib.LossFn(loss_fn)
        self.loss_fn = loss_fn
        # the settings, checked (errors name the argument) and in plain Python form
        vars(self).update(checked_settings(
            max_epochs=max_epochs, max_steps=max_steps, steps_per_epoch=steps_per_epoch,
            log_every_n_steps=log_every_n_steps, seed=seed, eval_fn=eval_fn,
            enable_progress_bar=enable_progress_bar, data_axis=data_axis,
            steps_per_dispatch=steps_per_dispatch, nan_policy=nan_policy))
        self.callbacks = arrange_callbacks(callbacks, progress_bar=self.enable_progress_bar)
        self.logger = combine_loggers(logger)
        self.last_dispatch_steps = 1  # steps run by the latest dispatch (hooks see them at once)
        self._warned_skipped, self._batch_shapes = False, None
        # Host counters (`progress`), plan and metrics, readable by callbacks (`HostContext`).
        self._reset_host(RunPlan(0, 0, 0))
        self.train_data = self.val_data = None  # the running fit's data, for callbacks (LRFinder)
        self.data: DataSource | None = None  # the running fit's data and its position
        self.swept: DataSource | None = None  # an lr_find's own source (`lr_sweep.run`)
        self.placement = Placement.from_setting(mesh, self.data_axis)
        self.steps = CompiledSteps(self._loss, self.callbacks,
                                   buffer_size=self.log_every_n_steps, eval_fn=self.eval_fn,
                                   placement=self.placement, nan_policy=self.nan_policy)

    # ------------------------------------------------------------------ set-up
    def init_trainer_state(self, state: Any, first_batch: Any) -> TrainerState:
        """Builds the carried pytree for a fresh fit of `plan` (copies `state`: the caller's
        survives)."""
        return self.steps.initial_state(state, self.init_lr_state(state.opt_state),
                                        seed=self.seed, first_batch=first_batch)

    num_step_traces = property(lambda self: self.steps.num_step_traces,
                               doc="Times the train step was traced (compiles per shape).")
    num_fused_traces = property(lambda self: self.steps.num_fused_traces,
                                doc="Times the fused K-step call was traced.")
    num_step_compiles = property(lambda self: self.steps.train._cache_size(), doc=(
        "Executables compiled for the train step (a trace can compile more than once when "
        "input placement changes; tests check both this and `num_step_traces`)."))
    num_fused_compiles = property(lambda self: self.steps.fused._cache_size(),
                                  doc="Executables compiled for the fused K-step call.")

    def state_sharding(self) -> jax.sharding.Sharding:  # replicated over the mesh, or device 0
        return self.placement.state_sharding()

    # ------------------------------------------------------------------ the loop
    def fit(self, state: Any, train_data: Any, val_data: Any = None, *,
            resume_from: str | os.PathLike | None = None,
            allow_changed_settings: bool = False) -> Any:
        """Trains `state` and returns the trained state. The caller's `state` is not modified.

        Args:
          state: a train state with ``params``, ``opt_state`` (injected hyperparameters),
            ``replace`` and ``apply_gradients`` (flax `TrainState`).
          train_data: an `ArrayDataset`, a Grain `MapDataset`/`IterDataset`/`DataLoader` of
            batches, an iterator, or any re-iterable of batch pytrees; what an epoch is for
            each is in `flax_lr_callbacks.data.source` (every batch once per epoch, Grain
            shuffles re-seeded per epoch, streams never restarted).
          val_data: optional, same kinds; validated at each epoch end.
          resume_from: continue a run from a checkpoint written by `ModelCheckpoint`:
            ``"latest"`` (the newest in the ModelCheckpoint's directory), a checkpoint
            directory, or one step directory in it. Params, optimizer and callback state, PRNG
            key, counters and the data position are restored, and training continues at the
            next batch; `state` then only supplies the structure (model, optimizer). The
            Trainer must be configured as before (same epochs, data length, callbacks, seed,
            each stateful callback's settings); a mismatch raises `CheckpointError` naming it.
          allow_changed_settings: resume although the seed or a stateful callback's settings
            differ from the checkpoint's (a warning lists them); what the checkpoint holds
            (callbacks' device state, the PRNG key) continues as saved.
        """
        start_epoch, start_batch = self._begin(state, train_data, val_data, resume_from,
                                               allow_changed_settings)
        try:
            self._call("on_fit_start")
            for epoch in range(start_epoch, self.plan.max_epochs):
                if self._finished():
                    break
                self._train_epoch(epoch, start_batch if epoch == start_epoch else 0)
                if val_data is not None:
                    self._validate_epoch(epoch, val_data)
                self._call("on_train_epoch_end")
            self._call("on_fit_end")
            if self.logger is not None:
                self.logger.log_hyperparams(run_config(self), final_metrics(self))
        except BaseException as e:
            end_fit(self, e)
            raise
        end_fit(self, None)
        return self.trainer_state.train_state

    def _begin(self, state: Any, train_data: Any, val_data: Any, resume_from: Any,
               allow_changed_settings: bool) -> tuple[int, int]:
        """Plans the fit, builds (or restores) the carried state and sets the logger up;
        returns the epoch and batch training starts at."""
        check_fit_args(resume_from, allow_changed_settings)
        previous, self.swept = self.swept or self.data, None  # unused stream batches
        self.data = DataSource(train_data, sharding=self.placement.state_sharding(),
                               previous=previous)
        self._reset_host(run_plan(self.data, steps_per_epoch=self.steps_per_epoch_arg,
                                  max_epochs=self.max_epochs, max_steps=self.max_steps,
                                  validates=val_data is not None))
        self._warned_skipped, self.train_data, self.val_data = False, train_data, val_data
        self._index_hooks()
        first_batch = self.data.peek()
        self._batch_shapes = shapes(first_batch)
        self.resuming, self.resumed_from = resume_from is not None, None
        build = functools.partial(self.init_trainer_state, state, first_batch)
        if resume_from is None:
            self.trainer_state, start = build(), (0, 0)
        else:
            from flax_lr_callbacks import checkpoint_io

            start = checkpoint_io.resume(self, build, resume_from, allow_changed_settings)
        if self.logger is not None and callable(getattr(self.logger, "setup", None)):
            self.logger.setup()  # an unwritable log folder fails here, before any step
        return start

    def _train_epoch(self, epoch: int, start: int) -> None:
        """Trains epoch `epoch` from its batch `start`, in groups of `steps_per_dispatch`."""
        self.current_epoch, self.batch_in_epoch = epoch, start
        self._call("on_train_epoch_start")
        spe, total = self.steps_per_epoch, self.total_steps
        # a hook may have stopped the run: checked before the next pull (a stream loses none)
        batches = iter(()) if self._finished() else self.data.epoch(epoch, start)
        pending: list[Any] = []
        k, progress, every = self.steps_per_dispatch, self.progress, self.log_every_n_steps
        for batch in batches:  # a group ends at the epoch's end, the run's and a log point
            pending.append(batch)
            if k == 1 or len(pending) >= min(k, spe - progress.batch_in_epoch,
                                             total - progress.global_step,
                                             every - progress.global_step % every):
                self._dispatch(pending)
                pending = []
                if progress.global_step >= total or progress.should_stop:
                    break
        for batch in pending:  # the data ended inside a group of K
            self._dispatch([batch])
        self._log_point()
        if self.batch_in_epoch < spe and not self._finished():
            self.data.warn_short(epoch, self.batch_in_epoch, self.global_step, total)
            self.should_stop = True

    def _validate_epoch(self, epoch: int, val_data: Any) -> None:
        self.callback_metrics.update(self.validate(self.trainer_state.train_state, val_data))
        if self.logger is not None:
            self.logger.log_metrics({k: v for k, v in self.callback_metrics.items()
                                     if k.startswith("val_")} | {"epoch": epoch},
                                    step=self.global_step - 1)
        self._call("on_validation_end")

    def _dispatch(self, batches: list[Any]) -> None:
        """Runs `batches` as one fused call (K of them, read by index inside it) or as single
        steps, then the hooks; a group with a batch of other shapes (a short last one) runs
        step by step, so the fused executable keeps its one shape."""
        put = self.placement.put_batch if self.placement.mesh is not None else None
        if len(batches) == self.steps_per_dispatch > 1 and all(
                shapes(b) == self._batch_shapes for b in batches):
            group = self.placement.put_group(on_device.group(batches))
            self.trainer_state = self.steps.fused(self.trainer_state, group)
            self._after_steps(len(batches))
            return
        step = self.steps.train
        for batch in batches:
            self.trainer_state = step(self.trainer_state, batch if put is None else put(batch))
            self._after_steps(1)

    def _after_steps(self, n: int) -> None:
        progress = self.progress  # the counters, without the properties' indirection
        progress.global_step += n
        progress.batch_in_epoch += n
        self.last_dispatch_steps = n
        if progress.global_step % self.log_every_n_steps < n:  # a log point was reached
            self._log_point()
        for cb in self._hook_users["on_train_batch_end"]:
            cb.on_train_batch_end(self, self.trainer_state.train_state)

    def _log_point(self) -> None:
        """Fetches the metric buffer in one transfer and hands the window to callbacks."""
        start, end = self.progress.window_start, self.global_step
        if end <= start:
            return
        history, nonfinite = self.steps.fetch_window(self.trainer_state, start, end)
        train, self._warned_skipped = nan_lib.window_metrics(  # raises for a stopped run
            self, history, nonfinite, warned=self._warned_skipped)
        self.progress.window_start = end
        self.callback_metrics.update(train)
        if self.logger is not None:
            self.logger.log_metrics(train | {"epoch": self.current_epoch}, step=end - 1)
        self._call("on_log", history)

    lr_find = lr_sweep.find  # Leslie Smith's LR range test on a copy of a state

    def validate(self, state: Any, val_data: Any) -> dict[str, float]:
        """Returns ``{"val_loss": ..., "val_<metric>": ...}`` averaged over all examples
        (batch sums stay on device and are fetched once at the end)."""
        return self.steps.validate(state, val_data)
