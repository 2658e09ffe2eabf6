"""The classification losses every part of the library shares.

Two shapes of one definition:

* **per example** (``nll``, ``kl``, ``mse``): shape ``(B,)``; attacks
  differentiate their sum, so every example gets its own gradient;
* **batch means** (``cross_entropy``, ``batch_kl``, ``elementwise_mse``):
  the training losses, reduced as the authors' PyTorch code reduces them.

The reductions matter for reproducing the papers' numbers:

* cross-entropy is the batch mean of the negative log-likelihood
  (PyTorch ``F.cross_entropy``);
* TRADES' KL is ``KLDivLoss(reduction='sum')(log_softmax(adv),
  softmax(ref)) / B``: the batch mean of per-example KL, with gradients
  through *both* arguments (TRADES and LBGAT never detach the reference in
  the outer loss);
* MSE is PyTorch's ``MSELoss()``: the mean over all ``B * C`` elements, so it
  is ``C`` times smaller than a per-example sum (LBGAT's code; the paper's
  Algorithm 1 writes a per-sample mean).

Every function computes in float32 whatever the logits' dtype (bf16 mode
keeps its losses in fp32), and is jit-, vmap- and grad-safe.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _as_f32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.float32)


def nll(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example cross-entropy ``-log softmax(z)_y``, shape ``(B,)`` (>= 0)."""
    log_probs = jax.nn.log_softmax(_as_f32(logits), axis=-1)
    labels = jnp.asarray(labels).astype(jnp.int32)
    return -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]


def kl(logits: jax.Array, reference_logits: jax.Array) -> jax.Array:
    """Per-example ``KL(softmax(reference) || softmax(logits))``, shape ``(B,)``.

    Terms with a reference probability of exactly 0 contribute 0 (PyTorch
    ``KLDivLoss``). Gradients flow through both arguments; an attack that
    wants a fixed reference stops its gradient itself.
    """
    log_p = jax.nn.log_softmax(_as_f32(reference_logits), axis=-1)
    log_q = jax.nn.log_softmax(_as_f32(logits), axis=-1)
    p = jnp.exp(log_p)
    return jnp.sum(jnp.where(p > 0, p * (log_p - log_q), 0.0), axis=-1)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Batch-mean cross-entropy of integer labels (PyTorch ``F.cross_entropy``)."""
    return jnp.mean(nll(logits, labels))


def batch_kl(reference_logits: jax.Array, logits: jax.Array) -> jax.Array:
    """TRADES' ``(1/B) sum_b KL(softmax(reference_b) || softmax(logits_b))``."""
    return jnp.mean(kl(logits, reference_logits))


def elementwise_mse(a: jax.Array, b: jax.Array) -> jax.Array:
    """PyTorch ``MSELoss()``: the mean over every element (divides by ``B * C``)."""
    return jnp.mean(jnp.square(_as_f32(a) - _as_f32(b)))
