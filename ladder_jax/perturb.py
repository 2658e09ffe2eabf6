"""Boundary-guided latent perturbation: z' = z + eps * beta(z) * d (SPEC 3.5).

* ``d`` is the pair's SVM normal w (from source y toward target t);
  ``cavRandom`` adds N(0, 0.01^2) per image, ``random`` replaces it by
  N(0, 0.1^2) per image; beta always comes from the pair's attention SVM.
* Adaptive mode (``-1`` in ``eps_list``) searches eps per image exactly like
  ``img_trans.compute_eps_generate_img``: starting at ``eps_init``, stop when
  the label predicted for G(z') differs from the clean prediction, when
  eps >= ``eps_max``, or after ``ite_max_eps`` increases; otherwise add
  ``eps_step`` (below 1) or ``10 * eps_step`` (at 1 or above).

All functions are pure and batched over a leading image axis.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ladder_jax import attention_svm

DIRECTION_VARIANTS = ("ladder", "cavRandom", "random", "ladder_gan")


def perturb_latent(z: jax.Array, beta: jax.Array, d: jax.Array, eps: jax.Array) -> jax.Array:
    """Eq. 3: ``z + eps * (beta * d)``; ``eps`` is a scalar or (B,)."""
    eps = jnp.asarray(eps, z.dtype)
    if eps.ndim == 1:
        eps = eps[:, None]
    return z + eps * (beta * d)


def directions(
    variant: str,
    w: jax.Array,
    key: jax.Array,
    batch: int,
    cav_random_std: float = 0.01,
    random_std: float = 0.1,
) -> jax.Array:
    """Per-image directions (B, dim) for one pair's normal ``w`` (dim,)."""
    if variant not in DIRECTION_VARIANTS:
        raise ValueError(f"variant must be one of {DIRECTION_VARIANTS}, got {variant!r}")
    shape = (batch, w.shape[-1])
    if variant in ("ladder", "ladder_gan"):
        return jnp.broadcast_to(w, shape)
    noise = jax.random.normal(key, shape, w.dtype)
    if variant == "cavRandom":
        return w + cav_random_std * noise
    return random_std * noise


def perturb_for_pair(
    params: attention_svm.SVMParams,
    z: jax.Array,
    d: jax.Array,
    eps: jax.Array,
    use_exp: bool,
) -> jax.Array:
    """beta from the image's own latent, then Eq. 3 (beta is not differentiated)."""
    beta = jax.lax.stop_gradient(attention_svm.attention(params, z, use_exp))
    return perturb_latent(z, beta, d, eps)


def adaptive_eps(
    predict_fn: Callable[[jax.Array], jax.Array],
    z: jax.Array,
    beta_d: jax.Array,
    clean_pred: jax.Array,
    *,
    eps_init: float,
    eps_step: float,
    eps_max: float,
    ite_max_eps: int,
) -> jax.Array:
    """Per-image eps of the code's adaptive search, vectorised with masks.

    ``predict_fn(z') -> labels`` decodes and classifies; ``beta_d`` is the
    (B, dim) product beta * d. Images whose search has stopped keep their eps
    while the others continue, so the loop runs at most ``ite_max_eps + 1``
    decode passes for the whole batch.
    """
    batch = z.shape[0]
    eps0 = jnp.full((batch,), eps_init, z.dtype)
    active0 = jnp.ones((batch,), bool)

    def cond(carry):
        _, active, it = carry
        return jnp.any(active) & (it <= ite_max_eps)

    def body(carry):
        eps, active, it = carry
        pred = predict_fn(z + eps[:, None] * beta_d)
        # The code stops when the label changed, eps reached eps_max, or the
        # iteration budget is spent (``tmp_ite_max_eps == 0``).
        stop = (pred != clean_pred) | (eps >= eps_max) | (it >= ite_max_eps)
        still = active & ~stop
        step = jnp.where(eps >= 1.0, 10.0 * eps_step, eps_step)
        eps = jnp.where(still, eps + step, eps)
        return eps, still, it + 1

    eps, _, _ = jax.lax.while_loop(cond, body, (eps0, active0, jnp.int32(0)))
    return eps
