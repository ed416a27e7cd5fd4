"""Grain array datasets and the Fashion-MNIST loader."""

import gzip
import hashlib
import io
import struct

import numpy as np
import pytest

from flax_lr_callbacks.data import ArrayDataset, fashion_mnist, load_fashion_mnist


def test_reshuffle_differs_per_epoch_and_repeats_by_seed():
    """Each epoch has its own order; the same seed reproduces it; every example once."""
    x = np.arange(100)
    a, b = ArrayDataset({"x": x}, 10, seed=1), ArrayDataset({"x": x}, 10, seed=1)
    e0 = np.concatenate([a.for_epoch(0)[i]["x"] for i in range(10)])
    e1 = np.concatenate([a.for_epoch(1)[i]["x"] for i in range(10)])
    assert not np.array_equal(e0, e1)
    np.testing.assert_array_equal(np.sort(e0), x)
    np.testing.assert_array_equal(e1, np.concatenate([b.for_epoch(1)[i]["x"] for i in range(10)]))
    other = ArrayDataset({"x": x}, 10, seed=2).for_epoch(0)[0]["x"]
    assert not np.array_equal(other, a.for_epoch(0)[0]["x"])


def test_drop_remainder_and_slicing():
    """len() follows drop_remainder; an epoch slices from any batch (resume position)."""
    x = np.arange(10)
    assert len(ArrayDataset({"x": x}, 4)) == 2
    keep = ArrayDataset({"x": x}, 4, shuffle=False, drop_remainder=False)
    assert len(keep) == 3 and keep.for_epoch(0)[2]["x"].tolist() == [8, 9]
    assert keep.for_epoch(0)[1:][0]["x"].tolist() == [4, 5, 6, 7]


@pytest.mark.parametrize("kwargs, match", [
    ({"arrays": {"x": np.zeros(3), "y": np.zeros(4)}, "batch_size": 2}, r"first dimension.*\[3, 4\]"),
    ({"arrays": {"x": np.zeros(3)}, "batch_size": 0}, r"batch_size must be an int >= 1"),
    ({"arrays": {"x": np.zeros(3)}, "batch_size": 4}, r"batch_size=4 exceeds the 3 examples"),
])
def test_array_dataset_bad_arguments(kwargs, match):
    """Bad inputs name the problem."""
    with pytest.raises(ValueError, match=match):
        ArrayDataset(**kwargs)


def idx_bytes(array: np.ndarray) -> bytes:
    code = {np.uint8: 0x08}[array.dtype.type]
    header = bytes([0, 0, code, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.tobytes()


def write_fixture(folder, n_train=5, n_test=3, gz=True):
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, n_train, dtype=np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for key, (name, _) in fashion_mnist.FILES.items():
        raw = idx_bytes(arrays[key])
        if gz:
            (folder / name).write_bytes(gzip.compress(raw))
        else:
            (folder / name.removesuffix(".gz")).write_bytes(raw)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_loader_reads_idx_fixture(tmp_path, gz):
    """A folder of tiny IDX files (gzipped or not) loads with the right shapes and scaling."""
    arrays = write_fixture(tmp_path, gz=gz)
    d = load_fashion_mnist(tmp_path, download=False)
    assert d["train"]["image"].shape == (5, 28, 28, 1) and d["train"]["image"].dtype == np.float32
    np.testing.assert_allclose(d["train"]["image"][..., 0] * 255, arrays["train_images"], atol=1e-4)
    np.testing.assert_array_equal(d["test"]["label"], arrays["test_labels"])


def test_loader_env_var(tmp_path, monkeypatch):
    """$FASHION_MNIST_DIR is searched first when no data_dir is given."""
    write_fixture(tmp_path, n_train=7)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path))
    assert load_fashion_mnist()["train"]["label"].shape == (7,)


def test_loader_rejects_corrupt_file(tmp_path):
    """A truncated IDX file is a ValueError naming the file."""
    write_fixture(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x09abc"))
    with pytest.raises(ValueError, match="t10k-labels.*truncated"):
        load_fashion_mnist(tmp_path, download=False)


def test_loader_names_a_damaged_gzip_and_out_of_range_labels(tmp_path):
    """A cut-off .gz download and a flipped label byte are ValueErrors naming the file."""
    write_fixture(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match=r"train-images-idx3-ubyte.gz is truncated or corrupt"):
        load_fashion_mnist(tmp_path, download=False)
    write_fixture(tmp_path)
    labels = tmp_path / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[-1] = 200
    labels.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(ValueError, match=r"t10k-labels-idx1-ubyte.gz holds labels outside "
                                         r"0..9 \(from \d+ to 200\)"):
        load_fashion_mnist(tmp_path, download=False)


def test_missing_files_error_lists_every_option(tmp_path, monkeypatch):
    """No files and no download: the error lists data_dir, env var, Debian package, download."""
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    with pytest.raises(FileNotFoundError) as e:
        load_fashion_mnist(tmp_path / "none", download=False)
    for hint in ("data_dir=", "$FASHION_MNIST_DIR", "apt-get install dataset-fashion-mnist",
                 "download=True"):
        assert hint in str(e.value)


def fake_urlopen(payloads):
    def urlopen(url, timeout=None):
        return io.BytesIO(payloads[url.rsplit("/", 1)[1]])
    return urlopen


def test_download_verifies_checksums(tmp_path, monkeypatch):
    """Downloads keep files whose MD5 matches and refuse (and delete) ones that do not."""
    src = tmp_path / "src"
    src.mkdir()
    write_fixture(src)
    payloads = {name: (src / name).read_bytes() for name, _ in fashion_mnist.FILES.values()}
    good = {k: (name, hashlib.md5(payloads[name]).hexdigest())
            for k, (name, _) in fashion_mnist.FILES.items()}
    monkeypatch.setattr(fashion_mnist.urllib.request, "urlopen", fake_urlopen(payloads))
    monkeypatch.setattr(fashion_mnist, "FILES", good)
    d = load_fashion_mnist(tmp_path / "dl")
    assert d["train"]["image"].shape == (5, 28, 28, 1)

    bad = dict(good, train_labels=(good["train_labels"][0], "0" * 32))
    monkeypatch.setattr(fashion_mnist, "FILES", bad)
    with pytest.raises(FileNotFoundError, match="checksum mismatch"):
        load_fashion_mnist(tmp_path / "dl2")
    assert not (tmp_path / "dl2" / "train-labels-idx1-ubyte.gz").exists()
    assert not list((tmp_path / "dl2").glob("*.part"))


@pytest.mark.skipif(not fashion_mnist.DEBIAN_DIR.is_dir(),
                    reason="real Fashion-MNIST absent: apt-get install dataset-fashion-mnist")
def test_real_fashion_mnist_files():
    """The Debian package's files load as 60k/10k balanced examples."""
    d = load_fashion_mnist(fashion_mnist.DEBIAN_DIR, download=False)
    assert d["train"]["image"].shape == (60000, 28, 28, 1)
    assert d["test"]["image"].shape == (10000, 28, 28, 1)
    assert np.bincount(d["train"]["label"]).tolist() == [6000] * 10
    assert 0.0 <= d["train"]["image"].min() and d["train"]["image"].max() == 1.0
