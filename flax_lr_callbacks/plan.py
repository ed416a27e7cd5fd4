"""The planned per-step hyperparameters of a run: computed (`rule_values`), checked at fit
start (`check_plan`), and previewed before any training (`preview`, `planned_values`)."""

from __future__ import annotations

import functools
import os
import warnings
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from flax_lr_callbacks.callbacks.peak import waiting_for_peak
from flax_lr_callbacks.contract import RunPlan, StepContext
from flax_lr_callbacks.rules import apply_rules
from flax_lr_callbacks.lr_state import init_rule_state

if TYPE_CHECKING:  # only for annotations: Callback.curve imports this module
    from flax_lr_callbacks.callbacks.base import Callback

__all__ = ["preview", "planned_values", "check_plan", "rule_values", "LIMITS"]


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def rule_values(callbacks: tuple, base: Any, states: tuple, total_steps: int,
                steps_per_epoch: int) -> Any:
    """The rules' values at steps ``0..total_steps-1`` (one compile per callback list and
    plan: a second fit with the same callbacks reuses it)."""
    def body(states, step):
        ctx = StepContext(step=step, epoch=step // steps_per_epoch,
                          steps_per_epoch=jnp.int32(steps_per_epoch),
                          total_steps=jnp.int32(total_steps))
        values, states = apply_rules(callbacks, ctx, base, states)
        return states, values

    return jax.lax.scan(body, states, jnp.arange(total_steps, dtype=jnp.int32))[1]


# Checked over the plan at fit start (`check_plan`): non-finite or negative values are always
# wrong, and these bounds are far past any working value.
LIMITS = {"learning_rate": 1e3, "momentum": 1.0, "b1": 1.0, "b2": 1.0}


def check_plan(callbacks: Sequence[Callback], base: Any, states: tuple, plan: RunPlan) -> None:
    """Raises ValueError at the first planned step whose value of a scheduled hyperparameter
    is non-finite, negative or past `LIMITS`, naming the callbacks that set it.

    Runs the rules once over the whole plan, host side, before the first train step (plateau
    and other host decisions only scale the planned values down, so they cannot make a good
    plan bad). Callbacks still waiting for an LR finder are checked once it sets their peak.
    """
    if not plan.total_steps or waiting_for_peak(callbacks):
        return
    values = jax.device_get(rule_values(tuple(callbacks), base, states, plan.total_steps,
                                        plan.steps_per_epoch))
    for group, names in values.items():
        for name, series in names.items():
            series = np.asarray(series, np.float64)
            limit = LIMITS.get(name, np.inf)
            bad = ~np.isfinite(series) | (series < 0) | (series > limit)
            if not bad.any():
                continue
            step = int(np.argmax(bad))
            setters = [repr(c) for c in callbacks if name in getattr(c, "sets", ())]
            allowed = f"finite, >= 0 and <= {limit:g}" if np.isfinite(limit) else \
                "finite and >= 0"
            raise ValueError(
                f"{' and '.join(setters) or 'the callbacks'} plan {name}={float(series[step])!r} "
                f"for group {group!r} at step {step} (epoch {step // plan.steps_per_epoch}) "
                f"of this run's {plan.total_steps}; planned values must be {allowed}. Check "
                "the schedule (preview() draws it); an optax schedule evaluated past its "
                "end can give NaN (e.g. polynomial_schedule with a power below 1)")


DEFAULT_BASE = {"learning_rate": 1.0, "momentum": 0.9}


def _base_hparams(hparams: Mapping[str, Any] | None) -> dict[str, dict[str, jax.Array]]:
    hparams = DEFAULT_BASE if hparams is None else hparams
    if hparams and all(isinstance(v, Mapping) for v in hparams.values()):
        groups = hparams  # already {group: {name: value}}
    else:
        groups = {"default": hparams}
    return {g: {n: jnp.float32(v) for n, v in d.items()} for g, d in groups.items()}


