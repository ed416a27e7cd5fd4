"""Shared pieces of the benchmarks: models, data, the bare loop, timing and reporting.

Every benchmark measures ours and the baseline side by side in one process, interleaving the
repeats (A B A B ...) so drifts in machine load hit both, and reports ratios of medians.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).parents[1] / "examples"))
from fashion_mnist import SeedCNN  # noqa: E402  (the seed tutorials' CNN)

RESULTS = Path(__file__).parent / "results"


class MLP(nn.Module):
    """784-128-10: small enough that dispatch, not arithmetic, bounds a CPU step."""

    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(10)(nn.relu(nn.Dense(128)(x)))


MODELS = {"mlp": (MLP, 128), "cnn": (SeedCNN, 256)}


def synthetic(num_batches: int, batch_size: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Fashion-MNIST-shaped random batches (benchmarks time steps, not learning)."""
    rng = np.random.default_rng(seed)
    return [{"image": rng.random((batch_size, 28, 28, 1), np.float32),
             "label": rng.integers(0, 10, batch_size).astype(np.int32)}
            for _ in range(num_batches)]


def loss_fn_for(model: nn.Module) -> Callable:
    def loss_fn(params, batch):
        logits = model.apply(params, batch["image"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss_fn


def bare_step(loss_fn: Callable, tx: optax.GradientTransformation,
              schedule: Callable | None = None):
    """A plain jitted optax step; with `schedule`, the LR is computed in the step as well."""
    @jax.jit
    def step(params, opt_state, batch, count):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        if schedule is not None:
            opt_state.hyperparams["learning_rate"] = schedule(count)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss
    return step


def interleaved(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Calls each run `repeats` times, alternating, and returns every measured duration."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(run())
    return times


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def machine() -> str:
    dev = jax.devices()[0]
    cpu = platform.processor() or platform.machine()
    return (f"{dev.platform.upper()} {getattr(dev, 'device_kind', '')} | {os.cpu_count()} cores "
            f"{cpu} | jax {jax.__version__} | Python {platform.python_version()}")


def merge_rows(name: str, rows: list[dict], key: str = "model") -> list[dict]:
    """`rows` plus the rows of an earlier run on the same machine for other `key` values,
    so models can be measured in separate invocations (e.g. the slow CNN with fewer steps)."""
    path = RESULTS / f"{name}.json"
    if not path.exists():
        return rows
    old = json.loads(path.read_text())
    if old.get("machine") != machine():
        return rows
    mine = {r[key] for r in rows}
    return [r for r in old.get("rows", []) if r.get(key) not in mine] + rows


NOTES = "\nNotes ("  # where the hand-written part of a results file starts


def write(name: str, payload: dict, table: str) -> None:
    """Writes results/<name>.json and results/<name>.md (table + machine).

    A hand-written part of the old .md (from a line starting with ``Notes (``) is kept after
    the new table, with a reminder on stderr that it describes the earlier run.
    """
    RESULTS.mkdir(exist_ok=True)
    payload = {"machine": machine(), **payload}
    md = RESULTS / f"{name}.md"
    old = md.read_text() if md.exists() else ""
    notes = old[old.index(NOTES):] if NOTES in old else ""
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    md.write_text(f"Machine: {payload['machine']}\n\n{table}\n{notes}")
    if notes:
        print(f"{md}: the notes of the earlier run are kept below the new table; update them",
              file=sys.stderr)
    print(f"Machine: {payload['machine']}\n\n{table}")
