"""Would a short confirmation run pick the OneCycle peak better than a point on the sweep?

    python benchmarks/finder_confirmation.py                  # every workload, M = 100 steps
    python benchmarks/finder_confirmation.py --steps 50 100 200 --only teacher_mlp_lion

A design study for issue 12 (a finder that lands at the best peak), kept because its answer
was no. For each workload and seed of `finder_quality.py` it trains a *short* OneCycle of M
steps from the same initial state at every peak of that workload's saved half-decade grid,
scores each by the held-out loss after those M steps, and compares the peak that scores best
with the best peak of the full fits (`results/finder_quality.json`). A confirmation among 2-3
candidate peaks can only be as good as this ranking over the whole grid.

Writes results/finder_confirmation.{json,md}. Needs `results/finder_quality.json` (run
`finder_quality.py` first) and, for the digits workloads, scikit-learn (`.[bench]`).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics

from common import RESULTS, machine
from finder_quality import DATA, MODELS, WORKLOADS, Bench
from fashion_mnist import make_loss_fn

from flax_lr_callbacks import OneCycle, Trainer

NAME = "finder_confirmation"


def trial_scores(b: Bench, peaks: list[float], steps: int) -> dict[float, float]:
    """Held-out loss after a `steps`-step OneCycle at each peak (inf where it diverged)."""
    w = b.w
    one_cycle = OneCycle(max_lr=None, cycle_momentum=w.cycle_momentum, total_steps=steps)
    trainer = Trainer(make_loss_fn(MODELS[w.model](), w.reduction), max_steps=steps,
                      max_epochs=w.epochs, callbacks=[one_cycle], seed=b.seed,
                      enable_progress_bar=False, log_every_n_steps=min(50, steps),
                      nan_policy="ignore")
    out = {}
    for p in peaks:
        one_cycle.set_peak(None, p)
        loss = float(trainer.validate(trainer.fit(b.state, b.train), b.test)["val_loss"])
        out[p] = loss if math.isfinite(loss) else math.inf
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, nargs="+", default=[100])
    ap.add_argument("--only", nargs="+", default=None, help="workload names")
    args = ap.parse_args()
    saved = json.loads((RESULTS / "finder_quality.json").read_text())["rows"]
    rows, cache = [], {}
    for w in WORKLOADS:
        if args.only and w.name not in args.only:
            continue
        for old in (r for r in saved if r["workload"] == w.name):
            if w.data not in cache:
                cache[w.data] = DATA[w.data]()
            grid = {float(k): v for k, v in old["grid"].items()}
            best = max(grid, key=grid.get)
            b = Bench(w, cache[w.data], old["seed"])
            for steps in args.steps:
                scores = trial_scores(b, sorted(grid), steps)
                pick = min(scores, key=scores.get)
                row = {"workload": w.name, "seed": old["seed"], "steps": steps,
                       "fit_steps": old["fit_steps"], "best": best, "pick": pick,
                       "regret": grid[best] - grid[pick],
                       "scores": {str(p): s for p, s in scores.items()}}
                print(json.dumps(row), flush=True)
                rows.append(row)
    (RESULTS / f"{NAME}.json").write_text(json.dumps({"machine": machine(), "rows": rows},
                                                     indent=1))
    lines = ["| workload | seed | trial steps (of the fit) | best full-fit peak | "
             "trial's pick | regret (points) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['seed']} | {r['steps']} ({r['fit_steps']}) | "
                     f"{r['best']:g} | {r['pick']:g} | {r['regret']:+.2f} |")
    for steps in args.steps:
        regrets = [r["regret"] for r in rows if r["steps"] == steps]
        lines.append(f"| **M={steps}: median / worst** | | | | | "
                     f"{statistics.median(regrets):.2f} / {max(regrets):.2f} |")
    text = (f"Machine: {machine()}\n\nCommand: `python benchmarks/finder_confirmation.py "
            f"--steps {' '.join(map(str, args.steps))}`. Regret: the full-fit grid accuracy "
            "(same seed) of the best peak minus that of the peak the short trial ranks first; "
            f"{sum(r['pick'] == r['best'] for r in rows)} of {len(rows)} trials pick the best "
            "peak.\n\n" + "\n".join(lines) + "\n")
    (RESULTS / f"{NAME}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
