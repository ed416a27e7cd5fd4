"""CSVLogger, lists of loggers and the logger protocol, read back from disk."""

import csv

import numpy as np
import optax
import pytest
from conftest import loss_fn

from flax_lr_callbacks import (CSVLogger, LearningRateMonitor, LoggerCollection, LRSchedule,
                               TensorBoardLogger, Trainer)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_logger_rows_columns_and_hparams(data, state, tmp_path):
    """metrics.csv: sorted columns with step and epoch, one row per step; hparams.yaml."""
    train, val = data
    logger = CSVLogger(tmp_path, flush_logs_every_n_steps=5)
    sched = optax.linear_schedule(0.1, 0.0, 12)
    Trainer(loss_fn, max_epochs=2, log_every_n_steps=4, logger=logger, seed=7,
            callbacks=[LRSchedule(sched), LearningRateMonitor()],
            enable_progress_bar=False).fit(state, train, val)
    assert logger.log_dir == str(tmp_path / "version_0")
    rows = read_csv(tmp_path / "version_0" / "metrics.csv")
    assert list(rows[0]) == ["epoch", "lr", "momentum", "step", "train_acc", "train_loss",
                             "val_acc", "val_loss"]
    lr_rows = [r for r in rows if r["lr"]]
    assert [int(r["step"]) for r in lr_rows] == list(range(12))
    np.testing.assert_allclose([float(r["lr"]) for r in lr_rows],
                               [float(sched(t)) for t in range(12)], rtol=1e-6)
    # train metrics join the LR row of their step; validation gets its own row
    step5 = [r for r in rows if r["step"] == "5"]
    assert len(step5) == 2 and step5[0]["train_loss"] and step5[0]["lr"]
    assert step5[1]["val_loss"] and step5[1]["epoch"] == "0" and not step5[1]["lr"]
    hparams = (tmp_path / "version_0" / "hparams.yaml").read_text().splitlines()
    assert '"seed": 7' in hparams and '"LRSchedule/unit": "step"' in hparams


def test_csv_logger_new_column_rewrites_header(tmp_path):
    """A metric that appears after the first write widens the file; earlier rows keep theirs."""
    logger = CSVLogger(tmp_path, name="exp", version=2, flush_logs_every_n_steps=1)
    logger.log_metrics({"a": 1.0}, step=0)
    logger.log_metrics({"b": 2.0}, step=1)
    logger.finalize()
    rows = read_csv(tmp_path / "exp" / "version_2" / "metrics.csv")
    assert rows == [{"a": "1.0", "b": "", "step": "0"}, {"a": "", "b": "2.0", "step": "1"}]
    with pytest.raises(ValueError, match="flush_logs_every_n_steps must be an int >= 1, got "
                                         "flush_logs_every_n_steps=0"):
        CSVLogger(tmp_path, flush_logs_every_n_steps=0)


def test_logger_list_shares_one_version_per_fit(data, state, tmp_path):
    """logger=[tb, csv]: both write into one version_N folder, a new one for the next fit."""
    from test_tensorboard import read_scalars

    train, _ = data
    tb, csv_logger = TensorBoardLogger(tmp_path), CSVLogger(tmp_path)
    trainer = Trainer(loss_fn, max_epochs=1, logger=[tb, csv_logger],
                      callbacks=[LearningRateMonitor()], enable_progress_bar=False)
    assert isinstance(trainer.logger, LoggerCollection)
    for version in (0, 1):
        trainer.fit(state, train)
        folder = tmp_path / f"version_{version}"
        assert tb.log_dir == csv_logger.log_dir == str(folder)
        tb_lr = read_scalars(folder)["lr"]
        csv_lr = [(int(r["step"]), float(r["lr"])) for r in read_csv(folder / "metrics.csv")
                  if r["lr"]]
        assert csv_lr == list(zip(tb_lr[0], tb_lr[1].tolist()))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["version_0", "version_1"]


class MemoryLogger:
    """The whole protocol a user writes for another service (W&B, MLflow, ...)."""

    def __init__(self):
        self.metrics, self.hparams, self.finalized = [], None, 0

    def log_metrics(self, metrics, step):
        self.metrics.append((step, dict(metrics)))

    def log_hyperparams(self, params, metrics=None):
        self.hparams = (dict(params), dict(metrics or {}))

    def finalize(self):
        self.finalized += 1


def test_custom_logger_protocol(data, state):
    """A plain object with three methods works as a logger, alone or in a list."""
    train, val = data
    mine = MemoryLogger()
    Trainer(loss_fn, max_epochs=1, logger=[mine], callbacks=[LearningRateMonitor()],
            enable_progress_bar=False).fit(state, train, val)
    assert mine.finalized == 1
    assert [s for s, m in mine.metrics if "lr" in m] == list(range(6))
    params, final = mine.hparams
    assert params["optimizer/learning_rate"] == pytest.approx(0.1)
    assert set(final) == {"val_loss", "val_acc"}
    with pytest.raises(TypeError, match=r"logger must have methods .*lacks \['finalize'\]"):
        Trainer(loss_fn, logger=object.__new__(type("NoFinalize", (), {
            "log_metrics": lambda *a: None, "log_hyperparams": lambda *a: None})))


def test_csv_logger_with_a_fixed_version_continues_the_file(tmp_path):
    """A second run into the same version (a resume) appends; it does not truncate the rows
    already there, and a new column rewrites the file through a temporary beside it."""
    first = CSVLogger(tmp_path, version=0, flush_logs_every_n_steps=1)
    first.log_metrics({"train_loss": 1.0}, step=0)
    first.finalize()
    again = CSVLogger(tmp_path, version=0, flush_logs_every_n_steps=1)
    again.log_metrics({"train_loss": 0.5}, step=7)
    again.log_metrics({"val_loss": 0.25}, step=8)
    again.finalize()
    folder = tmp_path / "version_0"
    assert read_csv(folder / "metrics.csv") == [
        {"step": "0", "train_loss": "1.0", "val_loss": ""},
        {"step": "7", "train_loss": "0.5", "val_loss": ""},
        {"step": "8", "train_loss": "", "val_loss": "0.25"}]
    assert sorted(p.name for p in folder.iterdir()) == ["metrics.csv"]
