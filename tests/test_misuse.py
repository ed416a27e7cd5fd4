"""Misuse that used to fail late or obscurely now fails at once, saying what to do instead:
the drop-in `LRCallbacks` called the wrong way, `loss_fn` outputs of the wrong shape, and
settings that only a fit can check (a warmed hyperparameter the optimizer lacks)."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import loss_fn, make_data, make_state
from flax_lr_callbacks import (ArrayDataset, LRCallbacks, OneCycle, ReduceLROnPlateau, Trainer,
                               Warmup, injectable)


def _lrc(**kwargs):
    return LRCallbacks([OneCycle(0.1), ReduceLROnPlateau("val_loss", **kwargs)],
                       steps_per_epoch=3, max_epochs=4)


def test_swapped_apply_arguments_are_named():
    state = make_state()
    lrc = _lrc()
    lr_state = lrc.init(state.opt_state)
    with pytest.raises(TypeError, match=r"swapped; call apply\(opt_state, lr_state\)"):
        lrc.apply(lr_state, state.opt_state)
    with pytest.raises(TypeError, match="lr_state must be the LRState returned by "
                                        r"LRCallbacks.init\(opt_state\), got NoneType"):
        lrc.apply(state.opt_state, None)


def test_the_pair_apply_returns_is_not_an_lr_state():
    """The NNX form (lr_state = apply(...)) in a linen loop keeps the (opt_state, lr_state)
    pair; the next call says to unpack it."""
    state = make_state()
    lrc = _lrc()
    pair = lrc.apply(state.opt_state, lrc.init(state.opt_state))
    with pytest.raises(TypeError, match="unpack it: opt_state, lr_state = lrc.apply"):
        lrc.apply(state.opt_state, pair)
    with pytest.raises(TypeError, match="unpack it"):
        lrc.epoch_end(pair)


def test_host_calls_inside_jit_say_where_to_call_them():
    state = make_state()
    lrc = _lrc()
    lr_state = lrc.init(state.opt_state)
    for call in (lambda s: lrc.epoch_end(s), lambda s: lrc.validation_end(s, {"val_loss": 1.0})):
        with pytest.raises(RuntimeError, match="host call and was called inside jax.jit; "
                                               "call it outside the jitted step"):
            jax.jit(call)(lr_state)


def test_bad_metrics_are_named():
    state = make_state()
    lrc = _lrc()
    lr_state = lrc.init(state.opt_state)
    with pytest.raises(TypeError, match="validation_end: metrics must be a dict"):
        lrc.validation_end(lr_state, 0.3)
    with pytest.raises(TypeError, match="epoch_end: metrics must be a dict or None"):
        lrc.epoch_end(lr_state, [0.3])


class EpochPlateauLoop:
    """A hand loop whose only LR callback is an epoch-end plateau (3 steps an epoch)."""

    def __init__(self):
        self.lrc = LRCallbacks([ReduceLROnPlateau("val_loss", check_on="epoch")],
                               steps_per_epoch=3, max_epochs=4)
        self.opt_state = make_state().opt_state
        self.lr_state = self.lrc.init(self.opt_state)
        self._step = jax.jit(self.lrc.apply)

    def steps(self, n):
        for _ in range(n):
            self.opt_state, self.lr_state = self._step(self.opt_state, self.lr_state)
        return self.lr_state


def test_forgetting_epoch_end_warns_once():
    """Steps run past an epoch without epoch_end: an epoch-end plateau would never check."""
    loop = EpochPlateauLoop()
    lrc, lr_state = loop.lrc, loop.steps(7)  # into the third epoch
    with pytest.warns(RuntimeWarning, match=r"validation_end at step 7 \(epoch 2.*but "
                                            r"epoch_end\(\) was called for 0 epochs"):
        lr_state = lrc.validation_end(lr_state, {"val_loss": 1.0})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lrc.validation_end(lr_state, {"val_loss": 1.0})  # once is enough


def test_calling_epoch_end_every_epoch_never_warns():
    loop = EpochPlateauLoop()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(4):
            lr_state = loop.lrc.validation_end(loop.steps(3), {"val_loss": 1.0})
            loop.lr_state = loop.lrc.epoch_end(lr_state)
        loop.lrc.finish(loop.lr_state)


@pytest.mark.parametrize("bad, match", [
    (lambda p, b: (jnp.ones(3), {}), r"returned loss of shape \(3,\); it must be a scalar"),
    (lambda p, b: [loss_fn(p, b)[0], {}], r"returned a list of 2 items \(array, dict\)"),
    (lambda p, b: (loss_fn(p, b)[0], {"acc": jnp.ones(4)}),
     r"returned metric 'acc' of shape \(4,\)"),
    (lambda p, b: (loss_fn(p, b)[0], 0.5), r"the tuple \(loss, \{name: scalar\}\)"),
    (lambda p, b: "loss", r"returned a str as its loss"),
])
def test_loss_fn_outputs_are_checked_when_traced(bad, match):
    trainer = Trainer(bad, enable_progress_bar=False)
    with pytest.raises((TypeError, ValueError), match=r"loss_fn .*" + match):
        trainer.fit(make_state(), ArrayDataset(make_data(), 16))


def test_warmup_of_a_hyperparameter_the_optimizer_lacks():
    trainer = Trainer(loss_fn, enable_progress_bar=False,
                      callbacks=[Warmup(OneCycle(0.1), 5, hyperparam="bogus")])
    with pytest.raises(ValueError, match=r"Warmup\(hyperparam='bogus'\): the optimizer injects "
                                         r"no such hyperparameter; it injects \['learning_rate', "
                                         r"'momentum'\]"):
        trainer.fit(make_state(), ArrayDataset(make_data(), 16))


def test_injectable_refuses_bad_rates():
    for value, kind in (("0.1", TypeError), (-0.1, ValueError), (np.nan, ValueError)):
        with pytest.raises(kind, match="learning_rate"):
            injectable(optax.sgd, learning_rate=value)
    with pytest.raises(ValueError, match="momentum must be in"):
        injectable(optax.sgd, learning_rate=0.1, momentum=-0.9)
