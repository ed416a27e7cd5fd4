"""What reaches TensorBoard, read back from the event files."""

import numpy as np
import optax
import pytest
from conftest import loss_fn, make_state
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from flax_lr_callbacks import (LearningRateMonitor, LRFinder, LRSchedule,
                               OneCycle, ReduceLROnPlateau, TensorBoardLogger, Trainer,
                               injectable)
from flax_lr_callbacks.plotting import new_figure


def read_scalars(log_dir):
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: ([e.step for e in acc.Scalars(tag)], np.array([e.value for e in acc.Scalars(tag)]))
            for tag in acc.Tags()["scalars"]}


def test_step_schedule_logged_at_every_step(data, state, tmp_path):
    """lr/momentum in TensorBoard equal the schedules at every 0-based step."""
    train, val = data
    sched = optax.warmup_cosine_decay_schedule(0.0, 0.2, 5, 24, 1e-3)
    trainer = Trainer(loss_fn, max_epochs=4, log_every_n_steps=5,
                      callbacks=[LRSchedule(sched), LearningRateMonitor()],
                      logger=(logger := TensorBoardLogger(tmp_path)), enable_progress_bar=False)
    trainer.fit(state, train, val)
    scalars = read_scalars(logger.log_dir)
    steps, lrs = scalars["lr"]
    assert steps == list(range(24))
    np.testing.assert_allclose(lrs, [float(sched(t)) for t in range(24)], rtol=1e-6)
    np.testing.assert_allclose(scalars["momentum"][1], 0.9, rtol=1e-6)
    # train loss at log points (every 5 steps and each epoch end), val metrics per epoch
    assert scalars["train_loss"][0] == [4, 5, 9, 11, 14, 17, 19, 23]
    assert scalars["val_loss"][0] == [5, 11, 17, 23]
    assert set(scalars) >= {"train_acc", "val_acc"}


def test_epoch_schedule_logged_at_every_step(data, state, tmp_path):
    """unit='epoch' changes the value at the first step of each epoch only."""
    train, _ = data
    sched = optax.exponential_decay(0.1, transition_steps=1, decay_rate=0.5)
    trainer = Trainer(loss_fn, max_epochs=3, log_every_n_steps=4,
                      callbacks=[LRSchedule(sched, unit="epoch"),
                                 LRSchedule(lambda e: 0.9 - 0.1 * e, unit="epoch",
                                            hyperparam="momentum"),
                                 LearningRateMonitor()],
                      logger=(logger := TensorBoardLogger(tmp_path)), enable_progress_bar=False)
    trainer.fit(state, train)
    scalars = read_scalars(logger.log_dir)
    expected = np.repeat([0.1, 0.05, 0.025], 6)
    np.testing.assert_allclose(scalars["lr"][1], expected, rtol=1e-6)
    np.testing.assert_allclose(scalars["momentum"][1], np.repeat([0.9, 0.8, 0.7], 6), rtol=1e-6)


def test_monitor_epoch_interval_and_groups(data, tmp_path):
    """Several optimizer groups log as lr/<group>; 'epoch' interval logs one value per epoch."""
    train, _ = data
    tx = optax.multi_transform(
        {"hidden": injectable(optax.sgd, learning_rate=0.1, momentum=0.9),
         "out": injectable(optax.adam, learning_rate=0.01)},
        lambda p: {"params": {"Dense_0": "hidden", "Dense_1": "out"}},
    )
    state = make_state(tx)
    sched = optax.linear_schedule(0.1, 0.0, 12)
    trainer = Trainer(loss_fn, max_epochs=2, log_every_n_steps=4,
                      callbacks=[LRSchedule(sched, groups=("hidden",)),
                                 LearningRateMonitor(logging_interval="epoch")],
                      logger=(logger := TensorBoardLogger(tmp_path)), enable_progress_bar=False)
    trainer.fit(state, train)
    scalars = read_scalars(logger.log_dir)
    assert scalars["lr/hidden"][0] == [0, 6]
    np.testing.assert_allclose(scalars["lr/hidden"][1], [0.1, 0.05], rtol=1e-6)
    np.testing.assert_allclose(scalars["lr/out"][1], [0.01, 0.01], rtol=1e-6)
    np.testing.assert_allclose(scalars["momentum/hidden"][1], 0.9, rtol=1e-6)
    np.testing.assert_allclose(scalars["b1/out"][1], 0.9, rtol=1e-6)


