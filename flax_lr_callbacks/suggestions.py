"""Where on a range-test curve to put the learning rate: every suggestion rule.

Each rule takes the sweep's LRs and (smoothed) losses, plus the planned sweep length, and
returns one LR or None (with a warning) when too few points remain. ``peak`` is this
library's default; ``valley``, ``slide``, ``minimum``, ``steep`` follow fastai and
``gradient``/``gradient_lr`` follow Lightning, each with that library's window. `suggest` runs
them all on the part of the curve before a dead network's tail (`useful_end`).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np

__all__ = [
    "DEFAULT_METHOD",
    "EDGE_DIVISOR",
    "SUGGESTIONS",
    "gradient",
    "gradient_lr",
    "minimum",
    "peak",
    "slide",
    "steep",
    "suggest",
    "useful_end",
    "valley",
]


def useful_end(smoothed: np.ndarray) -> int:
    """Length of the curve worth analysing: up to where the smoothed loss, after reaching its
    minimum, climbs back above its starting value.

    A diverged network can settle at a finite, chance-level loss below the stop threshold;
    without this cut, slope-based suggestions (fastai ``steep``, Lightning's gradient) land in
    that dead region, on the decay of the smoothed spike.
    """
    smoothed = np.asarray(smoothed, np.float64)
    finite = np.isfinite(smoothed)
    if not finite.any():
        return 0
    n = int(np.argmin(finite)) if not finite.all() else len(smoothed)
    if n == 0:
        return 0
    lowest = int(np.argmin(smoothed[:n]))
    above = np.nonzero(smoothed[lowest:n] > smoothed[0])[0]
    # Without a climb-back the whole record is kept, a non-finite last step included: each
    # suggestion's own window decides what to drop at the end (fastai's drops 5 points).
    return lowest + int(above[0]) if above.size else len(smoothed)


def _too_few(name: str, n: int, need: int) -> None:
    warnings.warn(f"LR finder: {name} suggestion needs at least {need} finite points after "
                  f"trimming, got {n}; returning None. Sweep more steps or a wider LR range.",
                  RuntimeWarning, stacklevel=3)


def _window(lrs, losses, num_steps: int | None = None):
    """fastai's window, then its NaN cut: drop the first ``num_steps // 10`` points (start-up
    noise; `num_steps` is the planned sweep length, default the recorded one) and the last 5
    (the blow-up), then everything from the first non-finite value on.

    The order matters on a sweep that ended in NaN: the 5 dropped points include the NaN step,
    as in fastai, so a NaN tail does not cost 5 more finite points.
    """
    lrs, losses = np.asarray(lrs, np.float64), np.asarray(losses, np.float64)
    n = len(losses)
    skip = (n if num_steps is None else num_steps) // 10
    lrs, losses = lrs[skip:max(n - 5, 0)], losses[skip:max(n - 5, 0)]
    return _finite(lrs, losses)


def _finite(lrs, losses):
    """Cut at the first non-finite value: what follows is meaningless."""
    lrs, losses = np.asarray(lrs, np.float64), np.asarray(losses, np.float64)
    keep = np.isfinite(losses)
    if not keep.all():
        cut = int(np.argmin(keep))
        lrs, losses = lrs[:cut], losses[:cut]
    return lrs, losses


def valley(lrs: np.ndarray, losses: np.ndarray, num_steps: int | None = None) -> float | None:
    """fastai's default: the longest strictly decreasing run of the curve, about 2/3 along it."""
    lrs, losses = _window(lrs, losses, num_steps)
    n = len(losses)
    if n < 3:
        _too_few("valley", n, 3)
        return None
    # longest decreasing subsequence ending at each point, and where the best one starts
    run = np.ones(n, int)
    end = 0
    for i in range(1, n):
        smaller = losses[i] < losses[:i]
        if smaller.any():
            run[i] = 1 + run[:i][smaller].max()
        if run[i] > run[end]:
            end = i
    # fastai's arithmetic (a run from index 0 "starts" at -1), but a curve that never falls
    # stays at its first point, where fastai's start is never set (0)
    start = end - run[end] if end > 0 else 0
    third = (end - start) / 3
    idx = start + int(third) + int(third / 2)
    return float(lrs[idx])


