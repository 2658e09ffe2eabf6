"""Tiny ImageNet loader on a synthetic `tiny-imagenet-200/` directory."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from advcore import data
from advcore.data import tiny_imagenet

# wnids.txt is deliberately unsorted: labels follow the sorted order.
WNIDS = ["n03000000", "n01000000", "n02000000"]
COLOURS = {"n01000000": (250, 10, 10), "n02000000": (10, 250, 10), "n03000000": (10, 10, 250)}


def _write(path, colour, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", (64, 64), colour)
    if mode == "L":
        img = img.convert("L")
    img.save(path, quality=95)


@pytest.fixture()
def tiny_dir(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    root.mkdir()
    (root / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    for w in WNIDS:
        for k in range(3):
            _write(root / "train" / w / "images" / f"{w}_{k}.JPEG", COLOURS[w])
        (root / "train" / w / f"{w}_boxes.txt").write_text("")
    # One greyscale image, as in the real data.
    _write(root / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_3.JPEG", (128, 128, 128), "L")
    val = [("val_0.JPEG", "n02000000"), ("val_1.JPEG", "n01000000"), ("val_2.JPEG", "n03000000"),
           ("val_3.JPEG", "n02000000")]
    for fname, w in val:
        _write(root / "val" / "images" / fname, COLOURS[w])
    (root / "val" / "val_annotations.txt").write_text(
        "".join(f"{f}\t{w}\t0\t0\t63\t63\n" for f, w in val))
    return tmp_path


def test_tiny_imagenet_loader(tiny_dir):
    train = data.load_split("tiny_imagenet", "train", source="local", data_dir=tiny_dir)
    assert train.images.shape == (10, 32, 32, 3) and train.images.dtype == np.uint8
    # Sorted wnids: n01 -> 0, n02 -> 1, n03 -> 2 (n03 has the extra grey image).
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 2]
    for i, w in enumerate(["n01000000"] * 3 + ["n02000000"] * 3 + ["n03000000"] * 3):
        mean = train.images[i].reshape(-1, 3).mean(0)
        np.testing.assert_allclose(mean, COLOURS[w], atol=4)
    grey = train.images[9]
    assert np.abs(grey.astype(int) - 128).max() <= 4  # greyscale converted to 3 channels

    val = data.load_split("tiny_imagenet", "validation", source="auto",
                          data_dir=tiny_dir / "tiny-imagenet-200")
    assert val.labels.tolist() == [1, 0, 2, 1]  # annotation order, sorted-wnid labels
    assert data.load_split("tiny_imagenet", "validation[:2]", data_dir=tiny_dir).labels.tolist() \
        == [1, 0]


def test_tiny_imagenet_cache(tiny_dir, monkeypatch):
    first = data.load_split("tiny_imagenet", "train", source="local", data_dir=tiny_dir)
    npz = tiny_dir / "tiny-imagenet-200" / "advcore_tiny_imagenet_32x32.npz"
    assert npz.is_file()
    # With the decoder disabled, a second load must come from the cache.
    monkeypatch.setattr(tiny_imagenet, "decode_directory",
                        lambda *a, **k: pytest.fail("decoded again instead of using the cache"))
    again = data.load_split("tiny_imagenet", "train", source="local", data_dir=tiny_dir)
    np.testing.assert_array_equal(again.images, first.images)


def test_tiny_imagenet_env_var(tiny_dir, monkeypatch):
    monkeypatch.setenv(tiny_imagenet.TINY_ENV, str(tiny_dir))
    assert len(data.load_split("tiny_imagenet", "validation", source="local")) == 4


def test_tiny_imagenet_missing(tmp_path):
    with pytest.raises(data.DatasetUnavailableError, match="tiny-imagenet-200.zip"):
        data.load_split("tiny_imagenet", "train", source="local", data_dir=tmp_path)
