"""Boundary-guided latent perturbation: z' = z + eps * step (LADDER Eq. 3).

* Directions (``directions``): ``ladder`` pushes along the pair's boundary
  normal d = w / sigma (``attention_svm.boundary_normal``); ``cavRandom``
  adds N(0, 0.01^2) to w in the SVM's fit space before mapping it back (the
  code perturbs the SVM's weight); ``random`` replaces d by N(0, 0.1^2) in
  latent space. beta always comes from the pair's attention SVM.
* Units of eps (``step_direction``, ``generate.eps_unit``):
  ``'latent_norm'`` (default) normalises beta * d to length r, the mean norm
  of the training latents, so ||z' - z|| = eps * r: eps = 0.2 moves a latent
  by 20 % of a typical latent's norm on every dataset and for every variant;
  ``'raw'`` is the paper's z + eps * beta * d, whose length depends on the
  SVM's scale (the paper's eps values mean what they meant there only for
  the authors' fits, ``svm.latent_scaling='pixels255'`` on MNIST/SVHN).
* Adaptive mode (``-1`` in ``eps_list``) searches eps per image exactly like
  ``img_trans.compute_eps_generate_img``: starting at ``eps_init``, stop when
  the label predicted for G(z') differs from the clean prediction, when
  eps >= ``eps_max``, or after ``ite_max_eps`` increases; otherwise add
  ``eps_step`` (below 1) or ``10 * eps_step`` (at 1 or above). The search
  runs in ``eps_unit`` units.

All functions are pure and batched over a leading image axis.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ladder_jax import attention_svm

DIRECTION_VARIANTS = ("ladder", "cavRandom", "random", "ladder_gan")
EPS_UNITS = ("latent_norm", "raw")


def variant_directions(
    variant: str,
    svm: attention_svm.LatentSVM,
    noise: jax.Array,
    cav_random_std: float = 0.01,
    random_std: float = 0.1,
) -> jax.Array:
    """Per-image directions d (B, dim) in latent space, from standard normal ``noise`` (B, dim)."""
    if variant not in DIRECTION_VARIANTS:
        raise ValueError(f"variant must be one of {DIRECTION_VARIANTS}, got {variant!r}")
    if variant in ("ladder", "ladder_gan"):
        return jnp.broadcast_to(attention_svm.boundary_normal(svm), noise.shape)
    if variant == "cavRandom":
        return (svm.params.w + cav_random_std * noise) / svm.scale.sigma
    return random_std * noise


def directions(
    variant: str,
    svm: attention_svm.LatentSVM,
    key: jax.Array,
    batch: int,
    cav_random_std: float = 0.01,
    random_std: float = 0.1,
) -> jax.Array:
    """``variant_directions`` for ``batch`` images with noise drawn from ``key``."""
    noise = jax.random.normal(key, (batch, svm.params.w.shape[-1]), svm.params.w.dtype)
    return variant_directions(variant, svm, noise, cav_random_std, random_std)


def step_direction(beta_d: jax.Array, eps_unit: str, latent_norm: jax.Array | float
                   ) -> jax.Array:
    """The vector eps multiplies: beta * d ('raw') or r * (beta * d) / ||beta * d|| ('latent_norm').

    ``latent_norm`` is r. A zero beta * d stays zero.
    """
    if eps_unit not in EPS_UNITS:
        raise ValueError(f"eps_unit must be one of {EPS_UNITS}, got {eps_unit!r}")
    if eps_unit == "raw":
        return beta_d
    norm = jnp.linalg.norm(beta_d, axis=-1, keepdims=True)
    return beta_d * (jnp.asarray(latent_norm, beta_d.dtype) / jnp.maximum(norm, 1e-30))


def perturb_latent(z: jax.Array, step: jax.Array, eps: jax.Array) -> jax.Array:
    """Eq. 3: ``z + eps * step``; ``eps`` is a scalar or (B,)."""
    eps = jnp.asarray(eps, z.dtype)
    if eps.ndim == 1:
        eps = eps[:, None]
    return z + eps * step


def perturb_for_pair(
    svm: attention_svm.LatentSVM,
    z: jax.Array,
    d: jax.Array,
    eps: jax.Array,
    use_exp: bool,
    eps_unit: str = "raw",
    latent_norm: float = 1.0,
) -> jax.Array:
    """beta from the image's own latent, then Eq. 3 (beta is not differentiated)."""
    beta = jax.lax.stop_gradient(attention_svm.latent_attention(svm, z, use_exp))
    return perturb_latent(z, step_direction(beta * d, eps_unit, latent_norm), eps)


def adaptive_eps(
    predict_fn: Callable[[jax.Array], jax.Array],
    z: jax.Array,
    step: jax.Array,
    clean_pred: jax.Array,
    *,
    eps_init: float,
    eps_step: float,
    eps_max: float,
    ite_max_eps: int,
) -> jax.Array:
    """Per-image eps of the code's adaptive search, vectorised with masks.

    ``predict_fn(z') -> labels`` decodes and classifies; ``step`` is the
    (B, dim) vector eps multiplies (``step_direction``). Images whose search
    has stopped keep their eps while the others continue, so the loop runs
    at most ``ite_max_eps + 1`` decode passes for the whole batch.
    """
    batch = z.shape[0]
    eps0 = jnp.full((batch,), eps_init, z.dtype)
    active0 = jnp.ones((batch,), bool)

    def cond(carry):
        _, active, it = carry
        return jnp.any(active) & (it <= ite_max_eps)

    def body(carry):
        eps, active, it = carry
        pred = predict_fn(z + eps[:, None] * step)
        # The code stops when the label changed, eps reached eps_max, or the
        # iteration budget is spent (``tmp_ite_max_eps == 0``).
        stop = (pred != clean_pred) | (eps >= eps_max) | (it >= ite_max_eps)
        still = active & ~stop
        inc = jnp.where(eps >= 1.0, 10.0 * eps_step, eps_step)
        eps = jnp.where(still, eps + inc, eps)
        return eps, still, it + 1

    eps, _, _ = jax.lax.while_loop(cond, body, (eps0, active0, jnp.int32(0)))
    return eps
