"""Static facts about every supported dataset, the in-memory dataset type and errors.

Everything here is cheap to import (numpy only): the trainers call
`get_dataset_info` to build models before any data is read.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

AUGMENTATIONS = ("crop_flip", "none")


# The config flag that points a run at prepared data; the "how to get it"
# messages of every source name it, so it is spelled once.
DATA_DIR_FLAG = "--config.dataset.data_dir"


class DatasetUnavailableError(RuntimeError):
    """A dataset (or split) cannot be read from any requested source.

    The message is a single line that says how to obtain the data.
    """


class DataIntegrityError(RuntimeError):
    """A data file exists but its checksum or structure is not the pinned one."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Static description of a dataset as this library serves it.

    Attributes:
      name: registry name (the tfds name where one exists).
      num_classes: number of labels.
      image_shape: (H, W, C) of the images *as served* (after any resize).
      train_augment: the paper's training augmentation, 'crop_flip' (random
        crop with 4-px zero padding + horizontal flip, docs/data.md#augmentation) or 'none'.
      splits: split name -> number of examples of the full dataset.
      tfds_name: the tfds builder name, or None when tfds has no builder.
      local: whether an offline local source exists (source='local').
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]
    train_augment: str
    splits: Mapping[str, int]
    tfds_name: str | None
    local: bool

    @property
    def augment(self) -> str:
        """Alias of `train_augment` (the name used in DESIGN.md)."""
        return self.train_augment


def _info(**kw) -> DatasetInfo:
    # A read-only mapping type would be nicer, but a plain dict keeps the
    # dataclass picklable and printable; nobody mutates it in practice.
    return DatasetInfo(**kw)


_REGISTRY: dict[str, DatasetInfo] = {
    "mnist": _info(
        name="mnist", num_classes=10, image_shape=(28, 28, 1), train_augment="none",
        splits={"train": 60000, "test": 10000}, tfds_name="mnist", local=True),
    "fashion_mnist": _info(
        name="fashion_mnist", num_classes=10, image_shape=(28, 28, 1),
        train_augment="none", splits={"train": 60000, "test": 10000},
        tfds_name="fashion_mnist", local=True),
    "cifar10": _info(
        name="cifar10", num_classes=10, image_shape=(32, 32, 3),
        train_augment="crop_flip", splits={"train": 50000, "test": 10000},
        tfds_name="cifar10", local=False),
    "cifar100": _info(
        name="cifar100", num_classes=100, image_shape=(32, 32, 3),
        train_augment="crop_flip", splits={"train": 50000, "test": 10000},
        tfds_name="cifar100", local=False),
    "svhn_cropped": _info(
        name="svhn_cropped", num_classes=10, image_shape=(32, 32, 3),
        train_augment="none",
        splits={"train": 73257, "test": 26032, "extra": 531131},
        tfds_name="svhn_cropped", local=False),
    # Binary 'Smiling' attribute; 218x178 images are centre-cropped to
    # 178x178 and resized to 128x128 (see tfds_source.celeba_crop_resize).
    "celeb_a": _info(
        name="celeb_a", num_classes=2, image_shape=(128, 128, 3), train_augment="none",
        splits={"train": 162770, "validation": 19867, "test": 19962},
        tfds_name="celeb_a", local=False),
    # Not a tfds builder: read from the standard tiny-imagenet-200/ directory
    # and resized 64x64 -> 32x32 (see tiny_imagenet.py).
    "tiny_imagenet": _info(
        name="tiny_imagenet", num_classes=200, image_shape=(32, 32, 3),
        train_augment="crop_flip", splits={"train": 100000, "validation": 10000},
        tfds_name=None, local=True),
}

DATASET_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get_dataset_info(name: str) -> DatasetInfo:
    """Returns the `DatasetInfo` of `name`; raises ValueError for unknown names."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"name must be one of {', '.join(DATASET_NAMES)}, got {name!r}") from None


@dataclasses.dataclass(frozen=True, eq=False)
class ArrayDataset:
    """An in-memory labelled image dataset.

    Attributes:
      images: uint8 array (N, H, W, C).
      labels: int32 array (N,).
    """

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if not isinstance(self.images, np.ndarray) or self.images.ndim != 4:
            raise ValueError(
                f"images must be a 4-D NHWC numpy array, got shape "
                f"{getattr(self.images, 'shape', None)}")
        if self.images.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {self.images.dtype}")
        if not isinstance(self.labels, np.ndarray) or self.labels.ndim != 1:
            raise ValueError(
                f"labels must be a 1-D numpy array, got shape "
                f"{getattr(self.labels, 'shape', None)}")
        if self.labels.dtype != np.int32:
            raise ValueError(f"labels must be int32, got {self.labels.dtype}")
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"images and labels must have the same length, got "
                f"{len(self.images)} and {len(self.labels)}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def take(self, n: int) -> "ArrayDataset":
        """The first `n` examples (all of them if `n` >= len)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        return ArrayDataset(self.images[:n], self.labels[:n])
