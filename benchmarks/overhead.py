"""Trainer overhead: `Trainer.fit` with the full LR stack vs a bare jitted optax loop.

    python benchmarks/overhead.py [--models mlp cnn] [--steps 200] [--repeats 5]

Ours: `Trainer.fit` with [OneCycle (momentum cycling), ReduceLROnPlateau, LearningRateMonitor,
ProgressBar] and a TensorBoardLogger. Bare: the same model, batches and SGD, with the one-cycle
LR computed inside a plain `jax.jit` step. Both exclude compilation (one warm-up run each) and
validation. Reports steps/s ratios (ours / bare; goals >= 0.97 for the MLP, >= 0.99 for the
CNN), train-step compiles per fit, and host fetches per fit.
"""

from __future__ import annotations

import argparse
import tempfile

import jax
import optax
from common import (MODELS, bare_step, interleaved, loss_fn_for, merge_rows, summary,
                    synthetic, timed, write)
from flax.training.train_state import TrainState

from flax_lr_callbacks import (LearningRateMonitor, OneCycle, ReduceLROnPlateau,
                               TensorBoardLogger, Trainer, injectable, schedules)


def bench(model_name: str, steps: int, repeats: int, log_every: int = 50) -> dict:
    cls, batch_size = MODELS[model_name]
    model = cls()
    batches = synthetic(steps, batch_size)
    params = model.init(jax.random.PRNGKey(0), batches[0]["image"][:1])
    loss_fn = loss_fn_for(model)

    bare_tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
    bare = bare_step(loss_fn, bare_tx, schedule=lambda c: schedules.one_cycle(
        c, total_steps=steps, max_value=0.1))

    def run_bare():
        p, o, loss = params, bare_tx.init(params), None
        for i, b in enumerate(batches):
            p, o, loss = bare(p, o, b, i)
        return loss

    state = TrainState.create(apply_fn=model.apply, params=params,
                              tx=injectable(optax.sgd, learning_rate=0.1, momentum=0.9))
    logdir = tempfile.mkdtemp(prefix="overhead-")
    trainer = Trainer(loss_fn, max_epochs=1, log_every_n_steps=log_every,
                      callbacks=[OneCycle(0.1),
                                 ReduceLROnPlateau(monitor="train_loss", check_on="epoch"),
                                 LearningRateMonitor()],
                      logger=TensorBoardLogger(logdir))
    fetches = [0]
    real_get = jax.device_get

    def counting_get(x):
        fetches[0] += 1
        return real_get(x)

    def run_ours():
        fetches[0] = 0
        jax.device_get = counting_get
        try:
            return trainer.fit(state, batches).params
        finally:
            jax.device_get = real_get

    timed(run_bare), timed(run_ours)  # compile both
    times = interleaved({"bare": lambda: timed(run_bare), "ours": lambda: timed(run_ours)},
                        repeats)
    ratio = [b / o for o, b in zip(times["ours"], times["bare"])]  # steps/s ours / bare
    return {"model": model_name, "batch_size": batch_size, "steps": steps, "repeats": repeats,
            "bare_steps_per_s": steps / summary(times["bare"])["median"],
            "ours_steps_per_s": steps / summary(times["ours"])["median"],
            "ratio": summary(ratio), "step_compiles_total": trainer.num_step_compiles,
            "host_fetches_per_fit": fetches[0], "log_every_n_steps": log_every}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=list(MODELS))
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rows = merge_rows("overhead", [bench(m, args.steps, args.repeats) for m in args.models])
    lines = ["| model | batch | bare steps/s | ours steps/s | ratio median [min, max] | "
             "train-step compiles (all fits) | host fetches per fit |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['bare_steps_per_s']:.1f} | "
                     f"{r['ours_steps_per_s']:.1f} | {r['ratio']['median']:.3f} "
                     f"[{r['ratio']['min']:.3f}, {r['ratio']['max']:.3f}] | "
                     f"{r['step_compiles_total']} | {r['host_fetches_per_fit']} |")
    write("overhead", {"rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