def slide(lrs: np.ndarray, losses: np.ndarray, num_steps: int | None = None, *,
          lr_diff: int = 15, thresh: float = 0.005, adjust_value: float = 1.0) -> float | None:
    """fastai's interval slide rule: walk left from the end until the loss gradient at two
    points `lr_diff` apart differs by at most `thresh`; suggest the left point's LR."""
    lrs, losses = _window(lrs, losses, num_steps)
    n = len(losses)
    if n <= lr_diff:
        _too_few("slide", n, lr_diff + 1)
        return None
    grad = np.gradient(losses)
    right, left = n - 1, n - 1 - lr_diff
    chosen = lrs[left]
    while left >= 0 and abs(grad[right] - grad[left]) > thresh:
        chosen = lrs[left]
        right, left = right - 1, left - 1
    return float(chosen) * adjust_value


def minimum(lrs: np.ndarray, losses: np.ndarray, num_steps: int | None = None) -> float | None:
    """fastai's ``minimum``: one tenth of the LR with the lowest loss."""
    lrs, losses = _window(lrs, losses, num_steps)
    if len(losses) < 1:
        _too_few("minimum", 0, 1)
        return None
    return float(lrs[int(np.argmin(losses))]) / 10.0


def steep(lrs: np.ndarray, losses: np.ndarray, num_steps: int | None = None) -> float | None:
    """fastai's ``steep``: the LR where the loss falls fastest per unit of log LR."""
    lrs, losses = _window(lrs, losses, num_steps)
    if len(losses) < 2:
        _too_few("steep", len(losses), 2)
        return None
    slopes = np.diff(losses) / np.diff(np.log(lrs))
    return float(lrs[int(np.argmin(slopes))])


EDGE_DIVISOR = 3.0


def peak(lrs: np.ndarray, losses: np.ndarray, num_steps: int | None = None) -> float | None:
    """This library's default: an LR for a schedule's *peak* (OneCycle's ``max_lr``).

    ``max(steepest, edge / 3)`` on the smoothed curve, where

    * ``steepest`` is the LR at which the smoothed loss falls fastest per sweep step
      (Lightning's rule): a good *constant* LR, and a floor for a peak;
    * ``edge`` is the LR at the smoothed loss's minimum: there the raw loss has climbed
      back to its running average, so training at ``edge`` is about to stop improving.

    Both are read from the first tenth of the planned sweep on (start-up noise) up to
    `useful_end` (a dead network's tail) or the first non-finite value; unlike fastai's
    window, the last 5 points are kept, since the smoothed minimum often sits there.

    Why this and not fastai's ``valley``: on the 9 workloads of
    ``benchmarks/finder_quality.py`` (SGD, momentum, Nesterov, Adam, AdamW, Lion; mean and
    summed losses; MLP, CNN, residual MLP with LayerNorm; batch 32-512; three data sets),
    ``valley`` landed 4x-40x below the best OneCycle peak of a half-decade grid, costing a
    median 4.2 points of test accuracy (worst 11.3). ``steepest`` alone was the best
    published rule (median regret 0.3 points) but falls a decade short when the raw loss
    spikes and recovers on the way up (SGD with momentum on the seed CNN: 0.005-0.007,
    where peaks of 0.1 reach 91.5%); the ``edge`` term lifts it there and nowhere else.
    The divisor 3 keeps the peak well inside the stable range: on the seed CNN (SGD with
    momentum, 10 epochs) the sweep's edge was 0.2-0.29, OneCycle peaks of 0.03, 0.1 and 0.3
    reached 90.7%, 91.5% and diverged; the suite's regret differs by under 0.4 points
    between divisors 3 and 6 (see the README for the regret table).

    No rule on a 100-step sweep sees an optimizer's noise floor: for sign-based Lion the
    sweep survives LRs 20x above the best peak, and every rule here, this one included,
    lands too high (regret about 2.5 points on the suite's Lion workload).
    """
    lrs, losses = np.asarray(lrs, np.float64), np.asarray(losses, np.float64)
    skip = (len(losses) if num_steps is None else num_steps) // 10
    lrs, losses = _finite(lrs[skip:], losses[skip:])
    if len(losses) < 3:
        _too_few("peak", len(losses), 3)
        return None
    steepest = float(lrs[int(np.argmin(np.gradient(losses)))])
    edge = float(lrs[int(np.argmin(losses))])
    return max(steepest, edge / EDGE_DIVISOR)


