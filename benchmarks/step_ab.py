"""Interleaved A/B of the compiled train step alone (issue 17, part (a)), for changes inside it.

    python benchmarks/step_ab.py [--rounds 300] [--block 100] [--k 10]

Each variant is called in a tight loop on the MLP 784-128-10 (batch 128) with the user-style
callbacks; short blocks alternate over many rounds, and ratios are medians of per-round
ratios (robust to other jobs on the machine). Variants:

- ``check`` / ``old check`` / ``no check``: the step with the default ``nan_policy="stop"``,
  the same with the gradient check written as the full ``jnp.sum`` reductions used before
  issue 17, and with ``nan_policy="ignore"``;
- ``fused numpy`` / ``fused device`` / ``fused old stack``: `steps_per_dispatch=K` calls
  (per step) with the K batches as host numpy arrays (what the Trainer passes), as device
  arrays, and with the batches stacked inside the call as before issue 17.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from common import MODELS, loss_fn_for, synthetic
from flax.training.train_state import TrainState

from flax_lr_callbacks import (LearningRateMonitor, OneCycle, ReduceLROnPlateau, RunPlan,
                               Trainer, injectable)
from flax_lr_callbacks import nan_policy as nan_lib
from flax_lr_callbacks import step as step_lib


@contextlib.contextmanager
def old_check():
    """The check as full reductions (before issue 17), while a step is traced."""
    def total(tree):
        sums = [jnp.sum(x, dtype=jnp.float32) for x in jax.tree_util.tree_leaves(tree)
                if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
        return sum(sums, jnp.float32(0))

    real, nan_lib._total = nan_lib._total, total
    try:
        yield
    finally:
        nan_lib._total = real


@contextlib.contextmanager
def old_stack():
    """Fused steps that stack the K batches inside the call (before issue 17)."""
    real = step_lib.fused_steps

    def fused(ts, batches, **kw):
        if isinstance(batches, (list, tuple)):
            batches = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *batches)
        return real(ts, batches, **kw)

    step_lib.fused_steps = fused
    try:
        yield
    finally:
        step_lib.fused_steps = real


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--block", type=int, default=100, help="steps per block")
    ap.add_argument("--k", type=int, default=10, help="steps_per_dispatch of the fused rows")
    args = ap.parse_args()
    cls, batch_size = MODELS["mlp"]
    model = cls()
    batches = synthetic(max(args.k, 1), batch_size)
    params = model.init(jax.random.PRNGKey(0), batches[0]["image"][:1])
    loss_fn = loss_fn_for(model)
    state = TrainState.create(apply_fn=model.apply, params=params,
                              tx=injectable(optax.sgd, learning_rate=0.1, momentum=0.9))

    def variant(policy="stop", patch=None, fused=None):
        trainer = Trainer(loss_fn, max_epochs=10, enable_progress_bar=False, nan_policy=policy,
                          callbacks=[OneCycle(0.1),
                                     ReduceLROnPlateau(monitor="train_loss", check_on=100),
                                     LearningRateMonitor()])
        trainer._reset_host(RunPlan(100, 10**9))
        ts = trainer.init_trainer_state(state, batches[0])
        if fused is None:
            batch = jax.device_put(batches[0], trainer.state_sharding())
            call, per_call = (lambda t: trainer.steps.train(t, batch)), 1
        else:
            group = tuple(batches[:args.k]) if fused == "numpy" else tuple(
                jax.device_put(b) for b in batches[:args.k])
            call, per_call = (lambda t: trainer.steps.fused(t, group)), args.k
        with patch() if patch else contextlib.nullcontext():
            ts = jax.block_until_ready(call(ts))  # trace and compile under `patch`
        box = [ts]

        def run(n):
            t = box[0]
            for _ in range(max(1, n // per_call)):
                t = call(t)
            box[0] = jax.block_until_ready(t)
            return max(1, n // per_call) * per_call

        return run

    runs = {"check": variant(), "old check": variant(patch=old_check),
            "no check": variant("ignore"),
            f"fused numpy K={args.k}": variant(fused="numpy"),
            f"fused device K={args.k}": variant(fused="device"),
            f"fused old stack K={args.k}": variant(fused="numpy", patch=old_stack)}
    wall = {k: [] for k in runs}
    cpu = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, run in runs.items():
            t, c = time.perf_counter(), time.process_time()
            n = run(args.block)
            wall[k].append((time.perf_counter() - t) / n * 1e6)
            cpu[k].append((time.process_time() - c) / n * 1e6)
    print(f"{args.rounds} rounds of {args.block}-step blocks; us per step (medians)\n")
    print("| variant | wall us | CPU us | wall / check |\n|---|---|---|---|")
    for k in runs:
        ratio = statistics.median(w / w0 for w, w0 in zip(wall[k], wall["check"]))
        print(f"| {k} | {statistics.median(wall[k]):.1f} | {statistics.median(cpu[k]):.1f} | "
              f"{ratio:.3f} |")


if __name__ == "__main__":
    main()
