"""An existing Flax NNX training loop, with OneCycle and ReduceLROnPlateau dropped in.

Lines marked ``# +lr`` were added to a plain NNX loop; ``# ~lr`` lines changed (the optimizer
is built with `injectable`, and the step carries the LR state). The LR callbacks write the
injected values into the `nnx.Optimizer`'s variables in place (``variable[...] = value``).

The step uses the fast NNX pattern: ``nnx.split`` once, a pure function under `jax.jit` that
``nnx.merge``s, steps and ``nnx.split``s again, and `nnx.update` when the host needs the
objects. ``@nnx.jit def step(model, optimizer, lr_state, batch)`` with
``lr_state = lrc.apply(optimizer, lr_state)`` works too and reads more simply, but re-splits
the object graph in Python on every call, which shows on small models.

    python examples/existing_nnx_loop.py --epochs 2
"""

import argparse

import jax
import optax
from flax import nnx

from flax_lr_callbacks import (ArrayDataset, LRCallbacks, OneCycle,  # +lr
                               ReduceLROnPlateau, injectable, load_fashion_mnist)  # ~lr


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(784, 256, rngs=rngs)
        self.out = nnx.Linear(256, 10, rngs=rngs)

    def __call__(self, x):
        return self.out(nnx.relu(self.hidden(x.reshape((x.shape[0], -1)))))


def loss_fn(model, batch):
    logits = model(batch["image"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, (logits.argmax(-1) == batch["label"]).mean()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)

    data = load_fashion_mnist(args.data_dir)
    train = ArrayDataset(data["train"], 128, seed=0)
    test = data["test"]
    model = MLP(nnx.Rngs(0))
    tx = injectable(optax.sgd, learning_rate=0.05, momentum=0.9)  # ~lr
    optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)

    lrc = LRCallbacks([OneCycle(0.1), ReduceLROnPlateau("val_loss", patience=0)],  # +lr
                      steps_per_epoch=len(train), max_epochs=args.epochs)  # +lr
    lr_state = lrc.init(optimizer)  # +lr

    graphdef, state = nnx.split((model, optimizer))

    @jax.jit
    def train_step(state, lr_state, batch):  # ~lr (carries lr_state)
        model, optimizer = nnx.merge(graphdef, state)
        lr_state = lrc.apply(optimizer, lr_state)  # +lr
        (loss, _), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model, batch)
        optimizer.update(model, grads)
        return nnx.state((model, optimizer)), lr_state, loss  # ~lr

    @jax.jit
    def eval_step(state, batch):
        model, _ = nnx.merge(graphdef, state)
        return loss_fn(model, batch)

    for epoch in range(args.epochs):
        batches = train.for_epoch(epoch)
        for i in range(len(batches)):
            state, lr_state, loss = train_step(state, lr_state, batches[i])  # ~lr
        val_loss, val_acc = (float(x) for x in eval_step(state, test))
        nnx.update((model, optimizer), state)
        lr = float(optimizer.opt_state.hyperparams["learning_rate"][...])
        print(f"epoch {epoch + 1}: train loss {float(loss):.4f}  test loss {val_loss:.4f}  "
              f"test acc {val_acc:.4f}  lr {lr:.4g}")
        lr_state = lrc.validation_end(lr_state, {"val_loss": val_loss})  # +lr
        lr_state = lrc.epoch_end(lr_state)  # +lr
    lrc.finish(lr_state)  # +lr
    print(f"train-step compiles: {train_step._cache_size()}")
    return {"test_accuracy": val_acc, "compiles": train_step._cache_size()}


if __name__ == "__main__":
    main()
