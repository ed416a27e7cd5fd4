"""Shared tiny model and data for the tests."""

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from flax.training.train_state import TrainState

from flax_lr_callbacks import ArrayDataset, Callback, injectable


class TinyMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(nn.relu(nn.Dense(16)(x)))


MODEL = TinyMLP()


def make_data(n=96, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 1).astype(np.int32)
    return {"x": x, "y": y}


def loss_fn(params, batch):
    logits = MODEL.apply(params, batch["x"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    return loss, {"acc": (logits.argmax(-1) == batch["y"]).mean()}


def make_state(tx=None, seed=0):
    params = MODEL.init(jax.random.PRNGKey(seed), np.zeros((1, 4), np.float32))
    tx = tx if tx is not None else injectable(optax.sgd, learning_rate=0.1, momentum=0.9)
    return TrainState.create(apply_fn=MODEL.apply, params=params, tx=tx)


@pytest.fixture
def data():
    """96 examples -> 6 batches of 16 per epoch."""
    d = make_data()
    return ArrayDataset(d, 16, seed=0), ArrayDataset(d, 32, shuffle=False, drop_remainder=False)


@pytest.fixture
def state():
    return make_state()


class Crash(Exception):
    """A simulated crash (tests of checkpoints and resume)."""


class CrashAt(Callback):
    """Raises `Crash` once `trainer.global_step` reaches `step` (after that step's hooks of
    the callbacks before it, including any checkpoint due there)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, state):
        if trainer.global_step >= self.step:
            raise Crash(f"simulated crash after step {trainer.global_step}")
