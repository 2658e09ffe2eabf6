"""Classification losses of LADDER fine-tuning: Eq. 6 and TRADES+LADDER (SPEC 3.7, 3.8).

Every loss takes *class logits* of shape (B, K). A binary single-logit head
(CelebA, BCE-with-logits in the code) is mapped to the two-class logits
``[0, l]`` by ``as_class_logits``: softmax CE over ``[0, l]`` with label y is
exactly BCE-with-logits(l, y), and the softmax KL over ``[0, l]`` is the
Bernoulli KL, so one code path serves both heads.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def as_class_logits(logits: jax.Array, head: str) -> jax.Array:
    """(B, K) class logits; a binary (B, 1) or (B,) logit l becomes [0, l]."""
    if head == "softmax":
        return logits
    if head != "binary":
        raise ValueError(f"head must be 'softmax' or 'binary', got {head!r}")
    l = logits.reshape(logits.shape[0])
    return jnp.stack([jnp.zeros_like(l), l], axis=-1)


def decision_logits(logits: jax.Array, head: str, legacy_threshold: bool = False) -> jax.Array:
    """Logits whose argmax is the model's *prediction* (what accuracy uses).

    For the binary head the prediction is ``l >= 0``, or the CelebA code's
    ``l >= 0.5`` under ``legacy_threshold`` (SPEC 2.3): ``[thr, l]`` has argmax
    1 iff l > thr (ties have measure zero). Attacks and evaluation call the
    model through this so that "correct" means the same thing everywhere.
    """
    if head == "softmax":
        return logits
    l = logits.reshape(logits.shape[0])
    thr = 0.5 if legacy_threshold else 0.0
    return jnp.stack([jnp.full_like(l, thr), l], axis=-1)


def predict(logits: jax.Array, head: str, legacy_threshold: bool = False) -> jax.Array:
    """Predicted labels, int32 (B,)."""
    return jnp.argmax(decision_logits(logits, head, legacy_threshold), axis=-1).astype(jnp.int32)


def cross_entropy(class_logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Batch-mean CE (== NLL of log-softmax, the MNIST code's loss)."""
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(class_logits, labels))


def kl_divergence(clean_logits: jax.Array, adv_logits: jax.Array) -> jax.Array:
    """TRADES' KL(softmax(clean) || softmax(adv)), summed over classes, batch mean.

    TRADES computes ``KLDivLoss(size_average=False)(log_softmax(adv),
    softmax(clean)) / batch_size``; the clean distribution is *not* detached
    in the outer loss.
    """
    p_log = jax.nn.log_softmax(clean_logits, axis=-1)
    q_log = jax.nn.log_softmax(adv_logits, axis=-1)
    return jnp.mean(jnp.sum(jnp.exp(p_log) * (p_log - q_log), axis=-1))


def eq6_loss(
    clean_logits: jax.Array, gen_logits: jax.Array, labels: jax.Array, alpha: float = 0.5
) -> jax.Array:
    """LADDER Eq. 6: ``alpha * CE(f(x), y) + (1 - alpha) * CE(f(x_hat), y)``.

    ``y`` is the *source* label of the pair; x_hat is used whether or not it
    fools f (SPEC 3.5, 3.9 f).
    """
    return alpha * cross_entropy(clean_logits, labels) + (1.0 - alpha) * cross_entropy(
        gen_logits, labels
    )


def trades_ladder_loss(
    clean_logits: jax.Array, gen_logits: jax.Array, labels: jax.Array, beta: float
) -> jax.Array:
    """TRADES+LADDER, SPEC 3.8's reading (``trades_mode='kl_pairs'``).

    ``CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x_hat))`` with x_hat the
    LADDER example paired with x (no online attack).
    """
    return cross_entropy(clean_logits, labels) + beta * kl_divergence(clean_logits, gen_logits)


def trades_pgd_plus_ladder_loss(
    clean_logits: jax.Array,
    pgd_logits: jax.Array,
    gen_logits: jax.Array,
    labels: jax.Array,
    beta: float,
    alpha: float = 0.5,
) -> jax.Array:
    """The alternative reading (``trades_mode='pgd_kl_plus_ladder'``, [A]).

    TRADES with its own PGD-KL example x' plus the LADDER CE term, weighted
    like Eq. 6: ``alpha * CE(f(x), y) + (1 - alpha) * CE(f(x_hat), y)
    + beta * KL(f(x) || f(x'))``.
    """
    return eq6_loss(clean_logits, gen_logits, labels, alpha) + beta * kl_divergence(
        clean_logits, pgd_logits
    )
