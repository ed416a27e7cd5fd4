"""LR range finder: suggestions on known curves, the compiled sweep, state safety, hand-off."""

import jax
import numpy as np
import optax
import pytest
from conftest import loss_fn, make_data, make_state
from test_tensorboard import read_scalars

from flax_lr_callbacks import (ArrayDataset, Callback, CosineRestarts, CyclicLR,
                               LearningRateMonitor,
                               LRFinder, LRSchedule, OneCycle, TensorBoardLogger, Trainer,
                               Warmup, injectable)
from flax_lr_callbacks import finder, suggestions

LRS = np.geomspace(1e-5, 1.0, 101)  # log10(lr) = -5 + i/20


def bowl(center_log10=-2.0):
    """A smooth loss: flat at 2 for small LRs, falling to a valley at 10**center, rising after."""
    x = np.log10(LRS)
    return 1.0 + np.tanh(-(x - (center_log10 - 1.0))) * 0.5 + 0.5 * np.maximum(
        0, x - center_log10) ** 2


# ----------------------------------------------------------------------------- pure algorithm
def test_sweep_hits_both_ends():
    """Exponential and linear sweeps start at min_lr and end at max_lr exactly."""
    for mode in ("exponential", "linear"):
        lrs = finder.sweep_lrs(1e-6, 3.0, 50, mode)
        assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(3.0) and len(lrs) == 50
    assert np.allclose(np.diff(np.log(finder.sweep_lrs(1e-6, 3.0, 50))), np.log(3e6) / 49)


def test_smoothing_is_bias_corrected():
    """A constant loss stays constant from the first point (no pull towards zero)."""
    np.testing.assert_allclose(finder.smooth(np.full(20, 3.0), 0.98), 3.0)
    s = finder.smooth(np.array([1.0, 3.0]), 0.5)
    assert s[1] == pytest.approx((0.25 * 1 + 0.5 * 3) / 0.75)


def test_stop_rule():
    """Stops at the first non-finite loss, or when smoothed > threshold x best."""
    raw = np.array([1.0, 0.9, 0.8, np.nan, 0.5])
    assert finder.stop_index(raw, finder.smooth(raw, 0.0), 4.0) == 3
    raw = np.array([1.0, 0.5, 0.4, 1.0, 2.5])
    assert finder.stop_index(raw, raw, 4.0) == 4  # 2.5 > 4 * 0.4
    assert finder.stop_index(raw[:4], raw[:4], 4.0) is None
    # sign-safe: a negative loss stops only when it rises by 3x |best| (not at step 1)
    raw = np.array([-2.0, -2.5, -3.0, 5.0, 6.5])
    assert finder.stop_index(raw, raw, 4.0) == 4  # 6.5 > -3 + 3 * 3; 5.0 is not


def test_minimum_and_steep_on_known_curve():
    """minimum = lr at the lowest loss / 10; steep = steepest fall per log-LR."""
    x = np.log10(LRS)
    losses = (x + 2.0) ** 2  # minimum at lr = 1e-2
    assert finder.minimum(LRS, losses) == pytest.approx(1e-3, rel=0.05)
    drop = 2.0 - 1.0 / (1.0 + np.exp(-(x + 3.0) * 8))  # steepest at lr = 1e-3
    assert finder.steep(LRS, drop) == pytest.approx(1e-3, rel=0.15)
    assert finder.gradient(LRS, drop) == pytest.approx(1e-3, rel=0.15)


