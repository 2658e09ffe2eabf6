"""TRADES MNIST ``SmallCNN`` (docs/lbgat.md#small-cnn).

Source: yaodongyu/TRADES ``models/small_cnn.py``. On 28x28x1 inputs:
conv3x3(1->32) ReLU conv3x3(32->32) ReLU MP2 conv3x3(32->64) ReLU
conv3x3(64->64) ReLU MP2 (unpadded convs: 28->26->24->12->10->8->4),
flatten 64*4*4 = 1024 (PyTorch C,H,W order), fc1(1024->200) ReLU Dropout(0.5)
fc2(200->200) ReLU fc3(200->num_classes). No input normalisation.

Init: convs kaiming-normal (fan_in, gain sqrt(2)) with zero bias; fc1/fc2
PyTorch default; fc3 weight *and* bias zero, so every logit is exactly 0 at
init (this is what TRADES does; gradients still reach fc3 through its input).

Additions: ``channels`` / ``hidden_dim`` make the widths configurable for cheap
tests (defaults are the paper's); ``dtype`` is the compute dtype.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from advcore.models import layers


class SmallCNN(nn.Module):
    """TRADES SmallCNN; see the module docstring.

    Attributes:
      num_classes: number of logits (>= 2).
      channels: output channels of conv1..conv4 (32, 32, 64, 64).
      hidden_dim: width of fc1 and fc2 (200).
      dropout_rate: dropout after fc1's ReLU (0.5); only active when train=True.
      dtype: compute dtype (float32, bfloat16 or float16).
    """

    num_classes: int = 10
    channels: tuple[int, int, int, int] = (32, 32, 64, 64)
    hidden_dim: int = 200
    dropout_rate: float = 0.5
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        layers.check_num_classes(self.num_classes)
        layers.require(
            isinstance(self.channels, tuple) and len(self.channels) == 4
            and all(isinstance(c, int) and c >= 1 for c in self.channels),
            f"channels must be a tuple of four ints >= 1, got {self.channels!r}",
        )
        layers.check_positive_int(self.hidden_dim, "hidden_dim")
        layers.check_rate(self.dropout_rate, "dropout_rate")
        layers.canonical_dtype(self.dtype)
        super().__post_init__()

    def setup(self) -> None:
        conv = lambda c: layers.Conv2d(  # noqa: E731
            c, 3, 1, 0, kernel_init=layers.he_normal_fan_in, bias_init=layers.zeros_init,
            dtype=self.dtype,
        )
        self.conv1, self.conv2, self.conv3, self.conv4 = (conv(c) for c in self.channels)
        self.pool = layers.MaxPool2d(2)
        self.fc1 = layers.Dense(self.hidden_dim, dtype=self.dtype)
        self.drop = nn.Dropout(self.dropout_rate)
        self.fc2 = layers.Dense(self.hidden_dim, dtype=self.dtype)
        self.fc3 = layers.Dense(
            self.num_classes, kernel_init=layers.zeros_init, bias_init=layers.zeros_init,
            dtype=self.dtype,
        )

    def features(self, x: jax.Array, train: bool) -> jax.Array:
        """The flattened conv features (1024-d at default widths), float32."""
        del train  # No BN or dropout in the conv stack.
        out = jnp.asarray(x, jnp.float32).astype(self.dtype)
        out = nn.relu(self.conv1(out))
        out = nn.relu(self.conv2(out))
        out = self.pool(out)
        out = nn.relu(self.conv3(out))
        out = nn.relu(self.conv4(out))
        out = self.pool(out)
        return layers.flatten_chw(out).astype(jnp.float32)

    def classify(self, z: jax.Array, train: bool) -> jax.Array:
        """Logits (float32) from ``features`` output: fc1, ReLU, dropout, fc2, ReLU, fc3."""
        out = nn.relu(self.fc1(z))
        out = self.drop(out, deterministic=not train)
        out = nn.relu(self.fc2(out))
        return self.fc3(out).astype(jnp.float32)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Logits (B, num_classes) float32 from NHWC images in [0, 1]."""
        return self.classify(self.features(x, train), train)
