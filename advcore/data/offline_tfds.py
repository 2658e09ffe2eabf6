"""Write the official tfds `mnist` / `fashion_mnist` 3.0.1 ArrayRecord layout offline.

Users with internet run `tfds.data_source('mnist', download=True)`. Offline
machines (CI) have the same data from the local sources (see local.py) but
tfds cannot prepare it: its checksums are of the upstream .gz bytes, and its
extractor and PNG encoder need TensorFlow (docs/data.md#offline-tfds-layout). The subclasses
below keep the official builders' `_info` (features, label names, version)
and only replace where examples come from, yielding the verified local
arrays as PIL images that tfds PNG-encodes with PIL. Afterwards

    tfds.data_source('mnist', data_dir=D, download=False)

reads them with the *registered* official builder, exactly as with internet.
tfds orders examples by a hash of their keys (the index, as upstream), so the
order differs from the local arrays, but the multiset of examples is the same.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from advcore.data import local

SUPPORTED = ("mnist", "fashion_mnist")


def _make_builder_class(name: str):
    import tensorflow_datasets as tfds
    from tensorflow_datasets.image_classification import mnist as tfds_mnist

    base = tfds_mnist.MNIST if name == "mnist" else tfds_mnist.FashionMNIST

    class OfflineBuilder(base, skip_registration=True):  # type: ignore[misc, valid-type]
        """`base` with examples read from the pinned local arrays (no download, no TF)."""

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing to download
            return [
                tfds.core.SplitGenerator(name=split, gen_kwargs={"split": split})
                for split in ("train", "test")
            ]

        def _generate_examples(self, split):
            arrays = local.LOCAL_LOADERS[name]()
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            # Index keys, as the official builder uses: same shuffling as upstream.
            for index in range(len(labels)):
                yield index, {"image": Image.fromarray(images[index, :, :, 0]),
                              "label": int(labels[index])}

    OfflineBuilder.name = name
    OfflineBuilder.__name__ = f"Offline{base.__name__}"
    return OfflineBuilder


def prepare_offline_tfds(name: str, data_dir: str | os.PathLike) -> str:
    """Prepares tfds `name` ('mnist' or 'fashion_mnist') in `data_dir` from local files.

    A no-op if it is already prepared. Takes ~7-10 s. Returns the dataset dir.
    Raises `DatasetUnavailableError` if the local source itself is missing.
    """
    if name not in SUPPORTED:
        raise ValueError(f"name must be one of {SUPPORTED}, got {name!r}")
    import tensorflow_datasets as tfds

    data_dir = os.path.expanduser(str(data_dir))
    builder = _make_builder_class(name)(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        # Load (and verify) the local arrays first, so a missing source fails
        # before tfds creates any directories.
        local.LOCAL_LOADERS[name]()
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return str(builder.data_dir)


def example_multiset(images: np.ndarray, labels: np.ndarray) -> list[bytes]:
    """Sorted per-example byte strings, to compare datasets regardless of order."""
    flat = images.reshape(len(images), -1)
    return sorted(flat[i].tobytes() + int(labels[i]).to_bytes(2, "little")
                  for i in range(len(labels)))
