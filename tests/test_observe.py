"""The in-graph observe face and its two callbacks, SmoothedPlateau and GradNormGuard."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import loss_fn, make_state
from test_checkpoint import LR_KEY, run
from test_invariants import _transfers_outside_log_points

from flax_lr_callbacks import (Callback, GradNormGuard, LearningRateMonitor, LRCallbacks,
                               Observation, OneCycle, SmoothedPlateau, Trainer, Warmup)


def observe_all(cb, values, make_obs):
    """Runs `cb.observe` (jitted) over `values`; returns the states after each."""
    step = jax.jit(lambda s, v: cb.observe(None, make_obs(v), s))
    state, out = cb.init_state(None, {}), []
    for v in values:
        state = step(state, jnp.float32(v))
        out.append(jax.device_get(state))
    return out


def test_grad_norm_guard_scales_down_on_spike_and_recovers():
    """A spike halves the scale; `recovery_steps` calm steps bring it back to exactly 1."""
    cb = GradNormGuard(threshold=2.0, factor=0.5, recovery_steps=4, warmup_steps=3)
    norms = [1.0, 1.0, 1.0, 1.9, 10.0, 1.0, 1.0, 1.0, 1.0, 1.0, np.nan, 1.0]
    states = observe_all(cb, norms, lambda v: Observation(jnp.float32(0), {}, v))
    scales = [float(s.scale) for s in states]
    r = 2 ** 0.25
    assert scales[:4] == [1.0] * 4  # 1.9 < 2 x average: calm
    np.testing.assert_allclose(scales[4:10], [0.5, 0.5 * r, 0.5 * r ** 2, 0.5 * r ** 3, 1, 1],
                               rtol=1e-6)
    assert scales[10] == 0.5 and int(states[-1].num_spikes) == 2  # a NaN norm is a spike
    assert int(states[4].count) == 4  # the spike did not enter the average


def test_grad_norm_guard_waits_for_warmup():
    """No spike is judged before `warmup_steps` calm steps."""
    cb = GradNormGuard(threshold=2.0, warmup_steps=3)
    states = observe_all(cb, [1.0, 50.0, 1.0, 1.0, 100.0],
                         lambda v: Observation(jnp.float32(0), {}, v))
    assert [int(s.num_spikes) for s in states] == [0, 0, 0, 0, 1]


def test_smoothed_plateau_reduces_after_patience_with_cooldown():
    """Bad steps beyond `patience` reduce; cooldown steps do not count; NaN is skipped."""
    cb = SmoothedPlateau(patience=2, factor=0.5, cooldown=2, beta=0.0, threshold=0.0)
    losses = [1.0, 0.9, 0.9, np.nan, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.9]
    states = observe_all(cb, losses, lambda v: Observation(v, {}))
    scales = [float(s.scale) for s in states]
    # bad at indices 2, 4, 5 (the NaN at 3 is skipped) -> reduce at 5; cooldown 6, 7;
    # bad again 8, 9, 10 -> reduce at 10
    assert scales == [1.0] * 5 + [0.5] * 5 + [0.25] * 2
    assert int(states[-1].num_reductions) == 2


def test_smoothed_plateau_monitors_a_metric_in_max_mode():
    """monitor= a loss-function metric, mode='max'; an unknown name is a clear error."""
    cb = SmoothedPlateau(monitor="acc", mode="max", patience=0, beta=0.0)
    states = observe_all(cb, [0.5, 0.6, 0.6], lambda v: Observation(jnp.float32(1), {"acc": v}))
    assert [float(s.scale) for s in states] == [1.0, 1.0, 0.5]
    with pytest.raises(KeyError, match=r"monitors 'f1'.*available: \['loss', 'acc'\]"):
        SmoothedPlateau(monitor="f1").observe(
            None, Observation(jnp.float32(1), {"acc": jnp.float32(0)}),
            SmoothedPlateau().init_state(None, {}))


def test_bad_arguments():
    """Constructor arguments are validated with the name and the allowed range."""
    with pytest.raises(ValueError, match=r"threshold must be in \(1, inf\], got threshold=1"):
        GradNormGuard(threshold=1)
    with pytest.raises(ValueError, match=r"factor must be in \(0, 1\), got factor=1.5"):
        SmoothedPlateau(factor=1.5)
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\), got beta=1"):
        SmoothedPlateau(beta=1)


def observers():
    return [Warmup(OneCycle(0.3), 2),
            SmoothedPlateau(patience=2, threshold=0.05, beta=0.5),
            GradNormGuard(threshold=1.05, factor=0.7, recovery_steps=3, warmup_steps=2),
            LearningRateMonitor()]


class LRLog(Callback):
    def __init__(self):
        self.lr = []

    def on_log(self, trainer, state, history):
        self.lr += [float(v) for v in history[LR_KEY]]


def test_observers_act_in_a_fit_with_one_compile(data, state):
    """Both callbacks change the LR during a fit; the step is traced and compiled once, also
    with fused steps, and a second fit compiles nothing new."""
    for k in (1, 2):
        cbs = observers()
        trainer = Trainer(loss_fn, max_epochs=4, log_every_n_steps=4, callbacks=cbs,
                          enable_progress_bar=False, steps_per_dispatch=k)
        trainer.fit(state, *data)
        trainer.fit(state, *data)
        if k == 1:
            assert trainer.num_step_traces == 1 and trainer.num_step_compiles == 1
        else:  # 6 batches per epoch: every dispatch is fused
            assert trainer.num_fused_traces == 1 and trainer.num_fused_compiles == 1
        plateau, guard = (jax.device_get(trainer.callback_state(c)) for c in cbs[1:3])
        assert int(plateau.num_reductions) >= 1 and float(plateau.scale) < 1
        assert int(guard.num_spikes) >= 1


def test_observers_have_no_host_sync_between_log_points(monkeypatch, data, state):
    """Deciding every step in-graph pulls nothing to the host between log points."""
    assert _transfers_outside_log_points(monkeypatch, observers(), data, state) == []


@pytest.mark.parametrize("case", ["smoothed_plateau", "grad_norm_guard"])
def test_resume_case_acts_before_and_after_the_resume_point(tmp_path, case):
    """The checkpoint cases of test_checkpoint (bitwise resume) really exercise the
    observers: the LR differs from the plain OneCycle's both before and after step 12."""
    _, _, rec = run(tmp_path, "full", case)
    plain = OneCycle(0.3).curve(24, 6, {"learning_rate": 0.1, "momentum": 0.9})
    changed = [s for s in range(24) if not np.isclose(rec.lr[s], plain["learning_rate"][s])]
    assert min(changed) < 12 < max(changed), changed


