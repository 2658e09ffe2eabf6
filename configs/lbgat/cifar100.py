"""CIFAR-100 (LBGAT Tables 2, 4, 5): WRN-34-10/20 + LBGAT's ResNet18, ε = 0.031.

The default is the released LBGAT+TRADES (α = 0) model. Examples::

    --config=configs/lbgat/cifar100.py                      # LBGAT+TRADES α=0
    --config=configs/lbgat/cifar100.py:lbgat_trades,alpha6  # LBGAT+TRADES α=6
    --config=configs/lbgat/cifar100.py:alpha6,wrn34_20      # Table 5 (*)
    --config=configs/lbgat/cifar100.py:trades,alpha6        # TRADES baseline
"""

from lbgat_jax import config_presets as common


def get_config(arg=None):
    c = common.base_config()
    c.dataset.name = "cifar100"
    return common.apply_variant(c, arg)
