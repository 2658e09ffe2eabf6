"""Datasets and input pipelines for adversarial training (DESIGN.md, section Data).

    from advcore import data
    info = data.get_dataset_info("cifar10")
    train = data.load_split("mnist", "train[:5000]", source="auto")
    it = data.make_train_iterator(train, global_batch_size=128, seed=0,
                                  augment=info.train_augment)
    for batch in data.eval_batches(test, batch_size=200): ...

Sources and environment variables are described in `loading.load_split`,
`local` (MNIST / Fashion-MNIST offline copies) and `tiny_imagenet`.
"""

from advcore.data.info import (
    AUGMENTATIONS,
    DATASET_NAMES,
    ArrayDataset,
    DataIntegrityError,
    DatasetInfo,
    DatasetUnavailableError,
    get_dataset_info,
)
from advcore.data.loading import SOURCES, load_split
from advcore.data.offline_tfds import prepare_offline_tfds
from advcore.data.pipeline import (
    crop_flip,
    eval_batches,
    make_batch_iterator,
    make_train_iterator,
    steps_per_epoch,
    to_float,
)

__all__ = [
    "AUGMENTATIONS",
    "DATASET_NAMES",
    "SOURCES",
    "ArrayDataset",
    "DataIntegrityError",
    "DatasetInfo",
    "DatasetUnavailableError",
    "crop_flip",
    "eval_batches",
    "get_dataset_info",
    "load_split",
    "make_batch_iterator",
    "make_train_iterator",
    "prepare_offline_tfds",
    "steps_per_epoch",
    "to_float",
]
