"""LADDER's MNIST LeNet (docs/ladder.md#classifiers), i.e. the PyTorch ``examples/mnist`` ``Net``.

Source: zhouxiaowei1120/LADDER ``generate_latent/mnist_main.py`` (the only
LADDER classifier whose checkpoint ships). On 28x28x1 inputs:
conv5x5(1->20) ReLU MP2 conv5x5(20->50) ReLU MP2 (28->24->12->8->4),
flatten 50*4*4 = 800 (PyTorch C,H,W order, so PyTorch ``fc1`` weights port
directly), fc1(800->500) ReLU fc2(500->10). 431,080 parameters. PyTorch
default init.

Deviations:
* The PyTorch model returns ``log_softmax`` and trains with NLL; this one
  returns the logits. NLL on log-softmax *is* cross-entropy on logits, and
  argmax is unchanged, so losses and predictions agree.
* The MNIST normalisation ((x - 0.1307) / 0.3081) that the PyTorch pipeline
  applies in its data transform is folded into the model (``normalize=True``),
  so attacks and LADDER perturbations work in [0, 1] pixel space.

``features(x)`` is LADDER's latent z: the fc1 output **before** the ReLU
(500-d; LADDER reads it with a forward hook on fc1, docs/ladder.md#classifiers -- the paper's
"input to the last layer" would be post-ReLU). ``classify(z) = fc2(ReLU(z))``.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from advcore.models import layers

MNIST_MEAN = 0.1307
MNIST_STD = 0.3081


class LeNet(nn.Module):
    """LADDER MNIST LeNet; see the module docstring.

    Attributes:
      num_classes: number of logits (>= 2; 10 for MNIST).
      normalize: apply the MNIST mean/std normalisation inside the model.
      dtype: compute dtype (float32, bfloat16 or float16).
    """

    num_classes: int = 10
    normalize: bool = True
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        layers.check_num_classes(self.num_classes)
        layers.require(
            isinstance(self.normalize, bool), f"normalize must be a bool, got {self.normalize!r}"
        )
        layers.canonical_dtype(self.dtype)
        super().__post_init__()

    def setup(self) -> None:
        self.conv1 = layers.Conv2d(20, 5, 1, 0, dtype=self.dtype)
        self.conv2 = layers.Conv2d(50, 5, 1, 0, dtype=self.dtype)
        self.pool = layers.MaxPool2d(2)
        self.fc1 = layers.Dense(500, dtype=self.dtype)
        self.fc2 = layers.Dense(self.num_classes, dtype=self.dtype)

    def features(self, x: jax.Array, train: bool = False) -> jax.Array:
        """Latent z: fc1 output before ReLU, (B, 500) float32."""
        del train  # No BN or dropout.
        out = jnp.asarray(x, jnp.float32)
        if self.normalize:
            out = (out - MNIST_MEAN) / MNIST_STD
        out = out.astype(self.dtype)
        out = self.pool(nn.relu(self.conv1(out)))
        out = self.pool(nn.relu(self.conv2(out)))
        return self.fc1(layers.flatten_chw(out)).astype(jnp.float32)

    def classify(self, z: jax.Array, train: bool = False) -> jax.Array:
        """Logits fc2(ReLU(z)), float32."""
        del train
        return self.fc2(nn.relu(z)).astype(jnp.float32)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Logits (B, num_classes) float32 from NHWC images in [0, 1]."""
        return self.classify(self.features(x, train), train)
