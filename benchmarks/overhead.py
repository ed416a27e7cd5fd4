"""Trainer overhead: `Trainer.fit` with the full LR stack vs a bare jitted optax loop.

    python benchmarks/overhead.py [--models mlp cnn] [--steps 448] [--repeats 5]
                                  [--dispatch 1 4 16 64] [--cnn-steps 64]

Ours: `Trainer.fit` with [OneCycle (momentum cycling), ReduceLROnPlateau, LearningRateMonitor,
ProgressBar] and a TensorBoardLogger. Bare: the same model, batches and SGD, with the one-cycle
LR computed inside a plain `jax.jit` step. Both exclude compilation (one warm-up run each) and
validation. Reports steps/s ratios (ours / bare; goals >= 0.97 for the MLP, >= 0.99 for the
CNN), train-step compiles per fit, and host fetches per fit. With --dispatch, the same fit runs
with `steps_per_dispatch=K` for each K (fused steps; MLP only: XLA:CPU runs convolutions inside
`lax.scan` about 16x slower, so fusing the CNN on CPU measures that, not our overhead).
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


def bench(model_name: str, steps: int, repeats: int, ks: tuple[int, ...] = (1,),
          log_every: int = 64) -> list[dict]:
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
    trainers = {k: Trainer(loss_fn, max_epochs=1, log_every_n_steps=log_every,
                           steps_per_dispatch=k,
                           callbacks=[OneCycle(0.1),
                                      ReduceLROnPlateau(monitor="train_loss", check_on="epoch"),
                                      LearningRateMonitor()],
                           logger=TensorBoardLogger(logdir)) for k in ks}
    fetches = {k: 0 for k in ks}
    real_get = jax.device_get

    def run_ours(k):
        def counting_get(x):
            fetches[k] += 1
            return real_get(x)

        fetches[k] = 0
        jax.device_get = counting_get
        try:
            return trainers[k].fit(state, batches).params
        finally:
            jax.device_get = real_get

    runs = {"bare": lambda: timed(run_bare)}
    runs.update({f"K={k}": (lambda k=k: timed(lambda: run_ours(k))) for k in ks})
    for run in runs.values():
        run()  # compile
    times = interleaved(runs, repeats)
    rows = []
    for k in ks:
        ours = times[f"K={k}"]
        ratio = [b / o for o, b in zip(ours, times["bare"])]  # steps/s ours / bare
        t = trainers[k]
        rows.append({
            "model": model_name if k == 1 else f"{model_name} K={k}", "steps_per_dispatch": k,
            "batch_size": batch_size, "steps": steps, "repeats": repeats,
            "bare_steps_per_s": steps / summary(times["bare"])["median"],
            "ours_steps_per_s": steps / summary(ours)["median"], "ratio": summary(ratio),
            "step_compiles_total": t.num_step_compiles + t._fused_step._cache_size(),
            "host_fetches_per_fit": fetches[k], "log_every_n_steps": log_every})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=list(MODELS))
    ap.add_argument("--steps", type=int, default=448, help="MLP steps per fit")
    ap.add_argument("--cnn-steps", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dispatch", type=int, nargs="+", default=[1, 4, 16, 64],
                    help="steps_per_dispatch values for the MLP (each divides 64)")
    args = ap.parse_args()
    rows = []
    for m in args.models:
        if m == "mlp":
            rows += bench(m, args.steps, args.repeats, tuple(args.dispatch))
        else:
            rows += bench(m, args.cnn_steps, max(2, args.repeats // 2))
    rows = merge_rows("overhead", rows)
    lines = ["| model (K = steps per dispatch) | batch | bare steps/s | ours steps/s | "
             "ratio median [min, max] | train-step compiles (all fits) | host fetches per fit |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['bare_steps_per_s']:.1f} | "
                     f"{r['ours_steps_per_s']:.1f} | {r['ratio']['median']:.3f} "
                     f"[{r['ratio']['min']:.3f}, {r['ratio']['max']:.3f}] | "
                     f"{r['step_compiles_total']} | {r['host_fetches_per_fit']} |")
    write("overhead", {"rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
