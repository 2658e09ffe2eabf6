"""LADDER generators G: z -> x and the LADDER-GAN discriminator (docs/ladder.md).

The architectures follow the authors' ``generator_architecture.py`` (the
code's ConvTranspose strides, not the paper's Tables 10-13), in NHWC:

* ``mnist``   z 500  -> 28x28x1,   Sigmoid, targets in [0, 1]
* ``svhn``    z 4096 -> 32x32x3,   Tanh,    targets in [0, 1] (as in the code)
* ``celeba``  z 4096 -> 128x128x3, Tanh,    targets in [0, 1]
* ``cifar10`` z 512  -> 32x32x3,   Tanh,    targets in [-1, 1] (mapped back by (g+1)/2)

Convolutions, transposed convolutions and Linear layers are the library's
PyTorch-equivalent layers (``advcore.models.layers``: symmetric padding,
PyTorch output sizes and kernel layouts). Initialisation is the code's
``weights_init``: Linear/Conv weights N(0, 0.02) with PyTorch-default biases
U(+-1/sqrt(fan_in)), BatchNorm gamma ~ N(1, 0.02) and beta = 0, ConvTranspose
weights N(mean, 0.02) with bias 0, where ``mean`` is 1.0 under
``legacy_convt_init`` (what the authors ran, very likely a typo) and 0.0 by
default.

``width_scale`` shrinks every channel count (only for smoke runs; 1.0 is the
paper's network).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from advcore.models import layers

# PyTorch BatchNorm2d(momentum=0.1, eps=1e-5) == Flax momentum 0.9.
_BN_MOMENTUM = 0.9
_BN_EPS = 1e-5
_W_STD = 0.02


def normal_init(mean: float, std: float) -> Callable:
    def init(key, shape, dtype=jnp.float32):
        return mean + std * jax.random.normal(key, shape, dtype)

    return init


def _width(channels: int, scale: float) -> int:
    return max(1, int(round(channels * scale)))


def conv(features: int, kernel: int, stride: int = 1, padding: int = 0,
         use_bias: bool = True) -> layers.Conv2d:
    """``nn.Conv2d`` with the code's init (N(0, 0.02) weight, PyTorch-default bias)."""
    return layers.Conv2d(features, kernel, stride, padding, use_bias,
                         kernel_init=normal_init(0.0, _W_STD))


def conv_transpose(features: int, kernel: int, stride: int,
                   legacy_init: bool = False) -> layers.ConvTranspose2d:
    """``nn.ConvTranspose2d(c, c, k, s)`` (padding 0): out = (in - 1) * s + k.

    E.g. the MNIST generator's k2/s4 layer maps 4x4 to 14x14, as in the code.
    Weights N(0, 0.02) (N(1, 0.02) under ``legacy_init``), bias 0.
    """
    mean = 1.0 if legacy_init else 0.0
    return layers.ConvTranspose2d(features, kernel, stride,
                                  kernel_init=normal_init(mean, _W_STD),
                                  bias_init=nn.initializers.zeros)


def batch_norm(train: bool, name: str | None = None) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=_BN_MOMENTUM,
        epsilon=_BN_EPS,
        scale_init=normal_init(1.0, _W_STD),
        bias_init=nn.initializers.zeros,
        name=name,
    )


def dense(features: int, use_bias: bool) -> layers.Dense:
    """``nn.Linear`` with the code's init (N(0, 0.02) weight, PyTorch-default bias)."""
    return layers.Dense(features, use_bias=use_bias, kernel_init=normal_init(0.0, _W_STD))


def _nchw_view_to_nhwc(h: jax.Array, channels: int, size: int) -> jax.Array:
    """PyTorch's ``view(-1, C, s, s)`` followed by NCHW -> NHWC.

    Keeping the channel-major view makes a ported Linear weight land in the
    same place; for training from scratch the order is immaterial.
    """
    h = h.reshape(h.shape[0], channels, size, size)
    return jnp.transpose(h, (0, 2, 3, 1))


class MnistGenerator(nn.Module):
    """``mnist_generator``: z (500) -> 28x28x1 in [0, 1] (Table 10)."""

    z_dim: int = 500
    width_scale: float = 1.0
    legacy_convt_init: bool = False

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
        del train  # no BatchNorm or dropout in this generator
        c0 = _width(50, self.width_scale)  # 50 is hard-coded in the code
        c1 = _width(20, self.width_scale)
        h = dense(4 * 4 * c0, use_bias=False)(z)
        h = nn.relu(_nchw_view_to_nhwc(h, c0, 4))
        h = conv_transpose(c0, 2, 4, self.legacy_convt_init)(h)  # 4 -> 14
        h = nn.relu(conv(c1, 3)(h))  # 14 -> 12
        h = conv_transpose(c1, 2, 3, self.legacy_convt_init)(h)  # 12 -> 35
        h = conv(c1, 4)(h)  # 35 -> 32; no activation here in the code
        h = conv(1, 5)(h)  # 32 -> 28
        return nn.sigmoid(h)


