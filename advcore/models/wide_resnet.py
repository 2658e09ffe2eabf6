"""Pre-activation WideResNet as used by TRADES and LBGAT (docs/lbgat.md#wrn).

Source: ``models/wideresnet.py`` of yaodongyu/TRADES and dvlab-research/LBGAT
(identical), itself from xternalz/WideResNet-pytorch (Zagoruyko & Komodakis,
"Wide Residual Networks", 2016).

Architecture (depth = 6n + 4, k = widen_factor, widths 16, 16k, 32k, 64k):
stem conv3x3(3->16) -> block1 (n blocks, stride 1) -> block2 (stride 2) ->
block3 (stride 2) -> BN -> ReLU -> avg-pool 8 -> Linear(64k -> C). All convs
have no bias. In a block whose width changes, the 1x1 shortcut conv takes the
*pre-activated* input ReLU(BN1(x)); otherwise the shortcut is the raw x.

Init: conv N(0, sqrt(2 / (k*k*out))) (He normal, fan-out); BN 1 / 0; Linear
weight PyTorch default U(+-1/sqrt(fan_in)), bias 0.

Deviations / additions (all off by default, so the default model is the paper's):
* ``include_unused_sub_block``: the PyTorch model builds ``sub_block1`` (a copy
  of block1) that forward never uses; its parameters only exist so that
  PyTorch checkpoints load key-for-key. Here it is created at ``init`` only and
  never run by ``apply``. Note that it then gets zero gradients, but a coupled
  weight decay (``optax.add_decayed_weights``) *would* shrink it, unlike
  PyTorch, where its ``grad`` is ``None`` and SGD skips it.
* ``num_bn_sets`` > 1: every BN layer has that many independent sets of
  (scale, bias, running stats) while conv/FC weights are shared; ``bn_set``
  picks one per call (LBGAT Table 2, "shared conv, separate BN").
* ``dtype``: compute dtype (e.g. bfloat16); parameters, BN statistics and BN
  math stay float32 and the logits are returned as float32.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from advcore.models import layers


class WRNBlock(nn.Module):
    """Pre-activation BasicBlock (``wideresnet.BasicBlock``)."""

    out_features: int
    stride: int
    dropout_rate: float
    num_bn_sets: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, bn_set: int) -> jax.Array:
        conv = lambda f, k, s, p, name: layers.Conv2d(  # noqa: E731
            f, k, s, p, use_bias=False, kernel_init=layers.he_normal_fan_out,
            dtype=self.dtype, name=name,
        )
        bn = lambda name: layers.make_batch_norm(self.num_bn_sets, self.dtype, name)  # noqa: E731
        equal_in_out = x.shape[-1] == self.out_features
        a = nn.relu(bn("bn1")(x, train, bn_set))
        out = conv(self.out_features, 3, self.stride, 1, "conv1")(a)
        out = nn.relu(bn("bn2")(out, train, bn_set))
        if self.dropout_rate > 0:
            out = nn.Dropout(self.dropout_rate, deterministic=not train)(out)
        out = conv(self.out_features, 3, 1, 1, "conv2")(out)
        if equal_in_out:
            # PyTorch only allows in == out with stride 1 here (true for every WRN).
            shortcut = x
        else:
            # The shortcut sees the pre-activated input a, not x (docs/lbgat.md#wrn).
            shortcut = conv(self.out_features, 1, self.stride, 0, "convShortcut")(a)
        return shortcut + out


class WRNGroup(nn.Module):
    """``NetworkBlock``: ``num_layers`` blocks; only the first changes width/stride."""

    num_layers: int
    out_features: int
    stride: int
    dropout_rate: float
    num_bn_sets: int
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, bn_set: int) -> jax.Array:
        for i in range(self.num_layers):
            x = WRNBlock(
                self.out_features, self.stride if i == 0 else 1, self.dropout_rate,
                self.num_bn_sets, self.dtype, name=f"layer_{i}",
            )(x, train, bn_set)
        return x


class WideResNet(nn.Module):
    """WRN-depth-k (pre-activation) for 32x32 inputs; see the module docstring.

    Attributes:
      num_classes: number of logits (>= 2).
      depth: total depth, 6n + 4 (34 in the papers; 16 / 10 for CPU tests).
      widen_factor: k >= 1 (10 or 20 in the papers).
      dropout_rate: dropout inside each block (0 in the papers).
      num_bn_sets: independent BN sets sharing the conv/FC weights.
      include_unused_sub_block: also create the unused ``sub_block1`` params.
      dtype: compute dtype (float32, bfloat16 or float16).
    """

    num_classes: int = 10
    depth: int = 34
    widen_factor: int = 10
    dropout_rate: float = 0.0
    num_bn_sets: int = 1
    include_unused_sub_block: bool = False
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        layers.check_num_classes(self.num_classes)
        layers.require(
            isinstance(self.depth, int) and self.depth >= 10 and (self.depth - 4) % 6 == 0,
            f"depth must be an int of the form 6n+4 with n >= 1 (10, 16, 22, 28, 34, ...), "
            f"got {self.depth!r}",
        )
        layers.check_positive_int(self.widen_factor, "widen_factor")
        layers.check_rate(self.dropout_rate, "dropout_rate")
        layers.check_positive_int(self.num_bn_sets, "num_bn_sets")
        layers.canonical_dtype(self.dtype)
        super().__post_init__()

    def setup(self) -> None:
        n = (self.depth - 4) // 6
        k = self.widen_factor
        widths = (16, 16 * k, 32 * k, 64 * k)
        group = lambda w, s: WRNGroup(  # noqa: E731
            n, w, s, self.dropout_rate, self.num_bn_sets, self.dtype
        )
        self.conv1 = layers.Conv2d(
            widths[0], 3, 1, 1, use_bias=False, kernel_init=layers.he_normal_fan_out,
            dtype=self.dtype,
        )
        self.block1 = group(widths[1], 1)
        if self.include_unused_sub_block:
            self.sub_block1 = group(widths[1], 1)
        self.block2 = group(widths[2], 2)
        self.block3 = group(widths[3], 2)
        self.bn1 = layers.make_batch_norm(self.num_bn_sets, self.dtype)
        self.fc = layers.Dense(self.num_classes, bias_init=layers.zeros_init, dtype=self.dtype)

    def features(self, x: jax.Array, train: bool, bn_set: int = 0) -> jax.Array:
        """The 64k-d pooled, post-ReLU representation (the FC input), float32."""
        layers.check_bn_set(bn_set, self.num_bn_sets)
        out = self.conv1(jnp.asarray(x, jnp.float32).astype(self.dtype))
        if self.include_unused_sub_block and self.is_initializing():
            # Only to create its variables; PyTorch never runs it either.
            self.sub_block1(out, train, bn_set)
        out = self.block1(out, train, bn_set)
        out = self.block2(out, train, bn_set)
        out = self.block3(out, train, bn_set)
        out = nn.relu(self.bn1(out, train, bn_set))
        out = nn.avg_pool(out, (8, 8), strides=(8, 8))
        return out.reshape(out.shape[0], -1).astype(jnp.float32)

    def classify(self, z: jax.Array, train: bool, bn_set: int = 0) -> jax.Array:
        """Logits (float32) from ``features`` output."""
        del train, bn_set  # The head has no BN or dropout.
        return self.fc(z).astype(jnp.float32)

    def __call__(self, x: jax.Array, train: bool, bn_set: int = 0) -> jax.Array:
        """Logits (B, num_classes) float32 from NHWC images in [0, 1]."""
        return self.classify(self.features(x, train, bn_set), train, bn_set)
