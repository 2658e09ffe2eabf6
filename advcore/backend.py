"""Backend-specific speed-ups, in one opt-in place; model definitions stay plain Flax.

The models in ``advcore.models`` are written with plain ``lax`` convolutions
and ``nn.max_pool``. On the CPU backend XLA runs some of their parts slowly,
so the runtime (``advcore.variables.apply_train`` / ``apply_eval``, hence
every training step, attack and evaluation of the library) rewrites those
parts while it traces a model, through a Flax method interceptor. Code that
calls ``module.apply`` itself gets the plain model: the same numbers up to
float rounding, forward-mode AD included, only slower on a CPU.

The CPU rewrites (each kept only because an equivalence test and the
benchmark agree on it; ``bench/RESULTS.md`` has the measurements):

* **Input gradients of convolutions as canonical convolutions.** XLA:CPU runs
  a convolution with its fast kernels only when the dimension numbers are
  canonical (NHWC input, HWIO kernel). The gradient with respect to the input
  is a convolution whose kernel I/O axes are swapped in the dimension numbers;
  XLA canonicalises that only in the entry computation, so inside the PGD
  ``while`` loop it ran through a generic loop, about 2x slower on the
  WRN-16-4 pair. ``canonical_conv2d``'s VJP flips and physically transposes
  the kernel instead. It is reverse-mode only (a ``custom_vjp``).
* **Unpadded convolutions through the padded path.** A convolution whose
  padding is all zero (every convolution of SmallCNN and LeNet) ran 3-4x
  slower than the same convolution with one row of padding (SmallCNN conv2 at
  B=64: 35.6 -> 8.6 ms), so it is computed with ``stride`` extra bottom rows
  and the extra output row is dropped: the kept outputs are the same sums.
* **Unpadded 1x1 convolutions as matrix products** (a strided slice, then a
  dot). Through the padded path above their weight gradient ran in XLA's
  generic loop: for WRN-16-4's 16->64 shortcut at B=32, 76 ms against 2.6 ms
  as a dot (JAX's own VJP: 8 ms) on a 2-core Intel Xeon, about 3% of an
  LBGAT step; the input gradients are faster as dots too.
* **Max pooling as reshape + max** with PyTorch's first-maximum gradient:
  ``reduce_window``'s gradient (``select_and_scatter``) took a fifth of a
  SmallCNN attack step.

``set_cpu_rewrites(True | False | None)`` forces them on or off (None: on
exactly when JAX's default backend is the CPU); tests and benchmarks use it
to compare both forms.

The module also owns the XLA:CPU process settings (``configure_cpu``), which
must be chosen before JAX starts its backend, and ``compile_once``, the
cheap way to run one-off initialisation programs on a CPU.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Any, Callable, Iterator, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from advcore.models import layers

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")

_forced: Optional[bool] = None


# --------------------------------------------------------------------------
# Which rewrites apply.
# --------------------------------------------------------------------------


def set_cpu_rewrites(enabled: Optional[bool]) -> None:
    """Forces the CPU model rewrites on (True) or off (False); None restores the default.

    Takes effect for programs traced afterwards (already compiled functions
    keep the form they were traced with).
    """
    if enabled not in (True, False, None):
        raise ValueError(f"enabled must be True, False or None, got {enabled!r}")
    global _forced
    _forced = enabled


def cpu_rewrites_enabled() -> bool:
    """Whether models traced now get the CPU rewrites."""
    return jax.default_backend() == "cpu" if _forced is None else _forced


@contextlib.contextmanager
def model_rewrites() -> Iterator[None]:
    """Context in which model applies get this backend's rewrites (if any)."""
    if not cpu_rewrites_enabled():
        yield
        return
    with nn.intercept_methods(_cpu_interceptor):
        yield


def _cpu_interceptor(next_fun: Callable, args: tuple, kwargs: dict, context: Any) -> Any:
    module, method = context.module, context.method_name
    if isinstance(module, layers.Conv2d) and method == "convolve":
        x, kernel = args
        p = module.padding
        return canonical_conv2d(x, kernel, (module.stride, module.stride), ((p, p), (p, p)))
    if isinstance(module, layers.MaxPool2d) and method == "__call__":
        (x,) = args
        module.check_input(x)
        return max_pool_first_max(x, module.window)
    return next_fun(*args, **kwargs)


# --------------------------------------------------------------------------
# Convolution with an XLA:CPU-friendly input gradient.
# --------------------------------------------------------------------------


def plain_conv2d(x: jax.Array, w: jax.Array, strides: Sequence[int],
                 padding: Sequence[tuple[int, int]]) -> jax.Array:
    """``lax.conv_general_dilated`` with NHWC/HWIO/NHWC dimension numbers."""
    return lax.conv_general_dilated(x, w, tuple(strides), tuple(padding),
                                    dimension_numbers=DIMENSION_NUMBERS)


def _dilated(size: int, dilation: int) -> int:
    return 0 if size == 0 else 1 + dilation * (size - 1)


