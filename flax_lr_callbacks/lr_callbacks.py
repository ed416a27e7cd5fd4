"""LRCallbacks: the LR callbacks in a hand-written Flax loop (linen `TrainState` or NNX).

You keep your own jitted step; one call inside it applies every callback's in-graph rule to
the optimizer state, and a few host calls at your epoch and validation points run the
callbacks' decisions (plateau reduction, epoch-based changes). The LR state is a small pytree
you carry through the step next to your train state, so nothing retraces when a callback
changes a value, and you checkpoint it with the rest of your state.

linen::

    lrc = LRCallbacks([OneCycle(0.1), ReduceLROnPlateau()], steps_per_epoch=len(train),
                      max_epochs=10)
    lr_state = lrc.init(state.opt_state)

    @jax.jit
    def train_step(state, lr_state, batch):
        opt_state, lr_state = lrc.apply(state.opt_state, lr_state)   # the added line
        state = state.replace(opt_state=opt_state)
        ...                                                          # your step as before
        lr_state = lrc.observe(lr_state, loss, grads=grads)  # only for SmoothedPlateau,
                                                             # GradNormGuard, your observers

    for epoch in range(10):
        for batch in train:
            state, lr_state, loss = train_step(state, lr_state, batch)
        lr_state = lrc.validation_end(lr_state, {"val_loss": evaluate(state)})
        lr_state = lrc.epoch_end(lr_state)

The step above closes over `lrc`. In a module-level ``@jax.jit`` step (as in the Flax
examples) use the pure functions instead; the LR state carries its callbacks as static
metadata, so no argument has to be static::

    @jax.jit
    def train_step(state, lr_state, batch):
        opt_state, lr_state = apply_lr(state.opt_state, lr_state)
        ...

If the step forgets to write the returned optimizer state back, the LR would stay fixed
silently; `apply` notices in-graph that the optimizer no longer holds what it wrote, and the
next host call (`validation_end`, `epoch_end`, `finish`) raises a RuntimeError saying so.

NNX: pass the `nnx.Optimizer` instead of an optax state; `apply` then writes the values into
its variables in place (``variable[...] = value``) and returns only the new LR state:
``lr_state = lrc.apply(optimizer, lr_state)`` inside an `nnx.jit` step. For the fastest NNX
loop, ``nnx.split`` the model and optimizer once, `jax.jit` a pure step that does
``nnx.merge`` -> `apply` -> update -> ``nnx.split``, and `nnx.update` the objects at the end
(`nnx.jit` re-splits on every call, which costs Python time per step on small models).
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp

from flax_lr_callbacks import hyperparams as hp_lib
from flax_lr_callbacks import lr_state as lr_lib
from flax_lr_callbacks import nnx_state
from flax_lr_callbacks.callbacks.base import Callback
from flax_lr_callbacks.contract import RunPlan
from flax_lr_callbacks.lr_state import BoundCallbacks, LRState
from flax_lr_callbacks.runtime import CallbackHost, arrange_callbacks
from flax_lr_callbacks.validation import check_count

__all__ = ["LRCallbacks", "LRState", "apply_lr", "observe_lr"]


def apply_lr(opt_state: Any, lr_state: LRState) -> Any:
    """`LRCallbacks.apply` as a pure function of its arguments, for a module-level
    ``@jax.jit`` step that takes `lr_state` as an ordinary argument (its callbacks travel
    inside it as static metadata).

    Also checks, in-graph, that `opt_state` still holds the values the previous call wrote;
    when it does not (the new optimizer state was not written back, so the LR would silently
    stay fixed), the next host call of `LRCallbacks` raises a RuntimeError.
    """
    _check_lr_state("apply", lr_state, opt_state)
    if lr_state.callbacks is None:
        raise TypeError("this LRState has no callbacks bound; build it with LRCallbacks.init")
    callbacks = lr_state.callbacks.items
    inner = nnx_state.optax_state(opt_state)
    current = hp_lib.get_hyperparams(inner)
    missed = jnp.zeros((), jnp.bool_)
    for g, names in lr_state.applied.items():
        for n, v in names.items():
            missed = missed | (jnp.asarray(current[g][n], jnp.float32) != v)
    hparams, new_lr = lr_lib.advance(callbacks, lr_state)
    applied = {g: {n: jnp.asarray(hparams[g][n], jnp.float32) for n in names}
               for g, names in lr_state.applied.items()}
    new_lr = new_lr._replace(applied=applied, stale=lr_state.stale + missed.astype(jnp.int32))
    if nnx_state.is_optimizer(opt_state):
        hp_lib.set_hyperparams(opt_state.opt_state, hparams)
        return new_lr
    return hp_lib.set_hyperparams(opt_state, hparams), new_lr


def observe_lr(lr_state: LRState, loss: Any, *, metrics: dict[str, Any] | None = None,
               grads: Any = None, old_params: Any = None, new_params: Any = None) -> LRState:
    """`LRCallbacks.observe` as a pure function (see `apply_lr`)."""
    _check_lr_state("observe", lr_state, loss)
    return lr_lib.observed(lr_state.callbacks.items, lr_state, loss, metrics or {}, grads,
                           old_params, new_params)


def _check_lr_state(call: str, lr_state: Any, other: Any) -> None:
    """Clear errors for the usual mix-ups of the drop-in's arguments."""
    if isinstance(lr_state, LRState):
        return
    if isinstance(other, LRState):
        order = "opt_state, lr_state" if call == "apply" else "lr_state, loss"
        raise TypeError(f"LRCallbacks.{call}: the arguments are swapped; call "
                        f"{call}({order})")
    if isinstance(lr_state, tuple) and len(lr_state) == 2 and isinstance(lr_state[1], LRState):
        raise TypeError(
            f"LRCallbacks.{call} got the (opt_state, lr_state) pair that apply returns for an "
            "optax state; unpack it: opt_state, lr_state = lrc.apply(opt_state, lr_state) "
            "(only an nnx.Optimizer, updated in place, gets lr_state alone)")
    raise TypeError(f"LRCallbacks.{call}: lr_state must be the LRState returned by "
                    f"LRCallbacks.init(opt_state), got {type(lr_state).__name__}: "
                    f"{lr_state!r:.80}")


