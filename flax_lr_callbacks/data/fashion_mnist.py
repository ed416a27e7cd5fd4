"""Fashion-MNIST from IDX files: a local folder, the Debian package, or a verified download."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

__all__ = ["load_fashion_mnist", "read_idx", "DEBIAN_DIR", "FILES"]

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
# The S3 website endpoint serves plain HTTP only; the MD5 check below is what makes it safe.
MIRRORS = (
    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
)
# Official MD5 of each compressed file, as published by Zalando Research.
FILES = {
    "train_images": ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
    "train_labels": ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
    "test_images": ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
    "test_labels": ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (optionally gzipped) into a NumPy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:  # a cut or damaged download
        raise ValueError(f"{path} is truncated or corrupt: {type(e).__name__}: {e}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number {data[:4].hex()})")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = 4 + 4 * ndim + int(np.prod(dims)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(f"{path} is truncated or corrupt: {len(data)} bytes, expected {expected}")
    return np.frombuffer(data, dtype, offset=4 + 4 * ndim).reshape(dims).astype(dtype.newbyteorder("="))


def _find(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _download(folder: Path, name: str, md5: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    errors = []
    for mirror in MIRRORS:
        fd, tmp = tempfile.mkstemp(dir=folder, suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(mirror + name, timeout=60) as r:
                shutil.copyfileobj(r, out)
            got = _md5(Path(tmp))
            if got != md5:
                raise OSError(f"checksum mismatch for {name}: md5 {got}, expected {md5}")
            final = folder / name
            os.replace(tmp, final)  # atomic: a half-written file never takes the real name
            return final
        except OSError as e:  # URLError is an OSError
            errors.append(f"{mirror}{name}: {e}")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    raise OSError("could not download Fashion-MNIST:\n  " + "\n  ".join(errors))


def _default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "flax_lr_callbacks" / "fashion_mnist"


def _locate(data_dir: str | os.PathLike | None, download: bool) -> dict[str, Path]:
    folders = []
    if data_dir is not None:
        folders.append(Path(data_dir))
    else:
        if os.environ.get("FASHION_MNIST_DIR"):
            folders.append(Path(os.environ["FASHION_MNIST_DIR"]))
        folders += [DEBIAN_DIR, _default_cache()]
    for folder in folders:
        found = {key: _find(folder, name) for key, (name, _) in FILES.items()}
        if all(found.values()):
            return found
    if download:
        target = Path(data_dir) if data_dir is not None else _default_cache()
        try:
            return {key: _find(target, name) or _download(target, name, md5)
                    for key, (name, md5) in FILES.items()}
        except OSError as e:
            reason = str(e)
    else:
        reason = "download=False"
    raise FileNotFoundError(
        "Fashion-MNIST IDX files not found in " + ", ".join(map(str, folders)) + f" ({reason}). "
        "Either pass data_dir=<folder with the four *-ubyte(.gz) files>, set "
        "$FASHION_MNIST_DIR, install the Debian package (apt-get install dataset-fashion-mnist), "
        "or allow download=True on a machine with internet access."
    )


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, *,
                       download: bool = True) -> dict[str, dict[str, np.ndarray]]:
    """Loads Fashion-MNIST as ``{"train": {"image", "label"}, "test": {...}}``.

    Images are float32 in [0, 1] with shape ``(N, 28, 28, 1)``; labels are int32 in 0..9.

    Where it looks, in order: `data_dir` if given; otherwise ``$FASHION_MNIST_DIR``, the Debian
    package's folder ``/usr/share/datasets/fashion-mnist``, and the cache
    ``~/.cache/flax_lr_callbacks/fashion_mnist``. Files may be gzipped or not. If none has all
    four files and `download` is true, they are downloaded (into `data_dir` or the cache) and
    checked against the official MD5 sums; a mismatch is an error and nothing is kept.

    Args:
      data_dir: a folder holding the four IDX files.
      download: allow downloading when no folder has them. Default True.

    Raises:
      FileNotFoundError: nothing found and the download was impossible; lists every option.
      ValueError: a file is not a valid IDX file or the shapes do not match.
    """
    paths = _locate(data_dir, download)
    out = {}
    for split in ("train", "test"):
        images = read_idx(paths[f"{split}_images"])
        labels = read_idx(paths[f"{split}_labels"])
        if (images.shape[1:] != (28, 28) or images.dtype != np.uint8 or labels.ndim != 1
                or images.shape[0] != labels.shape[0]):
            raise ValueError(f"{paths[f'{split}_images']} and {paths[f'{split}_labels']} are "
                             f"not Fashion-MNIST: images {images.shape} {images.dtype}, labels "
                             f"{labels.shape} (expected (n, 28, 28) uint8 and (n,))")
        if labels.size and not 0 <= labels.min() <= labels.max() <= 9:
            raise ValueError(f"{paths[f'{split}_labels']} holds labels outside 0..9 (from "
                             f"{labels.min()} to {labels.max()}): the file is corrupt")
        out[split] = {
            "image": (images.astype(np.float32) / 255.0)[..., None],
            "label": labels.astype(np.int32),
        }
    return out
