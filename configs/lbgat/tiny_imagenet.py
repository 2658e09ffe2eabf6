"""Tiny-ImageNet resized to 32×32 (LBGAT Table 6), 200 classes, PGD-20 eval.

Tiny-ImageNet has no tfds builder: point ``dataset.data_dir`` at an extracted
``tiny-imagenet-200/`` directory (see README, "Data").
"""

from lbgat_jax import config_presets as common


def get_config(arg=None):
    c = common.base_config()
    c.dataset.name = "tiny_imagenet"
    # The Tiny-ImageNet test labels were never released: evaluate on validation.
    c.dataset.test_split = "validation"
    return common.apply_variant(c, arg)