def planned_values(callbacks: Sequence[Callback], total_steps: int, steps_per_epoch: int,
                   hparams: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Runs the callbacks' rules for steps ``0..total_steps-1`` exactly as the Trainer would.

    Returns ``{name: values}`` for a single group, ``{"name/group": values}`` for several.
    Raises the same configuration errors a fit would (e.g. a schedule shorter than the run).
    """
    if total_steps < 1 or steps_per_epoch < 1:
        raise ValueError(f"need total_steps >= 1 and steps_per_epoch >= 1, got "
                         f"{total_steps=}, {steps_per_epoch=}")
    waiting = waiting_for_peak(callbacks)
    if waiting:
        warnings.warn(
            f"preview: {', '.join(map(repr, waiting))} take their peak from an LRFinder, which "
            "only runs in a fit; drawn with a placeholder peak of 1.0 (values are fractions "
            "of the peak the finder will set)", UserWarning, stacklevel=2)
    for cb in waiting:
        cb._peak_from_finder = 1.0
    try:
        return _planned(callbacks, total_steps, steps_per_epoch, hparams)
    finally:
        for cb in waiting:
            cb._peak_from_finder = None


def _callback_list(callbacks: Any) -> list[Any]:
    """A list of callbacks from a list or one callback (checked by what preview calls)."""
    def is_callback(x):
        return all(hasattr(x, a) for a in ("configure", "init_state", "rule"))

    if is_callback(callbacks):
        return [callbacks]
    if isinstance(callbacks, (str, bytes, dict)) or not hasattr(callbacks, "__iter__"):
        raise TypeError(f"callbacks must be a list of callbacks, got callbacks={callbacks!r}")
    callbacks = list(callbacks)
    for i, cb in enumerate(callbacks):
        if not is_callback(cb) or isinstance(cb, type):
            raise TypeError(f"callbacks[{i}] must be a Callback instance, got {cb!r}")
    return callbacks


def _planned(callbacks, total_steps, steps_per_epoch, hparams):
    base = _base_hparams(hparams)
    plan = RunPlan(steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                   max_epochs=-(-total_steps // steps_per_epoch))
    base, states = init_rule_state(callbacks, None, plan, base=base)
    values = jax.device_get(rule_values(tuple(callbacks), base, states, total_steps,
                                        steps_per_epoch))
    several = len(values) > 1
    return {(f"{n}/{g}" if several else n): np.asarray(v)
            for g, d in values.items() for n, v in d.items()}


def preview(callbacks: Sequence[Callback], steps_per_epoch: int, max_epochs: int,
            path: str | os.PathLike | None = None, *, max_steps: int | None = None,
            hparams: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
    """Planned per-step values of every scheduled hyperparameter, optionally drawn to a PNG.

    Fails fast, before any compile of a train step, when a schedule's length disagrees with the
    planned run (PyTorch OneCycleLR's "Tried to step N times" surfaces only mid-training).

    Args:
      callbacks: the callbacks you will give the Trainer.
      steps_per_epoch: batches per epoch.
      max_epochs: planned epochs.
      path: where to save a PNG (LR panel, plus a momentum panel when one is scheduled).
      max_steps: optional cap, as in `Trainer`.
      hparams: the optimizer's base values (``{"learning_rate": 0.1, ...}`` or per group);
        default ``learning_rate=1.0, momentum=0.9``, so relative schedules show as fractions.

    Example:
      >>> from flax_lr_callbacks import OneCycle, preview
      >>> curves = preview([OneCycle(max_lr=0.1)], steps_per_epoch=100, max_epochs=3)
      >>> curves["learning_rate"].shape
      (300,)
    """
    from flax_lr_callbacks.validation import check_count

    callbacks = _callback_list(callbacks)
    steps_per_epoch = check_count("steps_per_epoch", steps_per_epoch)
    max_epochs = check_count("max_epochs", max_epochs)
    max_steps = check_count("max_steps", max_steps, allow_none=True)
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a file path or None, got path={path!r}")
    if hparams is not None and not isinstance(hparams, Mapping):
        raise TypeError(f"hparams must be a mapping such as {{'learning_rate': 0.1}}, got "
                        f"hparams={hparams!r}")
    total = steps_per_epoch * max_epochs
    if max_steps is not None:
        total = min(total, max_steps)
    values = planned_values(callbacks, total, steps_per_epoch, hparams)
    if path is not None:
        plot_values(values, path, steps_per_epoch=steps_per_epoch)
    return values


def plot_values(values: Mapping[str, np.ndarray], path: str | os.PathLike,
                steps_per_epoch: int | None = None) -> None:
    """Draws LR (top) and momentum-like values (bottom) against the step into a PNG."""
    from flax_lr_callbacks import plotting

    lr_keys = [k for k in values if k.split("/")[0] == "learning_rate"]
    other = [k for k in values if k.split("/")[0] in ("momentum", "b1")]
    panels = [lr_keys] + ([other] if other else [])
    fig, axes = plotting.new_figure(len(panels), 1, figsize=(7, 2.6 * len(panels)), sharex=True)
    axes = np.asarray(axes).reshape(len(panels), 1)
    for ax, keys in zip(axes[:, 0], panels):
        for k in keys:
            ax.plot(np.arange(len(values[k])), values[k], label=k)
        ax.set_ylabel("learning rate" if keys is lr_keys else "momentum")
        ax.legend(loc="best", fontsize=8)
        if steps_per_epoch:
            for e in range(steps_per_epoch, len(values[keys[0]]), steps_per_epoch):
                ax.axvline(e, color="0.85", lw=0.6, zorder=0)
    axes[-1, 0].set_xlabel("step")
    plotting.save(fig, path)
