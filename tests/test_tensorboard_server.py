"""A real TensorBoard server reads our runs: LR and momentum over its HTTP API, two runs."""

import json
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest
from conftest import loss_fn, make_state

from flax_lr_callbacks import LearningRateMonitor, OneCycle, TensorBoardLogger, Trainer

pytest.importorskip("tensorboard", reason="the tensorboard package (dev extra) is not "
                                          "installed; the server test needs its binary")

STARTUP_TIMEOUT = 25.0


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(port, path, **query):
    url = f"http://127.0.0.1:{port}{path}"
    if query:
        url += "?" + urllib.parse.urlencode(query)
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


def wait_for(port, proc, ready):
    """Polls until `ready()` is true; fails with the server's output on timeout or exit."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"tensorboard exited ({proc.returncode}): "
                                 f"{proc.stdout.read()[-2000:]}")
        try:
            if ready():
                return
        except OSError:  # not listening yet
            pass
        time.sleep(0.3)
    raise AssertionError(f"tensorboard did not serve the runs within {STARTUP_TIMEOUT}s")


def test_tensorboard_server_serves_planned_curves_and_two_runs(data, tmp_path):
    """Two fits into one folder are two runs; lr and momentum equal callback.curve()."""
    train, val = data
    cycle = OneCycle(0.3)
    for _ in range(2):
        Trainer(loss_fn, max_epochs=2, log_every_n_steps=4, logger=TensorBoardLogger(tmp_path),
                callbacks=[cycle, LearningRateMonitor()],
                enable_progress_bar=False).fit(make_state(), train, val)
    planned = cycle.curve(12, 6, hparams={"learning_rate": 0.1, "momentum": 0.9})
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(tmp_path),
         "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false",
         "--reload_interval", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        def ready():
            tags = get_json(port, "/data/plugin/scalars/tags")
            return all("momentum" in tags.get(f"version_{i}", {}) for i in (0, 1))

        wait_for(port, proc, ready)
        assert sorted(get_json(port, "/data/runs")) == ["version_0", "version_1"]
        for run in ("version_0", "version_1"):
            for tag, name in (("lr", "learning_rate"), ("momentum", "momentum")):
                points = get_json(port, "/data/plugin/scalars/scalars", run=run, tag=tag)
                steps = [p[1] for p in points]
                values = np.array([p[2] for p in points], np.float32)
                assert steps == list(range(12)), (run, tag)
                np.testing.assert_array_equal(values, np.float32(planned[name]))
    finally:
        proc.kill()
        proc.communicate(timeout=10)
