"""LADDER on MNIST with LeNet (Table 2; Table 6 row 1).

Vanilla LeNet (and its substitute): SGD lr 0.01, momentum 0.5, batch 64, 10
epochs. Generator: ``mnist_generator`` (z 500 -> 28x28, sigmoid), L2, Adam
1e-3, batch 256, 1000 epochs. SVMs: the code's settings on standardized
latents. Generation: 450 images per class (4,500) at the calibrated ε
(``common.py``). Fine-tuning: SGD lr 0.01, momentum 0.5, batch 64, 100 epochs.

Variants (comma-separated, ``common.py``): ``smoke``, ``paper_eps`` (the job
script's raw ε), ``adaptive``, ``legacy``, ``svm255`` (only the SVM inputs:
latents of x·255, as the authors' MNIST code), ``previous_defaults``.
"""

from ladder_jax import config_presets as common


def get_config(arg=None):
    c = common.base_config()
    return common.apply_variants(c, arg)