class LRCallbacks(CallbackHost):
    """Runs LR callbacks in your own training loop. See the module docstring for the loop.

    Host calls (`init`, `validation_end`, `epoch_end`, `finish`) play the Trainer's part for
    the callbacks: they see ``global_step``, ``current_epoch``, ``callback_metrics`` (the
    metrics you pass) and write their decisions into the returned `LRState`. Those calls read
    one scalar (the step) from the device; `apply` never syncs.

    Callbacks that need the Trainer's data, logger or per-step records (`LRFinder`,
    `LearningRateMonitor`, `ProgressBar`, `ModelCheckpoint`, plateau with ``check_on=<N
    steps>``) are refused with a TypeError; in a custom loop, run `Trainer.lr_find` first and
    pass its suggestion as the peak, and log `get_hyperparams(opt_state)` yourself.

    Args:
      callbacks: LR callbacks (schedules, `ReduceLROnPlateau`, your own).
      steps_per_epoch: batches per epoch (>= 1).
      max_epochs: planned epochs (>= 1); with `steps_per_epoch` it sets ``total_steps``.
      total_steps: planned steps, if not ``max_epochs * steps_per_epoch``.
    """

    def __init__(self, callbacks: list[Callback], *, steps_per_epoch: int,
                 max_epochs: int | None = None, total_steps: int | None = None):
        from flax_lr_callbacks.callbacks.checkpoint import ModelCheckpoint
        from flax_lr_callbacks.callbacks.lr_finder import LRFinder
        from flax_lr_callbacks.callbacks.lr_monitor import LearningRateMonitor
        from flax_lr_callbacks.callbacks.progress import ProgressBar

        steps_per_epoch = check_count("steps_per_epoch", steps_per_epoch)
        max_epochs = check_count("max_epochs", max_epochs, allow_none=True)
        total_steps = check_count("total_steps", total_steps, allow_none=True)
        if max_epochs is None and total_steps is None:
            raise ValueError("give max_epochs or total_steps (both are None)")
        self.callbacks = arrange_callbacks(callbacks, progress_bar=False)
        for cb in self.callbacks:
            needs_trainer = isinstance(cb, (LRFinder, LearningRateMonitor, ProgressBar,
                                            ModelCheckpoint)) or isinstance(
                getattr(cb, "check_on", None), int)
            if needs_trainer:
                raise TypeError(
                    f"callbacks: {cb!r} needs the Trainer's data, logger or per-step records "
                    "and cannot run in a custom loop; see the LRCallbacks docstring for what "
                    "to do instead")
        total = total_steps or max_epochs * steps_per_epoch
        # What callbacks read from "the trainer" in host hooks (`contract.HostContext`).
        self._reset_host(RunPlan(steps_per_epoch, total,
                                 max_epochs or -(-total // steps_per_epoch)))
        self.logger = None
        self.trainer_state: LRState | None = None

    # ------------------------------------------------------------------ set-up
    def init(self, opt_state: Any) -> LRState:
        """Checks the optimizer, builds the LR state and runs the callbacks' fit-start hooks.

        `opt_state`: your optax state (``state.opt_state``) or an `nnx.Optimizer`. Its current
        injected values are the base values rules start from.
        """
        opt_state = nnx_state.optax_state(opt_state)
        state = self.init_lr_state(opt_state)._replace(
            applied=jax.tree_util.tree_map(lambda v: jnp.array(v, jnp.float32, copy=True),
                                           hp_lib.get_hyperparams(opt_state)),
            stale=jnp.zeros((), jnp.int32),
            callbacks=BoundCallbacks(tuple(self.callbacks)))
        state = lr_lib.placed_like(state, opt_state)
        self._reset_host(self.plan)
        return self._host(state, "on_fit_start", "on_train_epoch_start")

    def resume(self, lr_state: LRState, state_dict: dict[str, Any]) -> LRState:
        """Continues from a saved `lr_state` (your checkpoint) and `state_dict()`."""
        self.load_state_dict(state_dict)
        self.resuming = True
        lr_state = lr_state._replace(callbacks=BoundCallbacks(tuple(self.callbacks)))
        return self._host(lr_state, "on_fit_start", "on_train_epoch_start")

    # ------------------------------------------------------------------ in the jitted step
    def apply(self, opt_state: Any, lr_state: LRState) -> Any:
        """Applies every rule for the current step and writes the values into `opt_state`.

        Call it once per step inside your jitted step, before the gradient update. Returns
        ``(opt_state, lr_state)``, or just ``lr_state`` for an `nnx.Optimizer` (written in
        place).
        """
        return apply_lr(opt_state, lr_state)

    def observe(self, lr_state: LRState, loss: Any, *, metrics: dict[str, Any] | None = None,
                grads: Any = None, old_params: Any = None, new_params: Any = None) -> LRState:
        """Hands the step's outcome to callbacks with an `observe` face; returns `lr_state`.

        Call it inside your jitted step after the gradient update (after `apply`). Pass
        `grads` when a callback observes ``"grad_norm"`` (`GradNormGuard`), and the params
        before and after the update when one observes ``"update_norm"``. Without such
        callbacks it returns `lr_state` unchanged and adds nothing to the step.
        """
        return observe_lr(lr_state, loss, metrics=metrics, grads=grads, old_params=old_params,
                          new_params=new_params)

    # ------------------------------------------------------------------ host points
    def validation_end(self, lr_state: LRState, metrics: dict[str, Any]) -> LRState:
        """Hands validation metrics (e.g. ``{"val_loss": ...}``) to the callbacks."""
        if not isinstance(metrics, dict):
            raise TypeError(f"LRCallbacks.validation_end: metrics must be a dict such as "
                            f"{{'val_loss': 0.3}}, got {metrics!r:.80}")
        self.callback_metrics.update({k: float(v) for k, v in metrics.items()})
        return self._host(lr_state, "on_validation_end")

    def epoch_end(self, lr_state: LRState, metrics: dict[str, Any] | None = None) -> LRState:
        """Ends the current epoch (epoch-end hooks) and starts the next one."""
        if metrics is not None and not isinstance(metrics, dict):
            raise TypeError(f"LRCallbacks.epoch_end: metrics must be a dict or None, got "
                            f"{metrics!r:.80}")
        self.callback_metrics.update({k: float(v) for k, v in (metrics or {}).items()})
        lr_state = self._host(lr_state, "on_train_epoch_end")
        self.current_epoch += 1
        return self._host(lr_state, "on_train_epoch_start")

    def finish(self, lr_state: LRState) -> None:
        """Runs the fit-end hooks."""
        self._host(lr_state, "on_fit_end", "teardown")

    def state_dict(self) -> dict[str, Any]:
        """Host state of the callbacks and the epoch counter, to save with `lr_state`."""
        return {"epoch": self.current_epoch, "metrics": dict(self.callback_metrics),
                "callbacks": [cb.state_dict() for cb in self.callbacks]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.current_epoch = state_dict["epoch"]
        self.callback_metrics = dict(state_dict["metrics"])
        for cb, saved in zip(self.callbacks, state_dict["callbacks"]):
            cb.load_state_dict(saved)

    def _host(self, lr_state: LRState, *hooks: str) -> LRState:
        call = "finish" if "teardown" in hooks else hooks[0].removeprefix("on_").replace(
            "train_", "").replace("fit_start", "init")
        _check_lr_state(call, lr_state, None)
        if isinstance(lr_state.step, jax.core.Tracer):
            raise RuntimeError(
                f"LRCallbacks.{call} is a host call and was called inside jax.jit; call it "
                "outside the jitted step (between steps, e.g. after each epoch). Inside the "
                "step use apply (before the update) and observe (after it)")
        self.trainer_state = lr_state
        step, stale = jax.device_get((lr_state.step, lr_state.stale))  # one transfer
        if stale:
            raise RuntimeError(
                f"LRCallbacks: at {int(stale)} of the last steps the optimizer state did not "
                "hold the values apply() wrote the step before, so the schedule was not "
                "applied; write the returned optimizer state back (opt_state, lr_state = "
                "lrc.apply(state.opt_state, lr_state); state = state.replace("
                "opt_state=opt_state)) and give the next step that state")
        self.global_step = int(step)  # the one sync of a host point
        self._check_epochs(call)
        for hook in hooks:
            self.call_hook(hook, None)
        lr_state, self.trainer_state = self.trainer_state, None
        return lr_state

    def _check_epochs(self, call: str) -> None:
        """Warns once when the steps have run past the current epoch without `epoch_end`
        (epoch-end callbacks, e.g. ``ReduceLROnPlateau(check_on="epoch")``, then never run)."""
        behind = self.global_step > (self.current_epoch + 1) * self.steps_per_epoch
        if behind and call != "epoch_end" and not getattr(self, "_warned_epochs", False):
            self._warned_epochs = True
            warnings.warn(
                f"LRCallbacks.{call} at step {self.global_step} (epoch "
                f"{self.global_step // self.steps_per_epoch} of {self.steps_per_epoch} steps "
                f"each), but epoch_end() was called for {self.current_epoch} epochs; call "
                "lr_state = lrc.epoch_end(lr_state, metrics) after every epoch, or epoch-end "
                "callbacks (ReduceLROnPlateau(check_on='epoch'), epoch schedules' host hooks) "
                "never run", RuntimeWarning, stacklevel=4)
