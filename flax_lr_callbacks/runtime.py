"""The host runtime shared by `Trainer` and `LRCallbacks`: counters, plan, host writes.

Both hold the carried device state (`trainer_state`: a `TrainerState`, whose `lr_state` is
the LR side, or the drop-in's `LRState` itself), build that LR side with `lr_state.init`
(`init_lr_state`), and implement `contract.HostContext` over it here, once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flax_lr_callbacks import lr_state as lr_lib
from flax_lr_callbacks.callbacks.base import Callback
from flax_lr_callbacks.contract import Progress, RunPlan, progress_property

__all__ = ["CallbackHost", "arrange_callbacks"]

# Hooks that run per step or per log point: called only on callbacks that override them.
_HOT_HOOKS = ("on_train_batch_end", "on_log")


def arrange_callbacks(callbacks: Sequence[Any], *, progress_bar: bool) -> list[Callback]:
    """Checks the list, adds a `ProgressBar` unless there is one (or `progress_bar` is
    False), and puts checkpoints last (as in Lightning), so they hold every other hook's
    decisions."""
    from flax_lr_callbacks.callbacks.checkpoint import ModelCheckpoint
    from flax_lr_callbacks.callbacks.progress import ProgressBar

    if isinstance(callbacks, Callback):  # one callback, as Lightning accepts
        callbacks = [callbacks]
    if callbacks is None:
        callbacks = []
    if isinstance(callbacks, (str, bytes, dict)) or not hasattr(callbacks, "__iter__"):
        raise TypeError(f"callbacks must be a list of Callback instances (or one Callback), "
                        f"got callbacks={callbacks!r}")
    callbacks = list(callbacks)
    for i, cb in enumerate(callbacks):
        if not isinstance(cb, Callback):
            hint = (" (a class: instantiate it, e.g. OneCycle(0.1))"
                    if isinstance(cb, type) and issubclass(cb, Callback) else "")
            raise TypeError(f"callbacks[{i}] must be a Callback instance{hint}, got {cb!r}")
    if progress_bar and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(ProgressBar())
    return ([c for c in callbacks if not isinstance(c, ModelCheckpoint)]
            + [c for c in callbacks if isinstance(c, ModelCheckpoint)])


class CallbackHost:
    """Implements `contract.HostContext` over `progress`, `plan` and `trainer_state`."""

    callbacks: list[Any]
    trainer_state: Any = None
    logger: Any = None

    def _reset_host(self, plan: RunPlan) -> None:
        """Fresh counters, metrics and plan for a new fit."""
        self.progress = Progress()
        self._plan = plan
        self.callback_metrics: dict[str, float] = {}

    global_step = progress_property("global_step")
    current_epoch = progress_property("current_epoch")
    batch_in_epoch = progress_property("batch_in_epoch")
    start_step = progress_property("start_step")
    should_stop = progress_property("should_stop")
    resuming = progress_property("resuming")
    resumed_from = progress_property("resumed_from")

    @property
    def plan(self) -> RunPlan:
        """The running (or last) fit's `RunPlan`."""
        return self._plan

    @property
    def steps_per_epoch(self) -> int:
        return self._plan.steps_per_epoch

    @property
    def total_steps(self) -> int:
        return self._plan.total_steps

    @property
    def max_epochs_planned(self) -> int:
        return self._plan.max_epochs

    def _index_hooks(self) -> None:
        """Remembers which callbacks override the hot hooks (the per-step hook runs
        thousands of times per fit)."""
        self._hook_users = {hook: [c for c in self.callbacks
                                   if getattr(type(c), hook) is not getattr(Callback, hook)]
                            for hook in _HOT_HOOKS}

    def call_hook(self, hook: str, state: Any, *args: Any) -> None:
        """Calls `hook` on every callback (that overrides it, for the hot hooks)."""
        users = getattr(self, "_hook_users", {}).get(hook, self.callbacks)
        for cb in users:
            getattr(cb, hook)(self, state, *args)

    def _call(self, hook: str, *args: Any) -> None:
        """`call_hook` with the running fit's train state (None in a hand-written loop)."""
        self.call_hook(hook, getattr(self.trainer_state, "train_state", None), *args)

    def _finished(self) -> bool:
        """The planned steps ran, or a hook asked the fit to stop."""
        return self.global_step >= self.total_steps or self.should_stop

    def init_lr_state(self, opt_state: Any) -> lr_lib.LRState:
        """Configures and checks the callbacks against `opt_state` for `plan` (its planned
        values too); returns the fresh `LRState` at step 0."""
        from flax_lr_callbacks.plan import check_plan

        lr = lr_lib.init(self.callbacks, opt_state, self._plan)
        check_plan(self.callbacks, lr.base_hparams, lr.callback_states, self._plan)
        return lr

    @property
    def lr_state(self) -> lr_lib.LRState:
        """The LR side of the running fit's carried state."""
        ts = self.trainer_state
        return ts if isinstance(ts, lr_lib.LRState) else ts.lr_state

    @lr_state.setter
    def lr_state(self, lr: lr_lib.LRState) -> None:
        ts = self.trainer_state
        self.trainer_state = lr if isinstance(ts, lr_lib.LRState) else ts._replace(lr_state=lr)

    def callback_state(self, callback: Any) -> Any:
        """The device state of `callback` (also one nested in a composite) in the running fit."""
        return lr_lib.get_callback_state(self.lr_state, self.callbacks, callback)

    def update_callback_state(self, callback: Any, **values: Any) -> None:
        """Writes host values into fields of `callback`'s device state without recompiling.

        Each value is cast to the field's dtype and placed with its sharding, so the jitted
        step sees the same signature. `callback` may be nested inside a composite.
        """
        self.lr_state = lr_lib.replace_callback_state(self.lr_state, self.callbacks, callback,
                                                      **values)

    def set_base_hyperparam(self, name: str, value: float, group: str | None = None) -> None:
        """Sets the base value of an injected hyperparameter (the value rules start from).

        Raises ValueError when a schedule replaces that base at every step (an `LRSchedule`
        of `name`, an LR schedule with its peak given): the value would never be applied.
        """
        from flax_lr_callbacks.callbacks.peak import overwrites_base

        for cb in self.callbacks:
            groups = getattr(cb, "groups", None)
            if overwrites_base(cb, name) and (group is None or groups is None
                                              or group in groups):
                raise ValueError(
                    f"set_base_hyperparam({name!r}): {cb!r} sets {name!r} at every step, so "
                    "this value would never be applied; change that callback instead (an LR "
                    "schedule's peak: set_peak, or put LRFinder before it)")
        self.lr_state = lr_lib.replace_base_hyperparam(self.lr_state, name, value, group)

    def request_stop(self) -> None:
        """Asks the fit to stop after the current step."""
        self.progress.should_stop = True


