"""Trainer.fit behaviour: data kinds, validation, rng, limits, hooks, errors."""

from typing import NamedTuple

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import MODEL, loss_fn, make_data, make_state

from flax_lr_callbacks import (ArrayDataset, Callback, LRSchedule, LRState, Trainer,
                               TrainerState)


def quiet(**kw):
    return Trainer(loss_fn, enable_progress_bar=False, **kw)


def test_caller_state_is_untouched(data, state):
    """fit donates only its own copy: the caller's params and opt_state stay bitwise equal."""
    before = jax.tree_util.tree_map(np.array, state)
    new = quiet(max_epochs=2, callbacks=[LRSchedule(optax.linear_schedule(0.1, 0.0, 12))]).fit(
        state, data[0])
    after = jax.tree_util.tree_map(np.array, state)
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, after)
    assert not np.array_equal(new.params["params"]["Dense_0"]["kernel"],
                              state.params["params"]["Dense_0"]["kernel"])


def test_fit_learns_and_reports_metrics(data, state):
    """The tiny model learns; callback_metrics holds train_* and val_* host floats."""
    train, val = data
    trainer = quiet(max_epochs=15, log_every_n_steps=3)
    trainer.fit(state, train, val)
    m = trainer.callback_metrics
    assert set(m) == {"train_loss", "train_acc", "val_loss", "val_acc"}
    assert all(isinstance(v, float) for v in m.values())
    assert m["val_acc"] > 0.8


def test_validation_is_example_weighted_mean(state):
    """val_* averages over examples, also with a smaller last batch."""
    d = make_data(50)
    val = ArrayDataset(d, 16, shuffle=False, drop_remainder=False)  # 16,16,16,2
    got = quiet().validate(state, val)
    logits = MODEL.apply(state.params, d["x"])
    want = optax.softmax_cross_entropy_with_integer_labels(logits, d["y"]).mean()
    assert got["val_loss"] == pytest.approx(float(want), rel=1e-5)
    assert got["val_acc"] == pytest.approx(float((logits.argmax(-1) == d["y"]).mean()))


def test_eval_fn_adds_val_metrics(data, state):
    """eval_fn metrics appear as val_<name>."""
    trainer = Trainer(loss_fn, eval_fn=lambda p, b: {"n_pos": (b["y"] > 0).mean()},
                      enable_progress_bar=False)
    trainer.fit(state, *data)
    assert "val_n_pos" in trainer.callback_metrics


def test_rng_is_per_step_and_none_in_validation(data, state):
    """loss_fn(rng=...) gets a different key each step and None in validation."""
    seen = []

    def rng_loss(params, batch, rng):
        if rng is None:
            seen.append("eval")
            return loss_fn(params, batch)
        noise = jax.random.uniform(rng)
        loss, m = loss_fn(params, batch)
        return loss, {**m, "noise": noise}

    trainer = Trainer(rng_loss, max_epochs=1, log_every_n_steps=6, enable_progress_bar=False)
    history = {}

    class Grab(Callback):
        def on_log(self, trainer, state, h):
            history.update(h)

    trainer.callbacks.append(Grab())
    trainer.fit(state, *data)
    assert len(set(history["train_noise"].tolist())) == 6
    assert "eval" in seen


def test_max_steps_stops_mid_epoch(data, state):
    """max_steps caps total steps and the planned total_steps."""
    trainer = quiet(max_epochs=5, max_steps=8)
    trainer.fit(state, data[0])
    assert trainer.global_step == 8 and trainer.total_steps == 8


def test_max_steps_alone_sets_epochs(data, state):
    """max_epochs=None with max_steps runs ceil(max_steps / steps_per_epoch) epochs."""
    trainer = quiet(max_epochs=None, max_steps=10)
    trainer.fit(state, data[0])
    assert trainer.global_step == 10 and trainer.current_epoch == 1


def test_grain_map_and_iter_datasets_and_lists(state):
    """A MapDataset and its to_iter_dataset() know their pass length; a generator needs
    steps_per_epoch."""
    d = make_data(64)
    batches = [jax.tree_util.tree_map(lambda a: a[i:i + 16], d) for i in range(0, 64, 16)]
    map_ds = grain.MapDataset.source(batches)
    quiet(max_epochs=2).fit(state, map_ds)
    iter_ds = map_ds.to_iter_dataset()
    trainer = quiet(max_epochs=2)
    trainer.fit(state, iter_ds)
    assert trainer.global_step == 8
    with pytest.raises(ValueError, match=r"train_data has no len\(\); pass Trainer"):
        quiet().fit(state, iter(batches))
    trainer = quiet(max_epochs=2, steps_per_epoch=2)
    trainer.fit(state, iter(batches))
    assert trainer.global_step == 4
    trainer = quiet(max_epochs=2)
    trainer.fit(state, batches)  # a list is re-iterable and has len
    assert trainer.global_step == 8


