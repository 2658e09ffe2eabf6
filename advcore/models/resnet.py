"""Post-activation ResNet18 variants for 32x32 inputs (docs/lbgat.md#resnet18).

Two variants that differ only in strides and pooling (do not merge them):

* ``resnet18_lbgat`` -- LBGAT ``models/resnetcifar.py: ResNet18_cifar`` (the
  natural teacher M_n): layer strides 1, 1, 2, 2 (layer2 is *not*
  downsampled), final map 8x8, avg-pool 8.
* ``resnet18`` / ``cifar_resnet18`` -- kuangliu/pytorch-cifar ``ResNet18`` (TRADES,
  AutoAttack example, LADDER's CifarNet): strides 1, 2, 2, 2, final map 4x4,
  avg-pool 4. LADDER uses ``features`` (512-d pooled post-ReLU layer4 output)
  and ``classify`` (the Linear layer).

Block (``BasicBlock``): ReLU(BN1(conv1)) -> BN2(conv2) + shortcut -> ReLU, with a
1x1-conv + BN shortcut when the stride or width changes. Convs have no bias.
Stem: conv3x3(3->64) + BN + ReLU, no max-pool. Inputs are used as is (no
normalisation), as in all three source repositories.

Init is PyTorch's default (these repositories do not override it): conv/linear
weights U(+-1/sqrt(fan_in)), linear bias U(+-1/sqrt(fan_in)), BN 1 / 0.

Additions: ``base_width`` (64 in the papers) scales all widths for cheap tests;
``dtype`` is the compute dtype (params, BN statistics and BN math stay float32,
logits/features are returned as float32).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from advcore.models import layers


class BasicBlock(nn.Module):
    """Post-activation ResNet BasicBlock (expansion 1)."""

    features: int
    stride: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = lambda k, s, p, name: layers.Conv2d(  # noqa: E731
            self.features, k, s, p, use_bias=False, dtype=self.dtype, name=name
        )
        bn = lambda name: layers.BatchNorm(dtype=self.dtype, name=name)  # noqa: E731
        out = nn.relu(bn("bn1")(conv(3, self.stride, 1, "conv1")(x), train))
        out = bn("bn2")(conv(3, 1, 1, "conv2")(out), train)
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = bn("shortcut_bn")(conv(1, self.stride, 0, "shortcut_conv")(x), train)
        else:
            shortcut = x
        return nn.relu(out + shortcut)


class ResLayer(nn.Module):
    """``_make_layer``: ``num_blocks`` blocks, the first one with ``stride``."""

    features: int
    num_blocks: int
    stride: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in range(self.num_blocks):
            x = BasicBlock(
                self.features, self.stride if i == 0 else 1, self.dtype, name=f"block_{i}"
            )(x, train)
        return x


class ResNet18(nn.Module):
    """ResNet18 for CIFAR-sized inputs; see the module docstring.

    Attributes:
      num_classes: number of logits (>= 2).
      strides: strides of layer1..layer4 ((1, 1, 2, 2) LBGAT, (1, 2, 2, 2) kuangliu).
      pool_size: the final ``avg_pool2d`` window and stride (8 LBGAT, 4 kuangliu).
      base_width: width of the stem and layer1 (64 in the papers); layers
        2-4 use 2x, 4x, 8x.
      dtype: compute dtype (float32, bfloat16 or float16).
    """

    num_classes: int = 10
    strides: tuple[int, int, int, int] = (1, 2, 2, 2)
    pool_size: int = 4
    base_width: int = 64
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        layers.check_num_classes(self.num_classes)
        layers.require(
            isinstance(self.strides, tuple) and len(self.strides) == 4
            and all(s in (1, 2) for s in self.strides),
            f"strides must be a tuple of four ints in {{1, 2}}, got {self.strides!r}",
        )
        layers.check_positive_int(self.pool_size, "pool_size")
        layers.check_positive_int(self.base_width, "base_width")
        layers.canonical_dtype(self.dtype)
        super().__post_init__()

    def setup(self) -> None:
        w = self.base_width
        self.conv1 = layers.Conv2d(w, 3, 1, 1, use_bias=False, dtype=self.dtype)
        self.bn1 = layers.BatchNorm(dtype=self.dtype)
        self.layer1 = ResLayer(w, 2, self.strides[0], self.dtype)
        self.layer2 = ResLayer(2 * w, 2, self.strides[1], self.dtype)
        self.layer3 = ResLayer(4 * w, 2, self.strides[2], self.dtype)
        self.layer4 = ResLayer(8 * w, 2, self.strides[3], self.dtype)
        self.linear = layers.Dense(self.num_classes, dtype=self.dtype)

    def features(self, x: jax.Array, train: bool) -> jax.Array:
        """Pooled post-ReLU layer4 output (512-d at base width 64), float32."""
        out = jnp.asarray(x, jnp.float32).astype(self.dtype)
        out = nn.relu(self.bn1(self.conv1(out), train))
        out = self.layer1(out, train)
        out = self.layer2(out, train)
        out = self.layer3(out, train)
        out = self.layer4(out, train)
        p = self.pool_size
        out = nn.avg_pool(out, (p, p), strides=(p, p))
        return out.reshape(out.shape[0], -1).astype(jnp.float32)

    def classify(self, z: jax.Array, train: bool) -> jax.Array:
        """Logits (float32) from ``features`` output (the Linear layer)."""
        del train  # No BN or dropout in the head.
        return self.linear(z).astype(jnp.float32)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Logits (B, num_classes) float32 from NHWC images in [0, 1]."""
        return self.classify(self.features(x, train), train)