def _attach_state(host: Any, error: BaseException, what: str) -> None:
    """A logger failed: the trained state goes with the error as ``err.state``."""
    error.state = host.trainer_state.train_state
    error.add_note(f"{what} step {host.global_step}; the trained state is err.state "
                   "(callbacks were torn down: checkpoint writes are complete).")


def end_fit(host: Any, error: BaseException | None) -> None:
    """Ends a fit: tears the callbacks down, then finalizes the logger (bounded in time).

    A `LoggerError` that stopped the run, and a finalize error after a finished one, carry
    the trained state as ``err.state``. Every callback is torn down even when one fails (the
    checkpoint, torn down last, finishes its writes); while another error is on its way out,
    a teardown or finalize error becomes a note on it instead of hiding it.
    """
    from flax_lr_callbacks.loggers.errors import LoggerError

    if isinstance(error, LoggerError):
        _attach_state(host, error, "Training stopped after")
    failed = None  # the first teardown error of a fit that had none
    for cb in host.callbacks:  # every callback is torn down, even after one failed
        try:
            cb.teardown(host, host.trainer_state.train_state)
        except BaseException as e:
            note = f"{cb!r}.teardown failed too: {type(e).__name__}: {e}"
            if error is not None:  # the error that ended the fit stays the one raised
                error.add_note(note)
            elif failed is None:
                failed = e
            else:
                failed.add_note(note)
    if host.logger is not None:
        try:
            host.logger.finalize()
        except Exception as e:
            if error is None and failed is None:
                _attach_state(host, e, "Training finished at")
                raise
            (error or failed).add_note(f"The logger's finalize failed too: {e}")
    if failed is not None:
        raise failed
