"""What the non-finite check of ``nan_policy="stop"`` costs per step, and ways to write it.

    python benchmarks/nan_check_cost.py [--rounds 200]

A bare jitted MLP step (784-128-10, batch 128, SGD with momentum 0.9, buffers donated) in
variants that differ only in the check (issue 17):

* ``plain``: no check (``nan_policy="ignore"``);
* ``check_only``: the check computed (as the Trainer does: one float32 sum, matrices through a
  product with ones), the update applied regardless;
* ``cond``: the update under ``lax.cond`` on the check (the Trainer's single step);
* ``select``: the update always computed, then a leafwise ``jnp.where`` on the check;
* ``sum_*``: ``check_only`` with the sum written otherwise (plain ``jnp.sum`` per leaf, one
  sum over the concatenated gradients, a product with ones from the left).

Blocks of 20 calls per variant in shuffled order, `--rounds` times; reported: the median
microseconds per step and the median of the paired difference to ``plain`` (the same round),
which cancels most of the machine's drift.
"""

from __future__ import annotations

import argparse
import random
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from common import RESULTS, machine

from flax_lr_callbacks.nan_policy import step_is_finite

KEY = jax.random.PRNGKey(0)
PARAMS = {"w1": jax.random.normal(KEY, (784, 128)) * 0.03, "b1": jnp.zeros(128),
          "w2": jax.random.normal(KEY, (128, 10)) * 0.1, "b2": jnp.zeros(10)}
X = jax.random.normal(KEY, (128, 784))
Y = jax.random.randint(KEY, (128,), 0, 10)
TX = optax.sgd(0.1, momentum=0.9)


def loss(p):
    h = jax.nn.relu(X @ p["w1"] + p["b1"])
    return optax.softmax_cross_entropy_with_integer_labels(h @ p["w2"] + p["b2"], Y).mean()


def update(p, o, g):
    u, o = TX.update(g, o, p)
    return optax.apply_updates(p, u), o


def leaves(g):
    return jax.tree_util.tree_leaves(g)


SUMS = {
    "sum_jnp": lambda g: sum(jnp.sum(v) for v in leaves(g)),
    "sum_concat": lambda g: jnp.sum(jnp.concatenate([v.ravel() for v in leaves(g)])),
    "sum_left": lambda g: sum(
        jnp.sum(jnp.matmul(jnp.ones(v.shape[0]), v, preferred_element_type=jnp.float32))
        if v.ndim == 2 else jnp.sum(v, dtype=jnp.float32) for v in leaves(g)),
}


def variants() -> dict:
    def plain(p, o):
        value, g = jax.value_and_grad(loss)(p)
        return (*update(p, o, g), value)

    def check_only(p, o):
        value, g = jax.value_and_grad(loss)(p)
        ok = step_is_finite(value, g, {})
        return (*update(p, o, g), value * ok)

    def cond(p, o):
        value, g = jax.value_and_grad(loss)(p)
        ok = step_is_finite(value, g, {})
        return (*jax.lax.cond(ok, lambda: update(p, o, g), lambda: (p, o)), value)

    def select(p, o):
        value, g = jax.value_and_grad(loss)(p)
        ok = step_is_finite(value, g, {})
        new = update(p, o, g)
        return (*jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), new, (p, o)), value)

    def with_sum(total):
        def step(p, o):
            value, g = jax.value_and_grad(loss)(p)
            return (*update(p, o, g), value * jnp.isfinite(value + total(g)))
        return step

    fns = {"plain": plain, "check_only": check_only, "cond": cond, "select": select}
    fns |= {name: with_sum(total) for name, total in SUMS.items()}
    return {name: jax.jit(f, donate_argnums=(0, 1)) for name, f in fns.items()}


def measure(fns: dict, rounds: int, calls: int = 20) -> dict[str, float]:
    """Median paired difference to ``plain`` (us per step) of every variant."""
    states = {}
    for name, f in fns.items():
        p = jax.tree_util.tree_map(jnp.copy, PARAMS)
        p, o, _ = jax.block_until_ready(f(p, TX.init(p)))  # compile (cached after the first)
        states[name] = (p, o)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        order = list(fns)
        random.shuffle(order)
        for name in order:
            p, o = states[name]
            start = time.perf_counter()
            for _ in range(calls):
                p, o, _ = fns[name](p, o)
            jax.block_until_ready(p)
            times[name].append((time.perf_counter() - start) / calls * 1e6)
            states[name] = (p, o)
    base = np.array(times["plain"])
    out = {name: float(np.median(np.array(t) - base)) for name, t in times.items()}
    out["plain (us per step)"] = float(np.median(base))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=200)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    fns = variants()
    runs = [measure(fns, args.rounds) for _ in range(args.runs)]
    head = " | ".join(f"run {i + 1}" for i in range(len(runs)))
    lines = [f"| variant (us per step vs plain, paired median) | {head} |",
             "|---|" + "---|" * len(runs)]
    for name in runs[0]:
        cells = " | ".join((f"{r[name]:.1f}" if name.startswith("plain (") else
                            f"{r[name]:+.1f}") for r in runs)
        lines.append(f"| {name} | {cells} |")
    text = (f"Machine: {machine()}\n\nCommand: `python benchmarks/nan_check_cost.py "
            f"--rounds {args.rounds} --runs {args.runs}`. `check_only` and `cond` use the "
            "Trainer's check (`nan_policy.step_is_finite`).\n\n" + "\n".join(lines) + "\n")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "nan_check_cost.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
