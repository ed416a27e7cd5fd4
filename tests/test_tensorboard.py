"""What reaches TensorBoard, read back from the event files."""

import numpy as np
import optax
from conftest import loss_fn, make_state
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from flax_lr_callbacks import (LearningRateMonitor, LRSchedule, TensorBoardLogger, Trainer,
                               injectable)


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
                      logger=TensorBoardLogger(tmp_path), enable_progress_bar=False)
    trainer.fit(state, train, val)
    scalars = read_scalars(tmp_path)
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
                      logger=TensorBoardLogger(tmp_path), enable_progress_bar=False)
    trainer.fit(state, train)
    scalars = read_scalars(tmp_path)
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
                      logger=TensorBoardLogger(tmp_path), enable_progress_bar=False)
    trainer.fit(state, train)
    scalars = read_scalars(tmp_path)
    assert scalars["lr/hidden"][0] == [0, 6]
    np.testing.assert_allclose(scalars["lr/hidden"][1], [0.1, 0.05], rtol=1e-6)
    np.testing.assert_allclose(scalars["lr/out"][1], [0.01, 0.01], rtol=1e-6)
    np.testing.assert_allclose(scalars["momentum/hidden"][1], 0.9, rtol=1e-6)
    np.testing.assert_allclose(scalars["b1/out"][1], 0.9, rtol=1e-6)


def test_logger_unique_files_and_hparams(tmp_path):
    """Two loggers on one folder write two files; hparams and figures are readable."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for i in range(2):
        logger = TensorBoardLogger(tmp_path)
        logger.log_metrics({"x": float(i)}, step=i)
        logger.log_hyperparams({"lr": 0.1, "sched": object()}, {"hp/metric": 1.0})
        fig, ax = plt.subplots()
        ax.plot([0, 1])
        logger.log_figure("curve", fig)
        logger.finalize()
    files = sorted(p.name for p in tmp_path.glob("events.out.tfevents.*"))
    assert len(files) == 2 and files[0] != files[1]
    acc = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    assert "curve" in acc.Tags()["images"]