def test_peak_is_the_larger_of_steepest_and_edge_over_three():
    """peak = max(steepest descent per step, LR at the smoothed minimum / 3)."""
    x = np.log10(LRS)
    # Falls fastest at 1e-4, keeps falling slowly to its minimum at 1e-1, then rises.
    losses = 3.0 - 1.0 / (1.0 + np.exp(-(x + 4.0) * 6)) - 0.1 * (x + 5) + 2.0 * np.maximum(
        0, x + 1) ** 2
    edge = LRS[int(np.argmin(losses))]
    assert edge == pytest.approx(0.1, rel=0.15)
    assert finder.steep(LRS, losses) == pytest.approx(1e-4, rel=0.15)
    assert finder.peak(LRS, losses) == pytest.approx(edge / finder.EDGE_DIVISOR)
    # When the steepest point lies above edge / 4, it is the answer.
    sharp = 2.0 - 1.0 / (1.0 + np.exp(-(x + 1.5) * 8)) + 3.0 * np.maximum(0, x + 1.2) ** 2
    steepest = LRS[int(np.argmin(np.gradient(sharp[10:]))) + 10]
    assert finder.peak(LRS, sharp) == pytest.approx(steepest)
    assert steepest > LRS[int(np.argmin(sharp))] / finder.EDGE_DIVISOR


def test_peak_is_the_default_and_keeps_the_last_points():
    """The default method is peak; unlike fastai's window it sees the last 5 points, where the
    smoothed minimum of a sweep that stopped often sits."""
    assert finder.DEFAULT_METHOD == "peak" and LRFinder().kwargs["suggestion"] == "peak"
    losses = np.linspace(3.0, 1.0, 60)  # still falling when the sweep stopped
    lrs = LRS[:60]
    assert finder.peak(lrs, losses, num_steps=100) == pytest.approx(lrs[-1] / 3)
    assert finder.minimum(lrs, losses, num_steps=100) == pytest.approx(lrs[-6] / 10)


def test_valley_lies_in_the_longest_descent():
    """valley picks a point about 2/3 down the longest decreasing stretch."""
    losses = bowl()
    lr = finder.valley(LRS, losses)
    i = int(np.argmin(np.abs(LRS - lr)))
    bottom = int(np.argmin(losses))
    assert losses[i] < losses[0] - 0.3 and i < bottom  # on the falling side, well below start


def test_valley_of_a_curve_that_never_falls_is_its_first_point():
    """No decrease at all: fastai's start stays 0, so valley is the window's first LR (not
    the last, next to divergence)."""
    lrs = np.geomspace(1e-3, 10, 50)
    assert finder.valley(lrs, np.linspace(1, 2, 50), 50) == pytest.approx(lrs[5])


def test_slide_finds_where_gradient_flattens():
    """slide returns an LR on the falling part, before the rise."""
    losses = bowl()
    lr = finder.slide(LRS, losses)
    assert lr is not None and 1e-5 < lr < 10 ** -1.5


def test_suggestions_ignore_nan_tail():
    """A NaN tail is cut off; suggestions come from the finite part (fastai #3476)."""
    losses = bowl()
    losses[80:] = np.nan
    got = finder.suggest(LRS, losses)
    assert all(v is not None and np.isfinite(v) and v <= LRS[79] for v in got.values())


def test_suggestions_ignore_a_dead_network_tail():
    """Fall, spike, then a flat chance-level loss (finite, below 4x best): slope suggestions
    stay on the fall, not on the decay of the smoothed spike."""
    x = np.log10(LRS)
    raw = np.where(x < -1.5, 2.3 - 1.0 / (1.0 + np.exp(-(x + 3.0) * 4)), 2.3)
    raw[(x >= -1.5) & (x < -1.3)] = 8.0  # the spike as the network dies
    smoothed = finder.smooth(raw, 0.9)
    assert finder.stop_index(raw, smoothed, 4.0) is None  # the stop rule does not fire
    end = finder.useful_end(smoothed)
    assert LRS[end] < 10 ** -1.4  # cut right after the spike starts
    got = finder.suggest(LRS, smoothed)
    assert got["steep"] < 10 ** -1.5 and got["gradient"] < 10 ** -1.5
    unguarded = finder.steep(LRS, smoothed)
    assert unguarded > 10 ** -1.5  # without the cut it lands in the dead region


