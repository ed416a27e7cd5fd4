"""The LR range test's algorithm: sweep values, smoothing, stop rule, suggestions, result.

Pure NumPy on host values, usable without a Trainer (the Trainer's `lr_find` runs the sweep
as compiled steps and hands the per-step losses to these functions).

References:
  Smith, "Cyclical Learning Rates for Training Neural Networks", 2015 (arXiv:1506.01186).
  Smith, "A disciplined approach to neural network hyper-parameters: Part 1", 2018.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Literal

import numpy as np

from flax_lr_callbacks.suggestions import (  # noqa: F401  (re-exported: finder.SUGGESTIONS, ...)
    DEFAULT_METHOD, EDGE_DIVISOR, SUGGESTIONS, gradient, gradient_lr, minimum, peak, slide,
    steep, suggest, useful_end, valley)

__all__ = [
    "LRFinderResult",
    "peak",
    "SUGGESTIONS",
    "sweep_lrs",
    "smooth",
    "stop_index",
    "suggest",
    "useful_end",
    "valley",
    "slide",
    "minimum",
    "steep",
    "gradient",
    "gradient_lr",
    "DEFAULT_METHOD",
    "EDGE_DIVISOR",
]

Mode = Literal["exponential", "linear"]


def sweep_lrs(min_lr: float, max_lr: float, num_steps: int, mode: Mode = "exponential"):
    """The LR of each sweep step: exactly `min_lr` first and `max_lr` last.

    Exponential: ``min * (max / min) ** (i / (n - 1))``; linear: evenly spaced.
    """
    if not 0 < min_lr < max_lr:
        raise ValueError(f"need 0 < min_lr < max_lr, got min_lr={min_lr}, max_lr={max_lr}")
    if not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"num_steps must be an int >= 2, got {num_steps=}")
    if mode == "exponential":
        return np.geomspace(min_lr, max_lr, num_steps)
    if mode == "linear":
        return np.linspace(min_lr, max_lr, num_steps)
    raise ValueError(f"mode must be one of ['exponential', 'linear'], got {mode=}")


def smooth(losses: np.ndarray, beta: float = 0.98) -> np.ndarray:
    """Bias-corrected exponential moving average (as in Adam's first moment).

    ``avg_i = beta * avg_{i-1} + (1 - beta) * loss_i``, reported as ``avg_i / (1 - beta**(i+1))``
    so early values are not dragged towards zero. ``beta=0`` returns the raw losses.
    """
    losses = np.asarray(losses, np.float64)
    out = np.empty_like(losses)
    avg = 0.0
    for i, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        out[i] = avg / (1 - beta ** (i + 1)) if beta > 0 else loss
    return out


def stop_index(losses: np.ndarray, smoothed: np.ndarray, diverge_threshold: float) -> int | None:
    """Index of the step that ends the sweep, or None if it ran to the end.

    The sweep stops at the first non-finite loss (that step is dropped) or at the first step
    whose smoothed loss exceeds ``diverge_threshold * best smoothed loss so far`` (kept, so the
    blow-up shows in the plot). Written sign-safe, as ``best + (diverge_threshold - 1) *
    |best|``: the same for a positive loss (fastai's and Lightning's rule), and a negative
    loss (a log-likelihood with an offset) does not stop the sweep at its second step.
    """
    best = np.inf
    for i, (raw, s) in enumerate(zip(losses, smoothed)):
        if not (np.isfinite(raw) and np.isfinite(s)):
            return i
        if i > 0 and s > best + (diverge_threshold - 1) * abs(best):
            return i
        best = min(best, s)
    return None


@dataclasses.dataclass(frozen=True)
class LRFinderResult:
    """What a range test measured and suggests.

    Attributes:
      lrs: LR of each completed sweep step.
      losses: raw training loss of each step.
      smoothed_losses: bias-corrected EMA of `losses`.
      method: the suggestion method chosen (`DEFAULT_METHOD`, ``"peak"``, by default).
      suggestion: the chosen method's LR (None if it had too few points).
      suggestions: every method's LR: peak (ours), valley, slide, minimum, steep (fastai),
        gradient (Lightning 2.0-2.5), gradient_lr (Lightning 2.6).
      stopped_at: index of the step that stopped the sweep (divergence or non-finite loss;
        that step is the last one recorded), or None if the sweep ran to `max_lr`.
      num_steps: the planned sweep length (None: the recorded length).
      seconds: wall time of the sweep, compile included (set by `Trainer.lr_find`).
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed_losses: np.ndarray
    method: str
    suggestion: float | None
    suggestions: dict[str, float | None]
    stopped_at: int | None = None
    num_steps: int | None = None
    seconds: float | None = None

    @classmethod
    def from_losses(cls, lrs: np.ndarray, losses: np.ndarray, *, smoothing: float = 0.98,
                    diverge_threshold: float = 4.0, method: str = DEFAULT_METHOD,
                    num_steps: int | None = None) -> LRFinderResult:
        """Applies smoothing and the stop rule to a sweep, then every suggestion.

        `num_steps` is the planned sweep length when `losses` stopped early (fastai's window
        skips a tenth of the planned steps); default ``len(losses)``.
        """
        if method not in SUGGESTIONS:
            raise ValueError(f"suggestion must be one of {list(SUGGESTIONS)}, got {method!r}")
        lrs, losses = np.asarray(lrs, np.float64), np.asarray(losses, np.float64)
        smoothed = smooth(losses, smoothing)
        stop = stop_index(losses, smoothed, diverge_threshold)
        if stop is not None:  # the stopping step stays, a non-finite one too (as in fastai)
            lrs, losses, smoothed = lrs[:stop + 1], losses[:stop + 1], smoothed[:stop + 1]
        everything = suggest(lrs, smoothed, num_steps, quiet=True, warn_for=method)
        return cls(lrs=lrs, losses=losses, smoothed_losses=smoothed, method=method,
                   suggestion=everything[method], suggestions=everything, stopped_at=stop,
                   num_steps=num_steps)

    def loss_at(self, lr: float) -> float:
        """Smoothed loss at the sweep step closest to `lr` (in log space)."""
        idx = int(np.argmin(np.abs(np.log(self.lrs) - np.log(lr))))
        return float(self.smoothed_losses[idx])

    def plot(self, path: str | os.PathLike | None = None, ax: Any = None) -> Any:
        """Draws smoothed (and raw) loss against LR on a log axis, suggestions marked.

        Returns the matplotlib figure. Saves a PNG when `path` is given; draws into `ax`
        when one is given.
        """
        from flax_lr_callbacks import plotting

        if ax is None:
            fig, ax = plotting.new_figure(figsize=(7, 4))
        else:
            fig = ax.figure
        ax.plot(self.lrs, self.losses, color="0.8", lw=1, label="loss")
        ax.plot(self.lrs, self.smoothed_losses, color="C0", lw=2, label="smoothed loss")
        symbols = "osv^Dph*"
        for i, (name, lr) in enumerate(self.suggestions.items()):
            if lr is None:
                continue
            chosen = name == self.method
            style = dict(ms=11, mew=2) if chosen else dict(ms=9, mfc="none", mew=2)
            ax.plot([lr], [self.loss_at(lr)], symbols[i % len(symbols)], color=f"C{1 + i}",
                    label=f"{name}: {lr:.2e}" + (" (chosen)" if chosen else ""), **style)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("training loss")
        ax.set_title("LR range test")
        smoothed = self.smoothed_losses[np.isfinite(self.smoothed_losses)]
        raw = self.losses[np.isfinite(self.losses)]
        if smoothed.size:
            # Show every raw dip, but cut the divergence spike so the valley stays readable.
            low = min(smoothed.min(), raw.min())
            top = min(smoothed.max(), 2.0 * smoothed[0] if smoothed[0] > 0 else smoothed.max())
            ax.set_ylim(low - 0.05 * abs(low), top * 1.05)
        ax.legend(fontsize=8)
        if path is not None:
            plotting.save(fig, path)
        return fig
