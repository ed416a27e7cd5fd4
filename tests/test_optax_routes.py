"""The README's optax/flax routes: gradient clipping, accumulation, mixed precision, validation
every N steps, and how our plateau and one-cycle relate to optax's. One trace each."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from conftest import loss_fn, make_state
from flax.training.train_state import TrainState

from flax_lr_callbacks import (Callback, LearningRateMonitor, ModelCheckpoint, OneCycle,
                               ReduceLROnPlateau, Trainer, injectable)

PLAN = {"learning_rate": 0.1, "momentum": 0.9}


def fit_one_cycle(state, data, loss=loss_fn, epochs=2):
    train, val = data
    cycle, monitor = OneCycle(0.3), LearningRateMonitor()
    trainer = Trainer(loss, max_epochs=epochs, log_every_n_steps=4, enable_progress_bar=False,
                      callbacks=[cycle, monitor])
    out = trainer.fit(state, train, val)
    planned = cycle.curve(trainer.total_steps, trainer.steps_per_epoch, hparams=PLAN)
    np.testing.assert_allclose(monitor.history["lr"][1], planned["learning_rate"], rtol=1e-6)
    assert trainer.num_step_traces == 1 and trainer.num_step_compiles == 1
    return trainer, out


def test_gradient_clipping_in_a_chain(data):
    """optax.chain(clip_by_global_norm, injectable(...)): the callbacks find the LR inside."""
    tx = optax.chain(optax.clip_by_global_norm(1.0),
                     injectable(optax.sgd, learning_rate=0.1, momentum=0.9))
    fit_one_cycle(make_state(tx), data)


def test_gradient_accumulation_with_multisteps(data):
    """optax.MultiSteps(k=2): the LR follows the plan per micro-step, params move every 2nd."""
    tx = optax.MultiSteps(injectable(optax.sgd, learning_rate=0.1, momentum=0.9),
                          every_k_schedule=2)
    trainer, out = fit_one_cycle(make_state(tx), data)
    assert int(out.opt_state.gradient_step) == trainer.total_steps // 2


class BF16MLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Dense(16, dtype=jnp.bfloat16)(x))
        return nn.Dense(3, dtype=jnp.bfloat16)(x).astype(jnp.float32)


def test_mixed_precision_bf16_compute_f32_params(data):
    """dtype=jnp.bfloat16 computes in bf16, keeps float32 params and float32 hyperparameters."""
    model = BF16MLP()

    def bf16_loss(params, batch):
        logits = model.apply(params, batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()

    params = model.init(jax.random.PRNGKey(0), np.zeros((1, 4), np.float32))
    state = TrainState.create(apply_fn=model.apply, params=params,
                              tx=injectable(optax.sgd, learning_rate=0.1, momentum=0.9))
    _, out = fit_one_cycle(state, data, loss=bf16_loss)
    assert {x.dtype for x in jax.tree_util.tree_leaves(out.params)} == {jnp.dtype("float32")}


class ValidateEvery(Callback):
    """Validation every `n` steps (Lightning's val_check_interval), as a 10-line callback."""

    def __init__(self, n, val_data):
        self.n, self.val_data, self.seen = n, val_data, []

    def on_train_batch_end(self, trainer, state):
        if trainer.global_step % self.n == 0:
            metrics = trainer.validate(trainer.trainer_state.train_state, self.val_data)
            trainer.callback_metrics.update(metrics)
            if trainer.logger is not None:
                trainer.logger.log_metrics(metrics, step=trainer.global_step - 1)
            self.seen.append(trainer.global_step)


def test_validation_every_n_steps(data, tmp_path):
    """ValidateEvery(4) feeds val_loss to a step-based ModelCheckpoint, one trace."""
    train, val = data
    every = ValidateEvery(4, val)
    ckpt = ModelCheckpoint(tmp_path / "c", every_n_steps=4, every_n_epochs=None,
                           monitor="val_loss", save_top_k=1)
    trainer = Trainer(loss_fn, max_epochs=2, enable_progress_bar=False,
                      callbacks=[OneCycle(0.3), every, ckpt])
    trainer.fit(make_state(), train)
    assert every.seen == [4, 8, 12]
    assert ckpt.best_step in (4, 8, 12)
    assert trainer.num_step_traces == 1


def test_plateau_vs_optax_contrib_reduce_on_plateau():
    """Same decisions as optax.contrib.reduce_on_plateau once patience is shifted by one:
    ours (PyTorch's) reduces on the (patience+1)-th bad evaluation, optax's on the
    patience-th."""
    losses = [1.0, 0.9, 0.95, 0.97, 0.96, 0.98, 0.99, 0.94, 0.97, 0.99, 1.0, 1.01]
    ours = ReduceLROnPlateau("val_loss", factor=0.5, patience=1, threshold=1e-4, cooldown=1)
    state, ours_scales = ours.init(), []
    for loss in losses:
        state, _ = ours.update(state, loss, None)
        ours_scales.append(state.scale)
    tx = optax.contrib.reduce_on_plateau(factor=0.5, patience=2, rtol=1e-4, atol=0.0,
                                         cooldown=1, accumulation_size=1)
    params = {"w": jnp.zeros(())}
    opt_state = tx.init(params)
    theirs = []
    for loss in losses:
        _, opt_state = tx.update(params, opt_state, value=jnp.float32(loss))
        theirs.append(float(opt_state.scale))
    np.testing.assert_allclose(ours_scales, theirs, rtol=1e-6)
    assert ours_scales[-1] == 0.125  # three reductions happened


def test_one_cycle_vs_optax_cosine_onecycle():
    """OneCycle (PyTorch's) and optax.cosine_onecycle_schedule share the shape: peak at
    pct_start, start at max/div, end at start/final_div; PyTorch's peak step is one earlier."""
    total, peak = 100, 0.3
    ours = OneCycle(peak, cycle_momentum=False).curve(total, total, hparams=PLAN)
    ours = np.asarray(ours["learning_rate"])
    sched = optax.cosine_onecycle_schedule(total, peak, pct_start=0.3, div_factor=25.0,
                                           final_div_factor=1e4)
    theirs = np.array([float(sched(t)) for t in range(total)])
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-6)  # 0.3 / 25
    assert int(np.argmax(ours)) == 29 and int(np.argmax(theirs)) == 30
    np.testing.assert_allclose(ours.max(), theirs.max(), rtol=1e-6)
    assert abs(ours[-1] - 0.3 / 25 / 1e4) < 1e-8 and theirs[-1] > ours[-1]
