"""Dataset registry and tfds-style split slicing for local sources."""

from __future__ import annotations

import types

import numpy as np
import pytest

from advcore import data
from advcore.data import splits


def test_dataset_info():
    assert set(data.DATASET_NAMES) == {"mnist", "fashion_mnist", "cifar10", "cifar100",
                                       "svhn_cropped", "celeb_a", "tiny_imagenet"}
    cifar = data.get_dataset_info("cifar10")
    assert (cifar.num_classes, cifar.image_shape, cifar.train_augment) == (10, (32, 32, 3),
                                                                           "crop_flip")
    assert data.get_dataset_info("cifar100").num_classes == 100
    assert data.get_dataset_info("mnist").image_shape == (28, 28, 1)
    assert data.get_dataset_info("mnist").augment == "none"
    celeb = data.get_dataset_info("celeb_a")
    assert (celeb.num_classes, celeb.image_shape) == (2, (128, 128, 3))
    tiny = data.get_dataset_info("tiny_imagenet")
    assert (tiny.num_classes, tiny.image_shape, tiny.train_augment) == (200, (32, 32, 3),
                                                                        "crop_flip")
    assert data.get_dataset_info("svhn_cropped").train_augment == "none"
    with pytest.raises(Exception):
        cifar.num_classes = 3  # frozen


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="cifar10.*tiny_imagenet"):
        data.get_dataset_info("imagenet")
    with pytest.raises(ValueError, match="source"):
        data.load_split("mnist", "train", source="web")
    with pytest.raises(ValueError, match="split"):
        data.load_split("mnist", "validation")
    with pytest.raises(ValueError, match="limit"):
        data.load_split("mnist", "train", limit=-1)


_X = np.arange(10)


def _apply(spec: str) -> list[int]:
    full = {"train": (_X, _X), "test": (_X[:7] + 100, _X[:7] + 100)}
    return splits.apply_split(spec, full.__getitem__, ("train", "test"))[1].tolist()


@pytest.mark.parametrize("spec, expected", [
    ("train", list(range(10))),
    ("train[:3]", [0, 1, 2]),
    ("train[7:]", [7, 8, 9]),
    ("train[2:5]", [2, 3, 4]),
    ("train[-2:]", [8, 9]),
    ("train[:33%]", [0, 1, 2]),
    ("train[90%:]", [9]),
    ("train[25%:75%]", [2, 3, 4, 5, 6, 7]),  # round(2.5)=2, round(7.5)=8 (tfds 'closest')
    ("train[:2]+test[-1:]", [0, 1, 106]),
    ("train[:20]", list(range(10))),
])
def test_split_forms(spec, expected):
    assert _apply(spec) == expected


@pytest.mark.parametrize("spec", ["train[:3]", "train[7:]", "train[2:5]", "train[-2:]",
                                  "train[:33%]", "train[90%:]", "train[25%:75%]",
                                  "train[1%:99%]", "test[-50%:]"])
def test_split_boundaries_match_tfds(spec):
    tfds = pytest.importorskip("tensorflow_datasets")
    infos = {"train": types.SimpleNamespace(num_examples=10, name="train"),
             "test": types.SimpleNamespace(num_examples=7, name="test")}
    (abs_instr,) = tfds.core.ReadInstruction.from_spec(spec).to_absolute(infos)
    n = infos[abs_instr.splitname].num_examples
    ref = list(range(n))[slice(abs_instr.from_, abs_instr.to)]
    (name, start, stop), = splits.parse_split(spec)
    assert list(range(n))[splits.resolve_slice(start, stop, n)] == ref


@pytest.mark.parametrize("bad", ["", "train[", "train[1:2:3]", "train[a:]", "tr ain",
                                 "train[:150%]"])
def test_bad_splits(bad):
    with pytest.raises(ValueError, match="split"):
        _apply(bad)


def test_unknown_split_name():
    with pytest.raises(ValueError, match="split name"):
        _apply("valid[:3]")