def test_too_few_points_warn_and_return_none():
    """With too few finite points every suggestion warns and returns None."""
    losses = np.array([1.0] + [np.nan] * 12)  # only the first step is finite
    lrs = np.geomspace(1e-3, 1, len(losses))
    for name, fn in finder.SUGGESTIONS.items():
        with pytest.warns(RuntimeWarning, match=f"{name} suggestion needs at least"):
            assert fn(lrs, losses) is None


def test_result_from_losses_cuts_at_divergence():
    """from_losses keeps the stopping step (a non-finite one too) and records where it stopped."""
    raw = np.concatenate([np.linspace(2, 1, 40), [5.0, 50.0]])
    lrs = np.geomspace(1e-4, 1, len(raw))
    r = finder.LRFinderResult.from_losses(lrs, raw, smoothing=0.0)
    assert r.stopped_at == 40 and len(r.lrs) == 41
    raw[40] = np.nan
    r = finder.LRFinderResult.from_losses(lrs, raw, smoothing=0.0)
    assert r.stopped_at == 40 and len(r.lrs) == 41 and np.isnan(r.losses[-1])
    with pytest.raises(ValueError, match=r"suggestion must be one of \['peak', 'valley', 'slide'"):
        finder.LRFinderResult.from_losses(lrs, raw, method="best")


def test_nan_tail_trimmed_like_fastai():
    """fastai takes its window (skip num_steps // 10, drop the last 5) before the NaN cut, so
    a sweep that ended in NaN loses the NaN step and 4 finite points, not 5 more."""
    lrs = np.geomspace(1e-6, 1, 100)
    losses = np.linspace(3.0, 1.0, 60)  # still falling when it blew up at step 60
    losses = np.concatenate([losses, [np.nan]])
    got = finder.minimum(lrs[:61], losses, num_steps=100)
    # window: [10, 56) -> lowest loss at index 55
    assert got == pytest.approx(lrs[55] / 10)
    # the planned length sets the skip at the start, as fastai's num_it // 10
    assert suggestions._window(lrs[:61], losses, 100)[0][0] == lrs[10]
    assert suggestions._window(lrs[:61], losses)[0][0] == lrs[6]


def test_lightning_gradient_variants():
    """gradient differentiates per sweep step (Lightning 2.0-2.5), gradient_lr per unit of LR
    (Lightning 2.6); on an exponential sweep the latter favours the low end."""
    x = np.log10(LRS)
    drop = 2.0 - 1.0 / (1.0 + np.exp(-(x + 3.0) * 8))  # steepest per log-LR at 1e-3
    assert finder.gradient(LRS, drop) == pytest.approx(1e-3, rel=0.15)
    assert finder.gradient_lr(LRS, drop) < finder.gradient(LRS, drop)


# ----------------------------------------------------------------------------- compiled sweep
def sweep_data():
    return ArrayDataset(make_data(256), 16)


def test_lr_find_leaves_state_bitwise_equal_and_writes_nothing(tmp_path, monkeypatch):
    """Params, opt_state (incl. count and injected LR) and step are bitwise unchanged."""
    monkeypatch.chdir(tmp_path)
    state = make_state()
    before = jax.tree_util.tree_map(np.array, state)
    trainer = Trainer(loss_fn, enable_progress_bar=False)
    result = trainer.lr_find(state, sweep_data(), num_steps=40, progress=False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, before,
                           jax.tree_util.tree_map(np.array, state))
    assert len(result.lrs) == 40 and result.lrs[0] == pytest.approx(1e-7)
    assert list(tmp_path.iterdir()) == []
    assert trainer.global_step == 0


