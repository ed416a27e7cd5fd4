"""What a fit does with a non-finite step, decided inside the jitted step at no host sync.

A step is *non-finite* when its loss, any gradient, or any hyperparameter it applied is NaN or
infinite (a schedule that returns NaN poisons the parameters with finite gradients, so the
applied values are checked too; they are scalars). The Trainer's ``nan_policy``:

* ``"stop"`` (default): the update of the first non-finite step is not applied, and nor is
  any later one: the carried train state and callback states stay those of the last finite
  step. The host learns of it at the next log point from the counters fetched with the metric
  records (no extra transfer) and raises `NonFiniteLossError` naming the step, epoch and batch,
  with that last finite state attached, before any hook of the step runs; a checkpoint due
  before the log point raises instead of saving.
* ``"skip"``: non-finite steps are not applied (the batch is used up and the schedules move
  on; parameters, optimizer and callback states keep their values), and counted: the count is
  reported as ``train/skipped_steps`` at log points, with one warning when the first is seen.
  ``train_loss`` averages the finite losses of the window. Like optax's `apply_if_finite`, but
  over the whole carried state (callback states too) and with nothing added to the optimizer.
* ``"ignore"``: no check (the step is as without this module); NaN propagates.

The check is one float32 sum over the loss, gradients and applied hyperparameters; the
optimizer update and the callbacks' `observe` then run under `lax.cond`, so a rejected step
costs nothing and an applied one is updated in place as before (a leafwise select would make
XLA copy the optimizer's buffers each step).

What it costs (`benchmarks/nan_check_cost.py`, 2-core CPU, 784-128-10 MLP, batch 128, SGD
with momentum, 0.55 ms per bare step): the sum reads every gradient once, +15 to +21 us per
step (six runs; a product with ones from the left costs the same, ``jnp.sum`` per leaf or
over the concatenated gradients about +33), and the conditional update takes the total to
about +28 us; a leafwise select instead costs +76 to +93 us. On a memory-bound step this small
that is about 5%; on the seed CNN it is well under 1%. ``"ignore"`` pays neither.

Fused calls (``Trainer(steps_per_dispatch=K)``) are optimistic instead: the K steps run
unchecked, each still computing whether it was finite, and only when one was not (or the run
had stopped) is the group run again from its input with the per-step check above
(`step.fused_steps`). So a fused call holds one extra copy of the train and callback states
while it runs, a group with a non-finite step costs two passes, and the compiled call holds
both scans; the result is the one single steps give.
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from flax_lr_callbacks.validation import check_choice

__all__ = ["NAN_POLICIES", "NonFinite", "NonFiniteLossError", "check_policy", "error",
           "decide", "initial", "skipped_message", "step_is_finite", "train_means",
           "window_metrics"]

NAN_POLICIES = ("stop", "skip", "ignore")
SKIPPED_KEY = "train/skipped_steps"


class NonFinite(NamedTuple):
    """Device counters carried in `TrainerState.nonfinite` (checkpointed with it)."""

    first_step: jax.Array  # int32: the first non-finite step of the run, -1 if none
    count: jax.Array  # int32: non-finite steps so far (their updates were not applied)


class NonFiniteLossError(FloatingPointError):
    """A fit with ``nan_policy="stop"`` met a non-finite loss, gradient or hyperparameter.

    Attributes:
      step: the first non-finite step (0-based, counted over the whole run).
      epoch, batch: where that step is (0-based epoch, batch within it).
      state: the train state after the last finite step (the update of `step` and of every
        later step was not applied), e.g. to save or to continue with a lower LR.
    """

    def __init__(self, message: str, *, step: int, epoch: int, batch: int, state: Any):
        super().__init__(message)
        self.step, self.epoch, self.batch, self.state = step, epoch, batch, state


def check_policy(nan_policy: Any) -> None:
    check_choice("nan_policy", nan_policy, NAN_POLICIES)


def initial() -> NonFinite:
    return NonFinite(first_step=jnp.int32(-1), count=jnp.int32(0))


def _leaf_sum(x: Any) -> jax.Array:
    """The float32 sum of one leaf (a complex leaf: of its real and imaginary parts).

    A real floating leaf of two or more dimensions is summed as a matrix-vector product with
    ones, then over the vector: XLA:CPU runs that as one vectorised library call, where a
    full ``jnp.sum`` is a slower reduction (see the module docstring for the cost). NaN and
    inf propagate through the product as through a sum."""
    if jnp.issubdtype(jnp.result_type(x), jnp.complexfloating):
        return _leaf_sum(jnp.real(x)) + _leaf_sum(jnp.imag(x))
    if jnp.size(x) == 0:
        return jnp.float32(0)
    if jnp.ndim(x) >= 2 and jnp.issubdtype(jnp.result_type(x), jnp.floating):
        rows = jnp.reshape(x, (-1, jnp.shape(x)[-1]))
        ones = jnp.ones((rows.shape[1],), rows.dtype)
        return jnp.sum(jnp.matmul(rows, ones, preferred_element_type=jnp.float32))
    return jnp.sum(x, dtype=jnp.float32)


def _total(tree: Any) -> jax.Array:
    """The float32 sum of every inexact leaf of `tree` (0 when none)."""
    sums = [_leaf_sum(x) for x in jax.tree_util.tree_leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return sum(sums, jnp.float32(0))


def step_is_finite(loss: Any, grads: Any, hparams: Any) -> jax.Array:
    """True when the loss, every gradient and every applied hyperparameter are finite.

    One float32 sum of everything: a NaN or inf anywhere makes it non-finite. (A sum of
    finite values could overflow to inf only above ~3e38, a step no one wants applied
    either.) Cheaper than a per-leaf ``isfinite().all()`` in our CPU measurements; matrices
    are summed through a product with ones (`_leaf_sum`).
    """
    return jnp.isfinite(jnp.sum(loss, dtype=jnp.float32) + _total(grads) + _total(hparams))


def decide(policy: str, counters: NonFinite, step: jax.Array, ok: jax.Array
           ) -> tuple[jax.Array, NonFinite]:
    """Whether step `step` may be applied, and the updated counters (in-graph).

    ``"stop"`` applies nothing from the first non-finite step on; ``"skip"`` drops only
    non-finite steps.
    """
    bad = ~ok
    first = jnp.where(bad & (counters.first_step < 0), step.astype(jnp.int32),
                      counters.first_step)
    apply = ok if policy == "skip" else ok & (counters.first_step < 0)
    return apply, NonFinite(first_step=first, count=counters.count + bad.astype(jnp.int32))


# ---------------------------------------------------------------------- host side
def error(trainer: Any, first_step: int, history: dict[str, Any] | None = None
          ) -> NonFiniteLossError:
    """The `NonFiniteLossError` for a run whose first non-finite step is `first_step`."""
    spe = trainer.steps_per_epoch
    epoch, batch = divmod(first_step, spe)
    detail = ""
    if history is not None and "loss" in history:
        steps, losses = np.asarray(history["step"]), np.asarray(history["loss"])
        at = np.nonzero(steps == first_step)[0]
        if at.size:
            i = int(at[0])
            lo = max(0, i - 3)
            recent = (f"losses of steps {int(steps[lo])}..{first_step}: "
                      + ", ".join(f"{v:.4g}" for v in losses[lo:i + 1]))
            why = ("the loss was finite, so a gradient or an applied hyperparameter (e.g. a "
                   "schedule's LR) was not; " if np.isfinite(losses[i]) else "")
            detail = f" ({why}{recent})"
    return NonFiniteLossError(
        f"non-finite training step {first_step} (epoch {epoch}, batch {batch}){detail}; "
        f"training stopped with the state from before that step (its update and any later "
        "one were not applied; that state is this error's .state). Lower the LR, "
        "clip gradients, or pass Trainer(nan_policy='skip') to skip such steps",
        step=first_step, epoch=epoch, batch=batch,
        state=trainer.trainer_state.train_state)


def train_means(history: dict[str, Any], policy: str) -> dict[str, float]:
    """``train_loss`` and ``train_<metric>`` means over a log window; under ``"skip"`` over
    the steps with a finite loss (NaN when there is none)."""
    keys = ["loss"] + [k for k in history if k.startswith("train_")]
    rows = np.isfinite(history["loss"]) if policy == "skip" else slice(None)
    return {("train_loss" if k == "loss" else k):
            float(history[k][rows].mean()) if np.size(history[k][rows]) else float("nan")
            for k in keys}


def skipped_message(skipped: int, step: int, history: dict[str, Any]) -> str:
    """The one warning of a ``"skip"`` run, at the first log point that sees a skipped step."""
    where = history["step"][~np.isfinite(history["loss"])]
    return (f"nan_policy='skip': {skipped} non-finite step(s) skipped by step {step}"
            + (f" (non-finite loss at steps {where[:5].tolist()})" if where.size else "")
            + "; their updates were not applied. train/skipped_steps counts them")


def window_metrics(trainer: Any, history: dict[str, Any], counters: Any, *, warned: bool
                   ) -> tuple[dict[str, float], bool]:
    """The train metrics of a log window under ``trainer.nan_policy``, from the records and
    the `NonFinite` counters fetched with them, and whether the fit has warned of skipped
    steps. Raises the `NonFiniteLossError` of a stopped run; under ``"skip"`` adds the skipped
    count, with one warning (unless `warned`) when the first skipped step is seen."""
    policy = trainer.nan_policy
    if policy == "stop" and counters.first_step >= 0:
        raise error(trainer, int(counters.first_step), history)
    train = train_means(history, policy)
    if policy == "skip":
        skipped = int(counters.count)
        train[SKIPPED_KEY] = float(skipped)
        if skipped and not warned:
            warned = True
            end = int(history["step"][-1]) + 1
            warnings.warn(skipped_message(skipped, end, history), RuntimeWarning, stacklevel=4)
    return train, warned


def raise_if_stopped(trainer: Any) -> None:
    """Raises `NonFiniteLossError` when ``nan_policy="stop"`` has stopped the run's updates
    (checkpoint writes call it: the save fetches the state anyway)."""
    if getattr(trainer, "nan_policy", None) == "stop" and trainer.trainer_state is not None:
        first = int(jax.device_get(trainer.trainer_state.nonfinite.first_step))
        if first >= 0:
            raise error(trainer, first)
