"""The Trainer's NaN policy through `fit`: stop (error naming the step, last finite state),
skip (counted), fused steps, one compile, no checkpoint after the NaN, and plateaus that
ignore non-finite values."""

import contextlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import Crash, CrashAt, loss_fn, make_data, make_state

from flax_lr_callbacks import (ArrayDataset, LRSchedule, ModelCheckpoint, NonFiniteLossError,
                               ReduceLROnPlateau, SmoothedPlateau, Trainer)
from flax_lr_callbacks.callbacks.base import Callback, Observation


def indexed_data(n=96, batch=16):
    """Unshuffled batches carrying example indices, so a loss can go bad at a known step."""
    d = make_data(n)
    d["i"] = np.arange(n, dtype=np.int32)
    return ArrayDataset(d, batch, shuffle=False)


def nan_at_example(index, value=jnp.nan):
    """A loss times `value` on the batch holding example `index` (batch index // 16), so its
    gradients are non-finite too."""
    def fn(params, batch):
        loss, metrics = loss_fn(params, batch)
        return loss * jnp.where(jnp.any(batch["i"] == index), value, 1.0), metrics
    return fn


@contextlib.contextmanager
def recorded():
    """Yields a list that receives every warning message raised inside the block."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        messages = []
        yield messages
    messages.extend(str(w.message) for w in caught)


def fit_until_error(trainer, state, data):
    with pytest.raises(NonFiniteLossError) as info:
        trainer.fit(state, data)
    return info.value


def reference_state(steps, state, data, **kw):
    """The state after `steps` finite steps of the same run."""
    trainer = Trainer(loss_fn, max_steps=steps, enable_progress_bar=False, **kw)
    return trainer.fit(state, data)


def assert_bitwise(a, b):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("k", [1, 4])
def test_stop_names_step_and_returns_last_finite_state(k):
    """A NaN loss at step 9 stops at the next log point, naming step/epoch/batch; the state is
    bitwise the one after 9 finite steps; one compile (single or fused)."""
    data, state = indexed_data(), make_state()
    trainer = Trainer(nan_at_example(3 * 16), max_epochs=3, log_every_n_steps=4,
                      steps_per_dispatch=k, enable_progress_bar=False)
    # the bad batch is batch 3 of every epoch; the first is step 3 ...
    err = fit_until_error(trainer, state, data)
    assert (err.step, err.epoch, err.batch) == (3, 0, 3)
    assert "step 3 (epoch 0, batch 3)" in str(err) and "nan" in str(err)
    assert trainer.global_step == 4  # raised at the log point after step 3, not later
    assert_bitwise(err.state, reference_state(3, make_state(), indexed_data()))
    assert trainer.num_step_traces + trainer.num_fused_traces == 1
    assert isinstance(err, FloatingPointError)


def test_stop_frozen_until_the_log_point():
    """The error comes at the next log point (here the epoch end); the steps between the NaN
    and it change nothing."""
    trainer = Trainer(nan_at_example(3 * 16, jnp.inf), max_epochs=2, log_every_n_steps=50,
                      enable_progress_bar=False)
    err = fit_until_error(trainer, make_state(), indexed_data())
    assert (err.step, err.epoch, err.batch) == (3, 0, 3)
    assert trainer.global_step == 6  # steps 4 and 5 ran frozen; the epoch-end log raised
    assert_bitwise(err.state, reference_state(3, make_state(), indexed_data()))


class NanLRAt(Callback):
    """Writes a NaN base learning rate from the host once `step` steps have run."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_end(self, trainer, state):
        if trainer.global_step == self.step:
            trainer.set_base_hyperparam("learning_rate", float("nan"))


def test_stop_on_finite_loss_with_nan_learning_rate():
    """A NaN learning rate written mid-run (finite loss, NaN LR) is caught at the step it
    applies, here in the second epoch, with the parameters still finite."""
    trainer = Trainer(loss_fn, max_epochs=3, log_every_n_steps=3, callbacks=[NanLRAt(8)],
                      enable_progress_bar=False)
    err = fit_until_error(trainer, make_state(), indexed_data())
    assert (err.step, err.epoch, err.batch) == (8, 1, 2) and "loss was finite" in str(err)
    assert "step 8 (epoch 1, batch 2)" in str(err)
    assert trainer.global_step == 9
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(err.state.params))


def test_a_nan_schedule_is_refused_before_training():
    """A schedule that plans NaN is an error at fit start naming the callback and step."""
    sched = LRSchedule(lambda t: jnp.where(t >= 8, jnp.nan, 0.1))
    trainer = Trainer(loss_fn, max_epochs=3, callbacks=[sched], enable_progress_bar=False)
    with pytest.raises(ValueError, match=r"LRSchedule.*learning_rate=nan.*at step 8 \(epoch 1\)"):
        trainer.fit(make_state(), indexed_data())
    assert trainer.global_step == 0