def test_lr_find_linear_reaches_max_and_cycles_epochs():
    """A linear sweep longer than an epoch runs to max_lr when nothing diverges."""
    result = Trainer(loss_fn, enable_progress_bar=False).lr_find(
        make_state(), ArrayDataset(make_data(64), 16), min_lr=1e-4, max_lr=1e-2, num_steps=30,
        mode="linear", progress=False)
    assert len(result.lrs) == 30 and result.stopped_at is None
    assert result.lrs[0] == pytest.approx(1e-4) and result.lrs[-1] == pytest.approx(1e-2)


def test_lr_find_stops_on_divergence():
    """An absurd max_lr diverges: the sweep stops early and suggests below the blow-up."""
    result = Trainer(loss_fn, enable_progress_bar=False).lr_find(
        make_state(), sweep_data(), min_lr=1e-4, max_lr=1e6, num_steps=100, progress=False)
    assert result.stopped_at is not None and len(result.lrs) < 100
    assert result.suggestion < result.lrs[-1]


def test_lr_find_mid_training_and_several_groups(data):
    """Works after training (own counters) and with multi_transform groups."""
    tx = optax.multi_transform(
        {"a": injectable(optax.sgd, learning_rate=0.1, momentum=0.9),
         "b": injectable(optax.adam, learning_rate=1e-3)},
        lambda p: {"params": {"Dense_0": "a", "Dense_1": "b"}})
    trainer = Trainer(loss_fn, max_epochs=2, enable_progress_bar=False)
    trained = trainer.fit(make_state(tx), data[0])
    result = trainer.lr_find(trained, sweep_data(), num_steps=30, progress=False)
    assert len(result.lrs) == 30 and result.suggestion is not None
    assert trainer.global_step == 12


def test_lr_find_validation():
    """Bad range-test arguments are named."""
    trainer = Trainer(loss_fn, enable_progress_bar=False)
    for kwargs, match in [({"min_lr": 0}, r"min_lr must be in \(0, inf\], got min_lr=0"),
                          ({"max_lr": 1e-8}, r"max_lr must be in \(1e-07, inf\]"),
                          ({"num_steps": 1}, r"num_steps must be an int >= 2"),
                          ({"mode": "log"}, r"mode must be one of"),
                          ({"smoothing": 1.0}, r"smoothing must be in \[0, 1\)"),
                          ({"diverge_threshold": 1.0}, r"diverge_threshold must be in \(1, inf\]"),
                          ({"suggestion": "best"}, r"suggestion must be one of")]:
        with pytest.raises(ValueError, match=match):
            trainer.lr_find(make_state(), sweep_data(), **kwargs)


# ----------------------------------------------------------------------------- hand-off
@pytest.mark.parametrize("make_schedule, field", [
    (lambda: OneCycle(max_lr=None), "max_lr"),
    (lambda: CyclicLR(1e-6, max_lr=None, step_size_up=4), "max_lr"),
    (lambda: CosineRestarts(t_0=5), "base_lr"),
])
def test_finder_hands_suggestion_to_schedule_one_compile(make_schedule, field, tmp_path):
    """[LRFinder(), schedule]: the schedule's peak state equals the suggestion; one compile."""
    sched, mon = make_schedule(), LearningRateMonitor()
    finder_cb = LRFinder(num_steps=40)
    trainer = Trainer(loss_fn, max_epochs=2, callbacks=[finder_cb, sched, mon],
                      logger=TensorBoardLogger(tmp_path), enable_progress_bar=False)
    trainer.fit(make_state(), sweep_data())
    lr = finder_cb.result.suggestion
    assert float(getattr(trainer.callback_state(sched), field)) == pytest.approx(lr, rel=1e-6)
    assert max(mon.history["lr"][1]) <= lr * (1 + 1e-6)
    assert trainer.num_step_traces == 1 and trainer.num_step_compiles == 1
    scalars = read_scalars(tmp_path / "version_0")
    assert scalars["lr_finder/suggestion"][1][0] == pytest.approx(lr, rel=1e-6)
    assert (tmp_path / "version_0" / "lr_finder.png").stat().st_size > 10_000


