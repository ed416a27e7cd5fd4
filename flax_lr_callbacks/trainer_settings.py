"""The Trainer's settings: the constructor's, checked once (errors name the argument, the
value and what is allowed) and returned as plain Python values under the Trainer's attribute
names; `fit`'s arguments; and the `RunPlan` a fit derives from them and its data."""

from __future__ import annotations

import math
from typing import Any

from flax_lr_callbacks import nan_policy as nan_lib
from flax_lr_callbacks.contract import RunPlan
from flax_lr_callbacks.validation import check_bool, check_callable, check_count, check_str

__all__ = ["checked_settings", "check_fit_args", "run_plan"]


def checked_settings(*, max_epochs: Any, max_steps: Any, steps_per_epoch: Any,
                     log_every_n_steps: Any, seed: Any, eval_fn: Any, enable_progress_bar: Any,
                     data_axis: Any, steps_per_dispatch: Any, nan_policy: Any) -> dict[str, Any]:
    if max_epochs is None and max_steps is None:
        raise ValueError("give max_epochs or max_steps (both are None)")
    nan_lib.check_policy(nan_policy)
    out = dict(
        max_epochs=check_count("max_epochs", max_epochs, allow_none=True),
        max_steps=check_count("max_steps", max_steps, allow_none=True),
        steps_per_epoch_arg=check_count("steps_per_epoch", steps_per_epoch, allow_none=True),
        log_every_n_steps=check_count("log_every_n_steps", log_every_n_steps),
        steps_per_dispatch=check_count("steps_per_dispatch", steps_per_dispatch),
        seed=check_count("seed", seed, low=0),
        eval_fn=check_callable("eval_fn", eval_fn, allow_none=True,
                               hint=" (params, batch) -> {name: scalar}"),
        enable_progress_bar=check_bool("enable_progress_bar", enable_progress_bar),
        data_axis=check_str("data_axis", data_axis),
        nan_policy=nan_policy)
    if out["log_every_n_steps"] % out["steps_per_dispatch"]:
        raise ValueError(
            f"log_every_n_steps={log_every_n_steps} must be a multiple of "
            f"steps_per_dispatch={steps_per_dispatch} (the record buffer is fetched between "
            "dispatches)")
    return out


def check_fit_args(resume_from: Any, allow_changed_settings: bool) -> None:
    if allow_changed_settings and resume_from is None:
        raise ValueError("allow_changed_settings=True only applies when resuming; pass "
                         "resume_from=... as well, or drop it")


def run_plan(source: Any, *, steps_per_epoch: int | None, max_epochs: int | None,
             max_steps: int | None, validates: bool) -> RunPlan:
    """The fit's plan over `source` (a `DataSource`): batches per epoch (the argument, or one
    pass), epochs (`max_epochs`, or enough for `max_steps`) and total steps; the data is
    checked against it."""
    spe = source.plan(steps_per_epoch)
    epochs = max_epochs if max_epochs is not None else math.ceil(max_steps / spe)
    total = epochs * spe if max_steps is None else min(epochs * spe, max_steps)
    source.check(total, epochs)
    return RunPlan(spe, total, epochs, validates=validates)
