"""PyTorch-equivalent building blocks shared by every model in ``advcore.models``.

The papers' code is PyTorch, so the layers here reproduce PyTorch semantics that
Flax's stock layers do not:

* ``Conv2d`` pads symmetrically like ``nn.Conv2d(padding=p)``. Flax's ``'SAME'``
  pads asymmetrically for stride 2 (0 before, 1 after), which shifts the sampling
  grid and would break weight porting.
* ``ConvTranspose2d`` is ``nn.ConvTranspose2d(padding=p)``: output side
  ``(in - 1) * stride - 2p + k``. Flax's ``nn.ConvTranspose`` with ``'VALID'``
  padding returns ``in * stride + max(k - stride, 0)`` rows instead (extra zero
  rows when k < stride) and has no symmetric-padding form.
* ``Conv2d`` / ``Dense`` default to PyTorch's default init (kaiming-uniform with
  a=sqrt(5), i.e. U(+-1/sqrt(fan_in)) for weights, U(+-1/sqrt(fan_in)) for biases).
  The bias bound depends on fan_in, which a Flax bias initializer cannot see, so
  the layers compute it from the input.
* ``BatchNorm`` is ``nn.BatchNorm2d``: momentum 0.1 (Flax convention 0.9),
  eps 1e-5, the *unbiased* batch variance in the running-variance update, and
  float32 statistics and normalisation math whatever the compute dtype.
* ``BatchNormSets`` holds several independent BN parameter/statistic sets for
  one layer (the LBGAT "shared conv, separate BN" ablation).

Parameter names follow Flax (``kernel`` HWIO / (in, out), ``bias``, ``scale``;
``batch_stats``: ``mean``, ``var``), so the trees look like stock Flax trees.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Initializer = Callable[..., jax.Array]

# PyTorch's default Conv/Linear weight init: kaiming_uniform(a=sqrt(5)) gives
# U(+-sqrt(6 / ((1 + 5) * fan_in))) = U(+-1/sqrt(fan_in)), which is a uniform
# variance-scaling init with scale 1/3 (limit sqrt(3 * scale / fan_in)).
torch_default_kernel_init: Initializer = nn.initializers.variance_scaling(
    1.0 / 3.0, "fan_in", "uniform"
)
# WRN (TRADES/LBGAT): N(0, sqrt(2 / (k*k*out))) -- He normal in fan-out mode.
he_normal_fan_out: Initializer = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch.nn.init.kaiming_normal_ defaults (fan_in, gain sqrt(2)): N(0, sqrt(2 / fan_in)).
he_normal_fan_in: Initializer = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
zeros_init: Initializer = nn.initializers.zeros

# Compute dtypes a model may run in. Parameters and BN statistics stay float32.
COMPUTE_DTYPES = (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def torch_bias_init(fan_in: int) -> Initializer:
    """PyTorch's default bias init U(+-1/sqrt(fan_in))."""
    bound = 1.0 / float(fan_in) ** 0.5

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def canonical_dtype(dtype: Any, field: str = "dtype") -> jnp.dtype:
    """Parses a compute dtype (a dtype object or a string such as 'bfloat16')."""
    try:
        dt = jnp.dtype(dtype)
    except TypeError as err:
        raise ValueError(
            f"{field} must be one of {[d.name for d in COMPUTE_DTYPES]}, got {dtype!r}"
        ) from err
    if dt not in COMPUTE_DTYPES:
        raise ValueError(
            f"{field} must be one of {[d.name for d in COMPUTE_DTYPES]}, got {dt.name!r}"
        )
    return dt


def flatten_chw(x: jax.Array) -> jax.Array:
    """Flattens (B, H, W, C) in PyTorch's (C, H, W) order.

    The papers flatten NCHW tensors before a Linear layer; flattening NHWC in the
    same element order keeps Linear weights interchangeable with the PyTorch
    checkpoints (e.g. the shipped LADDER MNIST LeNet).
    """
    return jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)


