"""Threat-model helpers: random starts, step directions and projections.

Two threat models, L-inf and L2, each as small pure functions (the DeepMind
``adversarial_robustness`` split between initialise/project functions):

* ``*_init``: the random start. It is **not** clipped to the bounds: the
  first gradient is taken at the raw start (SPEC 1.2, 4.1); the first
  projection happens after the first step.
* ``*_direction``: the unit step direction from a gradient (``sign`` for
  L-inf; the per-example L2-normalised gradient for L2).
* ``*_project``: project onto the eps-ball around ``x0`` first, then clip to
  the box ``bounds`` (SPEC 7: keep this order).

Axis 0 is the batch axis; per-example norms reduce over all other axes. To
vmap an attack over single examples, give each a leading batch axis of 1.
Everything keeps the dtype of ``x`` so that loop carries are stable.
"""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp

NORMS = ("linf", "l2")
RANDOM_STARTS = ("none", "uniform", "normal")

# Guards the L2 normalisations against zero vectors (no NaN, zero step).
TINY = 1e-12


def _feature_axes(x: jax.Array) -> Tuple[int, ...]:
    return tuple(range(1, x.ndim))


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    """Reshapes a per-example ``(B,)`` vector to broadcast against ``x``."""
    return jnp.reshape(v, v.shape + (1,) * (x.ndim - 1))


def l2_norm(v: jax.Array) -> jax.Array:
    """Per-example L2 norm, shape ``(B,)``."""
    return jnp.sqrt(jnp.sum(jnp.square(v), axis=_feature_axes(v)))


def linf_norm(v: jax.Array) -> jax.Array:
    """Per-example L-inf norm, shape ``(B,)``."""
    return jnp.max(jnp.abs(v), axis=_feature_axes(v))


def l1_norm(v: jax.Array) -> jax.Array:
    """Per-example L1 norm, shape ``(B,)``."""
    return jnp.sum(jnp.abs(v), axis=_feature_axes(v))


def check_norm(norm: str) -> None:
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")


# --------------------------------------------------------------------------
# Random starts.
# --------------------------------------------------------------------------


def normal_init(key: jax.Array, x: jax.Array, init_std: float) -> jax.Array:
    """``x + init_std * N(0, I)`` (TRADES, SPEC 1.2); same for both norms."""
    return x + (init_std * jax.random.normal(key, x.shape, jnp.float32)).astype(x.dtype)


def linf_init(key: jax.Array, x: jax.Array, eps: float) -> jax.Array:
    """``x + U(-eps, eps)^d`` (Madry / TRADES eval, SPEC 4.1)."""
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
    """``clip(clip(x_adv, x0 - eps, x0 + eps), lo, hi)`` (SPEC 4.1)."""
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
