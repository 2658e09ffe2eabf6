"""Threat-model helpers: norms, random starts, step directions and projections.

Shared by every attack: PGD uses the L-inf and L2 threat models below; the
AutoAttack family (APGD, FAB, Square) also uses L1 (:data:`ATTACK_NORMS`,
:func:`flat_norm`, :func:`normalize`, :func:`l1_box_projection`).

PGD's two threat models, L-inf and L2, are small pure functions (the DeepMind
``adversarial_robustness`` split between initialise/project functions):

* ``*_init``: the random start. It is **not** clipped to the bounds: the
  first gradient is taken at the raw start (docs/attacks.md#random-starts); the first
  projection happens after the first step.
* ``*_direction``: the unit step direction from a gradient (``sign`` for
  L-inf; the per-example L2-normalised gradient for L2).
* ``*_project``: project onto the eps-ball around ``x0`` first, then clip to
  the box ``bounds`` (docs/attacks.md#projection-order: keep this order).

Axis 0 is the batch axis; per-example norms reduce over all other axes. To
vmap an attack over single examples, give each a leading batch axis of 1.
Everything keeps the dtype of ``x`` so that loop carries are stable.
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp
import numpy as np

# The threat models of PGD (random start, step direction and projection below).
NORMS = ("linf", "l2")
# The threat models of the AutoAttack family (APGD, FAB, Square, the cascade).
ATTACK_NORMS = ("linf", "l2", "l1")
RANDOM_STARTS = ("none", "uniform", "normal")

# Guards the L2 normalisations against zero vectors (no NaN, zero step).
TINY = 1e-12


def _feature_axes(x: jax.Array) -> Tuple[int, ...]:
    return tuple(range(1, x.ndim))


def bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    """Reshapes a per-example ``(B,)`` vector to broadcast against ``x``."""
    return jnp.reshape(v, v.shape + (1,) * (x.ndim - 1))


_bcast = bcast  # the older private name, used by pgd.py / cw_l2.py


def l2_norm(v: jax.Array) -> jax.Array:
    """Per-example L2 norm, shape ``(B,)``."""
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=_feature_axes(v)))


def linf_norm(v: jax.Array) -> jax.Array:
    """Per-example L-inf norm, shape ``(B,)``."""
    return jnp.max(jnp.abs(v), axis=_feature_axes(v))


def l1_norm(v: jax.Array) -> jax.Array:
    """Per-example L1 norm, shape ``(B,)``."""
    return jnp.sum(jnp.abs(v), axis=_feature_axes(v))


def l0_norm(v: jax.Array) -> jax.Array:
    """Per-example number of non-zero entries, shape ``(B,)`` (int32)."""
    return jnp.sum((v != 0).astype(jnp.int32), axis=_feature_axes(v))


def flat_norm(v: jax.Array, norm: str) -> jax.Array:
    """Per-example ``norm`` (``"linf"``, ``"l2"`` or ``"l1"``) over all non-batch axes."""
    if norm == "linf":
        return linf_norm(v)
    if norm == "l2":
        return l2_norm(v)
    if norm == "l1":
        return l1_norm(v)
    raise ValueError(f"norm must be one of {ATTACK_NORMS}, got {norm!r}")


def normalize(v: jax.Array, norm: str) -> jax.Array:
    """``v / (||v|| + 1e-12)`` per example (AutoAttack's ``normalize``)."""
    return v / bcast(flat_norm(v, norm) + TINY, v)


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


def canonical_norm(norm: str, valid: Tuple[str, ...] = ATTACK_NORMS) -> str:
    """Accepts ``"linf"``/``"Linf"``/``"l2"``/``"L2"``/``"l1"``/``"L1"`` (AutoAttack
    spells them ``Linf``, ``L2``, ``L1``); returns the lower-case name."""
    if not isinstance(norm, str) or norm.lower() not in valid:
        raise ValueError(f"norm must be one of {valid}, got {norm!r}")
    return norm.lower()


# --------------------------------------------------------------------------
# Random starts.
# --------------------------------------------------------------------------


def normal_init(key: jax.Array, x: jax.Array, init_std: float) -> jax.Array:
    """``x + init_std * N(0, I)`` (TRADES); same for both norms."""
    return x + (init_std * jax.random.normal(key, x.shape, jnp.float32)).astype(x.dtype)


def linf_init(key: jax.Array, x: jax.Array, eps: float) -> jax.Array:
    """``x + U(-eps, eps)^d`` (Madry / TRADES eval)."""
    delta = jax.random.uniform(key, x.shape, jnp.float32, minval=-1.0, maxval=1.0)
    return x + (eps * delta).astype(x.dtype)


def l2_init(key: jax.Array, x: jax.Array, eps: float) -> jax.Array:
    """``x + delta`` with ``delta`` uniform in the L2 ball of radius ``eps``.

    Direction: a normalised Gaussian; radius: ``eps * U^(1/d)`` with ``d`` the
    number of features per example (uniform in volume).
    """
    k_dir, k_rad = jax.random.split(key)
    direction = jax.random.normal(k_dir, x.shape, jnp.float32)
    direction = direction / _bcast(l2_norm(direction) + TINY, direction)
    d = 1
    for s in x.shape[1:]:
        d *= s
    radius = eps * jax.random.uniform(k_rad, (x.shape[0],), jnp.float32) ** (1.0 / d)
    return x + (direction * _bcast(radius, direction)).astype(x.dtype)


def random_init(
    key: jax.Array, x: jax.Array, *, norm: str, eps: float, random_start: str,
    init_std: float = 0.001,
) -> jax.Array:
    """The attack's starting point (unclipped) for ``random_start`` in
    ``("none", "uniform", "normal")``."""
    if random_start == "none":
        return x
    if random_start == "normal":
        return normal_init(key, x, init_std)
    if random_start == "uniform":
        check_norm(norm)
        return linf_init(key, x, eps) if norm == "linf" else l2_init(key, x, eps)
    raise ValueError(f"random_start must be one of {RANDOM_STARTS}, got {random_start!r}")


# --------------------------------------------------------------------------
# Step directions.
# --------------------------------------------------------------------------


def linf_direction(g: jax.Array) -> jax.Array:
    """``sign(g)``: the steepest-ascent direction of unit L-inf norm."""
    return jnp.sign(g)


def l2_direction(g: jax.Array) -> jax.Array:
    """``g / (||g||_2 + 1e-12)`` per example; zero (not NaN) for a zero gradient."""
    norm = l2_norm(g.astype(jnp.float32))
    return (g / _bcast(norm + TINY, g).astype(g.dtype)).astype(g.dtype)


def step_direction(g: jax.Array, norm: str) -> jax.Array:
    check_norm(norm)
    return linf_direction(g) if norm == "linf" else l2_direction(g)


# --------------------------------------------------------------------------
# Projections (ball first, then the box).
# --------------------------------------------------------------------------


def clip_to_bounds(x: jax.Array, bounds: Tuple[float, float]) -> jax.Array:
    return jnp.clip(x, bounds[0], bounds[1])


def linf_project(
    x_adv: jax.Array, x0: jax.Array, eps: float, bounds: Tuple[float, float] = (0.0, 1.0)
) -> jax.Array:
    """``clip(clip(x_adv, x0 - eps, x0 + eps), lo, hi)`` (docs/attacks.md#projection-order)."""
    x_adv = jnp.minimum(jnp.maximum(x_adv, x0 - eps), x0 + eps)
    return clip_to_bounds(x_adv, bounds)


def l2_project(
    x_adv: jax.Array, x0: jax.Array, eps: float, bounds: Tuple[float, float] = (0.0, 1.0)
) -> jax.Array:
    """Rescales ``delta = x_adv - x0`` to L2 norm ``<= eps`` per example, then
    clips to the box (which can only shrink the norm further)."""
    delta = x_adv - x0
    norm = l2_norm(delta.astype(jnp.float32))
    factor = jnp.minimum(1.0, eps / jnp.maximum(norm, TINY))
    x_adv = x0 + delta * _bcast(factor, delta).astype(delta.dtype)
    return clip_to_bounds(x_adv, bounds)


def project(
    x_adv: jax.Array, x0: jax.Array, *, norm: str, eps: float,
    bounds: Tuple[float, float] = (0.0, 1.0),
) -> jax.Array:
    check_norm(norm)
    if norm == "linf":
        return linf_project(x_adv, x0, eps, bounds)
    return l2_project(x_adv, x0, eps, bounds)


# --------------------------------------------------------------------------
# L1: projection onto the intersection of an L1 ball and the [0, 1] box.
# --------------------------------------------------------------------------


def l1_box_projection(x: jax.Array, delta: jax.Array, eps: float) -> jax.Array:
    """AutoAttack's ``L1_projection``: the correction ``r`` with
    ``||delta + r||_1 <= eps`` and ``0 <= x + delta + r <= 1``.

    ``x`` (the centre, in [0, 1]) and ``delta`` have shape ``(B, ...)``; the
    result has ``delta``'s shape. ``x + delta + r`` is the Euclidean
    projection of ``x + delta`` onto the ball-box intersection: every
    coordinate keeps its sign and loses magnitude ``clip(lam, -u_i, |delta_i|)``
    where ``-u_i >= 0`` is what it must lose to re-enter the box and ``lam >= 0``
    is the smallest value that brings the L1 norm to ``eps`` (``lam = 0``,
    i.e. only the box clip, when that already suffices).

    ``lam`` is found exactly as the reference does: the ``2 D`` breakpoints
    ``-u_i`` and ``|delta_i|`` are sorted, the L1 norm at each breakpoint is
    a prefix sum, a fixed ``ceil(log2(2 D))``-step bisection finds the
    segment, and ``lam`` is interpolated inside it (same formulas, so the
    same segment is chosen and the reference's handling of ties and of the
    first segment is kept). Sorting costs ``O(D log D)`` per row.
    """
    shape = delta.shape
    batch = shape[0]
    xf = x.reshape(batch, -1).astype(jnp.float32)
    yf = delta.reshape(batch, -1).astype(jnp.float32)
    dim = xf.shape[1]
    sigma = jnp.sign(yf)
    # u <= 0: minus what a coordinate must lose to get back into [0, 1].
    u = jnp.minimum(jnp.minimum(1.0 - xf - yf, xf + yf), 0.0)
    lower = -jnp.abs(yf)
    breakpoints = -jnp.concatenate([u, lower], axis=1)
    order = jnp.argsort(breakpoints, axis=1)
    bs = jnp.take_along_axis(breakpoints, order, axis=1)
    bs_next = jnp.concatenate([bs[:, 1:], jnp.zeros((batch, 1), bs.dtype)], axis=1)
    # +1 where a coordinate starts shrinking (its -u), -1 where it reaches 0.
    slope = jnp.cumsum(jnp.where(order < dim, 1.0, -1.0), axis=1)
    s1 = -jnp.sum(u, axis=1)
    c = eps - jnp.sum(jnp.abs(yf), axis=1)
    needs_shrink = s1 + c < 0
    s = s1[:, None] + jnp.cumsum((bs_next - bs) * slope, axis=1)

    n_bisect = int(np.ceil(np.log2(np.float32(2 * dim))))
    rows = jnp.arange(batch)

    def bisect(_, bounds):
        lb, ub = bounds
        mid = jnp.floor((lb + ub) / 2.0)
        below = s[rows, mid.astype(jnp.int32)] + c < 0
        return jnp.where(below, mid, lb), jnp.where(below, ub, mid)

    lb0 = jnp.zeros((batch,), jnp.float32)
    ub0 = jnp.full((batch,), 2 * dim - 1, jnp.float32)
    lb, _ = jax.lax.fori_loop(0, n_bisect, bisect, (lb0, ub0))
    lb = lb.astype(jnp.int32)
    lam = (-s[rows, lb] - c) / slope[rows, lb + 1] + bs_next[rows, lb]
    shrink = -jnp.minimum(jnp.maximum(-u, lam[:, None]), -lower)
    d = jnp.where(needs_shrink[:, None], shrink, u)
    return (sigma * d).reshape(shape).astype(delta.dtype)
