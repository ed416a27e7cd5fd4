"""Smoke tests on real Fashion-MNIST with the seed CNN (skipped when the files are absent)."""

import importlib.util
import sys
from pathlib import Path

import jax
import numpy as np
import optax
import pytest
from flax.training.train_state import TrainState

from flax_lr_callbacks import ArrayDataset, Trainer, injectable
from flax_lr_callbacks.data import fashion_mnist

pytestmark = pytest.mark.skipif(
    not fashion_mnist.DEBIAN_DIR.is_dir(),
    reason="real Fashion-MNIST absent: apt-get install dataset-fashion-mnist")


def example_module(name="fashion_mnist"):
    path = Path(__file__).parents[1] / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_example", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # flax Modules are dataclasses: they look themselves up
    spec.loader.exec_module(module)
    return module


def test_finder_suggests_on_the_falling_part_of_the_seed_cnn_curve():
    """On an 8k-image subset the valley suggestion sits where the loss is falling."""
    ex = example_module()
    data = fashion_mnist.load_fashion_mnist(download=False)
    subset = {k: v[:8192] for k, v in data["train"].items()}
    model = ex.SeedCNN()
    params = model.init(jax.random.PRNGKey(0), subset["image"][:1])
    state = TrainState.create(apply_fn=model.apply, params=params,
                              tx=injectable(optax.sgd, learning_rate=0.1, momentum=0.9))
    result = Trainer(ex.make_loss_fn(model), enable_progress_bar=False).lr_find(
        state, ArrayDataset(subset, 64), num_steps=100, progress=False)
    lr = result.suggestion
    i = int(np.argmin(np.abs(result.lrs - lr)))
    near = result.losses[max(i - 2, 0):i + 3].mean()
    start = result.losses[:5].mean()
    assert near < 0.9 * start, (lr, near, start)  # well below the starting loss
    assert np.gradient(result.smoothed_losses)[i] < 0  # on the falling part
    end = result.lrs[result.stopped_at] if result.stopped_at is not None else result.lrs[-1]
    assert lr < end / 10  # far below where it diverged


@pytest.mark.parametrize("name", ["existing_linen_loop", "existing_nnx_loop"])
def test_drop_in_examples_train_with_one_compile(name, capsys):
    """The two hand-written-loop examples, one epoch of the MLP on the real data."""
    result = example_module(name).main(["--epochs", "1"])
    assert result["compiles"] == 1
    assert result["test_accuracy"] > 0.8
    assert "epoch 1:" in capsys.readouterr().out