class NormProbe(Callback):
    """Records at trace time which norms its observe face was given."""

    def __init__(self, observes):
        self.observes, self.seen = observes, []

    def observe(self, ctx, obs, state):
        self.seen.append((obs.grad_norm is not None, obs.update_norm is not None))
        return state


@pytest.mark.parametrize("observes, expected", [((), (False, False)),
                                                (("grad_norm",), (True, False)),
                                                (("update_norm",), (False, True))])
def test_norms_are_computed_only_when_asked(observes, expected, data, state):
    """The observation carries a norm only when some callback lists it in `observes`."""
    probe = NormProbe(observes)
    Trainer(loss_fn, max_epochs=1, callbacks=[probe], enable_progress_bar=False).fit(
        state, *data)
    assert probe.seen and set(probe.seen) == {expected}


def test_norm_values_match_optax():
    """grad_norm and update_norm are the global norms of the gradients and the update."""
    from flax_lr_callbacks import lr_state as lr_lib

    seen = {}

    class Grab(Callback):
        observes = ("grad_norm", "update_norm")

        def observe(self, ctx, obs, state):
            seen.update(grad=obs.grad_norm, update=obs.update_norm)
            return state

    grads = {"a": jnp.arange(3.0), "b": jnp.ones((2, 2))}
    old = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
    new = {"a": jnp.full(3, 0.5), "b": jnp.zeros((2, 2))}
    lr_lib.observe([Grab()], None, ((),), jnp.float32(1), {}, grads, old, new)
    np.testing.assert_allclose(seen["grad"], optax.tree.norm(grads), rtol=1e-6)
    np.testing.assert_allclose(seen["update"], optax.tree.norm(new), rtol=1e-6)


