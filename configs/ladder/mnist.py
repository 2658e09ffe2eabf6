"""LADDER on MNIST with LeNet (SPEC 2.3; Table 2; Table 6 row 1).

Vanilla LeNet: SGD lr 0.01, momentum 0.5, batch 64, 10 epochs. Generator:
``mnist_generator`` (z 500 -> 28x28, sigmoid), L2, Adam 1e-3, batch 256,
1000 epochs. Generation: 450 images per class (4,500), ε = 0.5 (job script).
Fine-tuning: SGD lr 0.01, momentum 0.5, batch 64, 100 epochs.

Variants (comma-separated): ``smoke``, ``paper_eps``, ``adaptive``, ``legacy``,
``svm255`` (only the SVM inputs scaled to [0, 255], as the authors' MNIST code).
"""

from configs.ladder import common


def get_config(arg=None):
    c = common.base_config()
    return common.apply_variants(c, arg)
