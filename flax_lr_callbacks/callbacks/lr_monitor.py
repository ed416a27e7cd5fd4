"""LearningRateMonitor: logs the hyperparameters applied at every step."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from flax_lr_callbacks.callbacks.base import Callback, hparam_key, parse_hparam_key
from flax_lr_callbacks.loggers.base import log_series
from flax_lr_callbacks.validation import check_bool

__all__ = ["LearningRateMonitor"]

_MOMENTUM_NAMES = ("momentum", "b1")


class LearningRateMonitor(Callback):
    """Logs the learning rate (and momentum or Adam's ``b1``, and weight decay) applied at each
    step.

    The value logged for step t is the one the optimizer used at step t (after every schedule
    and modifier), with t the 0-based step of the fit. Values are recorded on device inside the
    train step and written at log points, so the monitor adds no per-step host transfer.

    Tags: ``lr``, ``momentum`` (or ``b1``) and ``weight_decay`` (when the optimizer injects
    it, e.g. ``injectable(optax.adamw, ...)``) for a single optimizer group; ``lr/<group>``,
    ``momentum/<group>``, ``weight_decay/<group>`` when there are several
    (`optax.multi_transform` labels). Each step's values reach the logger in one
    `log_metrics` call (or, for loggers with `log_series` such as TensorBoard, a whole log
    window in one call). They are also kept in `history` (``{tag: (steps, values)}``) for
    plotting without a logger.

    Differences from Lightning's monitor: it reads the value actually applied in the jitted
    step (Lightning reads the scheduler before the step), and ``logging_interval="epoch"``
    logs the value at the first step of each epoch.

    Args:
      logging_interval: ``"step"`` (default) or ``"epoch"``.
      log_momentum: also log ``momentum`` / ``b1`` where the optimizer has it. Default True.
      log_weight_decay: also log ``weight_decay`` where the optimizer injects it. Default True
        (Lightning's default is False; here it costs nothing unless injected).

    Example:
      >>> monitor = LearningRateMonitor(logging_interval="step")
    """

    def __init__(self, logging_interval: Literal["step", "epoch"] = "step", *,
                 log_momentum: bool = True, log_weight_decay: bool = True):
        if logging_interval not in ("step", "epoch"):
            raise ValueError(
                f"logging_interval must be one of ['step', 'epoch'], got {logging_interval=}"
            )
        self.logging_interval = logging_interval
        self.log_momentum = check_bool("log_momentum", log_momentum)
        self.log_weight_decay = check_bool("log_weight_decay", log_weight_decay)
        self.history: dict[str, tuple[list[int], list[float]]] = {}
        self._keys: list[str] | None = None  # record keys seen last, and their tags
        self._tag_of: dict[str, str] = {}

    def on_fit_start(self, trainer: Any, state: Any) -> None:
        self.history, self._keys = {}, None

    def _tags(self, keys: list[str]) -> dict[str, str]:
        """Record key -> tag for the hyperparameters worth logging."""
        groups: dict[str, set[str]] = {}
        for key in keys:
            parsed = parse_hparam_key(key)
            if parsed:
                groups.setdefault(parsed[0], set()).add(parsed[1])
        several = len([g for g, names in groups.items() if "learning_rate" in names]) > 1
        tags = {}
        for group, names in groups.items():
            suffix = f"/{group}" if several else ""
            if "learning_rate" in names:
                tags[hparam_key(group, "learning_rate")] = "lr" + suffix
            if self.log_momentum:
                for name in _MOMENTUM_NAMES:
                    if name in names:
                        tags[hparam_key(group, name)] = name + suffix
                        break
            if self.log_weight_decay and "weight_decay" in names:
                tags[hparam_key(group, "weight_decay")] = "weight_decay" + suffix
        return tags

    def on_log(self, trainer: Any, state: Any, history: dict[str, Any]) -> None:
        steps = np.asarray(history["step"])
        if self.logging_interval == "epoch":
            keep = steps % trainer.steps_per_epoch == 0
            history = {k: np.asarray(v)[keep] for k, v in history.items()}
            steps = history["step"]
        keys = list(history)
        if keys != self._keys:  # the record layout is fixed within a fit
            self._keys, self._tag_of = keys, self._tags(keys)
        columns = {tag: history[key] for key, tag in self._tag_of.items()}
        step_list = steps.tolist()
        for tag, values in columns.items():
            logged_steps, logged = self.history.setdefault(tag, ([], []))
            logged_steps.extend(step_list)
            logged.extend(np.asarray(values, np.float64).tolist())
        if trainer.logger is not None and columns and len(steps):
            log_series(trainer.logger, columns, steps)
