"""The LBGAT family and its baselines as data: which models, attack and loss terms.

Each method is described by a ``MethodSpec`` (docs/lbgat.md#methods). The train step reads
the spec and never branches on the method name, so adding a method means
adding one entry here.

Loss terms (all batch means, element-mean MSE as in the official code):

* ``boundary``: MSE(M_r(x'), M_n(x)) -- or KL(σ(M_n(x)) ‖ σ(M_r(x'))) in the
  "KL instead of MSE" ablation. Gradients reach *both* networks when the
  natural model is learnable (nothing is detached in the official code).
* ``natural_ce``: β·CE(M_n(x), y); reaches the natural model only.
* ``trades_kl``: α·KL(σ(M_r(x)) ‖ σ(M_r(x'))); reaches the robust model through
  both arguments (the target branch is not stop-gradient, as in TRADES).
* ``alp``: α·MSE(M_r(x'), M_r(x)) (adversarial logit pairing).
* ``robust_ce_adv`` / ``robust_ce_clean``: CE(M_r(x'), y) / CE(M_r(x), y).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class MethodSpec:
    """What one training method computes.

    Attributes:
      attack_loss: inner maximisation objective, ``"ce"`` (noisy BIM, Eq. 1)
        or ``"kl"`` (TRADES' label-free KL, the official LBGAT code).
      teacher: ``"none"``, ``"learnable"`` (trained jointly, LBGAT) or
        ``"frozen"`` (a pre-trained ensemble, BGAT).
      boundary: uses the boundary-guided term MSE(M_r(x'), M_n(x)).
      natural_ce: uses β·CE(M_n(x), y) (only with a learnable teacher).
      trades_kl: uses α·KL(σ(M_r(x)) ‖ σ(M_r(x'))).
      alp: uses α·MSE(M_r(x'), M_r(x)).
      robust_ce_adv: uses CE(M_r(x'), y).
      robust_ce_clean: uses CE(M_r(x), y).
      clean_student_pass: runs M_r(x) in train mode even when no term needs it
        (the official code always does; it updates BN running statistics).
        ``config.loss.skip_unused_clean_pass`` turns it off.
      adversarial: crafts adversarial examples at all (False for natural training).
      default_alpha: α when the config leaves it at -1.
    """

    attack_loss: str
    teacher: str = "none"
    boundary: bool = False
    natural_ce: bool = False
    trades_kl: bool = False
    alp: bool = False
    robust_ce_adv: bool = False
    robust_ce_clean: bool = False
    clean_student_pass: bool = False
    adversarial: bool = True
    default_alpha: float = 0.0


METHODS: dict[str, MethodSpec] = {
    # Natural (standard) training: the frozen BGAT teacher and the
    # black-box transfer source are trained with this.
    "natural": MethodSpec(attack_loss="ce", robust_ce_clean=True, adversarial=False),
    # Madry et al.: CE on PGD examples (docs/lbgat.md#vanilla-at).
    "vanilla_at": MethodSpec(attack_loss="ce", robust_ce_adv=True),
    # Kannan et al.: CE(M(x'), y) + α·MSE(M(x'), M(x)), α = 1 (docs/lbgat.md#alp).
    "alp": MethodSpec(attack_loss="ce", robust_ce_adv=True, alp=True, default_alpha=1.0),
    # Zhang et al.: CE(M(x), y) + α·KL, KL attack (docs/lbgat.md#trades).
    "trades": MethodSpec(
        attack_loss="kl", robust_ce_clean=True, trades_kl=True, default_alpha=6.0
    ),
    # BGAT: frozen natural ensemble, MSE only, CE attack (docs/lbgat.md#bgat).
    "bgat": MethodSpec(attack_loss="ce", teacher="frozen", boundary=True),
    # LBGAT, Eq. 3: MSE + β·CE(M_n(x), y), CE attack (docs/lbgat.md#lbgat).
    "lbgat": MethodSpec(
        attack_loss="ce", teacher="learnable", boundary=True, natural_ce=True,
        clean_student_pass=True,
    ),
    # LBGAT+TRADES: exactly the official code (docs/lbgat.md#lbgat-trades).
    "lbgat_trades": MethodSpec(
        attack_loss="kl",
        teacher="learnable",
        boundary=True,
        natural_ce=True,
        trades_kl=True,
        clean_student_pass=True,
        default_alpha=0.0,
    ),
    # LBGAT+ALP, Eq. 4 with a learnable teacher (docs/lbgat.md#lbgat-alp).
    "lbgat_alp": MethodSpec(
        attack_loss="ce",
        teacher="learnable",
        boundary=True,
        natural_ce=True,
        alp=True,
        default_alpha=1.0,
    ),
    # BGAT+TRADES: frozen teacher, no CE (docs/lbgat.md#bgat-trades).
    "bgat_trades": MethodSpec(
        attack_loss="kl",
        teacher="frozen",
        boundary=True,
        trades_kl=True,
        clean_student_pass=True,
        default_alpha=0.0,
    ),
    # BGAT+ALP (docs/lbgat.md#lbgat-alp).
    "bgat_alp": MethodSpec(
        attack_loss="ce", teacher="frozen", boundary=True, alp=True, default_alpha=1.0
    ),
}


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ValueError(
            f"method must be one of {sorted(METHODS)}, got {name!r}"
        )
    return METHODS[name]
