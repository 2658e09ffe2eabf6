"""LADDER's VGG-style target classifiers for SVHN and CelebA (docs/ladder.md#classifiers).

``vgg8_svhn`` -- ``SVHNNet`` (LADDER ``generate_latent/svhn_clssifier.py``,
``svhnVGG('VGG8')``) on 32x32x3 inputs in [0, 1], no normalisation:

* ``features``: conv3x3(pad 1, bias) + BN + ReLU blocks with cfg
  [64, M, 128, M, 256, M, 512, M, 512] (32 -> 2), flatten 512*2*2 = 2048
  (PyTorch C,H,W order), Linear(2048->4096), ReLU, Dropout(0.5). Its output is
  LADDER's latent z (4096-d, post-ReLU/dropout).
* ``classify``: Linear(4096->2048) ReLU Linear(2048->512) ReLU Linear(512->C).
* PyTorch default init everywhere.

``vgg11bn_celeba`` -- ``CelebANet`` (LADDER ``generate_latent/celebA_classify.py``)
on 128x128x3 inputs in [0, 1]:

* torchvision VGG11-BN conv stack (cfg A: 64, M, 128, M, 256, 256, M, 512,
  512, M, 512, 512, M) -> 512x4x4, flattened to 8192 **without** the 7x7
  adaptive avg-pool (old torchvision, as LADDER ran it).
* head: Linear(8192->4096) -> ReLU -> Dropout -> Linear(4096->2048) -> ReLU ->
  Dropout -> Linear(2048->1), a single smile logit (BCE-with-logits;
  LADDER predicts "smiling" when the logit is >= 0.5, docs/ladder.md#celeba-threshold).
* ``features`` = the 4096-d output of the first head Linear **before** ReLU;
  ``classify`` applies the rest of the head.
* The ImageNet mean/std normalisation of the PyTorch data transform is folded
  in (``normalize=True``).

Deviations (CelebA):
* LADDER starts from ImageNet-pretrained VGG11-BN weights. None are available
  offline, so the conv stack gets torchvision's own VGG init (kaiming-normal
  fan-out convs with zero bias, BN 1 / 0); the new head keeps PyTorch's
  default init, as in LADDER. Port pretrained weights if you have them
  (``features_k`` / ``bn_k`` follow cfg order; convs are HWIO).
* ``num_classes`` may be 1 (the paper's single logit, output (B, 1)) or 2: a
  two-logit *view* ``[0, z]`` of the same single-logit model (identical
  parameters), so that code written for K-class logits works unchanged:
  softmax-CE on [0, z] equals BCE-with-logits on z and argmax is ``z > 0``.
  The logit-threshold quirk (>= 0.5) is the evaluator's business, not the model's.

Both models: ``width_multiplier`` (1.0 = paper) scales every conv and hidden
width (including the latent) for cheap tests; ``dtype`` is the compute dtype.
"""

from __future__ import annotations

from typing import Any, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp

from advcore.models import layers

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

VGG8_CFG: tuple[Union[int, str], ...] = (64, "M", 128, "M", 256, "M", 512, "M", 512)
VGG11_CFG: tuple[Union[int, str], ...] = (
    64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"
)


def _scaled(width: int, multiplier: float) -> int:
    return max(1, int(round(width * multiplier)))


def _check_multiplier(value: Any) -> None:
    layers.require(
        isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0,
        f"width_multiplier must be a float > 0, got {value!r}",
    )


class ConvStack(nn.Module):
    """VGG ``make_layers(cfg, batch_norm=True)``: conv3x3(pad 1, bias)+BN+ReLU, 'M' = MP2.

    Sub-modules are named ``conv_i`` / ``bn_i`` with ``i`` the conv's index
    among the convs of ``cfg``.
    """

    cfg: Sequence[Union[int, str]]
    width_multiplier: float
    kernel_init: layers.Initializer
    bias_init: Any
    dtype: Any

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        i = 0
        for item in self.cfg:
            if item == "M":
                x = layers.MaxPool2d(2)(x)
                continue
            x = layers.Conv2d(
                _scaled(int(item), self.width_multiplier), 3, 1, 1,
                kernel_init=self.kernel_init, bias_init=self.bias_init, dtype=self.dtype,
                name=f"conv_{i}",
            )(x)
            x = nn.relu(layers.BatchNorm(dtype=self.dtype, name=f"bn_{i}")(x, train))
            i += 1
        return x


