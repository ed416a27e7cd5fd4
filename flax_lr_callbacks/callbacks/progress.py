"""ProgressBar: a tqdm bar with epoch, step, loss and LR, refreshed at log points only."""

from __future__ import annotations

from typing import Any

from tqdm.auto import tqdm

from flax_lr_callbacks.callbacks.base import Callback, parse_hparam_key
from flax_lr_callbacks.validation import check_bool

__all__ = ["ProgressBar"]


class ProgressBar(Callback):
    """Shows training progress. Added by default; ``Trainer(enable_progress_bar=False)`` drops it.

    It advances only at log points (it reads the values the Trainer fetched there anyway), so it
    adds no host sync to the step loop.

    Args:
      leave: keep the finished bar on screen.
    """

    def __init__(self, *, leave: bool = True):
        self.leave = check_bool("leave", leave)
        self._bar = None
        self._postfix: dict[str, str] = {}

    def on_fit_start(self, trainer: Any, state: Any) -> None:
        self._bar = tqdm(total=trainer.total_steps, initial=trainer.global_step,
                         leave=self.leave, unit="step", dynamic_ncols=True,
                         desc=self._epoch(trainer))

    @staticmethod
    def _epoch(trainer: Any) -> str:
        return f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs_planned}"

    def on_train_epoch_start(self, trainer: Any, state: Any) -> None:
        # drawn with the next update, at a log point: a redraw of its own at every epoch
        # start cost more than the bar's other work together on a small model
        self._bar.set_description(self._epoch(trainer), refresh=False)

    def on_log(self, trainer: Any, state: Any, history: dict[str, Any]) -> None:
        postfix = self._postfix
        postfix["loss"] = f"{history['loss'][-1]:.4g}"
        for key, values in history.items():
            parsed = parse_hparam_key(key)
            if parsed and parsed[1] == "learning_rate":
                postfix["lr" if parsed[0] == "default" else f"lr/{parsed[0]}"] = f"{values[-1]:.3g}"
        self._bar.set_postfix(postfix, refresh=False)
        # to the window's last step: after a resume the first window can start before the
        # step the bar started at (a checkpoint between two log points)
        self._bar.update(int(history["step"][-1]) + 1 - self._bar.n)

    def on_validation_end(self, trainer: Any, state: Any) -> None:
        self._postfix.update({k: f"{v:.4g}" for k, v in trainer.callback_metrics.items()
                              if k.startswith("val_")})
        self._bar.set_postfix(self._postfix)

    def teardown(self, trainer: Any, state: Any) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
