"""Cost of the LR range test: a 100-step sweep vs 100 plain training steps of the same model.

    python benchmarks/lr_find.py [--models mlp cnn] [--repeats 5]

Both sides exclude compilation (each is run once before timing). The plain side is a bare
jitted optax loop over the same batches; the finder side is `Trainer.lr_find` end to end
(state copy, sweep, chunked host checks, smoothing and suggestions). Goal: <= 1.2x.

The last column is what a user pays: the sweep *with* its one compile, as a share of a
10-epoch Fashion-MNIST fit (60000 // batch steps per epoch) at the plain loop's step time.
Goal for the seed CNN: <= 5%.
"""

from __future__ import annotations

import argparse

import jax
import optax
from common import (MODELS, bare_step, interleaved, loss_fn_for, merge_rows, summary,
                    synthetic, timed, write)
from flax.training.train_state import TrainState

from flax_lr_callbacks import Trainer, injectable


def bench(model_name: str, repeats: int, num_steps: int = 100) -> dict:
    cls, batch_size = MODELS[model_name]
    model = cls()
    batches = synthetic(num_steps, batch_size)
    params = model.init(jax.random.PRNGKey(0), batches[0]["image"][:1])
    loss_fn = loss_fn_for(model)
    tx = optax.sgd(0.01, momentum=0.9)
    step = bare_step(loss_fn, tx)

    def plain():
        p, o = params, tx.init(params)
        loss = None
        for b in batches:
            p, o, loss = step(p, o, b, 0)
        return loss

    state = TrainState.create(apply_fn=model.apply, params=params,
                              tx=injectable(optax.sgd, learning_rate=0.01, momentum=0.9))
    trainer = Trainer(loss_fn, enable_progress_bar=False)

    def finder():
        # max_lr kept small so no sweep stops early: both sides run exactly num_steps steps
        return trainer.lr_find(state, batches, min_lr=1e-7, max_lr=1e-2, num_steps=num_steps,
                               progress=False).losses

    timed(plain)  # compile
    first = timed(finder)  # compile + one sweep
    times = interleaved({"plain": lambda: timed(plain), "finder": lambda: timed(finder)},
                        repeats)
    ratio = [f / p for f, p in zip(times["finder"], times["plain"])]
    fit_steps = 10 * (60000 // batch_size)
    step_s = summary(times["plain"])["median"] / num_steps
    return {"model": model_name, "batch_size": batch_size, "steps": num_steps, "repeats": repeats,
            "plain_s": summary(times["plain"]), "finder_s": summary(times["finder"]),
            "ratio": summary(ratio), "first_sweep_s": first, "fit_steps": fit_steps,
            "share_of_10_epoch_fit": first / (fit_steps * step_s)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="+", default=["mlp", "cnn"], choices=list(MODELS))
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    rows = merge_rows("lr_find", [bench(m, args.repeats) for m in args.models])
    lines = ["| model | batch | 100 plain steps (s, median) | 100-step finder (s, median) | "
             "ratio median [min, max] | first sweep with compile (s) | share of a 10-epoch fit |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        share = r.get("share_of_10_epoch_fit")
        lines.append(f"| {r['model']} | {r['batch_size']} | {r['plain_s']['median']:.3f} | "
                     f"{r['finder_s']['median']:.3f} | {r['ratio']['median']:.3f} "
                     f"[{r['ratio']['min']:.3f}, {r['ratio']['max']:.3f}] | "
                     + (f"{r['first_sweep_s']:.2f} | {share:.1%} ({r['fit_steps']} steps) |"
                        if share is not None else "- | - |"))
    write("lr_find", {"rows": rows}, "\n".join(lines))


if __name__ == "__main__":
    main()
