"""The 2-D convolution every model layer uses, with an XLA:CPU-friendly gradient.

Why this exists: XLA:CPU runs a convolution with Eigen's fast kernel only when
its dimension numbers are canonical (input NHWC, kernel HWIO, output NHWC).
The gradient of ``conv(x, w)`` with respect to ``x`` is a convolution with the
flipped kernel whose I and O axes are *swapped in the dimension numbers*
(``01oi``). XLA's ``ConvCanonicalization`` pass rewrites such convolutions into
canonical ones, but only in the entry computation: inside a ``while`` body (the
PGD loop is a ``lax.fori_loop``) they fall back to XLA's generic emitted loop,
about 3x slower per FLOP. That is the "convolutions in a while body run ~2x
slower" effect (DESIGN.md); unrolling only hid it by moving the convolutions
into the entry computation.

``conv2d`` returns exactly ``lax.conv_general_dilated(x, w, strides, padding,
("NHWC", "HWIO", "NHWC"))``. With the ``canonical`` implementation its VJP
computes the input gradient as a canonical convolution whose kernel is flipped
and *physically* transposed to HWIO (a weight-sized copy), so XLA:CPU uses
Eigen wherever the gradient runs. The weight gradient is JAX's own. The values
are the same convolution sums (tests/lbgat/test_step_equivalence.py checks the
LBGAT step against the plain formulation to 1e-5).

Second CPU lever, unpadded convolutions. XLA:CPU runs a convolution whose
padding is all zero ("VALID", e.g. every convolution of TRADES' SmallCNN and
LeNet) 3-4x slower than the same convolution with any nonzero padding
(measured on this 2-core EPYC, one thread, B=64 26x26x32 -> 24x24x32: 35.6 ms
unpadded, 8.6 ms with one row of bottom padding; the weight gradient 36.9 vs
12.4 ms). ``canonical`` therefore computes an unpadded convolution with
``stride`` extra rows of bottom padding and drops the extra output row: the
kept outputs are the same sums (bit-identical in that measurement), and the
weight gradient is the VJP of that form.

Implementations (``set_conv_impl`` or ``ADVCORE_CONV_IMPL``; read at trace time):

* ``auto`` (default): ``canonical`` on the CPU backend, ``plain`` elsewhere
  (GPU/TPU compilers choose kernel layouts themselves);
* ``plain``: ``lax.conv_general_dilated`` and JAX's own VJP;
* ``canonical``: the custom VJP and the unpadded-convolution rewrite above, on
  every backend.

The custom VJP supports reverse mode (``grad``, ``vjp``, also nested); forward
mode (``jvp``, ``jacfwd``) through ``canonical`` convolutions is not available,
as for any ``jax.custom_vjp`` function; select ``plain`` for that.
"""

from __future__ import annotations

import functools
import os
from typing import Sequence

import jax
import jax.numpy as jnp
from jax import lax

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")
IMPLS = ("auto", "plain", "canonical")

_impl = None  # None = read ADVCORE_CONV_IMPL (default 'auto')


def set_conv_impl(impl: str | None) -> None:
    """Selects the convolution VJP for programs traced from now on (None = env)."""
    if impl is not None and impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    global _impl
    _impl = impl


def conv_impl() -> str:
    """The implementation ``conv2d`` uses now: 'plain' or 'canonical'."""
    impl = _impl or os.environ.get("ADVCORE_CONV_IMPL", "auto") or "auto"
    if impl not in IMPLS:
        raise ValueError(f"ADVCORE_CONV_IMPL must be one of {IMPLS}, got {impl!r}")
    if impl == "auto":
        return "canonical" if jax.default_backend() == "cpu" else "plain"
    return impl


def _plain(x, w, strides, padding):
    return lax.conv_general_dilated(x, w, strides, padding,
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
    """``_plain``, with an all-zero padding computed through XLA:CPU's fast
    padded path: ``stride`` extra bottom rows add exactly one output row,
    which is dropped (module docstring)."""
    if any(lo or hi for lo, hi in padding):
        return _plain(x, w, strides, padding)
    out = _plain(x, w, strides, ((0, strides[0]),) + tuple(padding[1:]))
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


def conv2d(x: jax.Array, w: jax.Array, strides: Sequence[int],
           padding: Sequence[tuple[int, int]]) -> jax.Array:
    """NHWC x HWIO -> NHWC convolution (no dilation, no groups)."""
    strides = tuple(int(s) for s in strides)
    padding = tuple((int(lo), int(hi)) for lo, hi in padding)
    if conv_impl() == "canonical":
        return _canonical(x, w, strides, padding)
    return _plain(x, w, strides, padding)