def test_dropin_observe_in_a_module_level_jit_step(data):
    """LRCallbacks.observe feeds a GradNormGuard from a hand-written jitted step."""
    state = make_state(optax.inject_hyperparams(optax.sgd)(learning_rate=0.1))
    guard = GradNormGuard(threshold=1.05, factor=0.5, recovery_steps=3, warmup_steps=2)
    lrc = LRCallbacks([guard], steps_per_epoch=6, max_epochs=2)
    lr_state = lrc.init(state.opt_state)
    traces = []

    @jax.jit
    def train_step(state, lr_state, batch):
        traces.append(1)
        opt_state, lr_state = lrc.apply(state.opt_state, lr_state)
        state = state.replace(opt_state=opt_state)
        (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
        state = state.apply_gradients(grads=grads)
        return state, lrc.observe(lr_state, loss, grads=grads)

    lrs = []
    for epoch in range(2):
        for batch in data[0].for_epoch(epoch):
            state, lr_state = train_step(state, lr_state, batch)
            lrs.append(state.opt_state.hyperparams["learning_rate"])
        lr_state = lrc.epoch_end(lr_state)
    guard_state = jax.device_get(lr_state.callback_states[0])
    assert len(traces) == 1 and int(guard_state.num_spikes) >= 1
    assert min(float(v) for v in lrs) < 0.1


@jax.jit
def module_level_step(state, lr_state, batch):
    """A Flax-examples-style step: module-level jit, the LR state an ordinary argument."""
    from flax_lr_callbacks import apply_lr, observe_lr

    opt_state, lr_state = apply_lr(state.opt_state, lr_state)
    state = state.replace(opt_state=opt_state)
    (loss, _), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch)
    state = state.apply_gradients(grads=grads)
    return state, observe_lr(lr_state, loss, grads=grads)


@jax.jit
def forgets_write_back(state, lr_state, batch):
    from flax_lr_callbacks import apply_lr

    _, lr_state = apply_lr(state.opt_state, lr_state)  # the new opt_state is dropped
    grads = jax.grad(lambda p: loss_fn(p, batch)[0])(state.params)
    return state.apply_gradients(grads=grads), lr_state


def test_dropin_module_level_jit_with_lr_state_argument(data):
    """apply_lr / observe_lr need no callbacks object: one compile for the whole loop."""
    state = jax.device_put(make_state(), jax.devices()[0])  # committed, as after a step
    lrc = LRCallbacks([OneCycle(0.2), GradNormGuard(threshold=1.05, warmup_steps=2)],
                      steps_per_epoch=6, max_epochs=2)
    lr_state = lrc.init(state.opt_state)
    before = module_level_step._cache_size()
    lrs = []
    for epoch in range(2):
        for batch in data[0].for_epoch(epoch):
            state, lr_state = module_level_step(state, lr_state, batch)
            lrs.append(float(state.opt_state.hyperparams["learning_rate"]))
        lr_state = lrc.epoch_end(lr_state)
    assert module_level_step._cache_size() == before + 1
    plain = OneCycle(0.2).curve(12, 6, {"learning_rate": 0.1, "momentum": 0.9})
    assert lrs[0] == pytest.approx(plain["learning_rate"][0])
    assert int(lr_state.callback_states[1].num_spikes) >= 1


def test_dropin_detects_a_forgotten_write_back(data):
    """A step that drops apply's optimizer state is reported at the next host call."""
    state = make_state()
    lrc = LRCallbacks([OneCycle(0.2)], steps_per_epoch=6, max_epochs=2)
    lr_state = lrc.init(state.opt_state)
    for batch in data[0].for_epoch(0):
        state, lr_state = forgets_write_back(state, lr_state, batch)
    with pytest.raises(RuntimeError, match=r"at 5 of the last steps the optimizer state did not"
                                           r" hold the values apply\(\) wrote"):
        lrc.epoch_end(lr_state)
