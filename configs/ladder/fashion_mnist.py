"""LADDER on Fashion-MNIST: the MNIST recipe unchanged (not in the paper).

The LeNet, generator, SVM and fine-tuning settings are MNIST's; only the data
differ. Variants: ``smoke``, ``paper_eps``, ``adaptive``, ``legacy`` (x·255 SVM
inputs, the MNIST code's), ``svm255``, ``previous_defaults`` (``common.py``).
"""

from ladder_jax import config_presets as common


def get_config(arg=None):
    c = common.base_config()
    c.dataset.name = "fashion_mnist"
    return common.apply_variants(c, arg)