def _lightning_window(lrs, losses, skip_begin: int, skip_end: int):
    """Lightning's window: skip points at both ends, then keep the finite ones."""
    lrs, losses = np.asarray(lrs, np.float64), np.asarray(losses, np.float64)
    lrs, losses = lrs[skip_begin:len(lrs) - skip_end], losses[skip_begin:len(losses) - skip_end]
    keep = np.isfinite(losses)
    return lrs[keep], losses[keep]


def gradient(lrs: np.ndarray, losses: np.ndarray, num_steps: int | None = None, *,
             skip_begin: int = 10, skip_end: int = 1) -> float | None:
    """Lightning 2.0-2.5's suggestion: the steepest descent of the loss *per sweep step*
    (``np.gradient(losses)``), after skipping `skip_begin` points at the start and `skip_end`
    at the end. On an exponential sweep this equals steepest descent per log-LR."""
    lrs, losses = _lightning_window(lrs, losses, skip_begin, skip_end)
    if len(losses) < 2:
        _too_few("gradient", len(losses), 2)
        return None
    return float(lrs[int(np.argmin(np.gradient(losses)))])


def gradient_lr(lrs: np.ndarray, losses: np.ndarray, num_steps: int | None = None, *,
                skip_begin: int = 10, skip_end: int = 1) -> float | None:
    """Lightning 2.6's suggestion: the steepest descent of the loss *per unit of LR*
    (``torch.gradient(losses, spacing=[lrs])``), same window as `gradient`.

    On an exponential sweep, dividing by the LR step favours the smallest LRs of the window, so
    this usually lands far lower than `gradient`.
    """
    lrs, losses = _lightning_window(lrs, losses, skip_begin, skip_end)
    if len(losses) < 2:
        _too_few("gradient_lr", len(losses), 2)
        return None
    return float(lrs[int(np.argmin(np.gradient(losses, lrs)))])


SUGGESTIONS: dict[str, Callable[[np.ndarray, np.ndarray], float | None]] = {
    "peak": peak,
    "valley": valley,
    "slide": slide,
    "minimum": minimum,
    "steep": steep,
    "gradient": gradient,
    "gradient_lr": gradient_lr,
}
DEFAULT_METHOD = "peak"


def suggest(lrs: np.ndarray, smoothed: np.ndarray, num_steps: int | None = None,
            quiet: bool = False, warn_for: str | None = None) -> dict[str, float | None]:
    """Every suggestion on a (smoothed) loss curve, cut at `useful_end`.

    `num_steps` is the planned sweep length (fastai skips its first tenth); default: the
    recorded length. With `quiet`, "too few points" warnings are silenced except for the
    method `warn_for`.
    """
    end = useful_end(smoothed)
    lrs, smoothed = np.asarray(lrs)[:end], np.asarray(smoothed)[:end]
    out = {}
    for name, fn in SUGGESTIONS.items():
        with warnings.catch_warnings():
            if quiet and name != warn_for:
                warnings.simplefilter("ignore", RuntimeWarning)
            out[name] = fn(lrs, smoothed, num_steps)
    return out