def test_finder_rescales_lrschedule_and_warmup_nested(tmp_path):
    """LRSchedule's peak hook and a OneCycle nested in Warmup both receive the suggestion."""
    sched = LRSchedule(optax.cosine_decay_schedule(1.0, 32))
    finder_cb, mon = LRFinder(num_steps=30, plot_path=None), LearningRateMonitor()
    trainer = Trainer(loss_fn, max_epochs=2, callbacks=[finder_cb, sched, mon],
                      enable_progress_bar=False)
    trainer.fit(make_state(), sweep_data())
    assert mon.history["lr"][1][0] == pytest.approx(finder_cb.result.suggestion, rel=1e-6)
    inner = OneCycle(None)
    finder_cb = LRFinder(num_steps=30, plot_path=None)
    trainer = Trainer(loss_fn, max_epochs=2, enable_progress_bar=False,
                      callbacks=[finder_cb, Warmup(inner, 3)])
    trainer.fit(make_state(), sweep_data())
    assert float(trainer.callback_state(inner).max_lr) == pytest.approx(
        finder_cb.result.suggestion, rel=1e-6)


def test_finder_without_schedule_sets_optimizer_lr():
    """No schedule: the optimizer's base LR becomes the suggestion (monitor shows it)."""
    finder_cb, mon = LRFinder(num_steps=30, plot_path=None), LearningRateMonitor()
    trainer = Trainer(loss_fn, max_epochs=1, callbacks=[finder_cb, mon],
                      enable_progress_bar=False)
    trainer.fit(make_state(), sweep_data())
    np.testing.assert_allclose(mon.history["lr"][1], finder_cb.result.suggestion, rtol=1e-6)


def test_finder_state_dict_roundtrip():
    """The finder's result survives state_dict/load_state_dict (for resume)."""
    cb = LRFinder(num_steps=30, plot_path=None)
    Trainer(loss_fn, max_epochs=1, callbacks=[cb, OneCycle(None)],
            enable_progress_bar=False).fit(make_state(), sweep_data())
    other = LRFinder(num_steps=30)
    other.load_state_dict(cb.state_dict())
    assert other.result.suggestion == cb.result.suggestion
    np.testing.assert_array_equal(other.result.losses, cb.result.losses)


def test_result_warns_only_for_the_chosen_method():
    """With too few points, from_losses warns once, naming the chosen method only."""
    lrs = np.geomspace(1e-3, 1.0, 4)
    with pytest.warns(RuntimeWarning) as record:
        r = finder.LRFinderResult.from_losses(lrs, np.array([1.0, 0.9, 0.8, 0.7]),
                                              method="steep")
    messages = [str(w.message) for w in record]
    assert len(messages) == 1 and "steep suggestion" in messages[0]
    assert r.suggestion is None


# ----------------------------------------------------------------------------- user-facing
def test_lr_find_logs_figure_and_suggestion(tmp_path):
    """trainer.lr_find with a logger writes the lr_finder image and the suggestion scalar."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = Trainer(loss_fn, enable_progress_bar=False, logger=TensorBoardLogger(tmp_path))
    result = trainer.lr_find(make_state(), sweep_data(), num_steps=30)
    trainer.logger.finalize()
    acc = EventAccumulator(str(tmp_path / "version_0"), size_guidance={"scalars": 0,
                                                                       "images": 0})
    acc.Reload()
    assert "lr_finder" in acc.Tags()["images"]
    logged = acc.Scalars("lr_finder/suggestion")[0].value
    assert logged == pytest.approx(result.suggestion, rel=1e-6)
    assert result.seconds is not None and result.seconds > 0


def test_sweep_progress_bar_follows_the_trainer(capsys):
    """enable_progress_bar=False silences the sweep's bar; True shows it."""
    Trainer(loss_fn, enable_progress_bar=False).lr_find(make_state(), sweep_data(), num_steps=20)
    assert "LR finder" not in capsys.readouterr().err
    Trainer(loss_fn).lr_find(make_state(), sweep_data(), num_steps=20)
    assert "LR finder" in capsys.readouterr().err


