"""LADDER fine-tuning losses: Eq. 6 and TRADES+LADDER, built on ``advcore.losses``.

Every loss takes *class logits* of shape (B, K). A binary single-logit head
(CelebA, BCE-with-logits in the code) is mapped to the two-class logits
``[0, l]`` by ``as_class_logits``: softmax CE over ``[0, l]`` with label y is
exactly BCE-with-logits(l, y), and the softmax KL over ``[0, l]`` is the
Bernoulli KL, so one code path serves both heads. Cross-entropy and TRADES'
KL are the library's (``advcore.losses``: batch means, the reference not
detached).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from advcore.losses import batch_kl, cross_entropy


def as_class_logits(logits: jax.Array, head: str) -> jax.Array:
    """(B, K) class logits; a binary (B, 1) or (B,) logit l becomes [0, l]."""
    if head == "softmax":
        return logits
    if head != "binary":
        raise ValueError(f"head must be 'softmax' or 'binary', got {head!r}")
    l = logits.reshape(logits.shape[0])
    return jnp.stack([jnp.zeros_like(l), l], axis=-1)


def eq6_loss(
    clean_logits: jax.Array, gen_logits: jax.Array, labels: jax.Array, alpha: float = 0.5
) -> jax.Array:
    """LADDER Eq. 6: ``alpha * CE(f(x), y) + (1 - alpha) * CE(f(x_hat), y)``.

    ``y`` is the *source* label of the pair; x_hat is used whether or not it
    fools f (as the authors' code does).
    """
    return alpha * cross_entropy(clean_logits, labels) + (1.0 - alpha) * cross_entropy(
        gen_logits, labels
    )


def trades_ladder_loss(
    clean_logits: jax.Array, gen_logits: jax.Array, labels: jax.Array, beta: float
) -> jax.Array:
    """TRADES+LADDER (``trades_mode='kl_pairs'``, docs/ladder.md).

    ``CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x_hat))`` with x_hat the
    LADDER example paired with x (no online attack).
    """
    return cross_entropy(clean_logits, labels) + beta * batch_kl(clean_logits, gen_logits)


def trades_pgd_plus_ladder_loss(
    clean_logits: jax.Array,
    pgd_logits: jax.Array,
    gen_logits: jax.Array,
    labels: jax.Array,
    beta: float,
    alpha: float = 0.5,
) -> jax.Array:
    """The alternative reading (``trades_mode='pgd_kl_plus_ladder'``).

    TRADES with its own PGD-KL example x' plus the LADDER CE term, weighted
    like Eq. 6: ``alpha * CE(f(x), y) + (1 - alpha) * CE(f(x_hat), y)
    + beta * KL(f(x) || f(x'))``.
    """
    return eq6_loss(clean_logits, gen_logits, labels, alpha) + beta * batch_kl(
        clean_logits, pgd_logits
    )
