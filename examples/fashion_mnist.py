"""Train the seed CNN on Fashion-MNIST with a learning-rate schedule chosen by flag.

The model is the one the seed tutorials use (Conv 32 3x3 -> relu -> Conv 16 3x3 -> relu ->
flatten -> Dense 10), batch 256. The run writes TensorBoard logs (per-step LR curve, losses,
validation metrics) and a PNG of the LR curve, and prints the test accuracy and steps/s.

    python examples/fashion_mnist.py                        # 1 epoch, one-cycle
    python examples/fashion_mnist.py --epochs 10 --schedule cosine
    python examples/fashion_mnist.py --limit-steps 50        # a smoke run
    python examples/fashion_mnist.py --lr-find --epochs 10   # LR finder, then OneCycle
    tensorboard --logdir runs/
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import flax.linen as nn
import jax
import optax
from flax.training.train_state import TrainState

from flax_lr_callbacks import (ArrayDataset, LearningRateMonitor, LRFinder, LRSchedule,
                               ModelCheckpoint, OneCycle, TensorBoardLogger, Trainer,
                               injectable, load_fashion_mnist)
from flax_lr_callbacks.finder import DEFAULT_METHOD, SUGGESTIONS
from flax_lr_callbacks.data import as_batches


class SeedCNN(nn.Module):
    """The seed tutorials' CNN: two 3x3 convs (32, 16 filters), one dense layer.

    ``stax_init=True`` initializes as the seeds' `jax.example_libraries.stax` model did
    (Glorot-normal kernels, biases from N(0, 1e-6^2)) instead of Flax's defaults (LeCun-normal
    kernels, zero biases); the benchmark's faithful rows use it.
    """

    num_classes: int = 10
    stax_init: bool = False

    @nn.compact
    def __call__(self, x):
        init = (dict(kernel_init=nn.initializers.glorot_normal(),
                     bias_init=nn.initializers.normal(1e-6)) if self.stax_init else {})
        x = nn.relu(nn.Conv(32, (3, 3), padding="SAME", **init)(x))
        x = nn.relu(nn.Conv(16, (3, 3), padding="SAME", **init)(x))
        return nn.Dense(self.num_classes, **init)(x.reshape((x.shape[0], -1)))


def make_loss_fn(model: nn.Module, reduction: str = "mean"):
    """Cross-entropy (mean, or the seeds' sum over the batch) plus accuracy."""

    def loss_fn(params, batch):
        logits = model.apply(params, batch["image"])
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        loss = losses.sum() if reduction == "sum" else losses.mean()
        return loss, {"acc": (logits.argmax(-1) == batch["label"]).mean()}

    return loss_fn


def make_schedule(name: str, peak: float, total_steps: int):
    """The schedules this example offers, all from optax, as ``step -> lr`` functions."""
    schedules = {
        "constant": lambda: optax.constant_schedule(peak),
        "cosine": lambda: optax.cosine_decay_schedule(peak, total_steps),
        "onecycle": lambda: optax.cosine_onecycle_schedule(total_steps, peak),
        "warmup_cosine": lambda: optax.warmup_cosine_decay_schedule(
            0.0, peak, max(1, total_steps // 10), total_steps),
        "piecewise": lambda: optax.piecewise_constant_schedule(
            peak, {int(total_steps * f): 0.5 for f in (0.25, 0.5, 0.75)}),
        "exponential": lambda: optax.exponential_decay(peak, total_steps, 0.01),
    }
    return schedules[name]()


SCHEDULES = ("onecycle", "cosine", "warmup_cosine", "piecewise", "exponential", "constant")


def plot_lr(monitor: LearningRateMonitor, path: Path) -> None:
    from flax_lr_callbacks.plotting import new_figure, save  # never switches the backend

    if "lr" not in monitor.history:
        return  # a resumed run that had nothing left to train
    fig, ax = new_figure(figsize=(6, 3.2))
    steps, values = monitor.history["lr"]
    ax.plot(steps, values)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title("Applied learning rate")
    save(fig, path)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--schedule", choices=SCHEDULES, default="onecycle")
    p.add_argument("--lr", type=float, default=0.1, help="peak learning rate (SGD, momentum 0.9)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--limit-steps", type=int, default=None, help="stop after this many steps")
    p.add_argument("--data-dir", default=None, help="folder with the Fashion-MNIST IDX files")
    p.add_argument("--logdir", default="runs/fashion_mnist")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-dir", default=None,
                   help="save a checkpoint every epoch (and every 100 steps) into this folder")
    p.add_argument("--resume", action="store_true",
                   help="continue the run saved in --ckpt-dir (after a crash or Ctrl-C)")
    p.add_argument("--lr-find", action="store_true",
                   help="run the LR range test first and use its suggestion as OneCycle's peak")
    p.add_argument("--suggestion", choices=list(SUGGESTIONS), default=DEFAULT_METHOD,
                   help="which finder suggestion to use with --lr-find")
    args = p.parse_args(argv)
    if args.limit_steps is not None and args.limit_steps < 1:
        p.error(f"--limit-steps must be >= 1, got {args.limit_steps}")
    if args.lr_find and (args.schedule != "onecycle" or args.lr != 0.1):
        p.error("--lr-find picks OneCycle's peak itself; drop --schedule and --lr")

    data = load_fashion_mnist(args.data_dir)
    train = ArrayDataset(data["train"], args.batch_size, seed=args.seed)
    test = as_batches(data["test"], 1000)
    steps = args.epochs * len(train)
    if args.limit_steps is not None:
        steps = min(steps, args.limit_steps)

    model = SeedCNN()
    params = model.init(jax.random.PRNGKey(args.seed), data["train"]["image"][:1])
    tx = injectable(optax.sgd, learning_rate=args.lr, momentum=0.9)
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)

    name = f"lr_find_{args.suggestion}_onecycle" if args.lr_find else args.schedule
    logger = TensorBoardLogger(args.logdir, name=name)  # runs/fashion_mnist/<name>/version_N
    monitor = LearningRateMonitor()
    if args.resume and not args.ckpt_dir:
        p.error("--resume needs --ckpt-dir")
    checkpoints = [ModelCheckpoint(args.ckpt_dir, every_n_steps=100)] if args.ckpt_dir else []
    if args.lr_find:
        finder = LRFinder(suggestion=args.suggestion)
        schedule_callbacks = [finder, OneCycle(max_lr=None)]
    else:
        schedule_callbacks = [LRSchedule(make_schedule(args.schedule, args.lr, steps))]
    trainer = Trainer(
        make_loss_fn(model), max_epochs=args.epochs, max_steps=steps, log_every_n_steps=20,
        callbacks=[*schedule_callbacks, monitor, *checkpoints],
        logger=logger, seed=args.seed,
    )
    start = time.perf_counter()
    state = trainer.fit(state, train, test, resume_from="latest" if args.resume else None)
    jax.block_until_ready(state)
    seconds = time.perf_counter() - start
    run_dir = Path(logger.log_dir)
    result = {
        "schedule": name,
        "steps": trainer.global_step,
        "test_accuracy": trainer.callback_metrics["val_acc"],
        "test_loss": trainer.callback_metrics["val_loss"],
        "seconds": seconds,
        "steps_per_second": (trainer.global_step - trainer.start_step) / seconds,
        "step_compiles": trainer.num_step_traces,
    }
    png = run_dir / "lr_curve.png"
    plot_lr(monitor, png)
    if args.lr_find:
        result["lr_suggestion"] = finder.applied_lr
        result["suggestions"] = finder.result.suggestions
        result["finder_seconds"] = finder.result.seconds
        others = ", ".join(f"{k}={v:.3g}" for k, v in finder.result.suggestions.items() if v)
        if trainer.resumed_from is not None:  # the sweep ran before the checkpoint
            cost = "restored from the checkpoint, not run again"
        else:
            cost = (f"sweep {len(finder.result.lrs)} steps in {finder.result.seconds:.1f} s = "
                    f"{finder.result.seconds / (seconds - finder.result.seconds):.1%} of the "
                    f"training after it; plot: {run_dir / 'lr_finder.png'}")
        print(f"LR finder: {args.suggestion} suggestion {finder.applied_lr:.3g} (all: {others}); "
              f"{cost}")
    print(f"schedule={result['schedule']} steps={result['steps']} "
          f"test_accuracy={result['test_accuracy']:.4f} test_loss={result['test_loss']:.4f} "
          f"steps/s={result['steps_per_second']:.1f} (compile included) "
          f"train-step compiles={result['step_compiles']}")
    print(f"TensorBoard logs: {run_dir}  (tensorboard --logdir {args.logdir})")
    print(f"LR curve: {png}")
    return result


if __name__ == "__main__":
    main()