def test_preview_of_a_schedule_waiting_for_the_finder_warns():
    """preview draws a finder-set peak as 1.0 with a warning instead of returning NaN."""
    from flax_lr_callbacks import preview

    cb = OneCycle(max_lr=None)
    with pytest.warns(UserWarning, match=r"take their peak from an LRFinder"):
        curves = preview([Warmup(cb, warmup_steps=5)], steps_per_epoch=10, max_epochs=2)
    assert np.isfinite(curves["learning_rate"]).all()
    assert curves["learning_rate"].max() == pytest.approx(1.0, rel=0.01)
    assert cb.peak() is None  # the placeholder does not stick


def test_no_suggestion_for_a_waiting_schedule_says_why():
    """When the sweep yields no suggestion, the error names the finder, not 'put LRFinder
    first'."""
    trainer = Trainer(loss_fn, enable_progress_bar=False, max_epochs=1,
                      callbacks=[LRFinder(num_steps=3, plot_path=None), OneCycle(max_lr=None)])
    with pytest.warns(RuntimeWarning, match="needs at least"):
        with pytest.raises(ValueError, match=r"LRFinder found no learning rate for OneCycle.*"
                                             r"recorded 3 of 3 steps"):
            trainer.fit(make_state(), sweep_data())


def test_finder_passes_over_a_momentum_schedule():
    """A momentum `LRSchedule` (it has set_peak too) between the finder and the LR schedule
    keeps its values; the LR schedule gets the suggestion. Inside a composite, too."""
    mom = LRSchedule(lambda s: 0.85 + 0.0 * s, hyperparam="momentum")
    sched, mon = CosineRestarts(t_0=5), LearningRateMonitor()
    finder_cb = LRFinder(num_steps=30, plot_path=None)
    trainer = Trainer(loss_fn, max_epochs=2, callbacks=[finder_cb, mom, sched, mon],
                      enable_progress_bar=False)
    trainer.fit(make_state(), sweep_data())
    lr = finder_cb.result.suggestion
    assert float(trainer.callback_state(sched).base_lr) == pytest.approx(lr, rel=1e-6)
    np.testing.assert_allclose(mon.history["momentum"][1], 0.85, rtol=1e-6)
    assert mom._peak_target is None

    from flax_lr_callbacks import Sequential

    mom, inner = LRSchedule(lambda s: 0.85 + 0.0 * s, hyperparam="momentum"), OneCycle(
        max_lr=None, cycle_momentum=False)
    Sequential([inner, mom], boundaries=[5]).set_peak(None, 0.1)
    assert inner.peak() == 0.1 and mom._peak_target is None


def test_apply_to_must_schedule_the_learning_rate():
    mom = LRSchedule(lambda s: 0.9 + 0.0 * s, hyperparam="momentum")
    with pytest.raises(TypeError, match=r"apply_to must be a callback that sets the learning "
                                        r"rate.*hyperparam='momentum'"):
        LRFinder(apply_to=mom)


def test_a_given_peak_replaced_by_the_finder_warns_and_does_not_stick():
    """An explicit max_lr after LRFinder: the suggestion replaces it in that fit, with a
    warning; a later fit of the same schedule without a finder uses the given peak again."""
    sched, finder_cb = OneCycle(max_lr=0.5), LRFinder(num_steps=30, plot_path=None)
    trainer = Trainer(loss_fn, max_epochs=1, callbacks=[finder_cb, sched],
                      enable_progress_bar=False)
    with pytest.warns(UserWarning, match=r"OneCycle.*has its peak given \(0.5\); the "
                                         r"suggestion .* replaces it in this fit"):
        trainer.fit(make_state(), sweep_data())
    lr = finder_cb.result.suggestion
    assert lr != pytest.approx(0.5)
    assert float(trainer.callback_state(sched).max_lr) == pytest.approx(lr, rel=1e-6)
    again = Trainer(loss_fn, max_epochs=1, callbacks=[sched], enable_progress_bar=False)
    again.fit(make_state(), sweep_data())
    assert float(again.callback_state(sched).max_lr) == pytest.approx(0.5)


