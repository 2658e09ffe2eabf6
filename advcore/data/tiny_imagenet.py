"""Tiny ImageNet (200 classes) from the standard `tiny-imagenet-200/` directory.

tfds has no Tiny ImageNet builder, so this reads the layout of the official
zip (http://cs231n.stanford.edu/tiny-imagenet-200.zip):

    tiny-imagenet-200/wnids.txt
    tiny-imagenet-200/train/<wnid>/images/*.JPEG
    tiny-imagenet-200/val/images/*.JPEG
    tiny-imagenet-200/val/val_annotations.txt   (file \t wnid \t box...)

Labels are indices into the *sorted* wnids (as torchvision's ImageFolder
numbers them, which the PyTorch reference code uses). Images are converted to
RGB (a few are greyscale) and resized 64x64 -> 32x32 with PIL bilinear
(antialiased, like torchvision's Resize). The decoded arrays are cached as
`advcore_tiny_imagenet_32x32.npz` inside the directory (falls back to no
cache if it is read-only). The unlabeled test split is not served.
"""

from __future__ import annotations

import concurrent.futures
import os
import pathlib

import numpy as np
from PIL import Image

from advcore.data import cache
from advcore.data.info import DATA_DIR_FLAG, DatasetUnavailableError

TINY_ENV = "ADVCORE_TINY_IMAGENET_DIR"
DIRNAME = "tiny-imagenet-200"
SIZE = 32
_KEYS = ("train_images", "train_labels", "validation_images", "validation_labels")
HOWTO = (
    "download http://cs231n.stanford.edu/tiny-imagenet-200.zip, unzip it into "
    f"<dir> and pass {DATA_DIR_FLAG}=<dir> (or set {TINY_ENV})")


def find_root(data_dir: str | os.PathLike | None) -> pathlib.Path:
    """The `tiny-imagenet-200` directory under `data_dir` (or `$ADVCORE_TINY_IMAGENET_DIR`)."""
    candidates = [d for d in (data_dir, os.environ.get(TINY_ENV)) if d]
    for d in candidates:
        d = pathlib.Path(d).expanduser()
        for root in (d, d / DIRNAME):
            if (root / "wnids.txt").is_file():
                return root
    where = ", ".join(str(c) for c in candidates) or "no data_dir given"
    raise DatasetUnavailableError(
        f"tiny_imagenet: no {DIRNAME}/ directory with wnids.txt found ({where}); {HOWTO}")


def _load_image(path: pathlib.Path, size: int) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(im, np.uint8)


def _decode_all(paths: list[pathlib.Path], size: int) -> np.ndarray:
    out = np.empty((len(paths), size, size, 3), np.uint8)
    # PIL releases the GIL while decoding, so threads do help here.
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as ex:
        for i, arr in enumerate(ex.map(lambda p: _load_image(p, size), paths, chunksize=64)):
            out[i] = arr
    return out


def decode_directory(root: pathlib.Path, size: int = SIZE) -> dict[str, np.ndarray]:
    """Decodes train and validation images of a `tiny-imagenet-200` directory."""
    wnids = sorted(w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip())
    index = {w: i for i, w in enumerate(wnids)}
    train_paths, train_labels = [], []
    for w in wnids:
        files = sorted((root / "train" / w / "images").glob("*.JPEG"))
        if not files:
            raise DatasetUnavailableError(
                f"tiny_imagenet: {root}/train/{w}/images has no .JPEG files; {HOWTO}")
        train_paths += files
        train_labels += [index[w]] * len(files)
    val_paths, val_labels = [], []
    ann = root / "val" / "val_annotations.txt"
    if not ann.is_file():
        raise DatasetUnavailableError(f"tiny_imagenet: {ann} not found; {HOWTO}")
    for line in ann.read_text().splitlines():
        fields = line.split("\t")
        if len(fields) < 2:
            continue
        if fields[1] not in index:
            raise DatasetUnavailableError(
                f"tiny_imagenet: {ann} names class {fields[1]!r} not in wnids.txt")
        val_paths.append(root / "val" / "images" / fields[0])
        val_labels.append(index[fields[1]])
    return {
        "train_images": _decode_all(train_paths, size),
        "train_labels": np.asarray(train_labels, np.int32),
        "validation_images": _decode_all(val_paths, size),
        "validation_labels": np.asarray(val_labels, np.int32),
    }


def load_tiny_imagenet_arrays(data_dir: str | os.PathLike | None) -> dict[str, np.ndarray]:
    """All Tiny ImageNet arrays, from the cache .npz or decoded from the JPEGs."""
    root = find_root(data_dir)
    path = root / f"advcore_tiny_imagenet_{SIZE}x{SIZE}.npz"
    arrays = cache.load_npz(path, _KEYS)
    if arrays is None:
        arrays = decode_directory(root)
        cache.save_npz_atomic(path, arrays)
    return arrays