def test_no_checkpoint_after_the_nan(tmp_path):
    """A checkpoint due between the NaN and the log point raises instead of saving; the
    epoch-end save never happens."""
    ckpt = ModelCheckpoint(tmp_path / "ckpt", every_n_steps=2, async_save=False)
    trainer = Trainer(nan_at_example(3 * 16), max_epochs=2, log_every_n_steps=6,
                      callbacks=[ckpt], enable_progress_bar=False)
    err = fit_until_error(trainer, make_state(), indexed_data())
    assert err.step == 3
    assert ckpt.saved_steps == [2]  # step 4's save refused: step 3 was not finite
    assert sorted(int(p.name) for p in (tmp_path / "ckpt").iterdir() if p.name.isdigit()) == [2]


@pytest.mark.parametrize("k", [1, 4])
def test_skip_continues_and_counts(k):
    """skip: NaN steps are dropped (the state equals a run without them), counted in
    callback_metrics and warned about once; train_loss stays finite."""
    data = indexed_data()
    trainer = Trainer(nan_at_example(3 * 16), max_epochs=2, log_every_n_steps=4,
                      steps_per_dispatch=k, nan_policy="skip", enable_progress_bar=False)
    with recorded() as messages:
        out = trainer.fit(make_state(), data)
    assert len(messages) == 1 and "nan_policy='skip': 1 non-finite step" in messages[0]
    assert "steps [3]" in messages[0]
    assert trainer.callback_metrics["train/skipped_steps"] == 2.0  # step 3 and step 9
    assert np.isfinite(trainer.callback_metrics["train_loss"])
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(out))
    assert trainer.num_step_traces == 1 and trainer.num_fused_traces == (k > 1)
    # the state after the skipped step 3 is bitwise the state before it
    short = Trainer(nan_at_example(3 * 16), max_steps=4, log_every_n_steps=4,
                    nan_policy="skip", enable_progress_bar=False)
    with recorded():
        after4 = short.fit(make_state(), indexed_data())
    assert_bitwise(after4, reference_state(3, make_state(), indexed_data()))


def test_ignore_trains_on_nan():
    """ignore: no check, NaN propagates into the parameters (the old behaviour)."""
    trainer = Trainer(nan_at_example(3 * 16), max_epochs=1, nan_policy="ignore",
                      enable_progress_bar=False)
    out = trainer.fit(make_state(), indexed_data())
    assert not np.isfinite(np.asarray(out.params["params"]["Dense_0"]["kernel"])).all()


@pytest.mark.parametrize("bad", ["halt", None, 1, "Stop"])
def test_bad_nan_policy_named(bad):
    """nan_policy is validated with the options listed."""
    with pytest.raises(ValueError, match=r"nan_policy must be one of \['stop', 'skip', 'ignore'\]"):
        Trainer(loss_fn, nan_policy=bad)


def test_resume_restores_the_counters(tmp_path):
    """The skip count is carried state: a resumed run reports the same total (bitwise resume)."""
    kw = dict(max_epochs=3, log_every_n_steps=2, nan_policy="skip", enable_progress_bar=False)
    with recorded():
        full = Trainer(nan_at_example(3 * 16), **kw).fit(make_state(), indexed_data())
    ckpt = ModelCheckpoint(tmp_path / "c", async_save=False)
    with recorded(), pytest.raises(Crash):
        Trainer(nan_at_example(3 * 16), callbacks=[CrashAt(8), ckpt], **kw).fit(
            make_state(), indexed_data())
    resumed = Trainer(nan_at_example(3 * 16), callbacks=[ModelCheckpoint(tmp_path / "c")],
                      **kw)
    with recorded():
        out = resumed.fit(make_state(), indexed_data(), resume_from="latest")
    assert resumed.start_step == 6
    assert resumed.callback_metrics["train/skipped_steps"] == 3.0
    assert_bitwise(out, full)


def test_plateau_ignores_nan_with_warning():
    """ReduceLROnPlateau skips a NaN check (warning naming monitor, value, step), so a NaN
    is never counted as a plateau."""
    plateau = ReduceLROnPlateau(monitor="train_loss", patience=0, check_on="epoch")
    trainer = Trainer(nan_at_example(3 * 16), max_epochs=2, log_every_n_steps=100,
                      nan_policy="ignore", callbacks=[plateau], enable_progress_bar=False)
    with recorded() as messages:
        trainer.fit(make_state(), indexed_data())
    assert messages == ["ReduceLROnPlateau ignores train_loss=nan at step 6 (epoch 0): not "
                        "finite", "ReduceLROnPlateau ignores train_loss=nan at step 12 "
                        "(epoch 1): not finite"]
    assert plateau.reductions == [] and plateau.state.num_evals == 0


