"""The Trainer's constructor settings, checked once (errors name the argument, the value and
what is allowed) and returned as plain Python values under the Trainer's attribute names."""

from __future__ import annotations

from typing import Any

from flax_lr_callbacks import nan_policy as nan_lib
from flax_lr_callbacks.validation import check_bool, check_callable, check_count, check_str

__all__ = ["checked_settings"]


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
