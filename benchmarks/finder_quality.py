"""Does the LR finder pick a good OneCycle peak? Regret of every suggestion on 9 workloads.

    python benchmarks/finder_quality.py            # the whole suite, 2 seeds (~30 min, 2 cores)
    python benchmarks/finder_quality.py --quick    # 3 workloads, 1 seed
    python benchmarks/finder_quality.py --only digits_mlp_adamw fmnist_cnn_sgd_sum
    python benchmarks/finder_quality.py --list

For each workload and seed it runs the range test once (`Trainer.lr_find`, defaults), then
trains OneCycle from the same initial state at

* every peak of a half-decade grid (extended until the best peak is inside it), and
* every finder suggestion's LR, the default one through ``LRFinder() + OneCycle(max_lr=None)``
  exactly as a user writes it (the other suggestions as ``OneCycle(max_lr=<suggestion>)``),

and reports test accuracy. *Regret* is the best grid accuracy minus a suggestion's accuracy,
in points, both as means over the seeds. Workloads differ in what moves the best LR: the
optimizer (SGD, momentum, Nesterov, Adam, AdamW, Lion), the loss reduction (a summed loss
multiplies SGD's gradient by the batch size), the model (MLP, strided CNN, a residual MLP with
LayerNorm), the batch size (32 to 512) and the data (Fashion-MNIST, scikit-learn's bundled
digits, a synthetic teacher task). scikit-learn is needed only here:
``pip install -e ".[bench]"``.

Writes benchmarks/results/finder_quality.{json,md} and finder_quality.png (regret per
suggestion per workload). Each finished (workload, seed) is saved at once, so an interrupted
run resumes where it stopped; grid runs are reused while a workload's definition is unchanged
(``--rerun`` re-runs only the finder and its suggestions, after a change to the finder);
``--fresh`` starts over.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np
import optax
from common import MLP, RESULTS, machine
from fashion_mnist import make_loss_fn  # the example's cross-entropy + accuracy (common's path)
from flax.training.train_state import TrainState

from flax_lr_callbacks import (ArrayDataset, LRFinder, OneCycle, Trainer, injectable,
                               load_fashion_mnist)
from flax_lr_callbacks.data import as_batches
from flax_lr_callbacks.finder import SUGGESTIONS

NAME = "finder_quality"
DEFAULT = LRFinder().kwargs["suggestion"]


# ---------------------------------------------------------------------------- models
class StridedCNN(nn.Module):
    """Two strided 3x3 convs (16, 32) and a dense layer: a CNN that trains fast on CPU."""

    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(16, (3, 3), strides=2)(x))
        x = nn.relu(nn.Conv(32, (3, 3), strides=2)(x))
        return nn.Dense(10)(x.reshape((x.shape[0], -1)))


class ResMLP(nn.Module):
    """A pre-LayerNorm residual MLP: normalization and skip connections move the best LR."""

    width: int = 128
    blocks: int = 2
    classes: int = 10

    @nn.compact
    def __call__(self, x):
        x = nn.Dense(self.width)(x.reshape((x.shape[0], -1)))
        for _ in range(self.blocks):
            h = nn.Dense(2 * self.width)(nn.LayerNorm()(x))
            x = x + nn.Dense(self.width)(nn.gelu(h))
        return nn.Dense(self.classes)(nn.LayerNorm()(x))


MODELS = {"mlp": MLP, "cnn": StridedCNN, "resmlp": ResMLP}


# ---------------------------------------------------------------------------- data
def fashion_mnist(train_size: int = 12000) -> dict:
    data = load_fashion_mnist()
    return {"train": {k: v[:train_size] for k, v in data["train"].items()},
            "test": data["test"]}


def digits() -> dict:
    from sklearn.datasets import load_digits

    d = load_digits()
    image = (d.images / 16.0).astype(np.float32)[..., None]  # 8x8x1 in [0, 1]
    label = d.target.astype(np.int32)
    order = np.random.default_rng(1234).permutation(len(label))  # fixed split
    train, test = order[:1200], order[1200:]
    return {"train": {"image": image[train], "label": label[train]},
            "test": {"image": image[test], "label": label[test]}}


def teacher(train_size: int = 16000, test_size: int = 8000, dim: int = 32) -> dict:
    """Labels from a random two-layer tanh network on Gaussian inputs, 5% label noise."""
    rng = np.random.default_rng(4321)
    w1, w2 = rng.normal(size=(dim, 64)) / math.sqrt(dim), rng.normal(size=(64, 10)) / 8.0
    n = train_size + test_size
    x = rng.normal(size=(n, dim)).astype(np.float32)
    y = np.argmax(np.tanh(x @ w1) @ w2, axis=1).astype(np.int32)
    noisy = rng.random(n) < 0.05
    y[noisy] = rng.integers(0, 10, noisy.sum())
    return {"train": {"image": x[:train_size], "label": y[:train_size]},
            "test": {"image": x[train_size:], "label": y[train_size:]}}


DATA: dict[str, Callable[[], dict]] = {"fmnist": fashion_mnist, "digits": digits,
                                       "teacher": teacher}

OPTIMIZERS: dict[str, Callable[[], optax.GradientTransformation]] = {
    "sgd": lambda: injectable(optax.sgd, learning_rate=0.01),
    "sgd_momentum": lambda: injectable(optax.sgd, learning_rate=0.01, momentum=0.9),
    "nesterov": lambda: injectable(optax.sgd, learning_rate=0.01, momentum=0.9, nesterov=True),
    "adam": lambda: injectable(optax.adam, learning_rate=1e-3),
    "adamw": lambda: injectable(optax.adamw, learning_rate=1e-3, weight_decay=1e-2),
    "lion": lambda: injectable(optax.lion, learning_rate=1e-4, weight_decay=1e-2),
}


@dataclasses.dataclass(frozen=True)
class Workload:
    name: str
    data: str
    model: str
    optimizer: str
    reduction: str
    batch_size: int
    epochs: int
    grid: tuple[float, float]  # first and last peak of the initial half-decade grid

    @property
    def cycle_momentum(self) -> bool:
        return self.optimizer != "sgd"  # plain SGD has no momentum to cycle


WORKLOADS = [
    Workload("fmnist_mlp_sgdm", "fmnist", "mlp", "sgd_momentum", "mean", 128, 3, (1e-3, 1.0)),
    Workload("fmnist_cnn_sgd_sum", "fmnist", "cnn", "sgd", "sum", 32, 1, (1e-4, 1e-1)),
    Workload("fmnist_cnn_nesterov", "fmnist", "cnn", "nesterov", "mean", 256, 6, (1e-3, 1.0)),
    Workload("fmnist_resmlp_adam", "fmnist", "resmlp", "adam", "mean", 64, 2, (1e-4, 1e-1)),
    Workload("digits_mlp_adamw", "digits", "mlp", "adamw", "mean", 32, 8, (1e-4, 1e-1)),
    Workload("digits_cnn_sgdm_sum", "digits", "cnn", "sgd_momentum", "sum", 64, 15,
             (1e-5, 1e-2)),
    Workload("teacher_resmlp_adamw", "teacher", "resmlp", "adamw", "mean", 512, 10,
             (1e-4, 1e-1)),
    Workload("teacher_mlp_lion", "teacher", "mlp", "lion", "mean", 128, 4, (1e-5, 1e-2)),
    Workload("teacher_mlp_nesterov_sum", "teacher", "mlp", "nesterov", "sum", 256, 5,
             (1e-5, 1e-2)),
]
QUICK = ("fmnist_mlp_sgdm", "digits_mlp_adamw", "teacher_mlp_nesterov_sum")


# ---------------------------------------------------------------------------- runs
def half_decades(lo: float, hi: float) -> list[float]:
    """1, 3, 10, 30, ... (rounded half decades) from `lo` to `hi`."""
    out, k = [], math.floor(2 * math.log10(lo) + 1e-9)
    while True:
        value = 10 ** (k // 2) * (1.0 if k % 2 == 0 else 3.0)
        if value > hi * 1.01:
            return out
        if value >= lo * 0.99:
            out.append(float(f"{value:.1g}"))
        k += 1


class Bench:
    """One (workload, seed): the data, the initial state and two Trainers (compiled once)."""

    def __init__(self, w: Workload, data: dict, seed: int):
        self.w, self.seed = w, seed
        self.done: dict[float, float] = {}  # peak -> accuracy
        model = MODELS[w.model]()
        params = model.init(jax.random.PRNGKey(seed), data["train"]["image"][:1])
        self.state = TrainState.create(apply_fn=model.apply, params=params,
                                       tx=OPTIMIZERS[w.optimizer]())
        self.train = ArrayDataset(data["train"], w.batch_size, seed=seed)
        self.test = as_batches(data["test"], 1000)
        loss = make_loss_fn(model, w.reduction)
        self.one_cycle = OneCycle(max_lr=None, cycle_momentum=w.cycle_momentum)
        self.trainer = Trainer(loss, max_epochs=w.epochs, callbacks=[self.one_cycle],
                               seed=seed, enable_progress_bar=False, log_every_n_steps=50)
        self.finder = LRFinder(plot_path=None)
        self.finder_trainer = Trainer(
            loss, max_epochs=w.epochs, seed=seed, enable_progress_bar=False,
            log_every_n_steps=50,
            callbacks=[self.finder, OneCycle(max_lr=None, cycle_momentum=w.cycle_momentum)])

    def accuracy(self, trainer: Trainer, state) -> float:
        return 100 * trainer.validate(state, self.test)["val_acc"]

    def peak(self, lr: float) -> float:
        """Test accuracy of OneCycle(max_lr=lr) from the initial state (runs are
        deterministic, so an LR already trained is not trained again)."""
        if lr not in self.done:
            self.one_cycle.set_peak(None, lr)
            self.done[lr] = self.accuracy(self.trainer, self.trainer.fit(self.state, self.train))
        return self.done[lr]

    def default(self) -> tuple[float, float, float]:
        """``LRFinder() + OneCycle(max_lr=None)`` as a user writes it: (lr, accuracy, sweep
        seconds + fit seconds)."""
        start = time.perf_counter()
        state = self.finder_trainer.fit(self.state, self.train)
        jax.block_until_ready(state)
        seconds = time.perf_counter() - start
        return self.finder.applied_lr, self.accuracy(self.finder_trainer, state), seconds


def run_one(w: Workload, data: dict, seed: int, old: dict | None = None) -> dict:
    """One (workload, seed). `old`: a saved row of the same workload definition, whose grid
    accuracies are reused (they do not depend on the finder)."""
    b = Bench(w, data, seed)
    if old is not None:
        b.done.update({float(k): v for k, v in old["grid"].items()})
    start = time.perf_counter()
    result = b.trainer.lr_find(b.state, b.train, progress=False)
    sweep_s = time.perf_counter() - start
    grid: dict[float, float] = {}
    for lr in half_decades(*w.grid):
        grid[lr] = b.peak(lr)
    # Extend the grid until its best peak has a neighbour on both sides (at most 3 more).
    for _ in range(3):
        lrs = sorted(grid)
        best = max(lrs, key=grid.get)
        if best == lrs[0]:
            lr = half_decades(lrs[0] / 3.5, lrs[0] / 2.5)[0]
        elif best == lrs[-1]:
            lr = half_decades(lrs[-1] * 2.5, lrs[-1] * 3.5)[0]
        else:
            break
        grid[lr] = b.peak(lr)
    default_lr, default_acc, default_s = b.default()
    if not math.isclose(default_lr, result.suggestions[DEFAULT], rel_tol=1e-6):
        raise RuntimeError(f"{w.name}: LRFinder applied {default_lr}, lr_find suggested "
                           f"{result.suggestions[DEFAULT]} ({DEFAULT})")
    suggested = {DEFAULT: {"lr": default_lr, "acc": default_acc}}
    for name, lr in result.suggestions.items():
        if name != DEFAULT:
            suggested[name] = {"lr": lr, "acc": None if lr is None else b.peak(lr)}
    fit_steps = w.epochs * len(b.train)
    row = {"workload": w.name, "definition": repr(w), "seed": seed, "grid": {str(k): v for k, v in grid.items()},
           "suggestions": suggested, "sweep": {"lrs": result.lrs.tolist(),
                                               "losses": result.losses.tolist()},
           "sweep_steps": len(result.lrs), "fit_steps": fit_steps,
           "sweep_seconds": sweep_s, "default_fit_seconds": default_s}
    print(json.dumps({k: row[k] for k in ("workload", "seed", "grid")}
                     | {"suggestions": {k: (round(v["lr"], 6) if v["lr"] else None,
                                            v["acc"] and round(v["acc"], 2))
                                        for k, v in suggested.items()}}), flush=True)
    return row


# ---------------------------------------------------------------------------- report
def summarize(rows: list[dict]) -> dict[str, dict]:
    """Per workload: mean grid accuracy per peak, the best peak, and per suggestion its
    median LR, mean accuracy and regret (points)."""
    out = {}
    for name in dict.fromkeys(r["workload"] for r in rows):
        rs = [r for r in rows if r["workload"] == name]
        peaks = sorted({float(k) for r in rs for k in r["grid"]})
        grid = {p: statistics.mean(r["grid"][str(p)] for r in rs if str(p) in r["grid"])
                for p in peaks}
        best = max(grid, key=grid.get)
        sug = {}
        for method in rs[0]["suggestions"]:
            accs = [r["suggestions"][method]["acc"] for r in rs]
            lrs = [r["suggestions"][method]["lr"] for r in rs]
            if any(a is None for a in accs):
                sug[method] = {"lr": None, "acc": None, "regret": None}
                continue
            acc = statistics.mean(accs)
            sug[method] = {"lr": statistics.median(lrs), "acc": acc, "regret": grid[best] - acc}
        out[name] = {"grid": grid, "best_lr": best, "best_acc": grid[best], "suggestions": sug,
                     "seeds": len(rs),
                     "finder_cost": statistics.mean(r["sweep_steps"] / r["fit_steps"]
                                                    for r in rs)}
    return out


def table(summary: dict[str, dict]) -> str:
    methods = list(next(iter(summary.values()))["suggestions"])
    head = ["workload", "best grid peak (acc.)"] + [
        f"{m}{' (default)' if m == DEFAULT else ''}" for m in methods]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in summary.items():
        cells = [name, f"{s['best_lr']:.2g} ({s['best_acc']:.2f}%)"]
        for m in methods:
            v = s["suggestions"][m]
            cells.append("none" if v["lr"] is None else
                         f"{v['lr']:.2g}: {v['acc']:.2f}% (**{v['regret']:+.2f}**)")
        lines.append("| " + " | ".join(cells) + " |")
    regrets = {m: [s["suggestions"][m]["regret"] for s in summary.values()] for m in methods}
    cells = ["worst regret", ""] + [
        "-" if any(r is None for r in regrets[m]) else f"{max(regrets[m]):.2f}"
        for m in methods]
    lines.append("| " + " | ".join(cells) + " |")
    cells = ["median regret", ""] + [
        "-" if any(r is None for r in regrets[m]) else f"{statistics.median(regrets[m]):.2f}"
        for m in methods]
    lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def grid_table(summary: dict[str, dict]) -> str:
    lines = ["| workload | peak: mean test accuracy (%) |", "|---|---|"]
    for name, s in summary.items():
        cells = ", ".join(f"{p:.0e}: {a:.1f}" for p, a in s["grid"].items())
        lines.append(f"| {name} | {cells} |")
    return "\n".join(lines)


def plot(summary: dict[str, dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods = list(next(iter(summary.values()))["suggestions"])
    names = list(summary)
    fig = Figure(figsize=(max(8, 1.1 * len(names)), 4.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        regret = [summary[n]["suggestions"][m]["regret"] for n in names]
        xs = [j + (i - (len(methods) - 1) / 2) * width for j in range(len(names))]
        ax.bar(xs, [np.nan if r is None else max(r, 0.02) for r in regret], width,
               label=m + (" (default)" if m == DEFAULT else ""),
               edgecolor="black" if m == DEFAULT else "none")
    ax.axhline(0.5, color="0.3", lw=1, ls="--", label="0.5 points")
    ax.set_yscale("log")
    ax.set_ylabel("regret vs best grid peak (points, log;\n<= 0 drawn at 0.02)")
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=8)
    ax.set_title("LR finder + OneCycle: accuracy lost vs the best half-decade peak")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--only", nargs="+", default=None, help="workload names")
    ap.add_argument("--quick", action="store_true", help=f"{len(QUICK)} workloads, seed 0")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--fresh", action="store_true", help="ignore saved rows")
    ap.add_argument("--rerun", action="store_true",
                    help="run the finder and its suggestions again, reusing saved grid runs")
    ap.add_argument("--report", action="store_true", help="only rewrite the report")
    args = ap.parse_args()
    by_name = {w.name: w for w in WORKLOADS}
    if args.list:
        for w in WORKLOADS:
            print(w)
        return
    names = list(QUICK) if args.quick else (args.only or list(by_name))
    seeds = [0] if args.quick else args.seeds
    unknown = sorted(set(names) - set(by_name))
    if unknown:
        ap.error(f"unknown workload(s) {unknown}; --list shows them")
    path = RESULTS / f"{NAME}.json"
    saved = json.loads(path.read_text()) if path.exists() and not args.fresh else {}
    rows = saved.get("rows", [])
    cache: dict[str, dict] = {}
    for name in [] if args.report else names:
        w = by_name[name]
        for seed in seeds:
            old = next((r for r in rows if r["workload"] == name and r["seed"] == seed), None)
            if old is not None and old.get("definition") != repr(w):
                old = None  # the workload changed: nothing saved applies
            elif old is not None and set(old["suggestions"]) == set(SUGGESTIONS) and (
                    saved.get("default") == DEFAULT and not args.rerun):
                continue
            if w.data not in cache:
                cache[w.data] = DATA[w.data]()
            rows = [r for r in rows if not (r["workload"] == name and r["seed"] == seed)]
            rows.append(run_one(w, cache[w.data], seed, old))
            RESULTS.mkdir(exist_ok=True)
            path.write_text(json.dumps({"machine": machine(), "default": DEFAULT,
                                        "rows": rows}, indent=1))
    order = {w.name: i for i, w in enumerate(WORKLOADS)}
    rows.sort(key=lambda r: (order.get(r["workload"], 99), r["seed"]))
    summary = summarize(rows)
    if not summary:
        return
    cost = max(s["finder_cost"] for s in summary.values())
    text = (f"Machine: {machine()}\n\nCommand: `python benchmarks/finder_quality.py`. "
            f"Cells: suggested OneCycle peak: mean test accuracy over seeds "
            f"(**regret** in points vs the best grid peak). Default suggestion: `{DEFAULT}`. "
            f"Sweep length: at most {cost:.0%} of a workload's fit.\n\n"
            f"{table(summary)}\n\nGrid (half decades):\n\n{grid_table(summary)}\n")
    (RESULTS / f"{NAME}.md").write_text(text)
    plot(summary, RESULTS / f"{NAME}.png")
    print(text)


if __name__ == "__main__":
    main()
