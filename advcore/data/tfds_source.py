"""The tfds source: `tfds.data_source` (ArrayRecord, no TensorFlow needed) decoded into numpy.

Offline rules learned the hard way (docs/data.md#tfds-offline-rules):
  * `tfds.data_source` defaults to download=True, which hangs ~200 s on DNS
    retries without network, so we pass download=False unless asked.
  * With download=False an unprepared dataset fails with a confusing
    NotImplementedError/KeyError, so we check `is_prepared()` first and turn
    that into a one-line `DatasetUnavailableError`.
  * Under `tfds.testing.mock_data` `__getitems__` is broken and
    `is_prepared()` is False, so we read example by example with
    `__getitem__` and still *try* the source before declaring it unavailable.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from advcore.data.info import DATA_DIR_FLAG, DatasetInfo, DatasetUnavailableError

# CelebA: 218x178 aligned faces -> centre square crop 178x178 -> 128x128.
# The LADDER authors cropped faces with dlib instead; a centre crop of the
# aligned images keeps the face while needing no extra dependency.
CELEBA_SIZE = 128


def _tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:  # pragma: no cover - tfds is a pinned dependency
        raise DatasetUnavailableError(
            f"tensorflow_datasets is not importable ({e}); `pip install "
            f"tensorflow-datasets importlib_resources`") from None
    return tfds


def resolve_data_dir(data_dir: str | None) -> str:
    """The tfds data dir that tfds itself would use for `data_dir`."""
    if data_dir:
        return os.path.expanduser(str(data_dir))
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def howto(tfds_name: str, data_dir: str | None) -> str:
    """One line: how to prepare `tfds_name` with internet."""
    d = resolve_data_dir(data_dir)
    return (
        f"{tfds_name} is not prepared in {d}; run `python -c 'import "
        f"tensorflow_datasets as tfds; tfds.data_source(\"{tfds_name}\", "
        f"data_dir=\"{d}\", download=True)'` with internet, or pass "
        f"{DATA_DIR_FLAG}=<dir with a prepared {tfds_name}> to a training run "
        f"(or set TFDS_DATA_DIR)")


def is_prepared(tfds_name: str, data_dir: str | None) -> bool:
    """Whether `tfds_name` has generated files in `data_dir` (no network).

    A missing dataset folder answers False without asking tfds, whose builder
    would warn about the missing folder on every offline run.
    """
    if not os.path.isdir(os.path.join(resolve_data_dir(data_dir), tfds_name.split("/")[0])):
        return False
    try:
        tfds = _tfds()
        return bool(tfds.builder(tfds_name, data_dir=data_dir).is_prepared())
    except Exception:  # noqa: BLE001 - any failure here means "not usable"
        return False


def celeba_crop_resize(image: np.ndarray, size: int = CELEBA_SIZE) -> np.ndarray:
    """Centre square crop then PIL bilinear (antialiased) resize to size x size."""
    h, w = image.shape[:2]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    crop = image[top:top + s, left:left + s]
    if s == size:
        return np.ascontiguousarray(crop)
    pil = Image.fromarray(crop.squeeze(-1) if crop.shape[-1] == 1 else crop)
    out = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR))
    return out.reshape(size, size, image.shape[-1])


def _label(info: DatasetInfo, example: dict) -> int:
    if info.name == "celeb_a":
        return int(bool(example["attributes"]["Smiling"]))
    return int(example["label"])


def load_tfds(
    info: DatasetInfo,
    split: str,
    data_dir: str | None,
    *,
    download: bool = False,
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reads `split` of `info` through `tfds.data_source` into (uint8 NHWC, int32)."""
    tfds = _tfds()
    assert info.tfds_name is not None
    prepared = download or is_prepared(info.tfds_name, data_dir)
    try:
        source = tfds.data_source(
            info.tfds_name, split=split, data_dir=data_dir, download=download)
    except Exception as e:  # noqa: BLE001
        if not prepared:
            raise DatasetUnavailableError(howto(info.tfds_name, data_dir)) from e
        raise
    n = len(source) if limit is None else min(limit, len(source))
    h, w, c = info.image_shape
    images = np.empty((n, h, w, c), np.uint8)
    labels = np.empty((n,), np.int32)
    for i in range(n):
        # __getitem__, not __getitems__: the latter is broken under mock_data.
        ex = source[i]
        img = np.asarray(ex["image"], np.uint8)
        if img.ndim == 2:
            img = img[..., None]
        if info.name == "celeb_a":
            img = celeba_crop_resize(img)
        images[i] = img
        labels[i] = _label(info, ex)
    return images, labels
