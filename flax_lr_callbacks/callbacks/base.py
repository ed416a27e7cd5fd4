"""The callback protocol: host hooks plus an optional in-graph rule with device state.

A callback has up to two faces.

*In-graph rule.* `rule(ctx, hparams, state)` is pure `jnp` code traced into the jitted train
step. It gets the hyperparameters about to be applied (``{group: {name: value}}``), the
`StepContext` (traced step counters) and its own device pytree `state` (from `init_state`), and
returns new hyperparameters and new state. Numbers a user may retarget (peak LR, total steps)
belong in `state`, not in Python closures, so changing them never retraces the step.

Rules run in two passes each step: every *setter* (a callback listing the name in `sets`)
computes the base value, then every *modifier* (listing it in `scales`) multiplies it. At most
one setter per hyperparameter and group; two raise a `ValueError` naming both.

*Host hooks.* Lightning names, each called as ``hook(trainer, state, ...)`` with device
arrays. A hook must not pull device values to the host except at its own decision points (a
plateau check at validation end), and writes decisions back with
`trainer.update_callback_state(self, ...)`, which keeps dtype and sharding (no retrace).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import jax

from flax_lr_callbacks.hyperparams import Hyperparams

__all__ = ["Callback", "RunPlan", "StepContext", "apply_rules", "check_setters",
           "hparam_key", "parse_hparam_key"]


def hparam_key(group: str, name: str) -> str:
    """Key of an applied hyperparameter in the per-step records: ``"hp/<group>/<name>"``."""
    return f"hp/{group}/{name}"


def parse_hparam_key(key: str) -> tuple[str, str] | None:
    """``"hp/<group>/<name>"`` -> ``(group, name)``; any other record key -> None."""
    if not key.startswith("hp/"):
        return None
    group, _, name = key[3:].rpartition("/")
    return group, name


class StepContext(NamedTuple):
    """Traced counters a rule may read. All are int32 scalars inside the step.

    Attributes:
      step: 0-based step of this fit (the clock schedules read; resumes restore it).
      epoch: ``step // steps_per_epoch``.
      steps_per_epoch: batches per epoch.
      total_steps: steps the fit plans to run (``max_epochs * steps_per_epoch``, or
        ``max_steps`` when that is smaller).
    """

    step: jax.Array
    epoch: jax.Array
    steps_per_epoch: jax.Array
    total_steps: jax.Array


class RunPlan(NamedTuple):
    """What a callback may know about the run before it starts (the Trainer has these too)."""

    steps_per_epoch: int
    total_steps: int


class Callback:
    """Base class. Override only what you need; every hook is a no-op by default.

    Attributes:
      sets: names of hyperparameters whose base value this callback's `rule` computes.
      scales: names of hyperparameters this callback's `rule` multiplies.
      groups: optimizer groups it targets (``None``: every group that has the name).
    """

    sets: tuple[str, ...] = ()
    scales: tuple[str, ...] = ()
    groups: tuple[str, ...] | None = None

    @property
    def has_rule(self) -> bool:
        """Whether this callback contributes in-graph code to the train step."""
        return type(self).rule is not Callback.rule

    # ---- in-graph face -------------------------------------------------------------------
    def configure(self, hparams: Hyperparams) -> None:
        """Adapts to the optimizer before anything else (e.g. picks ``momentum`` or ``b1``).

        Called at fit start with the injected hyperparameters; may set `sets` / `scales` and
        raise a ValueError when the optimizer lacks what the callback needs.
        """

    def init_state(self, plan: RunPlan, hparams: Hyperparams) -> Any:
        """Device pytree carried through the train step; called at fit start.

        `plan` has ``steps_per_epoch`` and ``total_steps`` (the Trainer itself is passed).
        """
        return ()

    def rule(
        self, ctx: StepContext, hparams: Hyperparams, state: Any
    ) -> tuple[Hyperparams, Any]:
        """Pure in-graph update of the hyperparameters for step `ctx.step`."""
        return hparams, state

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
        from flax_lr_callbacks.preview import planned_values

        return planned_values([self], num_steps, steps_per_epoch or num_steps, hparams)

    # ---- host face ------------------------------------------------------------------------
    def on_fit_start(self, trainer: Any, state: Any) -> None:
        """Called once before the first step (after `init_state`).

        When ``trainer.resuming``, `load_state_dict` has already restored this callback's host
        state and its device state is the checkpoint's: keep both, do not re-initialize.
        """

    def on_train_epoch_start(self, trainer: Any, state: Any) -> None:
        """Called before the first batch of each epoch."""

    def on_train_batch_end(self, trainer: Any, state: Any) -> None:
        """Called after each step is dispatched; `trainer.global_step` steps are done."""

    def on_log(self, trainer: Any, state: Any, history: dict[str, Any]) -> None:
        """Called at each log point with the per-step host values since the last one.

        `history` maps ``"step"`` and every recorded quantity (``"loss"``, ``"lr"``, ...) to a
        NumPy array with one entry per step of the window, fetched in one transfer.
        """

    def on_validation_end(self, trainer: Any, state: Any) -> None:
        """Called after validation; `trainer.callback_metrics` holds the fresh ``val_*``."""

    def on_train_epoch_end(self, trainer: Any, state: Any) -> None:
        """Called at the end of each epoch, after validation."""

    def on_fit_end(self, trainer: Any, state: Any) -> None:
        """Called once after the last step."""

    def teardown(self, trainer: Any, state: Any) -> None:
        """Called when a fit ends, also when it raised (release files, wait for writes)."""

    def state_dict(self) -> dict[str, Any]:
        """Host state to checkpoint, JSON-serializable (device state is saved by the
        Trainer). Overriding it makes the callback part of the checkpoint's callback list."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores what `state_dict` returned."""

    def __repr__(self) -> str:
        return type(self).__name__


def rule_order(callbacks: Sequence[Callback]) -> list[int]:
    """Indices of callbacks with a rule: plain ones, then setters, then modifiers."""
    with_rule = [i for i, c in enumerate(callbacks) if c.has_rule]
    setters = [i for i in with_rule if callbacks[i].sets]
    modifiers = [i for i in with_rule if callbacks[i].scales and i not in setters]
    others = [i for i in with_rule if i not in setters and i not in modifiers]
    return others + setters + modifiers


def check_setters(callbacks: Sequence[Callback], hparams: Hyperparams) -> None:
    """Raises ValueError when two callbacks set the same hyperparameter in the same group."""
    owners: dict[tuple[str, str], Callback] = {}
    for cb in callbacks:
        for name in cb.sets:
            for g in cb.target_groups(hparams, name):
                other = owners.setdefault((g, name), cb)
                if other is not cb:
                    raise ValueError(
                        f"{other!r} and {cb!r} both set {name!r} (group {g!r}); keep one, "
                        "or combine them with Sequential / Warmup"
                    )


def apply_rules(callbacks: Sequence[Callback], ctx: StepContext, hparams: Hyperparams,
                states: Sequence[Any]) -> tuple[Hyperparams, tuple]:
    """Runs every callback's rule for one step; returns the hyperparameters and new states.

    `hparams` is not modified (rules get a copy). Pure: usable inside any jitted step.
    """
    hparams = {g: dict(v) for g, v in hparams.items()}
    states = list(states)
    for i in rule_order(callbacks):
        hparams, states[i] = callbacks[i].rule(ctx, hparams, states[i])
    return hparams, tuple(states)
