"""The seeds' Fashion-MNIST schedule comparison, reproduced with our callbacks, then tuned.

    python benchmarks/fashion_mnist_schedules.py                       # everything (GPU / big box)
    python benchmarks/fashion_mnist_schedules.py --epochs 2 --train-subset 12000 \
        --only constant piecewise_constant_epoch finder_onecycle      # a CPU-sized subset
    python benchmarks/fashion_mnist_schedules.py --list

*Faithful*: the seed CNN, plain SGD on a summed cross-entropy, batch 256, 10 epochs, each
schedule with the seed documents' exact parameters (optax tutorial, and the
`jax.example_libraries` tutorial's per-epoch and per-step schedules), run as `LRSchedule`
callbacks. Differences from the seeds: batches are not shuffled, as in the seeds, but the last
partial batch is dropped (234 steps per epoch instead of 235: one compiled shape), and the
seeds' polynomial run trained with the piecewise-interpolate optimizer by mistake (we run the
polynomial schedule they defined). With ``--seeds-exact`` the faithful rows run as the seeds
did: the CNN initialized as their stax model (Glorot-normal kernels, tiny random biases;
`SeedCNN(stax_init=True)`) and the last partial batch of each epoch trained (235 steps per
epoch; two compiled shapes), written to ``fashion_mnist_schedules_seeds_exact.{json,md}``.
The last batch matters: with unshuffled batches and plain SGD the test accuracy after an
epoch follows its last updates, and dropping the 96-image batch cost the constant-LR run 2-4
points in epochs 2-10 at the same training loss. The
`jax.example_libraries` per-epoch loop counts epochs from 1, so those schedules are read at
``epoch + 1`` (with 0-based epochs the piecewise-constant
run trains one extra epoch at each higher LR and beats the seeds by more than a point).

*Tuned*: the same CNN with SGD + momentum 0.9 on a mean loss, reshuffled batches, and the LR
chosen by `LRFinder` (default suggestion) for OneCycle, CyclicLR, CosineRestarts and a constant
LR with ReduceLROnPlateau. `finder_onecycle_seeds_sgd` keeps the seeds' optimizer, loss and
unshuffled batches and takes only the OneCycle peak from the finder.

Writes benchmarks/results/fashion_mnist_schedules.{json,md} and a PNG grid of every planned LR
curve (fashion_mnist_schedules_lr.png). Rows from earlier invocations on the same machine and
settings are kept, so the table can be filled in pieces.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import optax
from common import RESULTS, machine
from flax.training.train_state import TrainState

from flax_lr_callbacks import (ArrayDataset, CosineRestarts, CyclicLR, LRFinder, LRSchedule,
                               OneCycle, ReduceLROnPlateau, Trainer, injectable,
                               load_fashion_mnist, preview, recipes)
from flax_lr_callbacks.data import as_batches

_spec = importlib.util.spec_from_file_location(
    "fashion_mnist_example", Path(__file__).parents[1] / "examples" / "fashion_mnist.py")
example = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = example
_spec.loader.exec_module(example)

BATCH = 256


def faithful(total: int, epochs: int) -> dict[str, tuple]:
    """name -> (callback factory, the seeds' reported accuracy or None). `total`: steps."""
    q = {f: int(total * f) for f in (0.1, 0.2, 0.25, 0.5, 0.75)}
    halves = {q[0.25]: 0.5, q[0.5]: 0.5, q[0.75]: 0.5}
    step = lambda s: (lambda: [LRSchedule(s)])  # noqa: E731
    # The jax.example_libraries tutorial's per-epoch loop calls opt_update(i, ...) with
    # i = 1..epochs (1-based), so its schedules are read at epoch + 1.
    epoch = lambda s: (lambda: [LRSchedule(lambda e: s(e + 1), unit="epoch")])  # noqa: E731
    return {
        # optax tutorial (002): accuracies not included in the document
        "constant": (step(optax.constant_schedule(1e-4)), 86.83),  # 004's constant run
        "cosine_decay": (step(optax.cosine_decay_schedule(1e-4, total, alpha=0.95)), None),
        "cosine_onecycle": (step(optax.cosine_onecycle_schedule(
            total, 1e-4, pct_start=0.2, div_factor=30.0, final_div_factor=100.0)), None),
        "exponential_decay": (step(optax.exponential_decay(
            1e-4, total, 0.98, transition_begin=q[0.25])), None),
        "linear_onecycle": (step(optax.linear_onecycle_schedule(
            total, 1e-4, pct_start=0.25, pct_final=0.7, div_factor=10.0,
            final_div_factor=100.0)), None),
        "linear": (step(optax.linear_schedule(1e-4, 1e-5, total, q[0.25])), None),
        "piecewise_constant": (step(optax.piecewise_constant_schedule(3e-4, halves)), None),
        "piecewise_interpolate_linear": (step(optax.piecewise_interpolate_schedule(
            "linear", 3e-4, halves)), None),
        "piecewise_interpolate_cosine": (step(optax.piecewise_interpolate_schedule(
            "cosine", 3e-4, halves)), None),
        "polynomial": (step(optax.polynomial_schedule(1e-4, 1e-5, 0.5, total, q[0.2])), None),
        "warmup_cosine_decay": (step(optax.warmup_cosine_decay_schedule(
            1e-4, 3e-4, q[0.2], total, 1e-5)), None),
        "warmup_exponential_decay": (step(optax.warmup_exponential_decay_schedule(
            1e-4, 3e-4, q[0.2], total, 0.8, q[0.1], end_value=1e-5)), None),
        "join_schedules": (step(optax.join_schedules([
            optax.cosine_decay_schedule(3e-4, 1000, alpha=0.7),
            optax.linear_schedule(2e-4, 1e-4, 1000),
            optax.cosine_onecycle_schedule(1000, 1e-4, div_factor=30.0,
                                           final_div_factor=1000.0)], [1000, 2000])), None),
        "sgdr": (step(optax.sgdr_schedule([
            dict(init_value=3e-4, peak_value=4e-4, decay_steps=1000, warmup_steps=100,
                 end_value=2e-4),
            dict(init_value=2e-4, peak_value=3e-4, decay_steps=1000, warmup_steps=100,
                 end_value=1e-4),
            dict(init_value=1e-4, peak_value=2e-4, decay_steps=1000, warmup_steps=100,
                 end_value=5e-5)])), None),
        # jax.example_libraries tutorial (004): per-epoch, then per-step
        "exl_exponential_epoch": (epoch(optax.exponential_decay(1e-4, epochs, 0.9)), 86.69),
        "exl_exponential_step": (step(optax.exponential_decay(1e-4, total, 0.99)), 86.81),
        "exl_inverse_time_epoch": (epoch(recipes.example_libraries_inverse_time(
            1e-4, epochs, 0.8, staircase=True)), None),
        "exl_inverse_time_step": (step(recipes.example_libraries_inverse_time(
            1e-4, total, 0.99, staircase=True)), None),
        "exl_polynomial_epoch": (epoch(optax.polynomial_schedule(1e-4, 1e-5, 0.3, epochs)),
                                 None),
        "exl_piecewise_constant_epoch": (epoch(recipes.example_libraries_piecewise_constant(
            [1, 4, 7], [3e-4, 2e-4, 1e-4, 1e-5])), 87.69),
    }


def tuned() -> dict[str, tuple]:
    finder = lambda: LRFinder(plot_path=None)  # noqa: E731
    return {
        "finder_onecycle": (lambda: [finder(), OneCycle(max_lr=None)], None),
        # The seeds' own optimizer and loss (plain SGD, summed loss, unshuffled batches):
        # only the LR comes from the finder. Plain SGD has no momentum to cycle.
        "finder_onecycle_seeds_sgd": (lambda: [finder(), OneCycle(max_lr=None,
                                                                  cycle_momentum=False)], None),
        "finder_cyclic": (lambda: [finder(), CyclicLR(1e-4, None, step_size_up=2 * 234,
                                                      mode="triangular2")], None),
        "finder_cosine_restarts": (lambda: [finder(), CosineRestarts(
            2 * 234, t_mult=2.0, base_lr=None)], None),
        "finder_plateau": (lambda: [finder(), ReduceLROnPlateau(
            "val_loss", factor=0.3, patience=0)], None),
    }


SEEDS_SETUP = {"finder_onecycle_seeds_sgd"}  # tuned rows that keep the seeds' optimizer


def run(name: str, factory, *, is_tuned: bool, data: dict, epochs: int, seed: int,
        exact: bool = False) -> dict:
    column = "tuned" if is_tuned else "faithful"
    is_tuned = is_tuned and name not in SEEDS_SETUP
    exact = exact and column == "faithful"
    model = example.SeedCNN(stax_init=exact)
    train = ArrayDataset(data["train"], BATCH, shuffle=is_tuned, seed=seed,
                         drop_remainder=not exact)
    test = as_batches(data["test"], 1000)
    params = model.init(jax.random.PRNGKey(seed), data["train"]["image"][:1])
    tx = (injectable(optax.sgd, learning_rate=0.01, momentum=0.9) if is_tuned
          else injectable(optax.sgd, learning_rate=1e-4))
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    trainer = Trainer(example.make_loss_fn(model, "mean" if is_tuned else "sum"),
                      max_epochs=epochs, callbacks=factory(), log_every_n_steps=39, seed=seed,
                      enable_progress_bar=False)
    start = time.perf_counter()
    trainer.fit(state, train, test)
    seconds = time.perf_counter() - start
    finder = next((c for c in trainer.callbacks if isinstance(c, LRFinder)), None)
    row = {"schedule": name, "column": column, "seed": seed,
           "test_accuracy": 100 * trainer.callback_metrics["val_acc"], "seconds": seconds,
           "compiles": trainer.num_step_compiles}
    if finder is not None:
        row["finder_lr"] = finder.applied_lr
    print(json.dumps(row), flush=True)
    return row


def plot_grid(entries: dict[str, tuple], total: int, spe: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = -(-len(entries) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.4 * rows), squeeze=False)
    for ax, (name, (factory, _)) in zip(axes.flat, entries.items()):
        values = preview(factory(), spe, total // spe, hparams={"learning_rate": 1e-4})
        ax.plot(values["learning_rate"])
        ax.set_title(name, fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(entries):]:
        ax.axis("off")
    fig.suptitle(f"Faithful schedules: planned LR per step ({total} steps)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--train-subset", type=int, default=None, help="first N training images")
    ap.add_argument("--only", nargs="+", default=None, help="schedule names to run")
    ap.add_argument("--list", action="store_true", help="list schedule names and exit")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--seeds-exact", action="store_true",
                    help="faithful rows as the seeds ran them: their stax initialization and "
                         "the last partial batch of every epoch trained")
    args = ap.parse_args()

    data = load_fashion_mnist(args.data_dir)
    if args.train_subset:
        data["train"] = {k: v[:args.train_subset] for k, v in data["train"].items()}
    spe = len(data["train"]["label"]) // BATCH + (
        args.seeds_exact and len(data["train"]["label"]) % BATCH > 0)
    total = spe * args.epochs
    entries = {**{k: (v, False) for k, v in faithful(total, args.epochs).items()},
               **{k: (v, True) for k, v in tuned().items()}}
    if args.list:
        print("\n".join(entries))
        return
    names = args.only or list(entries)
    unknown = sorted(set(names) - set(entries))
    if unknown:
        ap.error(f"unknown schedule(s) {unknown}; --list shows them")

    settings = {"epochs": args.epochs, "train_subset": args.train_subset, "batch": BATCH}
    name_out = "fashion_mnist_schedules" + ("_seeds_exact" if args.seeds_exact else "")
    path = RESULTS / f"{name_out}.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    rows = [r for r in old.get("rows", []) if old.get("settings") == settings
            and old.get("machine") == machine()
            and not (r["schedule"] in names and r["seed"] in args.seeds)]
    for name in names:
        (factory, _), is_tuned = entries[name]
        for seed in args.seeds:
            rows.append(run(name, factory, is_tuned=is_tuned, data=data, epochs=args.epochs,
                            exact=args.seeds_exact,
                            seed=seed))

    RESULTS.mkdir(exist_ok=True)
    seeds_reported = {k: v[0][1] for k, v in entries.items()}
    by_name: dict[str, dict[str, list]] = {}
    for r in rows:
        by_name.setdefault(r["schedule"], {}).setdefault(r["column"], []).append(r)
    lines = ["| schedule | seeds' reported acc. (10 epochs) | faithful acc. | tuned acc. "
             "(finder LR) | time per run |", "|---|---|---|---|---|"]
    for name in entries:
        if name not in by_name:
            continue
        cells = {}
        for col, rs in by_name[name].items():
            accs = [r["test_accuracy"] for r in rs]
            text = f"{statistics.median(accs):.2f}%" + (f" (median of {len(accs)})"
                                                        if len(accs) > 1 else "")
            if col == "tuned" and rs[0].get("finder_lr"):
                text += f" ({statistics.median(r['finder_lr'] for r in rs):.2g})"
            cells[col] = text
        seconds = statistics.median(r["seconds"] for rs in by_name[name].values() for r in rs)
        reported = seeds_reported[name]
        lines.append(f"| {name} | {f'{reported:.2f}%' if reported else '-'} | "
                     f"{cells.get('faithful', '-')} | {cells.get('tuned', '-')} | "
                     f"{seconds:.0f} s |")
    note = (f"Settings: {args.epochs} epochs, "
            f"{args.train_subset or 60000} training images, batch {BATCH}. The seeds' numbers "
            "are for 10 epochs on all 60000 images.")
    table = note + "\n\n" + "\n".join(lines)
    path.write_text(json.dumps({"machine": machine(), "settings": settings, "rows": rows},
                               indent=2))
    (RESULTS / f"{name_out}.md").write_text(f"Machine: {machine()}\n\n{table}\n")
    if not args.seeds_exact:  # the planned curves are the same up to one step per epoch
        plot_grid({k: v[0] for k, v in entries.items() if not v[1]}, total, spe,
                  RESULTS / "fashion_mnist_schedules_lr.png")
    print(f"Machine: {machine()}\n\n{table}")


if __name__ == "__main__":
    main()