def test_smoothed_plateau_ema_survives_nan():
    """SmoothedPlateau: a NaN neither enters the EMA nor counts as bad or as cooldown."""
    cb = SmoothedPlateau(patience=1, factor=0.5, beta=0.5, cooldown=1)
    s = cb.init_state(None, {})
    for loss in [1.0, np.nan, np.inf]:
        s = cb.observe(None, Observation(jnp.float32(loss), {}), s)
    assert float(s.ema) == 0.5 and int(s.count) == 1 and int(s.num_bad) == 0
    assert float(s.best) == 1.0


def test_smoothed_plateau_warns_at_log_point():
    """The host warns about a NaN SmoothedPlateau skipped, from the fetched records."""
    trainer = Trainer(nan_at_example(3 * 16), max_epochs=1, log_every_n_steps=6,
                      nan_policy="skip", callbacks=[SmoothedPlateau()], enable_progress_bar=False)
    with recorded() as messages:
        trainer.fit(make_state(), indexed_data())
    assert any("SmoothedPlateau ignores 1 non-finite value(s) of 'loss'" in m
               and "loss=nan at step 3" in m for m in messages), messages


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("shape", [(784, 128), (3, 3, 4, 8), (5,)])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_check_sees_one_bad_gradient_element(bad, shape, dtype):
    """The check sums matrices through a product with ones (`nan_policy._leaf_sum`): one
    non-finite element anywhere in any leaf still makes the step non-finite."""
    from flax_lr_callbacks.nan_policy import step_is_finite

    check = jax.jit(step_is_finite)
    hparams = {"default": {"learning_rate": jnp.float32(0.1)}}
    good = {"w": jnp.ones(shape, dtype), "b": jnp.ones(3)}
    assert bool(check(jnp.float32(1), good, hparams))
    for at in (0, int(np.prod(shape)) - 1):
        g = np.ones(shape, np.float32)
        g.flat[at] = bad
        assert not bool(check(jnp.float32(1), {"w": jnp.asarray(g, dtype), "b": jnp.ones(3)},
                              hparams))


@pytest.mark.parametrize("imag", [False, True])
@pytest.mark.parametrize("shape", [(3, 4), (6,)])
def test_check_sees_complex_parts(imag, shape):
    """A complex gradient with NaN or inf in its real or its imaginary part is non-finite."""
    from flax_lr_callbacks.nan_policy import step_is_finite

    check = jax.jit(step_is_finite)
    good = np.ones(shape, np.complex64)
    assert bool(check(jnp.float32(1), {"w": jnp.asarray(good)}, {}))
    for bad in (np.nan, np.inf):
        g = good.copy()
        g.flat[-1] = complex(1, bad) if imag else complex(bad, 1)
        assert not bool(check(jnp.float32(1), {"w": jnp.asarray(g)}, {}))


@pytest.mark.parametrize("shape", [(0, 5), (5, 0), (2, 0, 3)])
def test_check_accepts_empty_leaves(shape):
    """Leaves with no elements are finite and compile (a trailing 0 dimension included)."""
    from flax_lr_callbacks.nan_policy import step_is_finite

    tree = {"empty": jnp.zeros(shape), "w": jnp.ones((2, 2))}
    assert bool(jax.jit(step_is_finite)(jnp.float32(1), tree, {}))
    tree["w"] = tree["w"].at[1, 1].set(jnp.nan)
    assert not bool(jax.jit(step_is_finite)(jnp.float32(1), tree, {}))


@pytest.mark.parametrize("k", [1, 3])
def test_grad_norm_guard_sees_the_steps_skip_rejects(k):
    """nan_policy='skip' drops a NaN step, but GradNormGuard (observes_rejected) still counts
    it as a spike and cuts the LR; a callback without the flag keeps its state."""
    from flax_lr_callbacks import GradNormGuard, LearningRateMonitor

    class Counter(Callback):  # counts the steps it observes
        def init_state(self, plan, hparams):
            return jnp.int32(0)

        def observe(self, ctx, obs, state):
            return state + 1

    guard, counter, mon = GradNormGuard(warmup_steps=1, factor=0.5), Counter(), \
        LearningRateMonitor()
    trainer = Trainer(nan_at_example(3 * 16), max_steps=6, log_every_n_steps=6,
                      steps_per_dispatch=k, nan_policy="skip", enable_progress_bar=False,
                      callbacks=[guard, counter, mon])
    with recorded():
        out = trainer.fit(make_state(), indexed_data())
    assert int(trainer.callback_state(guard).num_spikes) == 1
    assert int(trainer.callback_state(counter)) == 5  # step 3 rejected: not observed
    lr = np.asarray(mon.history["lr"][1])
    assert lr[3] == pytest.approx(0.1) and lr[4] == pytest.approx(0.05)
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(out))
