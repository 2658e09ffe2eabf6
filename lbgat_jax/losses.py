"""LBGAT-family outer losses as a function of the step's logits (docs/lbgat.md).

The train step runs its forward passes and collects their logits in a dict:

* ``"adv"``: M_r(x'), the robust model on the adversarial batch (M(x) for
  natural training, which has no adversarial batch);
* ``"clean"``: M_r(x), when a term needs it;
* ``"natural"``: M_n(x), the natural model (learnable or frozen), when the
  method has one.

``outer_loss`` turns that dict into the total and its named parts. The
reductions are the official code's (``advcore.losses``): element-mean MSE,
batch-mean KL and CE. Nothing is detached: each term sends gradients to every
network it touches, exactly as in the official code.
"""

from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

from advcore.losses import batch_kl, cross_entropy, elementwise_mse
from lbgat_jax.methods import MethodSpec


def outer_loss(
    spec: MethodSpec,
    labels: jax.Array,
    logits: Mapping[str, jax.Array],
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
      logits: ``{"adv", "clean", "natural"}`` logits (module docstring); only
        the entries the method's terms read must be present.
      alpha: weight α of the TRADES-KL or ALP term.
      natural_ce_weight: β, the weight of CE(M_n(x), y) (fixed to 1 in the paper).
      boundary_loss: ``"mse"`` (default) or ``"kl"`` (Table 1 "(KL)" ablation:
        KL(σ(M_n(x)) ‖ σ(M_r(x')))).
      extra_robust_ce: Table 1 "w/ CE" ablation: ``"none"``, ``"clean"``
        (add CE(M_r(x), y)) or ``"adv"`` (add CE(M_r(x'), y)).
    """
    adv = logits["adv"]
    parts: dict[str, jax.Array] = {}
    if spec.boundary:
        if boundary_loss == "mse":
            parts["boundary_mse"] = elementwise_mse(adv, logits["natural"])
        elif boundary_loss == "kl":
            parts["boundary_kl"] = batch_kl(logits["natural"], adv)
        else:
            raise ValueError(f"boundary_loss must be 'mse' or 'kl', got {boundary_loss!r}")
    if spec.natural_ce:
        parts["natural_ce"] = natural_ce_weight * cross_entropy(logits["natural"], labels)
    if spec.trades_kl:
        parts["trades_kl"] = alpha * batch_kl(logits["clean"], adv)
    if spec.alp:
        parts["alp_mse"] = alpha * elementwise_mse(adv, logits["clean"])
    if spec.robust_ce_adv or extra_robust_ce == "adv":
        parts["robust_ce_adv"] = cross_entropy(adv, labels)
    if spec.robust_ce_clean or extra_robust_ce == "clean":
        # Natural training has no adversarial batch: its "adv" pass is M(x).
        parts["robust_ce_clean"] = cross_entropy(
            logits["clean"] if spec.adversarial else adv, labels)
    total = sum(parts.values(), jnp.zeros((), jnp.float32))
    return total, parts
