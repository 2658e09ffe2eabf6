"""Per-example attack losses (docs/attacks.md).

Every function maps logits of shape ``(B, K)`` (and int labels of shape
``(B,)``) to a per-example loss of shape ``(B,)``. Sign convention: **larger
means "more adversarial" for the untargeted attack**, i.e. an attack *ascends*
these losses (``pgd`` differentiates ``loss.sum()`` and steps along the
gradient). A targeted attack descends the same loss evaluated at the target
label. This is the opposite of DeepMind's ``adversarial_robustness`` losses,
which are written to be minimised.

The functions only use ``jnp`` ops on the trailing class axis, so they are
jit-, vmap- and grad-safe. Class-count requirements are checked on static
shapes and raise ``ValueError``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from advcore import losses as shared

# AutoAttack's DLR denominator guard (upstream ``1e-12``).
_DLR_EPS = 1e-12


def _check_logits(logits: jax.Array, min_classes: int, name: str) -> None:
    if logits.ndim < 1:
        raise ValueError(f"{name}: logits must have a class axis, got shape {logits.shape}")
    if logits.shape[-1] < min_classes:
        raise ValueError(
            f"{name} needs at least {min_classes} classes, got logits with "
            f"{logits.shape[-1]} classes (shape {logits.shape})"
        )


def _take(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``logits[..., labels]`` per example."""
    labels = jnp.asarray(labels).astype(jnp.int32)
    return jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]


def _max_other(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """``max_{j != label} z_j`` per example."""
    num_classes = logits.shape[-1]
    is_label = jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_)
    return jnp.max(jnp.where(is_label, -jnp.inf, logits), axis=-1)


def ce(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Cross-entropy ``-log softmax(z)_y`` per example (>= 0): ``advcore.losses.nll``.

    Ascent lowers the probability of class ``y``: untargeted PGD/FGSM. For a
    targeted attack ``y`` is the target and the attack descends it.
    """
    _check_logits(logits, 2, "ce")
    return shared.nll(logits, y)


def cw_margin(logits: jax.Array, y: jax.Array, kappa: float = 0.0) -> jax.Array:
    """Carlini-Wagner margin loss ``min(max_{j != y} z_j - z_y, kappa)`` per example.

    This is ``-f`` for CW's objective ``f = max(z_y - max_{j != y} z_j, -kappa)``,
    i.e. CW's margin clamped below at ``-kappa``, written with the ascent sign:
    the loss is the margin ``m = max_{j != y} z_j - z_y`` (positive exactly when
    the example is misclassified) and it stops growing once the wrong class
    leads by ``kappa``. Ascent increases misclassification; correctly
    classified points (``m < 0 <= kappa``) always receive a gradient.

    ``kappa = 0`` (the default, and our CW^20 setting, docs/attacks.md#cw-margin) stops pushing
    as soon as a point is misclassified. The ``-ReLU(z_y - max_{j != y} z_j + 50)``
    variant (docs/attacks.md#cw-margin) equals ``cw_margin(..., kappa=50) - 50``: same gradient.
    For a targeted attack ``y`` is the target and the attack descends the loss.
    """
    _check_logits(logits, 2, "cw_margin")
    margin = _max_other(logits, y) - _take(logits, y)
    return jnp.minimum(margin, kappa)


def cw_targeted_margin(logits: jax.Array, t: jax.Array, kappa: float = 0.0) -> jax.Array:
    """Targeted CW margin ``min(z_t - max_{j != t} z_j, kappa)`` per example (ascent form).

    ``-f`` for CW's targeted objective ``f = max(max_{j != t} z_j - z_t, -kappa)``:
    positive exactly when the target ``t`` is the prediction; ascent pushes
    towards ``t`` until it leads by ``kappa``. Used by ``pgd(targeted=True,
    loss="cw")`` and ``cw_l2``.
    """
    _check_logits(logits, 2, "cw_targeted_margin")
    margin = _take(logits, t) - _max_other(logits, t)
    return jnp.minimum(margin, kappa)


def kl(logits_adv: jax.Array, logits_ref: jax.Array) -> jax.Array:
    """TRADES KL divergence ``KL(softmax(ref) || softmax(adv))`` per example (>= 0).

    ``logits_ref`` are the clean logits (the caller stops their gradient);
    ascent on ``logits_adv`` pushes the adversarial prediction away from the
    clean one. ``advcore.losses.kl`` with the attack's argument checks.
    """
    _check_logits(logits_adv, 2, "kl")
    if logits_adv.shape != logits_ref.shape:
        raise ValueError(
            f"kl: logits_adv and logits_ref must have the same shape, got "
            f"{logits_adv.shape} and {logits_ref.shape}"
        )
    return shared.kl(logits_adv, logits_ref)


def dlr(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Difference of Logits Ratio (Croce & Hein 2020), docs/attacks.md#apgd.

    ``-(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3 + 1e-12)`` with ``pi`` sorting
    the logits in descending order. Shift- and scale-invariant; positive when
    misclassified; ascent increases misclassification. Needs >= 3 classes.
    """
    _check_logits(logits, 3, "dlr")
    z_sorted = jnp.sort(logits, axis=-1)
    margin = _take(logits, y) - _max_other(logits, y)
    return -margin / (z_sorted[..., -1] - z_sorted[..., -3] + _DLR_EPS)


def targeted_dlr(logits: jax.Array, y: jax.Array, t: jax.Array) -> jax.Array:
    """Targeted DLR (Croce & Hein 2020), docs/attacks.md#apgd.

    ``-(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12)``. Ascent moves
    the prediction from the true class ``y`` towards the target ``t`` (APGD-T
    maximises it). Needs >= 4 classes (``ValueError`` otherwise).
    """
    _check_logits(logits, 4, "targeted_dlr")
    z_sorted = jnp.sort(logits, axis=-1)
    denom = z_sorted[..., -1] - 0.5 * (z_sorted[..., -3] + z_sorted[..., -4]) + _DLR_EPS
    return -(_take(logits, y) - _take(logits, t)) / denom
