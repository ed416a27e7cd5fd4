"""What a logger's HParams entry holds for a fit: settings as separate fields, effective values.

`run_config(trainer)` reads only public attributes: the run plan, the seed, the optimizer's
injected base values and each callback's constructor settings (the attribute of the same name,
or the LR finder's sweep arguments). Where a fit changes a setting, the value that was in
effect is recorded: the peak an `LRFinder` set on ``OneCycle(max_lr=None)``, the finder's
suggestion, the plateau's final LR scale and number of reductions. ``learning_rate`` is the
effective peak of the LR schedule (else the optimizer's value); ``optimizer/<name>`` keeps the
optimizer's base value. `final_metrics(trainer)` are the metrics runs are compared by.
"""

from __future__ import annotations

import inspect
from typing import Any

import jax
import numpy as np

__all__ = ["run_config", "final_metrics", "settings"]

_SKIP = ("ProgressBar",)  # display only; nothing about the run
_MAX_STR = 120


def _value(v: Any) -> int | float | str | bool:
    if isinstance(v, (bool, int, float, str)):
        return v
    if v is None:
        return "None"
    if callable(v) and hasattr(v, "__name__"):
        return v.__name__
    text = str(v)
    return text if len(text) <= _MAX_STR else text[:_MAX_STR - 3] + "..."


def _settings(cb: Any) -> dict[str, Any]:
    """The constructor settings of `cb` (children of composites are listed separately)."""
    from flax_lr_callbacks.callbacks.base import Callback

    out = {}
    extra = getattr(cb, "kwargs", None)
    extra = extra if isinstance(extra, dict) else {}
    for name, p in inspect.signature(type(cb).__init__).parameters.items():
        if name == "self" or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        if hasattr(cb, name):
            v = getattr(cb, name)
        elif name in extra:
            v = extra[name]
        else:
            continue
        if isinstance(v, Callback) or (isinstance(v, (list, tuple)) and v
                                      and all(isinstance(c, Callback) for c in v)):
            continue
        out[name] = v
    return out


def _effective(cb: Any) -> dict[str, Any]:
    """Values the fit settled that the constructor left open."""
    from flax_lr_callbacks.callbacks.peak import PeakFromFinder
    from flax_lr_callbacks.callbacks.lr_finder import LRFinder
    from flax_lr_callbacks.callbacks.early_stopping import EarlyStopping
    from flax_lr_callbacks.callbacks.plateau import ReduceLROnPlateau

    out: dict[str, Any] = {}
    if isinstance(cb, PeakFromFinder) and cb.peak() is not None:
        out[cb.peak_arg] = float(cb.peak())
    if isinstance(cb, LRFinder):
        result = cb.result
        out["suggestion"] = None if result is None else result.suggestion
        out["applied_lr"] = cb.applied_lr
    if isinstance(cb, ReduceLROnPlateau):
        out["final_scale"] = float(cb.state.scale)
        out["num_reductions"] = len(cb.reductions)
    if isinstance(cb, EarlyStopping):
        out["stopped_epoch"] = cb.stopped_epoch
    return out


def _peak_lr(callbacks: Any) -> float | None:
    """The LR schedule's effective peak: the first schedule on ``learning_rate`` with one."""
    from flax_lr_callbacks.callbacks.peak import PeakFromFinder

    for cb in callbacks:
        if (isinstance(cb, PeakFromFinder) and getattr(cb, "hyperparam", "learning_rate")
                == "learning_rate" and cb.peak() is not None):
            return float(cb.peak())
        found = _peak_lr(getattr(cb, "children", ()))
        if found is not None:
            return found
    return None


def _add_callback(config: dict[str, Any], prefix: str, cb: Any, effective: bool) -> None:
    for name, v in {**_settings(cb), **(_effective(cb) if effective else {})}.items():
        config[f"{prefix}/{name}"] = _value(v)
    seen: dict[str, int] = {}
    for child in getattr(cb, "children", ()):
        name = type(child).__name__
        seen[name] = seen.get(name, -1) + 1
        _add_callback(config, f"{prefix}/{name}" + (f"_{seen[name]}" if seen[name] else ""),
                      child, effective)


def _add_callbacks(config: dict[str, Any], callbacks: Any, effective: bool) -> None:
    seen: dict[str, int] = {}
    for cb in callbacks:
        name = type(cb).__name__
        if name in _SKIP:
            continue
        seen[name] = seen.get(name, -1) + 1
        _add_callback(config, name + (f"_{seen[name]}" if seen[name] else ""), cb, effective)


def _plan(trainer: Any) -> dict[str, Any]:
    return {
        "max_epochs": trainer.max_epochs_planned, "total_steps": trainer.total_steps,
        "steps_per_epoch": trainer.steps_per_epoch,
        "log_every_n_steps": trainer.log_every_n_steps,
        "steps_per_dispatch": getattr(trainer, "steps_per_dispatch", 1), "seed": trainer.seed,
    } | ({"nan_policy": trainer.nan_policy} if hasattr(trainer, "nan_policy") else {})


def settings(trainer: Any, callbacks: Any) -> dict[str, int | float | str | bool]:
    """The settings a resumed fit is compared by (`checkpointing`): the run plan and seed,
    and the constructor settings of `callbacks`, named as in `run_config`; no values the fit
    settled (a finder's suggestion), which a checkpoint restores instead."""
    config = _plan(trainer)
    _add_callbacks(config, callbacks, effective=False)
    return config


def run_config(trainer: Any) -> dict[str, int | float | str | bool]:
    """The HParams entry for `trainer`'s latest fit: flat ``{field: scalar}``.

    Fields: ``max_epochs``, ``total_steps``, ``steps_per_epoch``, ``log_every_n_steps``,
    ``steps_per_dispatch``, ``seed``, ``nan_policy``; ``optimizer/<name>`` (``optimizer/<group>/<name>`` with
    several groups) for each injected base value; ``learning_rate``, the effective peak LR;
    and ``<Callback>/<setting>`` for each callback (``<Callback>_1/...`` for a second one of a
    type, ``<Composite>/<Child>/...`` inside composites).

    Example:
      >>> config = run_config(trainer)  # doctest: +SKIP
      >>> config["OneCycle/max_lr"], config["LRFinder/suggestion"]  # doctest: +SKIP
    """
    from flax_lr_callbacks.hyperparams import DEFAULT_GROUP

    config: dict[str, Any] = _plan(trainer)
    base = {}
    if getattr(trainer, "trainer_state", None) is not None:
        base = jax.device_get(trainer.lr_state.base_hparams)
    for g, names in base.items():
        for n, v in names.items():
            # the shortest decimal that is this float32 (0.1, not 0.10000000149011612)
            config[f"optimizer/{n}" if g == DEFAULT_GROUP else f"optimizer/{g}/{n}"] = float(
                str(np.float32(v)))
    peak = _peak_lr(trainer.callbacks)
    if peak is None:
        peak = config.get("optimizer/learning_rate")
    if peak is not None:
        config["learning_rate"] = peak
    _add_callbacks(config, trainer.callbacks, effective=True)
    return config


def final_metrics(trainer: Any) -> dict[str, float]:
    """The metrics an HParams entry is compared by: the last validation (``val_*``), or the
    last ``train_loss`` when the fit had no validation data."""
    metrics = trainer.callback_metrics
    val = {k: float(v) for k, v in metrics.items() if k.startswith("val_")}
    if val:
        return val
    return {k: float(metrics[k]) for k in ("train_loss",) if k in metrics}
