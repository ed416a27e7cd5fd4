"""Can any point on the range-test curve land within 0.5 points of the best OneCycle peak?

    python benchmarks/finder_anchors.py     # reads results/finder_quality.json, no training

An offline study of the sweeps and grid accuracies that `finder_quality.py` saved (issue 12).
For every workload and seed it computes

* the *good range*: the peaks whose test accuracy is within 0.5 points of the workload's best
  (mean over seeds), read from every OneCycle run of that seed (grid and suggestions),
  linearly interpolated in log LR;
* five *anchors* on the smoothed sweep: ``steep`` (fastest fall per step), ``edge`` (the
  smoothed minimum), ``onset`` (the first 10% of the total fall), ``half`` (half of it) and
  ``div`` (the last LR before the sweep stopped), and the good range divided by each;

then searches every rule ``c * a**w * b**(1 - w)`` and ``max(c1 * a, c2 * b)`` over two
anchors (constants on a grid from 1e-3 to 10, about 16% apart, 58% for the ``max`` rules,
chosen *on these very workloads*, so the result is optimistic) and reports the best worst-case
regret. A rule that cannot reach 0.5 points in-sample cannot be expected to on workloads it
has not seen. Caveats: accuracy between the trained peaks (half decades plus the suggestions'
runs) is interpolated linearly in log LR, and outside them falls 10 points per e-fold (an
assumption). Writes results/finder_anchors.md.
"""

from __future__ import annotations

import itertools
import json

import numpy as np
from common import RESULTS

from flax_lr_callbacks import finder
from flax_lr_callbacks.suggestions import useful_end

ANCHORS = ("steep", "edge", "onset", "half", "div")
TOLERANCE = 0.5  # points of test accuracy


def runs_of(row: dict) -> tuple[np.ndarray, np.ndarray]:
    """Every (peak, accuracy) trained for this row, sorted by peak."""
    points = {float(k): v for k, v in row["grid"].items()}
    points |= {s["lr"]: s["acc"] for s in row["suggestions"].values()
               if s["lr"] and s["acc"] is not None}
    lrs = np.array(sorted(points))
    return lrs, np.array([points[x] for x in lrs])


def accuracy_at(row: dict, lr: float) -> float:
    """Interpolated in log LR; outside the trained peaks, 10 points lost per e-fold."""
    lrs, accs = runs_of(row)
    x, xs = np.log(lr), np.log(lrs)
    if x < xs[0]:
        return float(accs[0] - 10 * (xs[0] - x))
    if x > xs[-1]:
        return float(accs[-1] - 10 * (x - xs[-1]))
    return float(np.interp(x, xs, accs))


def anchors(row: dict, num_steps: int = 100) -> dict[str, float]:
    """The five anchors on a row's smoothed sweep; `num_steps` is the planned sweep length
    (the suite's default: `peak` skips its first tenth). A sweep without a fall gives its
    first LR as ``onset`` and ``half``."""
    lrs = np.asarray(row["sweep"]["lrs"])
    smooth = finder.smooth(np.asarray(row["sweep"]["losses"]), 0.98)
    end = useful_end(smooth)
    skip = num_steps // 10
    lrs, smooth = lrs[skip:end], smooth[skip:end]
    keep = np.isfinite(smooth)
    lrs, smooth = lrs[keep], smooth[keep]
    fall = smooth[0] - smooth.min()
    return {"steep": lrs[np.argmin(np.gradient(smooth))], "edge": lrs[np.argmin(smooth)],
            "onset": lrs[np.argmax(smooth < smooth[0] - 0.1 * fall)],
            "half": lrs[np.argmax(smooth < smooth[0] - 0.5 * fall)], "div": lrs[-1]}


def by_workload(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["workload"], []).append(r)
    return out


def best_accuracy(rs: list[dict]) -> float:
    peaks = set.intersection(*(set(r["grid"]) for r in rs))
    return max(np.mean([r["grid"][p] for r in rs]) for p in peaks)


def worst_regret(groups: dict[str, list[dict]], rule) -> float:
    return max(best_accuracy(rs) - np.mean([accuracy_at(r, rule(r)) for r in rs])
               for rs in groups.values())


def good_range(row: dict, best: float) -> tuple[float, float]:
    grid = np.exp(np.linspace(np.log(1e-6), np.log(3.0), 600))
    good = grid[np.array([accuracy_at(row, x) for x in grid]) >= best - TOLERANCE]
    return (float(good.min()), float(good.max())) if good.size else (np.nan, np.nan)


def fitted_rules(groups: dict[str, list[dict]], marks: dict[tuple, dict]):
    """(worst regret, description) of every two-anchor rule, constants fitted in-sample."""
    cs = np.exp(np.linspace(np.log(1e-3), np.log(10.0), 61))
    for a, b in itertools.combinations_with_replacement(ANCHORS, 2):
        for w in np.linspace(0, 1, 11) if a != b else [1.0]:
            for c in cs:
                def rule(r, a=a, b=b, w=w, c=c):
                    m = marks[r["workload"], r["seed"]]
                    return c * m[a] ** w * m[b] ** (1 - w)
                yield worst_regret(groups, rule), f"{c:.3g} * {a}^{w:.1f} * {b}^{1 - w:.1f}"
    for a, b in itertools.permutations(ANCHORS, 2):
        for c1, c2 in itertools.product(cs[::3], cs[::3]):
            def rule(r, a=a, b=b, c1=c1, c2=c2):
                m = marks[r["workload"], r["seed"]]
                return max(c1 * m[a], c2 * m[b])
            yield worst_regret(groups, rule), f"max({c1:.3g} * {a}, {c2:.3g} * {b})"


def main() -> None:
    rows = json.loads((RESULTS / "finder_quality.json").read_text())["rows"]
    groups = by_workload(rows)
    marks = {(r["workload"], r["seed"]): anchors(r) for r in rows}
    lines = ["| workload | seed | good range | " + " | ".join(
        f"{a}: LR (good range / {a})" for a in ANCHORS) + " |", "|" + "---|" * (3 + len(ANCHORS))]
    for name, rs in groups.items():
        best = best_accuracy(rs)
        for r in rs:
            lo, hi = good_range(r, best)
            m = marks[name, r["seed"]]
            cells = [f"{m[a]:.2g} ({lo / m[a]:.2g}-{hi / m[a]:.2g})" for a in ANCHORS]
            span = "none" if np.isnan(lo) else f"{lo:.2g}-{hi:.2g}"
            lines.append(f"| {name} | {r['seed']} | {span} | " + " | ".join(cells) + " |")
    results = {}
    for subset in ("all", "without teacher_mlp_lion"):
        g = groups if subset == "all" else {k: v for k, v in groups.items()
                                            if k != "teacher_mlp_lion"}
        results[subset] = min(fitted_rules(g, marks))
    text = ("Command: `python benchmarks/finder_anchors.py` (offline, from "
            "`finder_quality.json`).\n\nGood range: OneCycle peaks within "
            f"{TOLERANCE} points of the workload's best mean accuracy, for that seed "
            "(\"none\": no peak of this seed comes within it). Each anchor: its LR on the "
            "seed's sweep, and the good range divided by it; a point rule "
            "``c * anchor`` works only if one `c` lies in every row's interval.\n\n"
            + "\n".join(lines) + "\n\nBest two-anchor rule, constants fitted on these "
            "workloads (optimistic):\n\n| workloads | best worst-case regret | rule |\n"
            "|---|---|---|\n" + "\n".join(f"| {k} | {v[0]:.2f} | `{v[1]}` |"
                                          for k, v in results.items()) + "\n")
    (RESULTS / "finder_anchors.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
