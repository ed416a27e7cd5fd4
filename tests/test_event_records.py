"""Bulk TensorBoard scalars (`event_records`, `log_series`) read back by TensorBoard itself."""

import numpy as np
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboardX.record_writer import masked_crc32c

from flax_lr_callbacks import CSVLogger, TensorBoardLogger
from flax_lr_callbacks.loggers.base import LoggerCollection, log_series
from flax_lr_callbacks.loggers.event_records import crc32c_rows, series_records


def test_vectorised_crc_matches_tensorboardx():
    """Every row's masked CRC32C equals tensorboardX's (rows alike and rows all different)."""
    rng = np.random.default_rng(0)
    alike = np.repeat(rng.integers(0, 256, (1, 41), dtype=np.uint8), 30, axis=0)
    alike[:, [3, 17, 40]] = rng.integers(0, 256, (30, 3), dtype=np.uint8)
    for rows in (alike, rng.integers(0, 256, (25, 9), dtype=np.uint8), alike[:1]):
        got = crc32c_rows(rows)
        assert [int(c) for c in got] == [masked_crc32c(r.tobytes()) for r in rows]


def _reference_records(series, steps, wall_time):
    """tensorboardX's own encoding, one Event proto per (step, tag), in step order."""
    import struct

    from tensorboardX.proto import event_pb2
    from tensorboardX.summary import scalar

    out = b""
    for i, step in enumerate(steps):
        for tag, values in series.items():
            data = event_pb2.Event(wall_time=wall_time, step=int(step),
                                   summary=scalar(tag, float(values[i]))).SerializeToString()
            header = struct.pack("<Q", len(data))
            out += (header + struct.pack("<I", masked_crc32c(header)) + data
                    + struct.pack("<I", masked_crc32c(data)))
    return out


def test_bulk_records_are_tensorboardx_bytes():
    """Byte for byte tensorboardX's records: one step or a window, one tag or several of
    different lengths, steps across varint widths (1 to 6 bytes), NaN and inf kept."""
    rng = np.random.default_rng(1)
    for steps in ([7], [1, 2, 3], list(range(120, 140)), [16383, 16384, 2**35],
                  list(range(1, 300, 7))):
        series = {"lr": rng.random(len(steps)).astype(np.float32),
                  "group/momentum": np.float32(rng.normal(size=len(steps)) * 1e30),
                  "t" * 150: np.float32([np.nan, np.inf, -2.5] * 100)[:len(steps)]}
        for tags in (["lr"], list(series)):
            pick = {t: series[t] for t in tags}
            assert series_records(pick, np.array(steps), 1.7e9 + 0.25) == _reference_records(
                pick, steps, 1.7e9 + 0.25), (steps, tags)