def _input_grad_padding(in_sp, k_sp, strides, out_sp, padding):
    """JAX's lhs-transpose padding (rhs dilation 1) for each spatial axis."""
    pads = []
    for i, k, s, o, (lo, _) in zip(in_sp, k_sp, strides, out_sp, padding):
        before = k - lo - 1
        after = _dilated(i, 1) + k - 1 - _dilated(o, s) - before
        pads.append((before, after))
    return tuple(pads)


def _padded_if_valid(x, w, strides, padding):
    """``plain_conv2d``, with an all-zero padding computed through XLA:CPU's
    fast padded path: ``stride`` extra bottom rows add exactly one output row,
    which is dropped."""
    if any(lo or hi for lo, hi in padding):
        return plain_conv2d(x, w, strides, padding)
    out = plain_conv2d(x, w, strides, ((0, strides[0]),) + tuple(padding[1:]))
    return out[:, :-1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _canonical(x, w, strides, padding):
    return _padded_if_valid(x, w, strides, padding)


def _canonical_fwd(x, w, strides, padding):
    return _padded_if_valid(x, w, strides, padding), (x, w)


def _canonical_bwd(strides, padding, residuals, g):
    x, w = residuals
    # Flip the window and swap I/O *in memory*: a canonical HWIO kernel.
    w_t = jnp.transpose(jnp.flip(w, (0, 1)), (0, 1, 3, 2))
    pads = _input_grad_padding(x.shape[1:3], w.shape[0:2], strides, g.shape[1:3], padding)
    dx = lax.conv_general_dilated(g, w_t, (1, 1), pads, lhs_dilation=strides,
                                  dimension_numbers=DIMENSION_NUMBERS)
    _, vjp_w = jax.vjp(lambda w_: _padded_if_valid(x, w_, strides, padding), w)
    (dw,) = vjp_w(g)
    return dx.astype(x.dtype), dw


_canonical.defvjp(_canonical_fwd, _canonical_bwd)


def pointwise_conv2d(x: jax.Array, w: jax.Array, strides: Sequence[int]) -> jax.Array:
    """An unpadded 1x1 convolution as what it is: a strided slice and a matrix product.

    Its forward pass and both gradients are then dots, which XLA:CPU runs
    with its matrix-multiplication kernels everywhere (inside a ``while``
    loop too), while as a convolution its weight gradient ran in a generic
    loop. The same sums as ``plain_conv2d``; forward-mode AD works as well.
    """
    sh, sw = (int(s) for s in strides)
    if w.shape[:2] != (1, 1):
        raise ValueError(f"w must be a 1x1 HWIO kernel, got shape {w.shape}")
    # A 1x1 window at stride s reads rows/columns 0, s, 2s, ...: ceil(H / s)
    # of them, the convolution's output size.
    return jnp.einsum("nhwi,io->nhwo", x[:, ::sh, ::sw, :], w[0, 0])


def canonical_conv2d(x: jax.Array, w: jax.Array, strides: Sequence[int],
                     padding: Sequence[tuple[int, int]]) -> jax.Array:
    """``plain_conv2d``'s values in the forms XLA:CPU runs fastest.

    An unpadded 1x1 convolution (a ResNet/WRN shortcut) is ``pointwise_conv2d``;
    any other gets the canonical input-gradient VJP (reverse mode only).
    """
    strides = tuple(int(s) for s in strides)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if w.shape[:2] == (1, 1) and not any(lo or hi for lo, hi in padding):
        return pointwise_conv2d(x, w, strides)
    return _canonical(x, w, strides, padding)


# --------------------------------------------------------------------------
# Max pooling as reshape + max, with the first-maximum gradient.
# --------------------------------------------------------------------------


def _cropped(x: jax.Array, k: int) -> jax.Array:
    """``x`` without the remainder rows/columns floor mode drops."""
    _, h, w, _ = x.shape
    return x[:, : (h // k) * k, : (w // k) * k, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool(x: jax.Array, k: int) -> jax.Array:
    b, h, w, c = x.shape
    return _cropped(x, k).reshape(b, h // k, k, w // k, k, c).max(axis=(2, 4))


def _max_pool_fwd(x, k):
    out = _max_pool(x, k)
    return out, (x, out)


def _max_pool_bwd(k, residuals, g):
    x, out = residuals
    b, h, w, c = x.shape
    cropped = _cropped(x, k)
    views = [cropped[:, i::k, j::k, :] for i in range(k) for j in range(k)]  # row-major
    taken = jnp.zeros(out.shape, jnp.bool_)
    grads = []
    for view in views:  # row-major: the first maximal element wins
        hit = (view == out) & ~taken
        grads.append(jnp.where(hit, g, jnp.zeros((), g.dtype)))
        taken = taken | hit
    # (k*k, B, Ho, Wo, C) -> (B, Ho, k, Wo, k, C) -> (B, Ho*k, Wo*k, C)
    stacked = jnp.stack(grads).reshape(k, k, b, h // k, w // k, c)
    dx = jnp.transpose(stacked, (2, 3, 0, 4, 1, 5)).reshape(b, (h // k) * k, (w // k) * k, c)
    dx = jnp.pad(dx, ((0, 0), (0, h - dx.shape[1]), (0, w - dx.shape[2]), (0, 0)))
    return (dx.astype(x.dtype),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool_first_max(x: jax.Array, k: int) -> jax.Array:
    """``nn.max_pool(x, (k, k), strides=(k, k))`` as reshape + max.

    The gradient sends each window's cotangent to its *first* maximal element
    in row-major order, as PyTorch's ``max_pool2d`` and XLA's
    ``select_and_scatter`` do (a plain ``jnp.max`` gradient would split it
    among ties, which are common on MNIST's constant background).
    """
    return _max_pool(x, int(k))


# --------------------------------------------------------------------------
# One-off programs and process settings.
# --------------------------------------------------------------------------


def compile_once(fn: Callable, *args: Any) -> Any:
    """Runs ``fn(*args)`` as one compiled program meant to run once (initialisation).

    On the CPU it is compiled without XLA backend optimisation: XLA:CPU spends
    about 0.5 s per parameter tensor optimising the unrolled threefry code of
    random initialisers, for a program that then runs in milliseconds
    (about 4x faster in all, the same values up to float rounding). Under a
    trace, or on other backends, it is a plain ``jax.jit``.
    """
    jitted = jax.jit(fn)
    traced = any(isinstance(a, jax.core.Tracer) for a in jax.tree.leaves(args))
    if traced or jax.default_backend() != "cpu":
        return jitted(*args)
    compiled = jitted.lower(*args).compile(
        compiler_options={"xla_backend_optimization_level": 0})
    return compiled(*args)


# XLA:CPU flags ``configure_cpu`` applies (CLI processes call it before JAX
# starts its backend). Empty, on purpose: bench/RESULTS.md, "XLA:CPU
# settings", has the measurements and commands.
#
# jaxlib 0.10.2 runs every fp32 convolution as a single-threaded YNNPACK
# fusion: one 3x3 convolution (B=32, 32x32, 64->64) ran at 132 / 133 / 34
# GFLOP/s (forward / input gradient / weight gradient) on a 2-core Intel Xeon
# with AMX. ``--xla_cpu_experimental_ynn_fusion_type=individual_dot`` sends
# convolutions back to Eigen, which uses every core: 263 / 265 / 151 GFLOP/s,
# and the LBGAT step (WRN-16-4 pair, B=32, one device) 1.09x, PGD-20
# evaluation 1.40x faster. It is not kept because it changes the numbers:
# with it, the fp32 input gradient through a train-mode BatchNorm network
# (conv -> BN -> ReLU -> conv -> BN, or WRN-16-4) is 1-4% (of its largest
# entry) away from a float64 reference, against 1e-6 with the default
# flags, and the LBGAT step misses the plain step's 1e-5 tolerance
# (tests/lbgat/test_step_equivalence.py runs that check for any flag added
# here). Simulating one device per core (``num_devices``) gains as much
# without touching numerics: 1.32x on the step, 1.43x on PGD-20 there; with
# that, ``individual_dot`` made the step 19% slower again. Flags that relax
# float semantics (``--xla_cpu_enable_fast_math``) are excluded;
# ``--xla_cpu_use_onednn`` changed nothing measurable and
# ``--xla_cpu_use_thunk_runtime`` is a no-op (deprecated) in this jaxlib.
CPU_XLA_FLAGS: tuple[str, ...] = ()


def configure_cpu(num_devices: Optional[int] = None,
                  xla_flags: Optional[Sequence[str]] = None) -> None:
    """Sets the XLA:CPU process settings; call before the first JAX operation.

    Args:
      num_devices: CPU devices to simulate (``jax_num_cpu_devices``). On a CPU,
        attacks with data-dependent cost (AutoAttack) run about twice as fast
        with one device per core, because intra-op threading cannot split
        their small batches; the LBGAT step and PGD evaluation ran 1.3-1.4x
        faster too, because XLA:CPU's convolutions run on one thread per
        device (``CPU_XLA_FLAGS``). None leaves JAX's default (1).
      xla_flags: flags appended to ``XLA_FLAGS``; None: ``CPU_XLA_FLAGS``. A
        flag whose name ``XLA_FLAGS`` already sets is left as the user set
        it. Flags are read when the backend starts, so later calls cannot
        change a running process.
    """
    if num_devices is not None:
        if not isinstance(num_devices, int) or isinstance(num_devices, bool) or num_devices < 1:
            raise ValueError(f"num_devices must be an int >= 1, got {num_devices!r}")
        jax.config.update("jax_num_cpu_devices", num_devices)
    if xla_flags is None:
        xla_flags = CPU_XLA_FLAGS
    existing = os.environ.get("XLA_FLAGS", "").split()
    set_names = {f.split("=", 1)[0] for f in existing}
    added = [f for f in xla_flags if f.split("=", 1)[0] not in set_names]
    if added:
        os.environ["XLA_FLAGS"] = " ".join(existing + added)