class VGGGenerator(nn.Module):
    """The SVHN / CelebA / CIFAR-10 generators: Linear, view, cfg stack, 1x1 conv.

    cfg letters: ``'M'`` = ConvT(c, c, k2, s2) + BN (no ReLU, as in the code);
    an int n = conv3x3(pad 1) + BN + ReLU to n channels.
    """

    z_dim: int
    channels_first: int
    size_first: int
    cfg: Sequence[Any]
    linear_bias: bool
    out_channels: int = 3
    width_scale: float = 1.0
    legacy_convt_init: bool = False

    @nn.compact
    def __call__(self, z: jax.Array, train: bool = False) -> jax.Array:
        c = _width(self.channels_first, self.width_scale)
        s = self.size_first
        h = dense(c * s * s, use_bias=self.linear_bias)(z)
        h = _nchw_view_to_nhwc(h, c, s)
        for item in self.cfg:
            if item == "M":
                h = conv_transpose(c, 2, 2, self.legacy_convt_init)(h)
                h = batch_norm(train)(h)
            else:
                c = _width(int(item), self.width_scale)
                h = conv(c, 3, padding=1)(h)
                h = nn.relu(batch_norm(train)(h))
        h = conv(self.out_channels, 1)(h)
        return jnp.tanh(h)


class DiscriminatorBlock(nn.Module):
    """The discriminator's ``BasicBlock`` exactly as it computes.

    The code's first line ``lrl1(d1(bn1(conv1(x))))`` is overwritten by the
    next, so the block is Dropout(BN1(conv1 x)) -> BN2(conv2) + shortcut ->
    LeakyReLU(0.2); bn1 and the dropout are applied once.
    """

    planes: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        out = conv(self.planes, 3, self.stride, 1, use_bias=False)(x)
        out = batch_norm(train)(out)
        out = nn.Dropout(0.5, deterministic=not train)(out)
        out = conv(self.planes, 3, 1, 1, use_bias=False)(out)
        out = batch_norm(train)(out)
        if self.stride != 1 or x.shape[-1] != self.planes:
            sc = conv(self.planes, 1, self.stride, 0, use_bias=False)(x)
            sc = batch_norm(train)(sc)
        else:
            sc = x
        return nn.leaky_relu(out + sc, 0.2)


class Discriminator(nn.Module):
    """``cifar_Discriminator``: one logit per image.

    On 32x32 inputs the final conv4x4/s2 yields a 1x1 map, as in the code. The
    code's D does not fit CelebA's 128x128 (its map would be 7x7); here the
    logit map is averaged over space (a PatchGAN-style reading).
    """

    width_scale: float = 1.0

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        ndf = _width(64, self.width_scale)
        h = nn.leaky_relu(conv(ndf, 3, 1, 1, use_bias=False)(x), 0.2)
        h = DiscriminatorBlock(ndf * 2, 2)(h, train)
        h = DiscriminatorBlock(ndf * 4, 2)(h, train)
        h = DiscriminatorBlock(ndf * 8, 2)(h, train)
        h = conv(1, 4, 2, 0, use_bias=False)(h)
        return jnp.mean(h, axis=(1, 2, 3))


@dataclasses.dataclass(frozen=True)
class GeneratorSpec:
    """What the pipeline needs to know about a generator besides its module."""

    name: str
    z_dim: int
    image_shape: tuple[int, int, int]
    # 'unit': output and target in [0, 1]; 'pm1': in [-1, 1], image = (g+1)/2.
    target_range: str
    default_loss: str  # L2 for MNIST, L1 otherwise (docs/ladder.md)
    adam_b1: float  # betas (0.5, 0.999) for CIFAR, (0.9, 0.999) otherwise


GENERATOR_SPECS: dict[str, GeneratorSpec] = {
    "mnist": GeneratorSpec("mnist", 500, (28, 28, 1), "unit", "l2", 0.9),
    "svhn": GeneratorSpec("svhn", 4096, (32, 32, 3), "unit", "l1", 0.9),
    "celeba": GeneratorSpec("celeba", 4096, (128, 128, 3), "unit", "l1", 0.9),
    "cifar10": GeneratorSpec("cifar10", 512, (32, 32, 3), "pm1", "l1", 0.5),
}

_SVHN_CFG = (512, "M", 512, "M", 256, "M", 128, "M", 64)
_CELEBA_CFG = ("M", 512, 512, 512, "M", 512, 512, 512, "M", 256, 256, 256,
               "M", 128, 128, "M", 64, 64)
_CIFAR_CFG = (512, "M", 512, 512, 512, 512, "M", 256, 256, 256, 256, "M",
              128, 128, 128, 128, 64, 64, 32, 32, 8, 8)


def build_generator(
    name: str, width_scale: float = 1.0, legacy_convt_init: bool = False
) -> nn.Module:
    """The generator ``name`` (one of ``GENERATOR_SPECS``)."""
    if name not in GENERATOR_SPECS:
        raise ValueError(
            f"generator name must be one of {sorted(GENERATOR_SPECS)}, got {name!r}"
        )
    if width_scale <= 0:
        raise ValueError(f"width_scale must be > 0, got {width_scale}")
    kw = dict(width_scale=width_scale, legacy_convt_init=legacy_convt_init)
    if name == "mnist":
        return MnistGenerator(z_dim=500, **kw)
    if name == "svhn":
        return VGGGenerator(4096, 512, 2, _SVHN_CFG, linear_bias=False, **kw)
    if name == "celeba":
        return VGGGenerator(4096, 512, 4, _CELEBA_CFG, linear_bias=False, **kw)
    return VGGGenerator(512, 512, 4, _CIFAR_CFG, linear_bias=True, **kw)


def output_to_image(g: jax.Array, target_range: str) -> jax.Array:
    """Maps generator output to image space ([0, 1] nominally; not clipped)."""
    if target_range == "pm1":
        return (g + 1.0) * 0.5
    return g


def image_to_target(x: jax.Array, target_range: str) -> jax.Array:
    """Maps a [0, 1] image to the generator's reconstruction target."""
    if target_range == "pm1":
        return x * 2.0 - 1.0
    return x