def test_two_setters_on_one_hyperparam_raise(data, state):
    """Two schedules setting learning_rate is a ValueError naming both."""
    a, b = LRSchedule(optax.constant_schedule(0.1)), LRSchedule(optax.constant_schedule(0.2))
    with pytest.raises(ValueError, match=r"LRSchedule\(.*\) and LRSchedule\(.*\) both set "
                                         r"'learning_rate'"):
        quiet(callbacks=[a, b]).fit(state, data[0])


def test_schedule_in_optimizer_is_refused(data):
    """An optax schedule inside inject_hyperparams cannot be driven: TypeError at fit."""
    tx = optax.inject_hyperparams(optax.sgd)(learning_rate=optax.linear_schedule(0.1, 0, 10))
    with pytest.raises(TypeError, match="ignores writes to scheduled"):
        quiet(callbacks=[LRSchedule(optax.constant_schedule(0.1))]).fit(make_state(tx), data[0])


def test_optimizer_without_injection_is_refused(data):
    """A plain optax optimizer gets the inject_hyperparams hint."""
    with pytest.raises(TypeError, match="inject_hyperparams"):
        quiet().fit(make_state(optax.sgd(0.1)), data[0])


@pytest.mark.parametrize("kwargs, match", [
    ({"max_epochs": 0}, r"max_epochs must be an int >= 1, got max_epochs=0"),
    ({"max_steps": -1}, r"max_steps must be an int >= 1, got max_steps=-1"),
    ({"log_every_n_steps": 0}, r"log_every_n_steps must be an int >= 1"),
    ({"max_epochs": None}, r"give max_epochs or max_steps"),
    ({"callbacks": [object()]}, r"callbacks\[0\] must be a Callback instance"),
])
def test_bad_arguments(kwargs, match):
    """Each bad constructor argument is named in the error."""
    with pytest.raises((ValueError, TypeError), match=match):
        Trainer(loss_fn, **kwargs)


def test_lrschedule_bad_arguments():
    """LRSchedule validates unit and schedule."""
    with pytest.raises(ValueError, match=r"unit must be one of \['step', 'epoch'\], got "
                                         r"unit='batch'"):
        LRSchedule(optax.constant_schedule(0.1), unit="batch")
    with pytest.raises(TypeError, match="schedule must be callable"):
        LRSchedule(0.1)


HOOKS = ("on_fit_start", "on_train_epoch_start", "on_train_batch_end", "on_log",
         "on_validation_end", "on_train_epoch_end", "on_fit_end")


class Recorder(Callback):
    def __init__(self):
        self.calls = []


for _hook in HOOKS:
    def _record(self, trainer, state, *args, _name=_hook):
        self.calls.append(_name)
    setattr(Recorder, _hook, _record)


def test_hook_order(data, state):
    """Hooks run in Lightning's order; validation ends before the epoch ends."""
    rec = Recorder()
    quiet(max_epochs=1, log_every_n_steps=100, callbacks=[rec]).fit(state, *data)
    steps = ["on_train_batch_end"] * 6
    assert rec.calls == (["on_fit_start", "on_train_epoch_start"] + steps +
                         ["on_log", "on_validation_end", "on_train_epoch_end", "on_fit_end"])


class ScaleState(NamedTuple):
    scale: jax.Array


class HalveEachEpoch(Callback):
    """A modifier whose device state is written from a host hook."""
    scales = ("learning_rate",)

    def init_state(self, trainer, hparams):
        return ScaleState(jnp.float32(1.0))

    def rule(self, ctx, hparams, state):
        for g in self.target_groups(hparams, "learning_rate"):
            hparams[g]["learning_rate"] = hparams[g]["learning_rate"] * state.scale
        return hparams, state

    def on_train_epoch_end(self, trainer, state):
        current = trainer.current_epoch + 1
        trainer.update_callback_state(self, scale=0.5 ** current)


def test_host_writes_to_device_state_do_not_retrace(data, state):
    """A host hook writing device state changes the applied LR with no new trace."""
    from flax_lr_callbacks import LearningRateMonitor

    mon = LearningRateMonitor()
    trainer = quiet(max_epochs=3, callbacks=[LRSchedule(optax.constant_schedule(0.2)),
                                             HalveEachEpoch(), mon])
    trainer.fit(state, data[0])
    np.testing.assert_allclose(mon.history["lr"][1], np.repeat([0.2, 0.1, 0.05], 6), rtol=1e-6)
    assert trainer.num_step_traces == 1 and trainer.num_step_compiles == 1
    with pytest.raises(KeyError, match="no field 'nope'"):
        trainer.update_callback_state(trainer.callbacks[1], nope=1.0)