def _decoded(records):
    """(step, tag, value) of every framed event, with both CRCs checked."""
    import struct

    from tensorboardX.proto import event_pb2

    out, i = [], 0
    while i < len(records):
        header = records[i:i + 8]
        (n,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", records[i + 8:i + 12])[0] == masked_crc32c(header)
        data = records[i + 12:i + 12 + n]
        assert struct.unpack("<I", records[i + 12 + n:i + 16 + n])[0] == masked_crc32c(data)
        event = event_pb2.Event.FromString(data)
        value = event.summary.value[0]
        out.append((event.step, value.tag, value.simple_value))
        i += 16 + n
    return out


def test_bulk_records_edge_cases():
    """Nothing to write gives no bytes; step 0, negative (int64) and unsorted or repeated steps
    decode to the steps given, in step order with the tags in order within a step."""
    assert series_records({}, np.array([1, 2]), 1.0) == b""
    assert series_records({"lr": np.float32([])}, np.array([], np.int64), 1.0) == b""
    steps = np.array([5, 0, -3, 5, 2**40])
    got = _decoded(series_records({"a": np.arange(5.0), "b": -np.arange(5.0)}, steps, 2.0))
    assert got == [(-3, "a", 2.0), (-3, "b", -2.0), (0, "a", 1.0), (0, "b", -1.0),
                   (5, "a", 0.0), (5, "b", -0.0), (5, "a", 3.0), (5, "b", -3.0),
                   (2**40, "a", 4.0), (2**40, "b", -4.0)]
    for step in (0, -1, 2**63 - 1):
        assert _decoded(series_records({"x": [1.5]}, np.array([step]), 2.0)) == [
            (step, "x", 1.5)]


def test_log_series_reads_back_every_step(tmp_path):
    """A window per call, across the 1- to 2-byte step boundary, NaN kept, in step order."""
    logger = TensorBoardLogger(tmp_path)
    steps = np.arange(120, 140)
    lr = np.linspace(0.1, 0.2, 20, dtype=np.float32)
    mom = np.full(20, 0.9, np.float32)
    mom[5] = np.nan
    logger.log_series({"lr": lr, "momentum": mom}, steps)
    logger.log_metrics({"train_loss": 1.5}, step=139)
    logger.log_series({"lr": np.float32([0.3])}, [140])
    logger.finalize()
    acc = EventAccumulator(logger.log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    got = {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}
    assert [e.step for e in got["lr"]] == list(range(120, 141))
    np.testing.assert_array_equal(np.float32([e.value for e in got["lr"]]),
                                  np.append(lr, np.float32(0.3)))
    np.testing.assert_array_equal(np.float32([e.value for e in got["momentum"]]), mom)
    assert [(e.step, e.value) for e in got["train_loss"]] == [(139, 1.5)]


class Recording:
    def __init__(self):
        self.calls = []

    def log_metrics(self, metrics, step):
        self.calls.append((step, dict(metrics)))

    def log_hyperparams(self, params, metrics=None):
        pass

    def finalize(self):
        pass


def test_log_series_falls_back_to_log_metrics(tmp_path):
    """A logger without log_series gets one log_metrics call per step, also in a collection."""
    plain = Recording()
    log_series(plain, {"lr": np.float32([0.5, 0.25])}, np.array([3, 4]))
    assert plain.calls == [(3, {"lr": 0.5}), (4, {"lr": 0.25})]
    both = LoggerCollection([Recording(), CSVLogger(tmp_path)])
    both.log_series({"lr": [1.0, 2.0], "momentum": [0.9, 0.8]}, [0, 1])
    assert both.loggers[0].calls == [(0, {"lr": 1.0, "momentum": 0.9}),
                                     (1, {"lr": 2.0, "momentum": 0.8})]
    both.finalize()


class SeriesRecording(Recording):
    def __init__(self):
        super().__init__()
        self.series = []

    def log_series(self, series, steps):
        self.series.append((np.asarray(steps).tolist(), {k: np.asarray(v) for k, v in
                                                         series.items()}))


def test_monitor_hands_each_log_window_over_in_one_call():
    """LearningRateMonitor sends one log_series per log point covering every step once."""
    from conftest import loss_fn, make_data, make_state

    from flax_lr_callbacks import ArrayDataset, LearningRateMonitor, OneCycle, Trainer

    logger, monitor = SeriesRecording(), LearningRateMonitor()
    trainer = Trainer(loss_fn, max_epochs=2, log_every_n_steps=4, logger=logger,
                      callbacks=[OneCycle(0.3), monitor], enable_progress_bar=False)
    trainer.fit(make_state(), ArrayDataset(make_data(), 16, seed=2))
    # 6 batches per epoch: log points after steps 4, 6 (epoch end), 8, 12 (and epoch end)
    assert [s for s, _ in logger.series] == [[0, 1, 2, 3], [4, 5], [6, 7], [8, 9, 10, 11]]
    lr = np.concatenate([cols["lr"] for _, cols in logger.series])
    np.testing.assert_array_equal(lr, np.float32(monitor.history["lr"][1]))
    assert set(logger.series[0][1]) == {"lr", "momentum"}