def test_logger_versions_files_and_figures(tmp_path):
    """Two loggers on one folder write version_0 and version_1; figures are readable."""
    loggers = []
    for i in range(2):
        logger = TensorBoardLogger(tmp_path)
        logger.log_metrics({"x": float(i)}, step=i)
        logger.log_hyperparams({"lr": 0.1, "sched": object()}, {"hp/metric": 1.0})
        fig, ax = new_figure()
        ax.plot([0, 1])
        logger.log_figure("curve", fig)
        logger.finalize()
        loggers.append(logger)
    assert [lg.version for lg in loggers] == [0, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["version_0", "version_1"]
    assert len(list((tmp_path / "version_1").glob("events.out.tfevents.*"))) == 1
    acc = EventAccumulator(loggers[1].log_dir, size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    assert "curve" in acc.Tags()["images"]


def test_two_fits_are_two_runs(data, state, tmp_path):
    """Each fit is a run: a reused logger moves to the next version; name and a fixed version
    give save_dir/name/version."""
    train, _ = data
    logger = TensorBoardLogger(tmp_path, name="exp")
    trainer = Trainer(loss_fn, max_epochs=1, callbacks=[LearningRateMonitor()],
                      logger=logger, enable_progress_bar=False)
    trainer.fit(state, train)
    first = logger.log_dir
    trainer.fit(state, train)
    assert (first, logger.log_dir) == (str(tmp_path / "exp" / "version_0"),
                                       str(tmp_path / "exp" / "version_1"))
    for folder in (first, logger.log_dir):
        assert read_scalars(folder)["lr"][0] == list(range(6))  # steps 0..5 once per run
    fixed = TensorBoardLogger(tmp_path, version="baseline")
    assert fixed.log_dir == str(tmp_path / "baseline")
    assert TensorBoardLogger(tmp_path, version=3).log_dir == str(tmp_path / "version_3")
    with pytest.raises(ValueError, match="version must be None, an int >= 0 or a non-empty "
                                         "str, got version=-1"):
        TensorBoardLogger(tmp_path, version=-1)


def read_hparams(log_dir):
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]).session_start_info
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]).experiment
    values = {k: (v.number_value if v.HasField("number_value") else
                  v.string_value if v.HasField("string_value") else v.bool_value)
              for k, v in start.hparams.items()}
    return values, [m.name.tag for m in experiment.metric_infos]


def test_hparams_hold_effective_settings(data, state, tmp_path):
    """HParams: each setting a field, the finder-set peak as learning_rate, final val metrics;
    no one-point hparam charts on the Scalars page."""
    train, val = data
    finder, cycle = LRFinder(num_steps=20, plot_path=None), OneCycle(max_lr=None)
    logger = TensorBoardLogger(tmp_path)
    trainer = Trainer(loss_fn, max_epochs=2, log_every_n_steps=4, logger=logger,
                      callbacks=[finder, cycle, ReduceLROnPlateau(factor=0.3),
                                 LearningRateMonitor()], enable_progress_bar=False)
    trainer.fit(state, train, val)
    hp, metric_tags = read_hparams(logger.log_dir)
    peak = finder.result.suggestion
    assert peak is not None and cycle.peak() == peak
    np.testing.assert_allclose([hp["learning_rate"], hp["OneCycle/max_lr"],
                                hp["LRFinder/suggestion"]], peak, rtol=1e-6)
    np.testing.assert_allclose(hp["optimizer/learning_rate"], 0.1, rtol=1e-6)
    assert hp["ReduceLROnPlateau/factor"] == pytest.approx(0.3)
    assert hp["ReduceLROnPlateau/final_scale"] == 1.0
    assert hp["OneCycle/pct_start"] == pytest.approx(0.3)
    assert hp["OneCycle/anneal_strategy"] == "cos"
    assert hp["LRFinder/num_steps"] == 20
    assert sorted(metric_tags) == ["val_acc", "val_loss"]
    scalars = read_scalars(logger.log_dir)
    assert not [t for t in scalars if t.startswith("hparam")]
    assert scalars["val_loss"][0] == [5, 11]  # the final value is the last point, not a copy
    assert scalars["epoch"][0] == [3, 5, 5, 7, 11, 11]
    np.testing.assert_array_equal(scalars["epoch"][1], [0, 0, 0, 1, 1, 1])


def test_weight_decay_logged_when_injected(data, tmp_path):
    """An injected weight_decay is logged as a scalar at every step."""
    train, _ = data
    state = make_state(injectable(optax.adamw, learning_rate=1e-3, weight_decay=1e-2))
    logger = TensorBoardLogger(tmp_path)
    Trainer(loss_fn, max_epochs=1, log_every_n_steps=3, logger=logger,
            callbacks=[LRSchedule(lambda s: 1e-2 * (1 - s / 6), hyperparam="weight_decay"),
                       LearningRateMonitor()], enable_progress_bar=False).fit(state, train)
    steps, wd = read_scalars(logger.log_dir)["weight_decay"]
    assert steps == list(range(6))
    np.testing.assert_allclose(wd, [1e-2 * (1 - s / 6) for s in range(6)], rtol=1e-6)
