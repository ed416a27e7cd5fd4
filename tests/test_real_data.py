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


def test_finder_suggestions_on_the_seed_cnn_curve():
    """On an 8k-image subset: valley sits on the falling part far below the blow-up; the
    default peak sits a decade or more above it, in the range where 10-epoch OneCycle runs of
    this model do best (0.03-0.2; 0.3 diverged), below where the sweep diverged."""
    ex = example_module()
    data = fashion_mnist.load_fashion_mnist(download=False)
    subset = {k: v[:8192] for k, v in data["train"].items()}
    model = ex.SeedCNN()
    params = model.init(jax.random.PRNGKey(0), subset["image"][:1])
    state = TrainState.create(apply_fn=model.apply, params=params,
                              tx=injectable(optax.sgd, learning_rate=0.1, momentum=0.9))
    result = Trainer(ex.make_loss_fn(model), enable_progress_bar=False).lr_find(
        state, ArrayDataset(subset, 64), num_steps=100, progress=False)
    valley, peak = result.suggestions["valley"], result.suggestion
    end = result.lrs[result.stopped_at] if result.stopped_at is not None else result.lrs[-1]
    i = int(np.argmin(np.abs(result.lrs - valley)))
    start = result.losses[:5].mean()
    assert result.losses[max(i - 2, 0):i + 3].mean() < 0.9 * start  # well below the start
    assert np.gradient(result.smoothed_losses)[i] < 0  # on the falling part
    assert valley < end / 10  # far below where it diverged
    assert result.method == "peak" and 10 * valley < peak < end
    assert 0.03 <= peak <= 0.2, peak


@pytest.mark.parametrize("name", ["existing_linen_loop", "existing_nnx_loop"])
def test_drop_in_examples_train_with_one_compile(name, capsys):
    """The two hand-written-loop examples, one epoch of the MLP on the real data."""
    result = example_module(name).main(["--epochs", "1"])
    assert result["compiles"] == 1
    assert result["test_accuracy"] > 0.8
    assert "epoch 1:" in capsys.readouterr().out


def test_example_lr_find_resume_and_flag_errors(tmp_path, capsys):
    """`--lr-find` with checkpoints, then `--resume` of the finished run: the finder's result
    comes from the checkpoint (no second sweep) and the summary prints; contradictory or
    empty flags are refused before any data is read."""
    ex = example_module()
    args = ["--lr-find", "--limit-steps", "30", "--ckpt-dir", str(tmp_path / "c"),
            "--logdir", str(tmp_path / "runs")]
    first = ex.main(args)
    assert first["steps"] == 30 and first["finder_seconds"] > 0
    again = ex.main(args + ["--resume"])
    assert again["lr_suggestion"] == first["lr_suggestion"] and again["finder_seconds"] is None
    assert "restored from the checkpoint" in capsys.readouterr().out
    for bad in (["--limit-steps", "0"], ["--lr-find", "--lr", "0.3"],
                ["--lr-find", "--schedule", "cosine"]):
        with pytest.raises(SystemExit):
            ex.main(bad)