class Conv2d(nn.Module):
    """``torch.nn.Conv2d`` on NHWC inputs (square kernel, symmetric padding).

    Attributes:
      features: output channels.
      kernel_size: square kernel side.
      stride: square stride.
      padding: symmetric zero padding on each spatial side (PyTorch ``padding``).
      use_bias: whether to add a bias.
      kernel_init: kernel initializer (HWIO); PyTorch default if not given.
      bias_init: bias initializer; ``None`` means PyTorch's U(+-1/sqrt(fan_in)).
      dtype: compute dtype; the parameters are always float32.
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    kernel_init: Initializer = torch_default_kernel_init
    bias_init: Optional[Initializer] = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        in_features = x.shape[-1]
        kernel = self.param(
            "kernel", self.kernel_init, (k, k, in_features, self.features), jnp.float32
        )
        y = self.convolve(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias_init = self.bias_init or torch_bias_init(in_features * k * k)
            bias = self.param("bias", bias_init, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y

    def convolve(self, x: jax.Array, kernel: jax.Array) -> jax.Array:
        """The convolution itself, NHWC x HWIO -> NHWC.

        A method of its own so that ``advcore.backend`` can swap in a faster
        form for the backend it runs on, without this layer knowing.
        """
        p = self.padding
        return lax.conv_general_dilated(
            x, kernel, (self.stride, self.stride), ((p, p), (p, p)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )


class ConvTranspose2d(nn.Module):
    """``torch.nn.ConvTranspose2d`` on NHWC inputs (square kernel, symmetric padding,
    no output padding, dilation 1, one group).

    Every input pixel scatters ``x[i, j] . W[a, b]`` to output pixel
    ``(i * stride + a - padding, j * stride + b - padding)``, so the output side is
    ``(in - 1) * stride - 2 * padding + kernel_size``.

    The kernel is stored ``(k, k, out, in)``: PyTorch's ``(in, out, k, k)`` weight
    transposed by ``(2, 3, 1, 0)`` (Flax's ``transpose_kernel=True`` layout), so
    ported weights need only that transpose. The default init is PyTorch's: its
    fan-in is ``out * k * k`` (PyTorch reads it from the weight's second axis),
    which is what a fan-in initializer computes from this layout.

    Attributes:
      features: output channels.
      kernel_size: square kernel side.
      stride: square stride (the upsampling factor).
      padding: PyTorch ``padding``: rows/columns cropped from each side.
      use_bias: whether to add a bias.
      kernel_init: kernel initializer; PyTorch default if not given.
      bias_init: bias initializer; ``None`` means PyTorch's U(+-1/sqrt(fan_in)).
      dtype: compute dtype; the parameters are always float32.
    """

    features: int
    kernel_size: int
    stride: int = 1
    padding: int = 0
    use_bias: bool = True
    kernel_init: Initializer = torch_default_kernel_init
    bias_init: Optional[Initializer] = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s, p = self.kernel_size, self.stride, self.padding
        check_positive_int(k, "kernel_size")
        check_positive_int(s, "stride")
        require(isinstance(p, int) and not isinstance(p, bool) and p >= 0,
                f"padding must be an int >= 0, got {p!r}")
        in_features = x.shape[-1]
        kernel = self.param(
            "kernel", self.kernel_init, (k, k, self.features, in_features), jnp.float32
        )
        # The scatter above equals a stride-1 convolution of the input dilated by
        # ``stride`` with the spatially flipped kernel (I/O swapped to HWIO),
        # padded by k - 1 - p on each side (negative padding crops).
        w = jnp.transpose(jnp.flip(kernel, (0, 1)), (0, 1, 3, 2)).astype(self.dtype)
        q = k - 1 - p
        y = lax.conv_general_dilated(
            x.astype(self.dtype), w, (1, 1), ((q, q), (q, q)), lhs_dilation=(s, s),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        if self.use_bias:
            bias_init = self.bias_init or torch_bias_init(self.features * k * k)
            bias = self.param("bias", bias_init, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


class MaxPool2d(nn.Module):
    """``torch.nn.MaxPool2d(window)``: window = stride, no padding, floor mode.

    A remainder row/column is dropped, as PyTorch does. The gradient goes to
    each window's first maximal element (``select_and_scatter``), as PyTorch's.
    """

    window: int = 2

    def check_input(self, x: jax.Array) -> None:
        k = self.window
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"max_pool window k must be an int >= 1, got {k!r}")
        if x.ndim != 4 or x.shape[1] < k or x.shape[2] < k:
            raise ValueError(f"max_pool needs NHWC input with H, W >= k={k}, got shape {x.shape}")

    def __call__(self, x: jax.Array) -> jax.Array:
        self.check_input(x)
        k = self.window
        return nn.max_pool(x, (k, k), strides=(k, k), padding="VALID")


class Dense(nn.Module):
    """``torch.nn.Linear`` (PyTorch default init unless overridden).

    Attributes:
      features: output width.
      use_bias: whether to add a bias.
      kernel_init: (in, out) kernel initializer; PyTorch default if not given.
      bias_init: bias initializer; ``None`` means PyTorch's U(+-1/sqrt(fan_in)).
      dtype: compute dtype; the parameters are always float32.
    """

    features: int
    use_bias: bool = True
    kernel_init: Initializer = torch_default_kernel_init
    bias_init: Optional[Initializer] = None
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        in_features = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (in_features, self.features), jnp.float32)
        y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
        if self.use_bias:
            bias_init = self.bias_init or torch_bias_init(in_features)
            bias = self.param("bias", bias_init, (self.features,), jnp.float32)
            y = y + bias.astype(self.dtype)
        return y


class BatchNorm(nn.Module):
    """``torch.nn.BatchNorm2d`` / ``BatchNorm1d`` over the last (channel) axis.

    Train mode normalises with the batch's own (biased) statistics and updates
    the running statistics as PyTorch does: ``running = momentum * running +
    (1 - momentum) * batch``, with the *unbiased* variance n/(n-1) * var
    (Flax's ``nn.BatchNorm`` uses the biased one). Eval mode uses the running
    statistics. Under a data-parallel ``jit`` the means are over the global
    batch, i.e. SyncBN.

    Statistics, scale/bias and the normalisation itself are float32 even when
    the input is bfloat16; the output is cast back to ``dtype``.

    Attributes:
      momentum: Flax-convention momentum (PyTorch momentum 0.1 == 0.9 here).
      epsilon: added to the variance.
      dtype: output dtype.
    """

    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, bn_set: int = 0) -> jax.Array:
        del bn_set  # A single set; the argument keeps the BatchNormSets signature.
        features = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        ra_mean = self.variable(
            "batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32)
        )
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        x32 = x.astype(jnp.float32)
        if train:
            axes = tuple(range(x.ndim - 1))
            mean = jnp.mean(x32, axis=axes)
            # Two-pass variance: E[(x - mean)^2] is better conditioned than
            # E[x^2] - E[x]^2 for activations with a large mean.
            var = jnp.mean(jnp.square(x32 - mean), axis=axes)
            if not self.is_initializing():
                n = x.size // features
                unbiased = var * (n / max(n - 1, 1))
                m = self.momentum
                ra_mean.value = m * ra_mean.value + (1.0 - m) * mean
                ra_var.value = m * ra_var.value + (1.0 - m) * unbiased
        else:
            mean, var = ra_mean.value, ra_var.value
        y = (x32 - mean) * (lax.rsqrt(var + self.epsilon) * scale) + bias
        return y.astype(self.dtype)


class BatchNormSets(nn.Module):
    """``num_sets`` independent BatchNorm layers (``set0``, ``set1``, ...) for one site.

    ``bn_set`` (a static Python int) selects the set used by this call; only
    that set's statistics are updated and only its scale/bias get gradients.
    During ``init`` every set is run so that all of them get variables.
    """

    num_sets: int
    momentum: float = 0.9
    epsilon: float = 1e-5
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool, bn_set: int = 0) -> jax.Array:
        sets = [
            BatchNorm(self.momentum, self.epsilon, self.dtype, name=f"set{i}")
            for i in range(self.num_sets)
        ]
        if self.is_initializing():
            outs = [bn(x, train) for bn in sets]
            return outs[bn_set]
        return sets[bn_set](x, train)


def make_batch_norm(num_sets: int, dtype: Any, name: Optional[str] = None) -> nn.Module:
    """A plain ``BatchNorm`` for one set (stock tree layout), else ``BatchNormSets``."""
    if num_sets == 1:
        return BatchNorm(momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)
    return BatchNormSets(num_sets=num_sets, momentum=0.9, epsilon=1e-5, dtype=dtype, name=name)


def check_bn_set(bn_set: int, num_sets: int) -> None:
    """Validates a static ``bn_set`` argument."""
    if not isinstance(bn_set, int) or not 0 <= bn_set < num_sets:
        raise ValueError(
            f"bn_set must be a Python int in [0, {num_sets - 1}] (num_bn_sets={num_sets}), "
            f"got {bn_set!r}"
        )


def require(condition: bool, message: str) -> None:
    """Raises ``ValueError(message)`` unless ``condition`` holds."""
    if not condition:
        raise ValueError(message)


def check_num_classes(num_classes: Any, minimum: int = 2) -> None:
    require(
        isinstance(num_classes, int) and not isinstance(num_classes, bool)
        and num_classes >= minimum,
        f"num_classes must be an int >= {minimum}, got {num_classes!r}",
    )


def check_positive_int(value: Any, field: str) -> None:
    require(
        isinstance(value, int) and not isinstance(value, bool) and value >= 1,
        f"{field} must be an int >= 1, got {value!r}",
    )


def check_rate(value: Any, field: str) -> None:
    require(
        isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0,
        f"{field} must be a float in [0, 1), got {value!r}",
    )
