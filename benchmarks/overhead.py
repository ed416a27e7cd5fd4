"""Trainer overhead: `Trainer.fit` with the full LR stack vs a bare jitted optax loop.

    python benchmarks/overhead.py --explain --attribute   # the full table (issue 17), ~4 min
    python benchmarks/overhead.py [--models mlp cnn] [--steps 448] [--repeats 5]
                                  [--dispatch 1 4 16 64] [--cnn-steps 64]
                                  [--user-repeats 9] [--user-dispatch 1 10] [--explain]

Rows ``mlp user-style`` (issue 17): the fit a user runs: MLP 784-128-10, batch 128, 10 epochs
of 100 batches, OneCycle + ReduceLROnPlateau(monitor="train_loss", check_on=100) +
LearningRateMonitor + TensorBoardLogger, progress bar on, default log_every_n_steps; one
Trainer fits `--user-repeats` times, each fit timed against the bare loop on the same batches,
interleaved; K=10 fuses 10 steps per dispatch. Rows ``mlp user-style on_device``: the same
fit on an ``ArrayDataset(on_device=True)`` (`--on-device-dispatch`, default K=1, 10, 50)
against the bare loop over the same dataset's host batches, plus a bare loop that gathers on
the device itself (the data path's share of the gain). Rows ``mlp``/``cnn``: `Trainer.fit` with
[OneCycle (momentum cycling), ReduceLROnPlateau, LearningRateMonitor, ProgressBar] and a
TensorBoardLogger over one epoch. Bare: the same model, batches and SGD, with the one-cycle LR
computed inside a plain `jax.jit` step. All exclude compilation (one warm-up run each) and
validation. Reports steps/s ratios (ours / bare; goals >= 0.97 for the MLP, >= 0.99 for the
CNN, >= 1.2 for the MLP's best K), train-step compiles per fit, and host fetches per fit.
With --dispatch, the same fit runs with `steps_per_dispatch=K` for each K (MLP only: XLA:CPU
runs convolutions inside `lax.scan` about 16x slower). `--explain` adds the decomposition of
`overhead_explain.py` (a: compiled step alone, b: host loop, c: log points, d: logger
threads, in us per step) and, when results/overhead_baseline.json exists, the same parts
measured on the code before issue 17. `--attribute` adds the user-style K=1 fit with one piece
switched off at a time (progress bar, TensorBoardLogger, the non-finite check) and with all
three off, each against the bare loop in the same interleaved run: what each piece costs in
the real fit, contention included (the parts above are measured alone).
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
from pathlib import Path

import jax
import numpy as np
import optax
from common import (MODELS, bare_step, interleaved, loss_fn_for, merge_rows, summary,
                    synthetic, timed, write)
from flax.training.train_state import TrainState

from flax_lr_callbacks import (LearningRateMonitor, OneCycle, ReduceLROnPlateau,
                               TensorBoardLogger, Trainer, injectable, schedules)
from flax_lr_callbacks.data import ArrayDataset, on_device


NAN_POLICY = "stop"  # --nan-policy


def against_bare(run_bare, fits, repeats, extra=None):
    """Wall times of the bare loop, of each ``fits[k]()`` (labelled ``"K=<k>"``) and of each
    run of `extra` (by name), after one warm-up (compile) run each, interleaved `repeats`
    times."""
    runs = {"bare": lambda: timed(run_bare)}
    runs.update({f"K={k}": (lambda f=f: timed(f)) for k, f in fits.items()})
    runs.update({name: (lambda f=f: timed(f)) for name, f in (extra or {}).items()})
    for run in runs.values():
        run()  # compile
    return interleaved(runs, repeats)


def bare_on_device(loss_fn, tx, schedule, ds, params, epochs):
    """A bare loop over `ds`'s batches that keeps the arrays on the device and gathers each
    batch inside its jitted step (what ``ArrayDataset(on_device=True)`` does for a fit)."""
    arrays = jax.device_put(ds.arrays)
    step = bare_step(lambda p, b: loss_fn(p, on_device.resolve(b)), tx, schedule=schedule)

    def run():
        p, o, loss = params, tx.init(params), None
        for e in range(epochs):
            order = ds.permutation(e).astype(np.int32)
            for i in range(len(ds)):
                index = order[i * ds.batch_size:(i + 1) * ds.batch_size]
                p, o, loss = step(p, o, on_device.OnDeviceBatch(arrays, index), e * len(ds) + i)
        return loss
    return run


def ratio_row(label, times, name, steps, batch_size, repeats, k=1, trainer=None):
    """A row for the run `name` of `times` (a fit of `trainer`, or a bare variant), as a
    steps/s ratio to the bare loop."""
    ratio = [b / o for o, b in zip(times[name], times["bare"])]
    return {"model": label, "steps_per_dispatch": k, "batch_size": batch_size,
            "steps": steps, "repeats": repeats,
            "bare_steps_per_s": steps / summary(times["bare"])["median"],
            "ours_steps_per_s": steps / summary(times[name])["median"], "ratio": summary(ratio),
            "bare_us_per_step": summary(times["bare"])["median"] / steps * 1e6,
            "ours_us_per_step": summary(times[name])["median"] / steps * 1e6,
            "step_compiles_total": None if trainer is None else
            trainer.num_step_compiles + trainer.num_fused_compiles,
            "host_fetches_per_fit": None,
            "log_every_n_steps": None if trainer is None else trainer.log_every_n_steps}


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
                           nan_policy=NAN_POLICY,
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

    times = against_bare(run_bare, {k: (lambda k=k: run_ours(k)) for k in ks}, repeats)
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
            "step_compiles_total": t.num_step_compiles + t.num_fused_compiles,
            "host_fetches_per_fit": fetches[k], "log_every_n_steps": log_every})
    return rows


ATTRIBUTION = {"K=1 without progress bar": {"progress": False},
               "K=1 without TensorBoardLogger": {"logger": False},
               "K=1 with nan_policy=ignore": {"nan_policy": "ignore"},
               "K=1 without bar, logger, check": {"progress": False, "logger": False,
                                                  "nan_policy": "ignore"}}


def user_style(repeats: int, ks: tuple[int, ...] = (1,), epochs: int = 10,
               batches_per_epoch: int = 100, explain: bool = False,
               on_device: bool = False, attribute: bool = False) -> tuple[list[dict], dict]:
    """The fit a user runs (issue 17): MLP 784-128-10, batch 128, `epochs` epochs of
    `batches_per_epoch` batches, OneCycle + ReduceLROnPlateau(train_loss, every 100 steps) +
    LearningRateMonitor + TensorBoardLogger, progress bar on, default log_every_n_steps. One
    Trainer per K fits `repeats` times, each fit timed against a bare jitted optax loop on the
    same batches (interleaved); compiles excluded (one warm-up fit each).

    The data is a list of batches, or with `on_device` an ``ArrayDataset(on_device=True)`` of
    the same examples, reshuffled per epoch; the bare loop then iterates the same dataset's
    host batches (``for_epoch``: the same batches in the same order), and a third loop, the
    bare step gathering from the arrays on the device, shows how much of the gain is the data
    path alone (row ``bare, data on device``)."""
    cls, batch_size = MODELS["mlp"]
    model = cls()
    batches = synthetic(batches_per_epoch, batch_size)
    params = model.init(jax.random.PRNGKey(0), batches[0]["image"][:1])
    loss_fn = loss_fn_for(model)
    steps = epochs * batches_per_epoch
    bare_tx = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1, momentum=0.9)
    sched = functools.partial(schedules.one_cycle, total_steps=steps, max_value=0.1)
    bare = bare_step(loss_fn, bare_tx, schedule=sched)
    train, epoch_batches = batches, lambda e: batches
    extra = {}
    if on_device:
        arrays = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
        train = ArrayDataset(arrays, batch_size, on_device=True)
        host = ArrayDataset(arrays, batch_size)
        epoch_batches = host.for_epoch
        extra["bare, data on device"] = bare_on_device(loss_fn, bare_tx, sched, host, params,
                                                       epochs)

    def run_bare():
        p, o, loss = params, bare_tx.init(params), None
        for e in range(epochs):
            ds = epoch_batches(e)
            for i in range(batches_per_epoch):
                p, o, loss = bare(p, o, ds[i], e * batches_per_epoch + i)
        return loss

    state = TrainState.create(apply_fn=model.apply, params=params,
                              tx=injectable(optax.sgd, learning_rate=0.1, momentum=0.9))
    logdir = tempfile.mkdtemp(prefix="overhead-user-")

    def make_trainer(k: int = 1, progress: bool = True, logger: bool = True,
                     nan_policy: str | None = None) -> Trainer:
        return Trainer(loss_fn, max_epochs=epochs, steps_per_dispatch=k,
                       enable_progress_bar=progress, nan_policy=nan_policy or NAN_POLICY,
                       callbacks=[OneCycle(0.1), ReduceLROnPlateau(monitor="train_loss",
                                                                   check_on=100),
                                  LearningRateMonitor()],
                       logger=TensorBoardLogger(logdir) if logger else None)

    trainers = {k: make_trainer(k) for k in ks}
    if attribute:  # K=1 with one piece off at a time, in the same interleaved run
        for name, kwargs in ATTRIBUTION.items():
            extra[name] = (lambda t=make_trainer(**kwargs): t.fit(state, train).params)
    times = against_bare(
        run_bare, {k: (lambda k=k: trainers[k].fit(state, train).params) for k in ks}, repeats,
        extra)
    label = "mlp user-style" + (" on_device" if on_device else "")
    rows = [ratio_row(label + (", bare, data on device" if name not in ATTRIBUTION else
                               f" {name}"), times, name, steps, batch_size, repeats)
            for name in extra]
    rows += [ratio_row(label + ("" if k == 1 else f" K={k}"), times, f"K={k}", steps,
                       batch_size, repeats, k=k, trainer=trainers[k]) for k in ks]
    parts = {}
    if explain:
        import overhead_explain as ex

        step = ex.compiled_step_us(
            make_trainer(progress=False), state, batches, bare, params, bare_tx.init(params),
            n=25, repeats=40 * repeats)
        host = ex.host_loop_us(make_trainer, state, batches, epochs, repeats)
        parts = {"a_step_ours": step["ours"], "a_step_bare": step["bare"],
                 "a_step_ours_cpu": step["ours_cpu"], "a_step_bare_cpu": step["bare_cpu"],
                 "b_loop_ours": host["loop"], "b_loop_bare": host["bare"],
                 "c_log_points": host["log"], "d_logger_threads": host["threads"],
                 "gap_measured": rows[-len(ks)]["ours_us_per_step"]
                 - rows[-len(ks)]["bare_us_per_step"]}
    return rows, parts


def explain_table(parts: dict) -> str:
    a = parts["a_step_ours"] - parts["a_step_bare"]
    b = parts["b_loop_ours"] - parts["b_loop_bare"]
    lines = [
        "| part (us per step, user-style MLP fit) | ours | bare | cost |", "|---|---|---|---|",
        f"| (a) compiled step in a tight loop (in-graph + call) | {parts['a_step_ours']:.1f} | "
        f"{parts['a_step_bare']:.1f} | {a:+.1f} |",
        f"| (a') the same, CPU time of all threads | {parts['a_step_ours_cpu']:.1f} | "
        f"{parts['a_step_bare_cpu']:.1f} | "
        f"{parts['a_step_ours_cpu'] - parts['a_step_bare_cpu']:+.1f} |",
        f"| (b) host loop, no-op step, no log points (main-thread CPU) | "
        f"{parts['b_loop_ours']:.1f} | {parts['b_loop_bare']:.1f} | {b:+.1f} |",
        f"| (c) log points and epoch ends (main-thread CPU) | {parts['c_log_points']:.1f} | 0 "
        f"| {parts['c_log_points']:+.1f} |",
        f"| (d) logger writer threads (CPU) | {parts['d_logger_threads']:.1f} | 0 | "
        f"{parts['d_logger_threads']:+.1f} |",
        f"| sum of parts | | | {a + b + parts['c_log_points'] + parts['d_logger_threads']:+.1f} |",
        f"| measured gap (user-style row: ours - bare) | | | {parts['gap_measured']:+.1f} |"]
    return "\n".join(lines)


def before_after(parts: dict) -> str:
    """The decomposition next to the baseline's (results/overhead_baseline.json: the code
    before issue 17, measured the same way), when there is one."""
    path = Path(__file__).parent / "results" / "overhead_baseline.json"
    if not path.exists():
        return ""
    base = json.loads(path.read_text())
    old = base["explain"]

    def cost(p: dict, name: str) -> float:
        return {"a": p["a_step_ours"] - p["a_step_bare"],
                "a'": p["a_step_ours_cpu"] - p["a_step_bare_cpu"],
                "b": p["b_loop_ours"] - p["b_loop_bare"], "c": p["c_log_points"],
                "d": p["d_logger_threads"]}[name]

    lines = [f"Before ({base['code']}) and after, us per step over the bare loop:", "",
             "| part | before | after |", "|---|---|---|"]
    for name in ("a", "a'", "b", "c", "d"):
        lines.append(f"| ({name}) | {cost(old, name):+.1f} | {cost(parts, name):+.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", nargs="*", default=["mlp", "cnn"], choices=list(MODELS))
    ap.add_argument("--steps", type=int, default=448, help="MLP steps per fit")
    ap.add_argument("--cnn-steps", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dispatch", type=int, nargs="+", default=[1, 4, 16, 64],
                    help="steps_per_dispatch values for the MLP (each divides 64)")
    ap.add_argument("--user-repeats", type=int, default=9,
                    help="fits of the user-style row (0 skips it)")
    ap.add_argument("--user-dispatch", type=int, nargs="+", default=[1, 10],
                    help="steps_per_dispatch values of the user-style row (each divides 50)")
    ap.add_argument("--on-device-dispatch", type=int, nargs="*", default=[1, 10, 50],
                    help="steps_per_dispatch values of the user-style fit on an "
                         "ArrayDataset(on_device=True) (each divides 50; none skips it)")
    ap.add_argument("--nan-policy", default="stop", choices=["stop", "skip", "ignore"],
                    help="the Trainer's nan_policy (default 'stop'; 'ignore' shows the cost "
                         "of the in-graph non-finite check)")
    ap.add_argument("--attribute", action="store_true",
                    help="also the user-style K=1 fit without its progress bar, without its "
                         "logger, with nan_policy='ignore', and without all three")
    ap.add_argument("--explain", action="store_true",
                    help="also decompose the user-style per-step cost (a)-(d)")
    args = ap.parse_args()
    global NAN_POLICY
    NAN_POLICY = args.nan_policy
    rows, parts = [], {}
    if args.user_repeats:
        rows, parts = user_style(args.user_repeats, tuple(args.user_dispatch),
                                 explain=args.explain, attribute=args.attribute)
        if args.on_device_dispatch:
            rows += user_style(args.user_repeats, tuple(args.on_device_dispatch),
                               on_device=True)[0]
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
                     f"{r['step_compiles_total'] or '-'} | {r['host_fetches_per_fit'] or '-'} |")
    table = "\n".join(lines)
    payload = {"rows": rows}
    if parts:
        payload["explain"] = parts
        table += "\n\n" + explain_table(parts)
        compared = before_after(parts)
        if compared:
            table += "\n\n" + compared
    write("overhead", payload, table)


if __name__ == "__main__":
    main()
