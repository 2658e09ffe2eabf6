"""Pre-activation ResNet-18 for 32x32 inputs (He et al., "Identity Mappings in
Deep Residual Networks", 2016), in the CIFAR form that RobustBench and many
adversarial-training papers release checkpoints for.

Layout (widths 64, 128, 256, 512 at ``base_width`` 64): stem conv3x3(3->64,
stride 1, no BN) -> layer1..layer4 of two ``PreActBlock`` each (strides 1, 2, 2,
2) -> [BN -> ReLU] -> avg-pool 4 -> Linear(512 -> C). All convs have no bias.

``PreActBlock``: a = ReLU(BN1(x)); out = conv3x3(stride)(a);
out = conv3x3(ReLU(BN2(out))); return out + shortcut, where the shortcut is x
when the block keeps stride and width, and otherwise a 1x1 strided conv (no BN)
of either a or x.

The released models differ in exactly those two places, so both are fields:

* ``final_bn`` (RobustBench's ``bn_before_fc``): a BN + ReLU after layer4.
* ``preact_shortcut``: the projection shortcut reads the pre-activated a
  (RobustBench ``PreActBlockV2`` / ``out_shortcut=True``, kuangliu's
  pytorch-cifar, locuslab's robust_overfitting) rather than the raw x
  (RobustBench's plain ``PreActBlock``).

The defaults (both True) are the "PreActResNet-18" of the adversarial-training
literature (Rice et al. 2020 and the RobustBench entries built on it:
``PreActResNet(PreActBlockV2, [2, 2, 2, 2], bn_before_fc=True)``). RobustBench's
bare ``PreActResNet18()`` (e.g. Wong2020Fast, Andriushchenko2020Understanding)
is ``final_bn=False, preact_shortcut=False``; a checkpoint's tensor names tell
``final_bn`` apart (``bn.*``), but not the shortcut input, which is why it must
be stated.

Init is PyTorch's default (none of these repositories override it): conv and
linear weights U(+-1/sqrt(fan_in)), linear bias likewise, BN 1 / 0. Inputs are
used as is: a checkpoint's normalisation, if any, is applied by the caller
(``advcore.external``) or folded in elsewhere.

``base_width`` scales all widths for cheap tests; ``dtype`` is the compute
dtype (parameters, BN statistics and BN math stay float32).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from advcore.models import layers


class PreActBlock(nn.Module):
    """Pre-activation BasicBlock; see the module docstring."""

    features: int
    stride: int
    preact_shortcut: bool
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = lambda k, s, p, name: layers.Conv2d(  # noqa: E731
            self.features, k, s, p, use_bias=False, dtype=self.dtype, name=name
        )
        bn = lambda name: layers.BatchNorm(dtype=self.dtype, name=name)  # noqa: E731
        a = nn.relu(bn("bn1")(x, train))
        out = conv(3, self.stride, 1, "conv1")(a)
        out = conv(3, 1, 1, "conv2")(nn.relu(bn("bn2")(out, train)))
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = conv(1, self.stride, 0, "shortcut_conv")(
                a if self.preact_shortcut else x
            )
        else:
            shortcut = x
        return out + shortcut


class PreActStage(nn.Module):
    """``_make_layer``: ``num_blocks`` blocks, the first one with ``stride``."""

    features: int
    num_blocks: int
    stride: int
    preact_shortcut: bool
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        for i in range(self.num_blocks):
            x = PreActBlock(
                self.features, self.stride if i == 0 else 1, self.preact_shortcut, self.dtype,
                name=f"block_{i}",
            )(x, train)
        return x


class PreActResNet18(nn.Module):
    """PreActResNet-18 for CIFAR-sized inputs; see the module docstring.

    Attributes:
      num_classes: number of logits (>= 2).
      base_width: width of the stem and layer1 (64); layers 2-4 use 2x, 4x, 8x.
      final_bn: BN + ReLU between layer4 and the pooling.
      preact_shortcut: projection shortcuts read ReLU(BN1(x)) instead of x.
      dtype: compute dtype (float32, bfloat16 or float16).
    """

    num_classes: int = 10
    base_width: int = 64
    final_bn: bool = True
    preact_shortcut: bool = True
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        layers.check_num_classes(self.num_classes)
        layers.check_positive_int(self.base_width, "base_width")
        for field in ("final_bn", "preact_shortcut"):
            value = getattr(self, field)
            layers.require(isinstance(value, bool), f"{field} must be a bool, got {value!r}")
        layers.canonical_dtype(self.dtype)
        super().__post_init__()

    def setup(self) -> None:
        w = self.base_width
        self.conv1 = layers.Conv2d(w, 3, 1, 1, use_bias=False, dtype=self.dtype)
        stage = lambda width, stride: PreActStage(  # noqa: E731
            width, 2, stride, self.preact_shortcut, self.dtype
        )
        self.layer1 = stage(w, 1)
        self.layer2 = stage(2 * w, 2)
        self.layer3 = stage(4 * w, 2)
        self.layer4 = stage(8 * w, 2)
        if self.final_bn:
            self.bn = layers.BatchNorm(dtype=self.dtype)
        self.linear = layers.Dense(self.num_classes, dtype=self.dtype)

    def features(self, x: jax.Array, train: bool) -> jax.Array:
        """The pooled layer4 output (512-d at base width 64), float32."""
        out = self.conv1(jnp.asarray(x, jnp.float32).astype(self.dtype))
        out = self.layer1(out, train)
        out = self.layer2(out, train)
        out = self.layer3(out, train)
        out = self.layer4(out, train)
        if self.final_bn:
            out = nn.relu(self.bn(out, train))
        out = nn.avg_pool(out, (4, 4), strides=(4, 4))
        return out.reshape(out.shape[0], -1).astype(jnp.float32)

    def classify(self, z: jax.Array, train: bool) -> jax.Array:
        """Logits (float32) from ``features`` output (the Linear layer)."""
        del train  # No BN or dropout in the head.
        return self.linear(z).astype(jnp.float32)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Logits (B, num_classes) float32 from NHWC images in [0, 1]."""
        return self.classify(self.features(x, train), train)
