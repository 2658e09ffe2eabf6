"""MNIST family: TRADES' SmallCNN for both models, TRADES' MNIST attack.

ε = 0.3, step 0.01, 40 steps (TRADES `train_trades_mnist.py`), SGD lr 0.01,
momentum 0.9, no weight decay, ×0.1 from (1-based) epochs 55, 75 and 90 on,
100 epochs.
Evaluation: PGD-40 (ε 0.3, step 0.01).

``:demo`` is README command 1's quick run (a 4k-example subset, fewer PGD
steps); it combines with a method token, e.g. ``:demo,trades,alpha6``.
"""

from lbgat_jax import config_presets as common


def get_config(arg=None):
    c = common.mnist_base()
    tokens = [t for t in (arg or "").split(",") if t]
    if "demo" in tokens:
        tokens.remove("demo")
        common.apply_demo(c)
    return common.apply_variant(c, ",".join(tokens))
