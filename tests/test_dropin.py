"""Drop-in use: LRCallbacks in hand-written linen and NNX loops equals Trainer.fit."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from compiles import count_compiles
from conftest import loss_fn, make_data, make_state
from flax_lr_callbacks import (
    ArrayDataset,
    LearningRateMonitor,
    LRCallbacks,
    LRFinder,
    NNXTrainState,
    OneCycle,
    ReduceLROnPlateau,
    Trainer,
    get_hyperparams,
    injectable,
)

EPOCHS = 4


def callbacks():
    # threshold 0.9 rel: every validation after the first is "bad", so the plateau reduces
    return [OneCycle(0.3), ReduceLROnPlateau("val_loss", factor=0.5, patience=0, threshold=0.9)]


def data():
    d = make_data()
    return ArrayDataset(d, 16, seed=4), d


def val_loss(params, d):
    return float(loss_fn(params, d)[0])


def trainer_run():
    train, d = data()
    monitor = LearningRateMonitor()
    trainer = Trainer(loss_fn, max_epochs=EPOCHS, callbacks=[*callbacks(), monitor],
                      enable_progress_bar=False, log_every_n_steps=6)
    # validate on the full set in one batch, as the hand loops below do
    state = trainer.fit(make_state(), train, ArrayDataset(d, 96, shuffle=False))
    lrs = monitor.history["lr"][1]
    return state, lrs, trainer


def linen_loop():
    """A typical linen loop; the LRCallbacks lines are the only additions."""
    train, d = data()
    state = make_state()
    lrc = LRCallbacks(callbacks(), steps_per_epoch=len(train), max_epochs=EPOCHS)
    lr_state = lrc.init(state.opt_state)
    lrs = []

    @jax.jit
    def train_step(state, lr_state, batch):
        opt_state, lr_state = lrc.apply(state.opt_state, lr_state)
        state = state.replace(opt_state=opt_state)
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        lr = get_hyperparams(state.opt_state)["default"]["learning_rate"]
        return state.apply_gradients(grads=grads), lr_state, lr

    for epoch in range(EPOCHS):
        batches = train.for_epoch(epoch)
        for i in range(len(batches)):
            state, lr_state, lr = train_step(state, lr_state, batches[i])
            lrs.append(lr)
        lr_state = lrc.validation_end(lr_state, {"val_loss": val_loss(state.params, d)})
        lr_state = lrc.epoch_end(lr_state)
    lrc.finish(lr_state)
    return state, [float(x) for x in lrs], lrc


class NNXMLP(nnx.Module):
    """TinyMLP in NNX, initialized from the linen parameters."""

    def __init__(self, params):
        p = params["params"]
        self.dense0 = nnx.Linear(4, 16, rngs=nnx.Rngs(0))
        self.dense1 = nnx.Linear(16, 3, rngs=nnx.Rngs(0))
        # linen names modules in construction order: Dense_0 is the outer Dense(3)
        self.dense0.kernel[...] = p["Dense_1"]["kernel"]
        self.dense0.bias[...] = p["Dense_1"]["bias"]
        self.dense1.kernel[...] = p["Dense_0"]["kernel"]
        self.dense1.bias[...] = p["Dense_0"]["bias"]

    def __call__(self, x):
        return self.dense1(nnx.relu(self.dense0(x)))


def nnx_loss(model, batch):
    logits = model(batch["x"])
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()


def nnx_loop(fast: bool):
    train, d = data()
    model = NNXMLP(make_state().params)
    optimizer = nnx.Optimizer(model, injectable(optax.sgd, learning_rate=0.1, momentum=0.9),
                              wrt=nnx.Param)
    lrc = LRCallbacks(callbacks(), steps_per_epoch=len(train), max_epochs=EPOCHS)
    lr_state = lrc.init(optimizer)
    lrs = []

    @nnx.jit
    def nnx_step(model, optimizer, lr_state, batch):
        lr_state = lrc.apply(optimizer, lr_state)
        grads = nnx.grad(nnx_loss)(model, batch)
        optimizer.update(model, grads)
        return lr_state, optimizer.opt_state.hyperparams["learning_rate"][...]

    # The fast path: split once, jit a pure function, merge inside.
    graphdef, nnx_state = nnx.split((model, optimizer))

    @jax.jit
    def pure_step(nnx_state, lr_state, batch):
        model, optimizer = nnx.merge(graphdef, nnx_state)
        lr_state = lrc.apply(optimizer, lr_state)
        grads = nnx.grad(nnx_loss)(model, batch)
        optimizer.update(model, grads)
        lr = optimizer.opt_state.hyperparams["learning_rate"][...]
        return nnx.state((model, optimizer)), lr_state, lr

    for epoch in range(EPOCHS):
        batches = train.for_epoch(epoch)
        for i in range(len(batches)):
            if fast:
                nnx_state, lr_state, lr = pure_step(nnx_state, lr_state, batches[i])
            else:
                lr_state, lr = nnx_step(model, optimizer, lr_state, batches[i])
            lrs.append(lr)
        if fast:
            nnx.update((model, optimizer), nnx_state)
        loss = float(nnx_loss(model, d))
        lr_state = lrc.validation_end(lr_state, {"val_loss": loss})
        lr_state = lrc.epoch_end(lr_state)
    return model, [float(x) for x in lrs], lrc, optimizer


def nnx_params(model):
    return {"params": {"Dense_1": {"kernel": model.dense0.kernel[...],
                                   "bias": model.dense0.bias[...]},
                       "Dense_0": {"kernel": model.dense1.kernel[...],
                                   "bias": model.dense1.bias[...]}}}


def test_linen_loop_equals_trainer():
    t_state, t_lrs, trainer = trainer_run()
    l_state, l_lrs, lrc = linen_loop()
    assert len(l_lrs) == len(t_lrs) == 24
    np.testing.assert_array_equal(np.float32(l_lrs), np.float32(t_lrs))
    plateau_t, plateau_l = trainer.callbacks[1], lrc.callbacks[1]
    assert plateau_l.reductions and [r["step"] for r in plateau_l.reductions] == [
        r["step"] for r in plateau_t.reductions]
    for a, b in zip(jax.tree_util.tree_leaves(l_state.params),
                    jax.tree_util.tree_leaves(t_state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("fast", [False, True], ids=["nnx.jit", "split+jax.jit"])
def test_nnx_loop_equals_linen_loop(fast):
    l_state, l_lrs, _ = linen_loop()
    model, n_lrs, lrc, optimizer = nnx_loop(fast)
    np.testing.assert_array_equal(np.float32(n_lrs), np.float32(l_lrs))
    # Same math, different programs (NNX traces its own graph): equal to float rounding.
    for a, b in zip(jax.tree_util.tree_leaves(nnx_params(model)),
                    jax.tree_util.tree_leaves(l_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    assert lrc.callbacks[1].reductions


@pytest.mark.parametrize("committed", [False, True])
def test_host_writes_do_not_recompile_user_step(committed):
    train, d = data()
    state = make_state()
    if committed:  # the LR state follows the optimizer state's placement either way
        state = jax.device_put(state, jax.devices()[0])
    lrc = LRCallbacks(callbacks(), steps_per_epoch=len(train), max_epochs=EPOCHS)
    lr_state = lrc.init(state.opt_state)
    traces = []
    chex.clear_trace_counter()  # chex counts per function across parametrized runs

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(opt_state, lr_state):
        traces.append(1)
        return lrc.apply(opt_state, lr_state)

    opt_state = state.opt_state
    for epoch in range(EPOCHS):
        for _ in range(len(train)):
            opt_state, lr_state = step(opt_state, lr_state)
        lr_state = lrc.validation_end(lr_state, {"val_loss": 1.0})  # plateau reduces
        lr_state = lrc.epoch_end(lr_state)
    assert lrc.callbacks[1].reductions
    assert len(traces) == 1
    with count_compiles() as compiles:  # host-written state: still the first executable
        step(opt_state, lr_state)
    assert compiles == []


def test_refuses_trainer_only_callbacks():
    with pytest.raises(TypeError, match="LRFinder.*needs the Trainer"):
        LRCallbacks([LRFinder()], steps_per_epoch=2, max_epochs=1)
    with pytest.raises(TypeError, match="needs the Trainer"):
        LRCallbacks([ReduceLROnPlateau("train_loss", check_on=10)], steps_per_epoch=2,
                    max_epochs=1)
    with pytest.raises(ValueError, match="steps_per_epoch must be an int >= 1"):
        LRCallbacks([], steps_per_epoch=0, max_epochs=1)


def test_state_dict_round_trip():
    train, _ = data()
    lrc = LRCallbacks(callbacks(), steps_per_epoch=len(train), max_epochs=EPOCHS)
    lr_state = lrc.init(make_state().opt_state)
    for v in (1.0, 2.0, 3.0):
        lr_state = lrc.validation_end(lr_state, {"val_loss": v})
        lr_state = lrc.epoch_end(lr_state)
    saved = lrc.state_dict()
    other = LRCallbacks(callbacks(), steps_per_epoch=len(train), max_epochs=EPOCHS)
    other.init(make_state().opt_state)
    restored = other.resume(lr_state, saved)
    assert other.state_dict() == saved and other.current_epoch == 3
    assert jnp.array_equal(restored.callback_states[1].scale, lr_state.callback_states[1].scale)


def test_trainer_fits_nnx_models_like_linen():
    """Trainer.fit on NNXTrainState gives the linen run's LR trajectory and parameters."""
    t_state, t_lrs, trainer = trainer_run()
    train, d = data()
    model = NNXMLP(make_state().params)
    state = NNXTrainState.create(model, injectable(optax.sgd, learning_rate=0.1, momentum=0.9))
    monitor = LearningRateMonitor()

    def loss(model, batch):
        return nnx_loss(model, batch), {}

    nnx_trainer = Trainer(loss, max_epochs=EPOCHS, callbacks=[*callbacks(), monitor],
                          enable_progress_bar=False, log_every_n_steps=6)
    out = nnx_trainer.fit(state, train, ArrayDataset(d, 96, shuffle=False))
    np.testing.assert_array_equal(np.float32(monitor.history["lr"][1]), np.float32(t_lrs))
    assert nnx_trainer.num_step_compiles == 1
    out.update(model)
    for a, b in zip(jax.tree_util.tree_leaves(nnx_params(model)),
                    jax.tree_util.tree_leaves(t_state.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # validation ran on the NNX model too
    assert abs(nnx_trainer.callback_metrics["val_loss"] - trainer.callback_metrics["val_loss"]) \
        < 1e-5
    # and the range test works on it
    result = nnx_trainer.lr_find(state, train, num_steps=10, progress=False)
    assert len(result.lrs) == 10


def test_nnx_trainer_checkpoint_resume(tmp_path):
    """NNXTrainState goes through ModelCheckpoint and resume like a linen state."""
    from conftest import Crash, CrashAt

    from flax_lr_callbacks import ModelCheckpoint

    def fit(name, resume=False, crash=None):
        model = NNXMLP(make_state().params)
        state = NNXTrainState.create(model, injectable(optax.sgd, learning_rate=0.1,
                                                        momentum=0.9))
        cbs = [OneCycle(0.2), ModelCheckpoint(tmp_path / name, every_n_steps=4)]
        cbs += [CrashAt(crash)] if crash else []
        trainer = Trainer(nnx_loss, max_epochs=2, callbacks=cbs, enable_progress_bar=False)
        return trainer.fit(state, data()[0], resume_from="latest" if resume else None)

    full = fit("full")
    with pytest.raises(Crash):
        fit("b", crash=9)
    resumed = fit("b", resume=True)
    for a, b in zip(jax.tree_util.tree_leaves(resumed.params),
                    jax.tree_util.tree_leaves(full.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
