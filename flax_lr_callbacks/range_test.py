"""The LR range test as compiled steps: chunks of sweep steps fused with `lax.scan`.

`Trainer.lr_find` calls `run`. The sweep trains a *copy* of the state (the caller's arrays are
never donated or changed), feeds the LR as a traced input (one compile for the whole sweep,
reused by later sweeps of the same shapes), and fetches each chunk's losses in one transfer to
apply the stop rule on the host.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from flax_lr_callbacks import finder
from flax_lr_callbacks import hyperparams as hp_lib

__all__ = ["run", "chunk_size"]


def chunk_size(num_steps: int, largest: int = 16) -> int:
    """Largest divisor of `num_steps` up to `largest`: every chunk has one compiled shape."""
    return max(k for k in range(1, min(largest, num_steps) + 1) if num_steps % k == 0)


def _chunk_fn(trainer: Any, groups: list[str]):
    def one_step(state, xs):
        lr, batch, key = xs
        values = {g: {"learning_rate": lr} for g in groups}
        state = state.replace(opt_state=hp_lib.set_hyperparams(state.opt_state, values))
        (loss, _), grads = jax.value_and_grad(trainer._loss, has_aux=True)(
            state.params, batch, key)
        return state.apply_gradients(grads=grads), loss

    def chunk(state, lrs, batches, keys):
        return jax.lax.scan(one_step, state, (lrs, batches, keys))

    return jax.jit(chunk, donate_argnums=0)


def _batches(trainer: Any, data: Any):
    """Batches of `data`, epoch after epoch (a sweep may be longer than one epoch)."""
    epoch = 0
    while True:
        produced = False
        for batch in trainer._epoch_batches(data, epoch):
            produced = True
            yield batch
        if not produced:
            raise ValueError("train_data yielded no batch")
        epoch += 1


def run(trainer: Any, state: Any, data: Any, *, min_lr: float, max_lr: float, num_steps: int,
        mode: str, smoothing: float, diverge_threshold: float, suggestion: str,
        progress: bool = True) -> finder.LRFinderResult:
    """Sweeps the LR over `num_steps` compiled training steps and returns the result."""
    lrs = finder.sweep_lrs(min_lr, max_lr, num_steps, mode)
    hp_lib.check_targets(state.opt_state, ["learning_rate"], owner="lr_find")
    groups = [g for g, d in hp_lib.get_hyperparams(state.opt_state).items()
              if "learning_rate" in d]
    state = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), state)
    k = chunk_size(num_steps)
    cache = trainer.__dict__.setdefault("_range_test_fns", {})
    key = (k, tuple(groups))
    if key not in cache:
        cache[key] = _chunk_fn(trainer, groups)
    chunk = cache[key]
    base_key = jax.random.fold_in(jax.random.PRNGKey(trainer.seed), 0x5EED)
    stream = _batches(trainer, data)
    shape = None
    losses: list[float] = []
    bar = tqdm(total=num_steps, desc="LR finder", unit="step", leave=False, disable=not progress)
    try:
        for start in range(0, num_steps, k):
            batch_list = []
            while len(batch_list) < k:
                batch = next(stream)
                this = jax.tree_util.tree_map(np.shape, batch)
                shape = this if shape is None else shape
                if this == shape:  # a smaller last batch would change the compiled shape
                    batch_list.append(batch)
            stacked = jax.tree_util.tree_map(lambda *xs: np.stack(xs), *batch_list)
            keys = jax.vmap(lambda i: jax.random.fold_in(base_key, i))(
                jnp.arange(start, start + k))
            state, chunk_losses = chunk(state, jnp.asarray(lrs[start:start + k], jnp.float32),
                                        stacked, keys)
            losses.extend(np.asarray(jax.device_get(chunk_losses), np.float64).tolist())
            bar.update(k)
            raw = np.asarray(losses)
            if finder.stop_index(raw, finder.smooth(raw, smoothing),
                                 diverge_threshold) is not None:
                break
    finally:
        bar.close()
    return finder.LRFinderResult.from_losses(
        lrs[:len(losses)], np.asarray(losses), smoothing=smoothing,
        diverge_threshold=diverge_threshold, method=suggestion)


def validate_args(min_lr: float, max_lr: float, num_steps: int, mode: str, smoothing: float,
                  diverge_threshold: float, suggestion: str) -> None:
    """Raises ValueError naming the first bad range-test argument."""
    for name, value in (("min_lr", min_lr), ("max_lr", max_lr)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
                math.isfinite(value) and value > 0):
            raise ValueError(f"{name} must be a finite number > 0, got {name}={value!r}")
    if max_lr <= min_lr:
        raise ValueError(f"max_lr must be > min_lr={min_lr}, got max_lr={max_lr}")
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 2:
        raise ValueError(f"num_steps must be an int >= 2, got num_steps={num_steps!r}")
    if mode not in ("exponential", "linear"):
        raise ValueError(f"mode must be one of ['exponential', 'linear'], got mode={mode!r}")
    if not (isinstance(smoothing, (int, float)) and 0 <= smoothing < 1):
        raise ValueError(f"smoothing must be in [0, 1), got smoothing={smoothing!r}")
    if not (isinstance(diverge_threshold, (int, float)) and diverge_threshold > 1):
        raise ValueError(f"diverge_threshold must be > 1, got diverge_threshold={diverge_threshold!r}")
    if suggestion not in finder.SUGGESTIONS:
        raise ValueError(f"suggestion must be one of {list(finder.SUGGESTIONS)}, "
                         f"got suggestion={suggestion!r}")
