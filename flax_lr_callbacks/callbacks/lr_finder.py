"""LRFinder: run the LR range test at fit start and hand the suggestion to the schedule."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any, Literal

import numpy as np

from flax_lr_callbacks.callbacks.peak import (PeakFromFinder, overwrites_base, takes_lr_peak,
                                              waiting_for_peak)
from flax_lr_callbacks.callbacks.base import Callback
from flax_lr_callbacks.finder import DEFAULT_METHOD, LRFinderResult

__all__ = ["LRFinder"]

log = logging.getLogger("flax_lr_callbacks")


class LRFinder(Callback):
    """Runs `Trainer.lr_find` before training and uses its suggestion as the peak LR.

    At fit start it sweeps the LR on a copy of the state (training starts from the untouched
    state), logs the plot to the logger (``lr_finder`` figure, ``lr_finder/suggestion``
    scalar), saves a PNG, and hands the suggestion to the schedule that follows it in the
    callback list: `OneCycle(max_lr=None)`, `CyclicLR`'s max, `CosineRestarts`' base,
    `Warmup`/`Sequential` (forwarded inside), `LRSchedule` (rescaled so its peak equals the
    suggestion). With no such schedule it sets the optimizer's base learning rate. None of this
    recompiles the train step, and the LR monitor logs the LR actually applied afterwards.

    Args:
      min_lr, max_lr, num_steps, mode, smoothing, diverge_threshold, suggestion: as
        `Trainer.lr_find` (defaults 1e-7, 10, 100, "exponential", 0.98, 4.0, "peak").
        ``"peak"`` (`finder.peak`) is calibrated for a OneCycle peak; the fastai
        (``valley``, ``slide``, ``minimum``, ``steep``) and Lightning (``gradient``,
        ``gradient_lr``) rules are there by name.
      apply_to: the callback that receives the suggestion; default: the first one after this
        callback that sets the learning rate and takes a peak (a schedule of momentum or
        weight decay is passed over).
      plot_path: PNG path; ``"auto"`` (default) writes ``lr_finder.png`` into the logger's
        folder when there is one; None writes nothing.

    Example:
      >>> from flax_lr_callbacks import OneCycle
      >>> callbacks = [LRFinder(num_steps=100), OneCycle(max_lr=None)]

    References:
      Smith, "Cyclical Learning Rates for Training Neural Networks", 2015.
    """

    def __init__(self, min_lr: float = 1e-7, max_lr: float = 10.0, num_steps: int = 100,
                 mode: Literal["exponential", "linear"] = "exponential",
                 smoothing: float = 0.98, diverge_threshold: float = 4.0,
                 suggestion: str = DEFAULT_METHOD, *, apply_to: Callback | None = None,
                 plot_path: str | os.PathLike | None = "auto"):
        from flax_lr_callbacks.lr_sweep import validate_args

        self.kwargs = validate_args(min_lr, max_lr, num_steps, mode, smoothing,
                                    diverge_threshold, suggestion)
        if apply_to is not None and not takes_lr_peak(apply_to):
            raise TypeError(f"apply_to must be a callback that sets the learning rate and takes "
                            f"a peak (has set_peak), got {apply_to!r}")
        if plot_path is not None and not isinstance(plot_path, (str, os.PathLike)):
            raise TypeError(f"plot_path must be a path, 'auto' or None, got {plot_path=!r}")
        self.apply_to = apply_to
        self.plot_path = plot_path
        self.result: LRFinderResult | None = None
        self.applied_lr: float | None = None

    def _target(self, trainer: Any) -> Callback | None:
        if self.apply_to is not None:
            return self.apply_to
        i = trainer.callbacks.index(self)
        target = next((c for c in trainer.callbacks[i + 1:] if takes_lr_peak(c)), None)
        before = [c for c in trainer.callbacks[:i] if overwrites_base(c, "learning_rate")]
        if target is None and before:
            raise ValueError(f"LRFinder comes after {before[0]!r}, the schedule its suggestion "
                             "is for; put LRFinder() before it in callbacks")
        return target

    def on_fit_start(self, trainer: Any, state: Any) -> None:
        if getattr(trainer, "resuming", False) and self.result is not None:
            return  # the result and the peak it set were restored from the checkpoint
        target = self._target(trainer)  # a misplaced finder fails before its sweep
        self.result = trainer.lr_find(state, trainer.train_data, **self.kwargs)
        lr = self.result.suggestion
        self._save_plot(trainer)
        if lr is None:
            r = self.result
            why = (f"the {r.method!r} suggestion had too few points: the sweep recorded "
                   f"{len(r.lrs)} of {self.kwargs['num_steps']} steps"
                   + (f" and stopped at step {r.stopped_at} (divergence)"
                      if r.stopped_at is not None else ""))
            if target is not None and waiting_for_peak([target]):
                raise ValueError(
                    f"LRFinder found no learning rate for {target!r}: {why}. Sweep more steps "
                    "(num_steps) or a wider range (min_lr, max_lr), or give the schedule its "
                    "peak explicitly")
            warnings.warn(f"LRFinder: no suggestion ({why}); "
                          + ("the schedule keeps its own peak." if target is not None else
                             "the optimizer keeps its learning rate."),
                          RuntimeWarning, stacklevel=2)
            return
        if target is not None:
            given = getattr(target, target.peak_arg) if isinstance(target, PeakFromFinder) else None
            if given is not None:
                warnings.warn(f"LRFinder: {target!r} has its peak given ({given:g}); the "
                              f"suggestion {lr:.3g} replaces it in this fit (pass None to let "
                              "the finder choose without this warning)", UserWarning,
                              stacklevel=2)
            target.set_peak(trainer, lr)
            from flax_lr_callbacks.plan import check_plan

            carried = trainer.lr_state  # the schedule's plan is known now: check it
            check_plan(trainer.callbacks, carried.base_hparams, carried.callback_states,
                       trainer.plan)
        else:
            trainer.set_base_hyperparam("learning_rate", lr)
        self.applied_lr = lr
        log.info("LRFinder: %s suggestion %.3g applied to %s (swept %d steps in %.1f s)",
                 self.result.method, lr,
                 target if target is not None else "the optimizer's learning_rate",
                 len(self.result.lrs), self.result.seconds or 0.0)

    def _save_plot(self, trainer: Any) -> None:
        """The PNG (the figure and scalar went to the logger in `Trainer.lr_find`)."""
        path = self.plot_path
        if path == "auto":
            folder = getattr(trainer.logger, "log_dir", None)
            path = Path(folder) / "lr_finder.png" if folder else None
        if path is not None:
            self.result.plot(path=path)

    def state_dict(self) -> dict[str, Any]:
        if self.result is None:
            return {}
        r = self.result
        return {"lrs": r.lrs.tolist(), "losses": r.losses.tolist(), "applied_lr": self.applied_lr,
                "method": r.method, "num_steps": r.num_steps,
                "smoothing": self.kwargs["smoothing"],
                "diverge_threshold": self.kwargs["diverge_threshold"]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        self.result = LRFinderResult.from_losses(
            np.asarray(state_dict["lrs"]), np.asarray(state_dict["losses"]),
            smoothing=state_dict["smoothing"], diverge_threshold=state_dict["diverge_threshold"],
            method=state_dict["method"], num_steps=state_dict.get("num_steps"))
        # ``result.seconds`` stays None: the sweep ran in the process that wrote the checkpoint
        self.applied_lr = state_dict["applied_lr"]

    def __repr__(self) -> str:
        return f"LRFinder(suggestion={self.kwargs['suggestion']!r})"
