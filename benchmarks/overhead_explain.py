"""Where the Trainer's per-step time goes: the decomposition behind `overhead.py --explain`.

Each part is measured against its bare counterpart in one process, interleaved, and reported
in microseconds per step (medians over repeats):

(a) the compiled train step alone, called in a tight loop on one device-resident batch, vs the
    bare jitted step the same way: the in-graph cost of rules, records, donation and PRNG,
    plus the cost of calling a jitted function with the larger carried pytree;
(b) the host loop with a no-op step and no log points (the Python per step: data, dispatch,
    counters, hooks), vs the bare Python loop with a no-op step;
(c) log points and epoch ends with the no-op step (fetch, `on_log` hooks: LR monitor, progress
    bar, plateau decision; the train-loss logging), what (b) leaves out;
(d) the logger's writer thread: its CPU time per step (TensorBoard events), in a real fit.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import jax

from flax_lr_callbacks import RunPlan, Trainer


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def compiled_step_us(trainer: Trainer, state: Any, batches: list, bare: Any, params: Any,
                     opt_state: Any, n: int, repeats: int) -> dict[str, float]:
    """(a): microseconds per call of our compiled train step and of the bare step, each in a
    tight loop over one device-resident batch. Short blocks of `n` calls alternate (ours,
    bare, ours, ...) `repeats` times, so load changes on the machine hit both; medians of
    wall time and of CPU time (all threads: the step's own work, robust to other load)."""
    trainer._reset_host(RunPlan(len(batches), n * (repeats + 1)))
    ts = trainer.init_trainer_state(state, batches[0])
    batch = jax.device_put(batches[0], trainer.state_sharding())
    step = trainer.steps.train
    ts = jax.block_until_ready(step(ts, batch))  # compile
    p, o, _ = jax.block_until_ready(bare(params, opt_state, batch, 0))
    runs: dict[str, list[float]] = {"ours": [], "bare": [], "ours_cpu": [], "bare_cpu": []}
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        for _ in range(n):
            ts = step(ts, batch)
        jax.block_until_ready(ts)
        runs["ours"].append((time.perf_counter() - t) / n * 1e6)
        runs["ours_cpu"].append((time.process_time() - c) / n * 1e6)
        t, c = time.perf_counter(), time.process_time()
        for i in range(n):
            p, o, _ = bare(p, o, batch, i)
        jax.block_until_ready(p)
        runs["bare"].append((time.perf_counter() - t) / n * 1e6)
        runs["bare_cpu"].append((time.process_time() - c) / n * 1e6)
    return {k: _median(v) for k, v in runs.items()}


def host_loop_us(make_trainer: Any, state: Any, batches: list, epochs: int,
                 repeats: int) -> dict[str, float]:
    """(b), (c), (d): fits whose train step does nothing (the host's work only), without and
    with log points, and the bare Python loop with a no-op step. CPU microseconds per step:
    the main thread's (b: loop, c: what log points add) and the other threads' (d: the
    logger's writers); on a machine whose CPU also runs the step, CPU time is what counts."""
    def noop_step(ts, batch):
        return ts

    trainers = {}
    for log_points in (False, True):
        trainers[log_points] = trainer = make_trainer()
        trainer.steps.train = trainer.steps.fused = noop_step
        if not log_points:
            trainer._log_point = lambda: None

    def fit_cpu(log_points: bool) -> tuple[float, float]:
        trainer = trainers[log_points]
        main = time.thread_time()
        total = time.process_time()
        trainer.fit(state, batches)
        main = time.thread_time() - main
        return main, (time.process_time() - total) - main

    def bare_cpu() -> float:
        def step(p, o, b, i):
            return p, o, None
        t = time.thread_time()
        p, o = None, None
        for e in range(epochs):
            for i, b in enumerate(batches):
                p, o, _ = step(p, o, b, e * len(batches) + i)
        return time.thread_time() - t

    steps = epochs * len(batches)
    runs: dict[str, list[float]] = {"loop": [], "log": [], "threads": [], "bare": []}
    fit_cpu(False), fit_cpu(True)  # warm (buffer layouts, imports)
    for _ in range(repeats):
        runs["loop"].append(fit_cpu(False)[0] / steps * 1e6)
        main, others = fit_cpu(True)
        runs["log"].append(main / steps * 1e6 - runs["loop"][-1])
        runs["threads"].append(others / steps * 1e6)
        runs["bare"].append(bare_cpu() / steps * 1e6)
    return {k: _median(v) for k, v in runs.items()}