def test_set_base_hyperparam_without_schedule(data, state):
    """With no schedule, the base value is the optimizer's; the host can retarget it."""
    from flax_lr_callbacks import LearningRateMonitor

    mon = LearningRateMonitor()

    class Retarget(Callback):
        def on_train_epoch_end(self, trainer, state):
            trainer.set_base_hyperparam("learning_rate", 0.01)

    trainer = quiet(max_epochs=2, callbacks=[Retarget(), mon])
    trainer.fit(state, data[0])
    np.testing.assert_allclose(mon.history["lr"][1], [0.1] * 6 + [0.01] * 6, rtol=1e-6)
    assert trainer.num_step_traces == 1 and trainer.num_step_compiles == 1


def test_trainer_state_old_lr_fields_read_lr_state_and_warn():
    """ts.step and the other moved fields return ts.lr_state's, warn naming that path, are
    read-only."""
    lr = LRState(base_hparams={"default": {"learning_rate": jnp.float32(0.1)}},
                 callback_states=(jnp.float32(0.5),), step=jnp.int32(7),
                 steps_per_epoch=jnp.int32(3), total_steps=jnp.int32(30))
    ts = TrainerState(train_state=None, lr_state=lr, key=jax.random.PRNGKey(0),
                      buffer=jnp.zeros((2, 1)))
    expected = {"step": 7, "base_hparams": {"default": {"learning_rate": 0.1}},
                "callback_states": (0.5,), "steps_per_epoch": 3, "total_steps": 30}
    for name, value in expected.items():
        with pytest.warns(DeprecationWarning, match=rf"read ts\.lr_state\.{name} ") as record:
            got = getattr(ts, name)
        assert got is getattr(lr, name)
        jax.tree_util.tree_map(np.testing.assert_allclose, got, value)
        assert record[0].filename == __file__  # points at the reading line
        with pytest.raises(AttributeError):
            setattr(ts, name, got)


class _BadTeardown(Callback):
    def teardown(self, trainer, state):
        raise OSError("disk gone in teardown")


class _RecordsTeardown(Callback):
    torn_down = False

    def teardown(self, trainer, state):
        self.torn_down = True


def test_a_failing_teardown_neither_skips_the_others_nor_hides_the_error(data, state):
    """Every callback is torn down after one fails (a checkpoint last in line still
    finishes); a fit that failed keeps its own error, with the teardown one as a note."""
    from conftest import Crash, CrashAt

    later = _RecordsTeardown()
    trainer = Trainer(loss_fn, max_epochs=1, enable_progress_bar=False,
                      callbacks=[_BadTeardown(), later])
    with pytest.raises(OSError, match="disk gone in teardown"):
        trainer.fit(state, data[0])
    assert later.torn_down

    later = _RecordsTeardown()
    trainer = Trainer(loss_fn, max_epochs=1, enable_progress_bar=False,
                      callbacks=[CrashAt(2), _BadTeardown(), later])
    with pytest.raises(Crash) as info:
        trainer.fit(state, data[0])
    assert later.torn_down
    assert any("_BadTeardown" in n and "disk gone" in n for n in info.value.__notes__)


def test_host_writes_that_could_not_take_effect_are_refused(data, state):
    """A base value a setter overwrites every step, a field write of another shape (it would
    recompile) and a fractional value for an integer field are errors naming the target."""
    from flax_lr_callbacks import OneCycle, ReduceLROnPlateau

    class Probe(Callback):
        def on_fit_start(self, trainer, state):
            with pytest.raises(ValueError, match=r"OneCycle.*sets 'learning_rate' at every step"):
                trainer.set_base_hyperparam("learning_rate", 0.01)
            with pytest.raises(ValueError, match=r"ReduceLROnPlateau.*\.scale: a value of shape "
                                                 r"\(2,\) for a field of shape \(\)"):
                trainer.update_callback_state(plateau, scale=[0.5, 0.5])
            with pytest.raises(ValueError, match=r"does not fit the field's int32 exactly"):
                trainer.update_callback_state(Counter, n=2.5)
            trainer.update_callback_state(Counter, n=3)
            self.ok = True

    class CounterState(NamedTuple):
        n: jax.Array

    class CounterCallback(Callback):
        def init_state(self, plan, hparams):
            return CounterState(n=jnp.int32(0))

    plateau, Counter, probe = ReduceLROnPlateau(monitor="val_loss"), CounterCallback(), Probe()
    trainer = Trainer(loss_fn, max_epochs=1, enable_progress_bar=False,
                      callbacks=[OneCycle(0.1), plateau, Counter, probe])
    trainer.fit(state, *data)
    assert probe.ok and int(trainer.callback_state(Counter).n) == 3
