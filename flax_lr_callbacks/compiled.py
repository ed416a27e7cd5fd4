"""The Trainer's compiled pieces: the jitted train / fused / eval steps, built once, and the
carried `TrainerState` of a fresh fit.

Everything that changes during a fit is a traced argument of these functions, so each
compiles once per input shape; the trace counters let tests check that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from flax_lr_callbacks import nan_policy as nan_lib
from flax_lr_callbacks import step as step_lib
from flax_lr_callbacks.data.source import validation_batches
from flax_lr_callbacks.lr_state import LRState
from flax_lr_callbacks.step import TrainerState

__all__ = ["CompiledSteps"]


class CompiledSteps:
    """One trainer's jitted steps over `callbacks` (the list object is shared, not copied)."""

    def __init__(self, loss: step_lib.LossFn, callbacks: Sequence[Any], *, buffer_size: int,
                 eval_fn: Callable[[Any, Any], dict[str, Any]] | None, placement: Any,
                 nan_policy: str = "stop"):
        self.loss, self.callbacks, self.buffer_size = loss, callbacks, buffer_size
        self.nan_policy = nan_policy
        self.eval_fn, self.placement = eval_fn, placement
        self.num_step_traces = 0  # times the train step was traced (== compiles per shape)
        self.num_fused_traces = 0
        self._buffer_layouts: dict[Any, tuple[str, ...]] = {}
        self.record_keys: tuple[str, ...] = ()  # the buffer's columns in the running fit
        sharding = placement.state_sharding()
        self.train = jax.jit(self._step, donate_argnums=0, out_shardings=sharding)
        self.fused = jax.jit(self._fused, donate_argnums=0, out_shardings=sharding)
        self.eval = jax.jit(self._eval_batch)

    def _step(self, ts: TrainerState, batch: Any) -> TrainerState:
        self.num_step_traces += 1  # Python side effect: runs only when tracing
        return step_lib.train_step(ts, batch, loss=self.loss, callbacks=self.callbacks,
                                   buffer_size=self.buffer_size, nan_policy=self.nan_policy)

    def _fused(self, ts: TrainerState, batches: Any) -> TrainerState:
        """K steps; `batches` is a tuple of K batches (read by index inside the scan, not
        stacked)."""
        self.num_fused_traces += 1
        return step_lib.fused_steps(ts, batches, loss=self.loss, callbacks=self.callbacks,
                                    buffer_size=self.buffer_size, nan_policy=self.nan_policy)

    def _eval_batch(self, state: Any, batch: Any) -> dict[str, jax.Array]:
        return step_lib.eval_sums(state, batch, loss=self.loss, eval_fn=self.eval_fn)

    def validate(self, state: Any, val_data: Any) -> dict[str, float]:
        """``{"val_loss": ..., "val_<metric>": ...}`` averaged over all examples of
        `val_data`; batch sums stay on device and are fetched once at the end."""
        totals = None
        for batch in validation_batches(val_data):
            sums = self.eval(state, self.placement.put_batch(batch, strict=False))
            totals = sums if totals is None else jax.tree_util.tree_map(jnp.add, totals, sums)
        if totals is None:
            raise ValueError("val_data yielded no batch")
        totals = jax.device_get(totals)
        count = float(totals.pop("_count"))
        return {f"val_{k}": float(v) / count for k, v in totals.items()}

    def fetch_window(self, ts: TrainerState, start: int, end: int) -> tuple[dict[str, Any], Any]:
        """The records of steps ``start..end-1`` (``{"step": ..., <record key>: column}``) and
        the NaN-policy counters, in one device-to-host transfer."""
        buffer, nonfinite = jax.device_get((ts.buffer, ts.nonfinite))
        rows = buffer[np.arange(start, end) % self.buffer_size]
        history = {"step": np.arange(start, end)}
        history.update({k: rows[:, i] for i, k in enumerate(self.record_keys)})
        return history, nonfinite

    def initial_state(self, state: Any, lr_state: LRState, *, seed: int,
                      first_batch: Any) -> TrainerState:
        """The carried pytree for a fresh fit (copies `state`: the caller's survives)."""
        # The step donates its whole input, so nothing in it may alias the caller's arrays
        # (or another leaf of the input): copy the state (the LR state's values are fresh).
        state = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), state)
        ts = TrainerState(train_state=state, lr_state=lr_state, key=jax.random.PRNGKey(seed),
                          buffer=jnp.zeros((self.buffer_size, 0), jnp.float32),
                          nonfinite=nan_lib.initial())
        ts = ts._replace(buffer=self._empty_buffer(ts, first_batch))
        # Commit everything to one explicit placement. jit keys its cache on committedness
        # and sharding, so a host write (device_put with the field's sharding) into an
        # uncommitted field would compile a second executable without retracing.
        return jax.device_put(ts, self.placement.state_sharding())

    def _empty_buffer(self, ts: TrainerState, batch: Any) -> jax.Array:
        """The zeroed record buffer; its columns (`record_keys`) are found once per input
        structure (tracing the loss for them costs tens of ms, a visible share of a short
        fit)."""
        leaves, treedef = jax.tree_util.tree_flatten((ts, batch))
        key = (treedef, tuple((np.shape(x), str(getattr(x, "dtype", type(x)))) for x in leaves))
        if key not in self._buffer_layouts:
            self._buffer_layouts[key] = step_lib.record_keys(
                ts, batch, loss=self.loss, callbacks=self.callbacks)
        self.record_keys = self._buffer_layouts[key]
        return step_lib.empty_buffer(len(self.record_keys), self.buffer_size)
