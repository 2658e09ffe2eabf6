"""LBGAT-family outer losses on logits (SPEC 1.3 and 1.5).

Reductions follow the official PyTorch code, not the paper's Algorithm 1:

* MSE is the mean over **all B·C elements** (PyTorch ``MSELoss()``), so it is
  C times smaller than a per-sample sum.
* KL is ``KLDivLoss(reduction='sum') / B`` of (log-softmax of the adversarial
  logits, softmax of the reference logits): a batch mean of per-example KL.
* CE is the batch mean.

Nothing is detached: each term sends gradients to every network it touches,
exactly as in the official code.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

from lbgat_jax.methods import MethodSpec


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Batch-mean cross-entropy of integer labels."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    return -jnp.mean(picked)


def elementwise_mse(a: jax.Array, b: jax.Array) -> jax.Array:
    """PyTorch ``MSELoss()``: mean over every element (divides by B·C)."""
    return jnp.mean(jnp.square(a.astype(jnp.float32) - b.astype(jnp.float32)))


def batch_kl(reference_logits: jax.Array, logits: jax.Array) -> jax.Array:
    """(1/B)·Σ_b KL(σ(reference_b) ‖ σ(logits_b)), gradients through both."""
    ref_log_p = jax.nn.log_softmax(reference_logits.astype(jnp.float32), axis=-1)
    log_q = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    per_example = jnp.sum(jnp.exp(ref_log_p) * (ref_log_p - log_q), axis=-1)
    return jnp.mean(per_example)


def outer_loss(
    spec: MethodSpec,
    labels: jax.Array,
    adv_logits: jax.Array,
    clean_logits: Optional[jax.Array],
    teacher_logits: Optional[jax.Array],
    *,
    alpha: float,
    natural_ce_weight: float = 1.0,
    boundary_loss: str = "mse",
    extra_robust_ce: str = "none",
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The total loss and its named parts for one method.

    Args:
      spec: the method (see ``lbgat_jax.methods``).
      labels: integer labels ``(B,)``.
      adv_logits: M_r(x'), or M_r(x) for natural training.
      clean_logits: M_r(x) (train mode), or None when the method never needs it.
      teacher_logits: M_n(x), or None without a teacher.
      alpha: weight α of the TRADES-KL or ALP term.
      natural_ce_weight: β, the weight of CE(M_n(x), y) (fixed to 1 in the paper).
      boundary_loss: ``"mse"`` (default) or ``"kl"`` (Table 1 "(KL)" ablation:
        KL(σ(M_n(x)) ‖ σ(M_r(x')))).
      extra_robust_ce: Table 1 "w/ CE" ablation: ``"none"``, ``"clean"``
        (add CE(M_r(x), y)) or ``"adv"`` (add CE(M_r(x'), y)).
    """
    parts: dict[str, jax.Array] = {}
    if spec.boundary:
        if boundary_loss == "mse":
            parts["boundary_mse"] = elementwise_mse(adv_logits, teacher_logits)
        elif boundary_loss == "kl":
            parts["boundary_kl"] = batch_kl(teacher_logits, adv_logits)
        else:
            raise ValueError(f"boundary_loss must be 'mse' or 'kl', got {boundary_loss!r}")
    if spec.natural_ce:
        parts["natural_ce"] = natural_ce_weight * cross_entropy(teacher_logits, labels)
    if spec.trades_kl:
        parts["trades_kl"] = alpha * batch_kl(clean_logits, adv_logits)
    if spec.alp:
        parts["alp_mse"] = alpha * elementwise_mse(adv_logits, clean_logits)
    if spec.robust_ce_adv or extra_robust_ce == "adv":
        parts["robust_ce_adv"] = cross_entropy(adv_logits, labels)
    if spec.robust_ce_clean or extra_robust_ce == "clean":
        logits = adv_logits if not spec.adversarial else clean_logits
        parts["robust_ce_clean"] = cross_entropy(logits, labels)
    total = sum(parts.values(), jnp.zeros((), jnp.float32))
    return total, parts
