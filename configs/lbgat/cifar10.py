"""CIFAR-10 (LBGAT Tables 1, 3, 4, 5): WRN-34-10/20 + LBGAT's ResNet18, ε = 0.031.

The default is LBGAT+TRADES (α = 0), the Table 1 "w/o CE" column. Examples::

    --config=configs/lbgat/cifar10.py:vanilla_at
    --config=configs/lbgat/cifar10.py:lbgat            # Table 3 (CE attack, Eq. 3)
    --config=configs/lbgat/cifar10.py:lbgat_alp        # Table 4
    --config=configs/lbgat/cifar10.py:trades,alpha1
"""

from lbgat_jax import config_presets as common


def get_config(arg=None):
    c = common.base_config()
    c.dataset.name = "cifar10"
    return common.apply_variant(c, arg)
