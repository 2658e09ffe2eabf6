"""Model registry: ``build_model``, ``init_variables``, ``count_params``.

```python
model = build_model("wrn", num_classes=10, depth=34, widen_factor=10)
variables = init_variables(model, key, input_shape=(1, 32, 32, 3))
logits = model.apply(variables, x, train=False)
```

Every model takes NHWC float images in [0, 1] (any normalisation is inside the
model), ``__call__(x, train)``, returns float32 logits, and exposes
``features(x, train)`` / ``classify(z, train)``. See ``docs/DESIGN.md`` ("Models")
and each module's docstring for the source architecture and deviations.

Registry names and the keyword arguments each accepts (besides ``num_classes``):

==================  =========================================================
``wrn``             depth (6n+4, 34), widen_factor (>= 1, 10), num_bn_sets (1),
                    include_unused_sub_block (False), dropout_rate (0.0), dtype
``resnet18_lbgat``  base_width (64), dtype  -- strides 1,1,2,2, avg-pool 8
``resnet18``        base_width (64), dtype  -- kuangliu, strides 1,2,2,2, pool 4
``cifar_resnet18``  base_width (64), dtype  -- LADDER CifarNet (= ``resnet18``)
``small_cnn``       channels ((32,32,64,64)), hidden_dim (200), dropout_rate (0.5), dtype
``lenet``           normalize (True), dtype  -- LADDER MNIST LeNet
``vgg8_svhn``       dropout_rate (0.5), width_multiplier (1.0), dtype
``vgg11bn_celeba``  dropout_rate (0.5), normalize (True), width_multiplier (1.0),
                    dtype; num_classes 1 (single logit) or 2 ([0, z] view)
==================  =========================================================

``preact_resnet18`` takes base_width (64), final_bn (True), preact_shortcut (True)
and dtype: PreActResNet-18 (RobustBench, Rice et al.), strides 1,2,2,2, pool 4.

Native input sizes: 32x32x3 (wrn, resnets, preact_resnet18, vgg8_svhn), 28x28x1 (small_cnn,
lenet), 128x128x3 (vgg11bn_celeba).

``dtype`` is the compute dtype ('float32' default, 'bfloat16', 'float16'; a
string or a dtype); parameters and BatchNorm statistics are always float32.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from advcore import backend
from advcore.models import layers
from advcore.models.lenet import LeNet
from advcore.models.preact_resnet import PreActResNet18
from advcore.models.resnet import ResNet18
from advcore.models.small_cnn import SmallCNN
from advcore.models.vgg import VGG8SVHN, VGG11BNCelebA
from advcore.models.wide_resnet import WideResNet

__all__ = [
    "MODEL_NAMES",
    "NATIVE_INPUT_SHAPES",
    "LeNet",
    "PreActResNet18",
    "ResNet18",
    "SmallCNN",
    "VGG11BNCelebA",
    "VGG8SVHN",
    "WideResNet",
    "build_model",
    "count_params",
    "init_variables",
]


@dataclasses.dataclass(frozen=True)
class _Entry:
    """How a registry name maps to a module class.

    Attributes:
      cls: the Flax module class.
      fixed: fields the name pins (not overridable by kwargs).
      allowed: the kwargs a caller may pass.
      min_classes: smallest valid ``num_classes``.
    """

    cls: type[nn.Module]
    fixed: Mapping[str, Any]
    allowed: tuple[str, ...]
    min_classes: int = 2


_REGISTRY: dict[str, _Entry] = {
    "wrn": _Entry(
        WideResNet, {},
        ("depth", "widen_factor", "num_bn_sets", "include_unused_sub_block", "dropout_rate",
         "dtype"),
    ),
    "resnet18_lbgat": _Entry(
        ResNet18, {"strides": (1, 1, 2, 2), "pool_size": 8}, ("base_width", "dtype")
    ),
    "resnet18": _Entry(
        ResNet18, {"strides": (1, 2, 2, 2), "pool_size": 4}, ("base_width", "dtype")
    ),
    "cifar_resnet18": _Entry(
        ResNet18, {"strides": (1, 2, 2, 2), "pool_size": 4}, ("base_width", "dtype")
    ),
    "preact_resnet18": _Entry(
        PreActResNet18, {}, ("base_width", "final_bn", "preact_shortcut", "dtype")
    ),
    "small_cnn": _Entry(SmallCNN, {}, ("channels", "hidden_dim", "dropout_rate", "dtype")),
    "lenet": _Entry(LeNet, {}, ("normalize", "dtype")),
    "vgg8_svhn": _Entry(VGG8SVHN, {}, ("dropout_rate", "width_multiplier", "dtype")),
    "vgg11bn_celeba": _Entry(
        VGG11BNCelebA, {}, ("dropout_rate", "normalize", "width_multiplier", "dtype"),
        min_classes=1,
    ),
}

# The input each registry model was designed for (H, W, C).
NATIVE_INPUT_SHAPES: dict[str, tuple[int, int, int]] = {
    "wrn": (32, 32, 3),
    "resnet18_lbgat": (32, 32, 3),
    "resnet18": (32, 32, 3),
    "cifar_resnet18": (32, 32, 3),
    "preact_resnet18": (32, 32, 3),
    "small_cnn": (28, 28, 1),
    "lenet": (28, 28, 1),
    "vgg8_svhn": (32, 32, 3),
    "vgg11bn_celeba": (128, 128, 3),
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def _as_tuple(value: Any) -> Any:
    # Configs round-trip through JSON, which turns tuples into lists; module
    # fields must be hashable for jit's static arguments.
    return tuple(value) if isinstance(value, list) else value


def build_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Builds the registry model ``name`` with ``num_classes`` outputs.

    Raises:
      ValueError: unknown ``name`` (the message lists the valid names), an
        unknown keyword argument, or a field outside its valid range.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown model name {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    entry = _REGISTRY[name]
    unknown = sorted(set(kwargs) - set(entry.allowed))
    if unknown:
        raise ValueError(
            f"model {name!r} got unknown kwargs {unknown}; valid kwargs: {list(entry.allowed)}"
        )
    layers.check_num_classes(num_classes, entry.min_classes)
    fields = {k: _as_tuple(v) for k, v in kwargs.items()}
    if "dtype" in fields:
        fields["dtype"] = layers.canonical_dtype(fields["dtype"])
    return entry.cls(num_classes=num_classes, **entry.fixed, **fields)


def init_variables(model: nn.Module, key: jax.Array, input_shape: tuple[int, ...]) -> dict:
    """Initialises ``model`` on zeros of ``input_shape`` (NHWC, batch first).

    Runs as one compiled program (``advcore.backend.compile_once``) instead of
    thousands of eager ops. All BN sets (``num_bn_sets`` > 1) are
    initialised.

    Returns:
      ``{'params': ..., 'batch_stats': ...}``, or ``{'params': ...}`` for models
      without BatchNorm.
    """
    if len(input_shape) != 4:
        raise ValueError(f"input_shape must be (batch, H, W, C), got {tuple(input_shape)!r}")
    shape = tuple(int(d) for d in input_shape)
    variables = backend.compile_once(_init_fn(model, shape), key)
    out = {"params": variables["params"]}
    if variables.get("batch_stats"):
        out["batch_stats"] = variables["batch_stats"]
    return out


def _init_fn(model: nn.Module, input_shape: tuple[int, ...]) -> Callable[[jax.Array], Any]:
    def init(key: jax.Array) -> Any:
        params_key, dropout_key = jax.random.split(key)
        return model.init(
            {"params": params_key, "dropout": dropout_key},
            jnp.zeros(input_shape, jnp.float32),
            train=False,
        )

    return init


def count_params(params: Any) -> int:
    """Total number of scalars in a pytree (arrays or ``jax.ShapeDtypeStruct``)."""
    return int(sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(params)))
