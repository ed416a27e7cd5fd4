"""The callback protocol: host hooks plus an optional in-graph rule with device state.

A callback has up to two faces.

*In-graph rule.* `rule(ctx, hparams, state)` is pure `jnp` code traced into the jitted train
step. It gets the hyperparameters about to be applied (``{group: {name: value}}``), the
`StepContext` (traced step counters) and its own device pytree `state` (from `init_state`), and
returns new hyperparameters and new state. Numbers a user may retarget (peak LR, total steps)
belong in `state`, not in Python closures, so changing them never retraces the step.

*In-graph observation.* `observe(ctx, obs, state)` runs after the gradient step with an
`Observation` of that step (loss, metrics, and the global gradient / update norms a callback
lists in `observes`) and returns the new device state, which the next step's `rule` reads.
So a callback can react to the training loss or a gradient spike at the very next step with
no host sync (`SmoothedPlateau`, `GradNormGuard`).

Rules run in two passes each step: every *setter* (a callback listing the name in `sets`)
computes the base value, then every *modifier* (listing it in `scales`) multiplies it. At most
one setter per hyperparameter and group; two raise a `ValueError` naming both.

*Attributes vs device state* (the one rule to remember). A rule is traced once per fit, so
every Python value it reads (``self.factor``, a closure, a global) is frozen into the compiled
step at that moment: changing the attribute later from a hook does nothing, silently. Anything
that may change during a fit must be a field of the callback's device state, written from the
host with `trainer.update_callback_state(self, field=value)`; that changes the value without a
retrace. Attributes are for configuration fixed before the fit (which hyperparameter, unit).

A rule returns ``(hparams, state)`` with the same hyperparameter names and a state of the same
structure, shapes and dtypes as `init_state` gave; anything else raises a TypeError naming the
callback and what it returned. Write fields from the host only into a NamedTuple (or dict)
state; a bare-array state is fine for in-graph use but cannot be written by name.

*Host hooks.* Lightning names, each called as ``hook(trainer, state, ...)`` with device
arrays; `trainer` is a `contract.HostContext` (a `Trainer`, or `LRCallbacks` in a custom
loop): read its plan, counters, metrics and logger, and write only through its methods. A hook must not pull device values to the host except at its own decision points (a
plateau check at validation end), and writes decisions back with
`trainer.update_callback_state(self, ...)`, which keeps dtype and sharding (no retrace).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flax_lr_callbacks.contract import (HostContext, Observation, RunPlan,  # noqa: F401
                                        StepContext, hparam_key, parse_hparam_key)
from flax_lr_callbacks.hyperparams import Hyperparams
# The runners of the in-graph faces, importable from here as before.
from flax_lr_callbacks.rules import (NORMS, apply_rules, check_setters,  # noqa: F401
                                     observe_all, requested_norms)

__all__ = ["Callback", "HOST_HOOKS", "NORMS", "Observation", "RunPlan", "StepContext",
           "apply_rules", "check_setters", "hparam_key", "observe_all", "parse_hparam_key",
           "requested_norms"]

# Every host hook, called as ``hook(trainer, state, *args)``. Composites forward exactly these,
# and a test checks that this list names every ``on_*`` method of `Callback` plus `teardown`.
HOST_HOOKS = ("on_fit_start", "on_train_epoch_start", "on_train_batch_end", "on_log",
              "on_validation_end", "on_train_epoch_end", "on_fit_end", "teardown")


class Callback:
    """Base class. Override only what you need; every hook is a no-op by default.

    Attributes:
      sets: names of hyperparameters whose base value this callback's `rule` computes.
      scales: names of hyperparameters this callback's `rule` multiplies.
      groups: optimizer groups it targets (``None``: every group that has the name).
      observes_rejected: `observe` also sees the steps ``nan_policy="skip"`` rejects (not
        finite, update not applied; its update norm is 0). Default False: a rejected step
        leaves this callback's state as it was (``"stop"`` freezes every callback's state).
    """

    sets: tuple[str, ...] = ()
    scales: tuple[str, ...] = ()
    groups: tuple[str, ...] | None = None
    observes: tuple[str, ...] = ()
    observes_rejected: bool = False

    @property
    def has_rule(self) -> bool:
        """Whether this callback contributes in-graph code to the train step."""
        return type(self).rule is not Callback.rule

    @property
    def has_observe(self) -> bool:
        """Whether this callback reads the step's outcome in-graph (`observe`)."""
        return type(self).observe is not Callback.observe

    # ---- in-graph face -------------------------------------------------------------------
    def configure(self, hparams: Hyperparams) -> None:
        """Adapts to the optimizer before anything else (e.g. picks ``momentum`` or ``b1``).

        Called at fit start with the injected hyperparameters; may set `sets` / `scales` and
        raise a ValueError when the optimizer lacks what the callback needs.
        """

    def init_state(self, plan: RunPlan, hparams: Hyperparams) -> Any:
        """Device pytree carried through the train step; called at fit start.

        `plan` is a `RunPlan` (``steps_per_epoch``, ``total_steps``, ``max_epochs``).
        """
        return ()

    def rule(
        self, ctx: StepContext, hparams: Hyperparams, state: Any
    ) -> tuple[Hyperparams, Any]:
        """Pure in-graph update of the hyperparameters for step `ctx.step`."""
        return hparams, state

    def observe(self, ctx: StepContext, obs: Observation, state: Any) -> Any:
        """Pure in-graph update of this callback's state after step `ctx.step`'s update.

        `obs` has the step's loss and metrics, and the norms listed in `observes`. Returns the
        new state (same structure, shapes and dtypes); the next step's `rule` sees it.
        """
        return state

    def target_groups(self, hparams: Hyperparams, name: str) -> list[str]:
        """Groups in `hparams` that this callback writes `name` in."""
        selected: Iterable[str] = hparams if self.groups is None else self.groups
        return [g for g in selected if name in hparams.get(g, {})]

    def curve(self, num_steps: int, steps_per_epoch: int | None = None,
              hparams: dict[str, float] | None = None) -> dict[str, Any]:
        """Planned per-step values ``{hyperparam: np.ndarray}`` of this callback alone.

        `hparams` are the optimizer's base values the schedule may start from (default
        ``learning_rate=1.0, momentum=0.9``).
        """
        from flax_lr_callbacks.plan import planned_values

        return planned_values([self], num_steps, steps_per_epoch or num_steps, hparams)

    # ---- host face ------------------------------------------------------------------------
    def on_fit_start(self, trainer: HostContext, state: Any) -> None:
        """Called once before the first step (after `init_state`).

        When ``trainer.resuming``, `load_state_dict` has already restored this callback's host
        state and its device state is the checkpoint's: keep both, do not re-initialize.
        """

    def on_train_epoch_start(self, trainer: HostContext, state: Any) -> None:
        """Called before the first batch of each epoch."""

    def on_train_batch_end(self, trainer: HostContext, state: Any) -> None:
        """Called after each step is dispatched; `trainer.global_step` steps are done."""

    def on_log(self, trainer: HostContext, state: Any, history: dict[str, Any]) -> None:
        """Called at each log point with the per-step host values since the last one.

        `history` maps ``"step"`` and every recorded quantity (``"loss"``, ``"lr"``, ...) to a
        NumPy array with one entry per step of the window, fetched in one transfer.
        """

    def on_validation_end(self, trainer: HostContext, state: Any) -> None:
        """Called after validation; `trainer.callback_metrics` holds the fresh ``val_*``."""

    def on_train_epoch_end(self, trainer: HostContext, state: Any) -> None:
        """Called at the end of each epoch, after validation."""

    def on_fit_end(self, trainer: HostContext, state: Any) -> None:
        """Called once after the last step."""

    def teardown(self, trainer: HostContext, state: Any) -> None:
        """Called when a fit ends, also when it raised (release files, wait for writes)."""

    def state_dict(self) -> dict[str, Any]:
        """Host state to checkpoint, JSON-serializable (device state is saved by the
        Trainer). Overriding it makes the callback part of the checkpoint's callback list."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""

    def __repr__(self) -> str:
        return type(self).__name__
