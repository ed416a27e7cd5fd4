"""An existing linen training loop, with OneCycle and ReduceLROnPlateau dropped in.

The lines marked ``# +lr`` are everything that was added to a plain loop (the optimizer is
also built with `injectable` instead of ``optax.sgd(...)``, marked ``# ~lr``). Nothing else
changes: your own jitted step, your own evaluation, your own loop.

    python examples/existing_linen_loop.py --epochs 2

Fashion-MNIST, a 784-256-10 MLP, SGD with momentum.
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState

from flax_lr_callbacks import (ArrayDataset, LRCallbacks, OneCycle,  # +lr
                               ReduceLROnPlateau, get_hyperparams, injectable,  # +lr
                               load_fashion_mnist)


class MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = x.reshape((x.shape[0], -1))
        return nn.Dense(10)(nn.relu(nn.Dense(256)(x)))


def loss_fn(params, apply_fn, batch):
    logits = apply_fn(params, batch["image"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, (logits.argmax(-1) == batch["label"]).mean()


@jax.jit
def eval_step(state, batch):
    return loss_fn(state.params, state.apply_fn, batch)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--data-dir", default=None)
    args = p.parse_args(argv)

    data = load_fashion_mnist(args.data_dir)
    train = ArrayDataset(data["train"], 128, seed=0)
    test = data["test"]
    model = MLP()
    params = model.init(jax.random.PRNGKey(0), test["image"][:1])
    tx = injectable(optax.sgd, learning_rate=0.05, momentum=0.9)  # ~lr
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    # TrainState.create leaves `step` a Python int; as an array the first call's signature
    # matches the later ones, so the step compiles once instead of twice.
    state = state.replace(step=jnp.asarray(state.step))

    lrc = LRCallbacks([OneCycle(0.1), ReduceLROnPlateau("val_loss", patience=0)],  # +lr
                      steps_per_epoch=len(train), max_epochs=args.epochs)  # +lr
    lr_state = lrc.init(state.opt_state)  # +lr

    @jax.jit
    def train_step(state, lr_state, batch):  # ~lr (carries lr_state)
        opt_state, lr_state = lrc.apply(state.opt_state, lr_state)  # +lr
        state = state.replace(opt_state=opt_state)  # +lr
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.apply_fn, batch)
        return state.apply_gradients(grads=grads), lr_state, loss  # ~lr

    for epoch in range(args.epochs):
        batches = train.for_epoch(epoch)
        for i in range(len(batches)):
            state, lr_state, loss = train_step(state, lr_state, batches[i])  # ~lr
        val_loss, val_acc = (float(x) for x in eval_step(state, test))
        lr = float(get_hyperparams(state.opt_state)["default"]["learning_rate"])
        print(f"epoch {epoch + 1}: train loss {float(loss):.4f}  test loss {val_loss:.4f}  "
              f"test acc {val_acc:.4f}  lr {lr:.4g}")
        lr_state = lrc.validation_end(lr_state, {"val_loss": val_loss})  # +lr
        lr_state = lrc.epoch_end(lr_state)  # +lr
    lrc.finish(lr_state)  # +lr
    print(f"train-step compiles: {train_step._cache_size()}")
    return {"test_accuracy": val_acc, "compiles": train_step._cache_size()}


if __name__ == "__main__":
    main()