def test_a_finder_after_a_schedule_that_reads_the_base_lr_sets_it():
    """CosineRestarts(base_lr=None) reads the optimizer's base LR: a finder after it sets
    that base (no error), and the restarts start from the suggestion."""
    sched, mon = CosineRestarts(t_0=5), LearningRateMonitor()
    finder_cb = LRFinder(num_steps=30, plot_path=None)
    Trainer(loss_fn, max_epochs=1, callbacks=[sched, finder_cb, mon],
            enable_progress_bar=False).fit(make_state(), sweep_data())
    assert mon.history["lr"][1][0] == pytest.approx(finder_cb.result.suggestion, rel=1e-6)


def test_lr_find_inside_a_fit_on_other_data_leaves_the_fit_alone():
    """A callback sweeping other data mid-fit: the fit keeps its own data source."""
    class SweepOther(Callback):
        def on_train_epoch_end(self, trainer, state):
            if trainer.current_epoch == 0:
                trainer.lr_find(state, sweep_data(), num_steps=5, progress=False)

    trainer = Trainer(loss_fn, max_epochs=2, enable_progress_bar=False,
                      callbacks=[SweepOther()])
    trainer.fit(make_state(), ArrayDataset(make_data(96), 16))
    assert trainer.global_step == 12 and trainer.num_step_traces == 1


@pytest.mark.parametrize("value", [0.0])  # negative plans are refused earlier
def test_lrschedule_without_a_positive_maximum_cannot_take_a_peak(value):
    sched = LRSchedule(lambda s: value + 0.0 * s)
    trainer = Trainer(loss_fn, max_epochs=1, enable_progress_bar=False,
                      callbacks=[LRFinder(num_steps=30, plot_path=None), sched])
    with pytest.raises(ValueError, match=r"cannot rescale to a peak.*largest planned value "
                                         r"over the \d+ steps of the run is"):
        trainer.fit(make_state(), sweep_data())


def test_lr_find_then_fit_on_one_generator_trains_every_batch():
    """`trainer.lr_find(state, gen)` then `trainer.fit(state, gen)`: the batches the sweep read
    from the one-shot stream go to the fit first, none is lost (and none trained twice)."""
    import warnings

    batches = list(sweep_data().for_epoch(0))  # 16 batches
    seen = []

    def gen():
        for i, b in enumerate(batches):
            seen.append(i)
            yield b

    trainer = Trainer(loss_fn, max_epochs=1, steps_per_epoch=16, enable_progress_bar=False)
    stream = gen()
    trainer.lr_find(make_state(), stream, num_steps=10, progress=False)
    assert seen == list(range(10))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a stream that runs out warns: it must not
        trainer.fit(make_state(), stream)
    assert trainer.global_step == 16 and seen == list(range(16))


def test_a_finder_after_its_schedule_is_an_error_before_the_sweep():
    """[OneCycle(0.05), LRFinder()]: the suggestion would go to the base LR, which OneCycle
    overwrites at every step; refused before sweeping, naming the order to use."""
    trainer = Trainer(loss_fn, max_epochs=1, enable_progress_bar=False,
                      callbacks=[OneCycle(max_lr=0.05), LRFinder(num_steps=30, plot_path=None)])
    with pytest.raises(ValueError, match=r"LRFinder comes after OneCycle.*put LRFinder\(\) "
                                         r"before it"):
        trainer.fit(make_state(), sweep_data())
    assert trainer.callbacks[1].result is None  # no sweep ran
