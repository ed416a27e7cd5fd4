"""Data parallel on 8 CPU devices, 2 jax.distributed processes, and checkpoints across them.

Each configuration runs in a subprocess (the device count is fixed when JAX starts).
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from conftest import make_data
from flax_lr_callbacks import ArrayDataset

CHILD = Path(__file__).with_name("multidevice_child.py")


def child(out, *args, devices=1, wait=True):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
                   [str(CHILD.parent), str(CHILD.parents[1]), os.environ.get("PYTHONPATH", "")]),
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    proc = subprocess.Popen([sys.executable, str(CHILD), str(out), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr[-3000:]
    return json.loads(stdout.strip().splitlines()[-1])


def load(path):
    z = np.load(path)
    return {k: z[k] for k in z.files}


def assert_same_run(a, b, *, rtol):
    np.testing.assert_array_equal(a["lr_steps"], b["lr_steps"])
    np.testing.assert_allclose(a["lrs"], b["lrs"], rtol=1e-6)
    for k in a:
        if k.startswith("p"):
            np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=1e-6)


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one")
    info = child(tmp / "one.npz", "--ckpt", tmp / "ckpt")
    return info, load(tmp / "one.npz"), tmp / "ckpt"


def test_eight_devices_match_one(one_device, tmp_path):
    info1, run1, _ = one_device
    info8 = child(tmp_path / "eight.npz", devices=8)
    assert info1["devices"] == 1 and info8["devices"] == 8
    assert "Mesh('data': 8" in info8["param_sharding"] and "spec=P()" in info8["param_sharding"]
    assert info8["compiles"] == info8["traces"] == 1
    assert info8["reductions"] == info1["reductions"] and info1["reductions"]
    assert_same_run(load(tmp_path / "eight.npz"), run1, rtol=1e-5)
    assert abs(info8["val_loss"] - info1["val_loss"]) < 1e-5


def test_eight_devices_on_device_fused_match_one(one_device, tmp_path):
    """ArrayDataset(on_device=True), K=2: arrays replicated, the (K, batch) index sharded over
    the 8 devices; the same run as one device with host batches."""
    info1, run1, _ = one_device
    info8 = child(tmp_path / "eight.npz", "--on-device", "--k", 2, devices=8)
    assert info8["devices"] == 8 and info8["compiles"] == info8["traces"] == 1
    assert info8["reductions"] == info1["reductions"]
    assert_same_run(load(tmp_path / "eight.npz"), run1, rtol=1e-5)


def test_resume_one_device_checkpoint_on_eight(one_device, tmp_path):
    """Checkpoints do not depend on the device count they were written with."""
    info1, run1, ckpt = one_device
    info = child(tmp_path / "resumed.npz", "--resume", ckpt / "16", devices=8)
    assert info["devices"] == 8 and info["compiles"] == 1
    resumed = load(tmp_path / "resumed.npz")
    np.testing.assert_allclose(resumed["lrs"], run1["lrs"][run1["lr_steps"] >= 16], rtol=1e-6)
    for k in resumed:
        if k.startswith("p"):
            np.testing.assert_allclose(resumed[k], run1[k], rtol=1e-5, atol=1e-6)


def _free_port():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_match_one(one_device, tmp_path):
    """jax.distributed on localhost: 2 processes x 2 CPU devices, gloo collectives."""
    info1, run1, _ = one_device
    port = _free_port()
    procs = [child(tmp_path / "two.npz", "--process-id", i, "--num-processes", 2, "--port", port,
                   "--ckpt", tmp_path / "ckpt", devices=2, wait=False) for i in (1, 0)]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err[-3000:]
    info = json.loads(outputs[1][0].strip().splitlines()[-1])  # process 0 reports
    assert info["processes"] == 2 and info["devices"] == 4 and info["compiles"] == 1
    assert info["reductions"] == info1["reductions"]  # every process took the same decisions
    assert_same_run(load(tmp_path / "two.npz"), run1, rtol=1e-5)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["16", "24", "8"]


def test_batch_not_divisible_by_devices_is_named(tmp_path):
    code = ("from flax_lr_callbacks.parallel import Placement, default_mesh\n"
            "import numpy as np\n"
            "try:\n    Placement(default_mesh()).put_batch({'x': np.zeros((12, 2))})\n"
            "except ValueError as e:\n    print(e)\n")
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120).stdout
    assert "global batch size 12 is not divisible by the 8 devices" in out
    assert "multiple of 8" in out


def test_array_dataset_process_slices_make_the_global_batch():
    d = make_data()
    whole = ArrayDataset(d, 16, seed=3).for_epoch(2)
    parts = [ArrayDataset(d, 16, seed=3, process_index=i, process_count=4).for_epoch(2)
             for i in range(4)]
    for b in range(len(whole)):
        np.testing.assert_array_equal(np.concatenate([p[b]["x"] for p in parts]),
                                      whole[b]["x"])
    with pytest.raises(ValueError, match="batch_size must be a multiple of it"):
        ArrayDataset(d, 10, process_count=4, process_index=0)
    with pytest.raises(ValueError, match=r"process_index must be in \[0, process_count=2\)"):
        ArrayDataset(d, 16, process_count=2, process_index=2)


def test_single_device_default():
    from flax_lr_callbacks import Trainer

    trainer = Trainer(lambda p, b: 0.0, enable_progress_bar=False)
    expected = 1 if len(jax.devices()) == 1 else len(jax.devices())
    assert trainer.placement.num_data_shards == expected