class VGG8SVHN(nn.Module):
    """LADDER SVHNNet ("VGG8"); see the module docstring.

    Attributes:
      num_classes: number of logits (>= 2; 10 for SVHN).
      dropout_rate: dropout at the end of ``features`` (0.5).
      width_multiplier: scales conv and hidden widths (1.0 = paper).
      dtype: compute dtype (float32, bfloat16 or float16).
    """

    num_classes: int = 10
    dropout_rate: float = 0.5
    width_multiplier: float = 1.0
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        layers.check_num_classes(self.num_classes)
        layers.check_rate(self.dropout_rate, "dropout_rate")
        _check_multiplier(self.width_multiplier)
        layers.canonical_dtype(self.dtype)
        super().__post_init__()

    def setup(self) -> None:
        m = self.width_multiplier
        self.convs = ConvStack(VGG8_CFG, m, layers.torch_default_kernel_init, None, self.dtype)
        self.fc_features = layers.Dense(_scaled(4096, m), dtype=self.dtype)
        self.drop = nn.Dropout(self.dropout_rate)
        self.fc1 = layers.Dense(_scaled(2048, m), dtype=self.dtype)
        self.fc2 = layers.Dense(_scaled(512, m), dtype=self.dtype)
        self.fc3 = layers.Dense(self.num_classes, dtype=self.dtype)

    def features(self, x: jax.Array, train: bool) -> jax.Array:
        """Latent z (4096-d, post-ReLU/dropout), float32."""
        out = self.convs(jnp.asarray(x, jnp.float32).astype(self.dtype), train)
        out = nn.relu(self.fc_features(layers.flatten_chw(out)))
        return self.drop(out, deterministic=not train).astype(jnp.float32)

    def classify(self, z: jax.Array, train: bool) -> jax.Array:
        """Logits (float32) from the latent: Linear, ReLU, Linear, ReLU, Linear."""
        del train  # No dropout in this head (commented out in LADDER).
        out = nn.relu(self.fc1(z))
        out = nn.relu(self.fc2(out))
        return self.fc3(out).astype(jnp.float32)

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Logits (B, num_classes) float32 from NHWC images in [0, 1]."""
        return self.classify(self.features(x, train), train)


class VGG11BNCelebA(nn.Module):
    """LADDER CelebANet (VGG11-BN, 128x128, one smile logit); see the module docstring.

    Attributes:
      num_classes: 1 (single logit, the paper) or 2 (the ``[0, z]`` view).
      dropout_rate: dropout in the head (0.5, torch ``nn.Dropout()``).
      normalize: fold the ImageNet mean/std normalisation into the model.
      width_multiplier: scales conv and hidden widths (1.0 = paper).
      dtype: compute dtype (float32, bfloat16 or float16).
    """

    num_classes: int = 1
    dropout_rate: float = 0.5
    normalize: bool = True
    width_multiplier: float = 1.0
    dtype: Any = jnp.float32

    def __post_init__(self) -> None:
        layers.require(
            self.num_classes in (1, 2) and not isinstance(self.num_classes, bool),
            f"num_classes must be 1 (single logit) or 2 ([0, z] view) for vgg11bn_celeba, "
            f"got {self.num_classes!r}",
        )
        layers.check_rate(self.dropout_rate, "dropout_rate")
        layers.require(
            isinstance(self.normalize, bool), f"normalize must be a bool, got {self.normalize!r}"
        )
        _check_multiplier(self.width_multiplier)
        layers.canonical_dtype(self.dtype)
        super().__post_init__()

    def setup(self) -> None:
        m = self.width_multiplier
        # torchvision VGG._initialize_weights for the (normally pretrained) convs.
        self.convs = ConvStack(
            VGG11_CFG, m, layers.he_normal_fan_out, layers.zeros_init, self.dtype
        )
        self.fc_features = layers.Dense(_scaled(4096, m), dtype=self.dtype)
        self.drop1 = nn.Dropout(self.dropout_rate)
        self.fc1 = layers.Dense(_scaled(2048, m), dtype=self.dtype)
        self.drop2 = nn.Dropout(self.dropout_rate)
        self.fc2 = layers.Dense(1, dtype=self.dtype)

    def features(self, x: jax.Array, train: bool) -> jax.Array:
        """Latent z: the first head Linear's output before ReLU (4096-d), float32."""
        out = jnp.asarray(x, jnp.float32)
        if self.normalize:
            out = (out - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
        out = self.convs(out.astype(self.dtype), train)
        return self.fc_features(layers.flatten_chw(out)).astype(jnp.float32)

    def classify(self, z: jax.Array, train: bool) -> jax.Array:
        """Logit(s) from the latent: ReLU, Dropout, Linear, ReLU, Dropout, Linear."""
        out = self.drop1(nn.relu(z), deterministic=not train)
        out = self.drop2(nn.relu(self.fc1(out)), deterministic=not train)
        logit = self.fc2(out).astype(jnp.float32)
        if self.num_classes == 2:
            return jnp.concatenate([jnp.zeros_like(logit), logit], axis=-1)
        return logit

    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        """Logits (B, num_classes) float32 from NHWC images in [0, 1]."""
        return self.classify(self.features(x, train), train)
