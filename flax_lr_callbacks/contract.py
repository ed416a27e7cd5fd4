"""The host-side callback contract, typed: what a hook may read and the calls it may make.

Host hooks receive the object running the fit: a `Trainer`, or `LRCallbacks` in a
hand-written loop. Both satisfy `HostContext`, and nothing else of theirs is part of the
contract. Callbacks that stay within it run under both.

* `RunPlan` (frozen): the run's shape, fixed at fit start (`Callback.init_state` gets it).
* `StepContext` and `Observation`: what the in-graph faces (`rule`, `observe`) read.
* `Progress`: every host counter of the running fit, in one object that checkpoints save and
  restore as a whole.
* `HostContext`: the read-only view (`plan`, `progress`, counters, metrics, logger) and the
  three writes (device state, a base hyperparameter, a stop request).

This module imports nothing from the package, so any module may depend on it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax

__all__ = ["RunPlan", "StepContext", "Observation", "Progress", "HostContext",
           "hparam_key", "parse_hparam_key", "progress_property"]


def hparam_key(group: str, name: str) -> str:
    """Key of an applied hyperparameter in the per-step records: ``"hp/<group>/<name>"``."""
    return f"hp/{group}/{name}"


def parse_hparam_key(key: str) -> tuple[str, str] | None:
    """``"hp/<group>/<name>"`` -> ``(group, name)``; any other record key -> None."""
    if not key.startswith("hp/"):
        return None
    group, _, name = key[3:].rpartition("/")
    return group, name


class RunPlan(NamedTuple):
    """What a callback may know about the run before it starts (`init_state` gets it).

    Attributes:
      steps_per_epoch: batches per epoch.
      total_steps: steps the fit plans to run.
      max_epochs: planned epochs (0 when not known, e.g. in `preview` of a partial run).
      validates: whether the fit runs validation (``val_*`` metrics appear at epoch ends):
        True/False under `Trainer.fit`; None when not known (the drop-in `LRCallbacks`,
        whose loop may or may not call ``validation_end``).
    """

    steps_per_epoch: int
    total_steps: int
    max_epochs: int = 0
    validates: bool | None = None


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


class Observation(NamedTuple):
    """What `Callback.observe` sees after a step's gradient update (all traced).

    Attributes:
      loss: the step's training loss (float32 scalar).
      metrics: the loss function's metrics, ``{name: scalar}``.
      grad_norm: global L2 norm of the gradients, or None unless a callback lists
        ``"grad_norm"`` in `observes`.
      update_norm: global L2 norm of the parameter change of this step, or None unless a
        callback lists ``"update_norm"`` in `observes`.
    """

    loss: jax.Array
    metrics: dict[str, jax.Array]
    grad_norm: jax.Array | None = None
    update_norm: jax.Array | None = None


@dataclasses.dataclass
class Progress:
    """Host counters of a running fit. Checkpoints save `as_dict()` and restore with `load`.

    Attributes:
      global_step: steps done in this run (resumes continue it).
      current_epoch: 0-based epoch being trained.
      batch_in_epoch: batches of the current epoch done (the data position).
      start_step: `global_step` when this fit started (> 0 when resuming).
      window_start: first step not yet handed to `on_log`.
      should_stop: a hook asked the fit to stop after the current step.
      resuming: this fit continues from a checkpoint.
      resumed_from: that checkpoint's step directory.
    """

    global_step: int = 0
    current_epoch: int = 0
    batch_in_epoch: int = 0
    start_step: int = 0
    window_start: int = 0
    should_stop: bool = False
    resuming: bool = False
    resumed_from: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def load(self, values: dict[str, Any]) -> None:
        """Sets the fields named in `values` (unknown names raise a KeyError)."""
        for name, value in values.items():
            if name not in self.__dataclass_fields__:
                raise KeyError(f"Progress has no field {name!r}")
            setattr(self, name, value)


def progress_property(name: str) -> property:
    """An attribute that reads and writes ``self.progress.<name>`` (the classic trainer
    attribute names stay, with one place that holds the values)."""
    def get(self: Any) -> Any:
        return getattr(self.progress, name)

    def set_(self: Any, value: Any) -> None:
        setattr(self.progress, name, value)

    return property(get, set_, doc=f"``progress.{name}``.")


@runtime_checkable
class HostContext(Protocol):
    """What a host hook may use of the object running the fit (`Trainer`, `LRCallbacks`).

    Reads: `plan`, `progress` and its counters under their classic names, the metrics
    (``train_loss``, ``val_*``, what callbacks put there) and the logger (None in a custom
    loop). Writes: only through the three methods, which keep dtype and sharding (no retrace).
    """

    callbacks: list[Any]
    callback_metrics: dict[str, float]
    logger: Any
    progress: Progress

    @property
    def plan(self) -> RunPlan: ...

    @property
    def global_step(self) -> int: ...

    @property
    def current_epoch(self) -> int: ...

    @property
    def resuming(self) -> bool: ...

    @property
    def steps_per_epoch(self) -> int: ...

    @property
    def total_steps(self) -> int: ...

    def callback_state(self, callback: Any) -> Any:
        """The device state of `callback` (also one nested in a composite)."""

    def update_callback_state(self, callback: Any, **values: Any) -> None:
        """Writes host values into named fields of `callback`'s device state."""

    def set_base_hyperparam(self, name: str, value: float, group: str | None = None) -> None:
        """Sets the base value of an injected hyperparameter (the value rules start from)."""

    def request_stop(self) -> None:
        """Asks the fit to stop after the current step (Lightning's ``should_stop = True``)."""
