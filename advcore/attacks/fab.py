"""FAB and targeted FAB (FAB-T) for the L-inf, L2 and L1 threat models, JAX-native.

Reference: F. Croce and M. Hein, "Minimally distorted adversarial examples
with a fast adaptive boundary attack", ICML 2020 (arXiv:1907.02044); the
semantics follow ``fra31/auto-attack`` ``autoattack/fab_base.py`` /
``fab_pt.py`` / ``fab_projections.py`` (here ``fab_projections.py``).

One FAB iteration at the current point ``x1`` (clean point ``x0``), with
``||.||`` the threat model's norm and ``||.||_*`` its dual (L1 for L-inf, L2
for L2, L-inf for L1):

1. linearise the decision boundary: FAB-T uses ``g = z_t - z_y`` (one VJP for
   the difference); untargeted FAB uses, among ``g_j = z_j - z_y``, the one
   whose linearised boundary is closest (``|g_j| / ||grad g_j||_*``, a full
   Jacobian, i.e. one VJP per class);
2. ``d1``, ``d0``: minimal-norm, box-constrained steps that take ``x1`` and
   ``x0`` onto the hyperplane ``<w, z> = b`` (``fab_projections``);
3. ``x1 <- clip((x1 + eta d1)(1 - alpha) + (x0 + eta d0) alpha, 0, 1)``,
   ``alpha = clamp(||d1|| / (||d1|| + ||d0||), 0, alpha_max)``;
4. if ``x1`` is misclassified: keep it if it is the closest adversarial point
   so far, then backtrack ``x1 <- x0 + beta (x1 - x0)``.

Defaults: 100 iterations, alpha_max 0.1, eta 1.05, beta 0.9, 9 targets
(classes ranked 2..10 by clean logit). A point counts as broken only if the
returned point is misclassified and within ``eps`` (FAB minimises the norm;
``eps`` is the success threshold and the scale of the random restarts, which
start at ``x0 + 0.5 eps u / ||u||``: ``u ~ U[-1, 1]`` for L-inf, ``N(0, 1)``
for L2 and L1).

JAX form: fixed shapes, ``lax.fori_loop`` over iterations, ``lax.while_loop``
over (target, restart) runs that stops once no point is left to attack;
inactive points are computed but discarded.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp

from advcore.attacks import _validation as val
from advcore.attacks.apgd import as_active, check_common
from advcore.attacks.fab_projections import projection_l1, projection_l2, projection_linf
from advcore.attacks.norms import bcast, canonical_norm, flat_norm

__all__ = ["fab", "fab_targeted", "projection_l1", "projection_l2", "projection_linf"]

_PROJECTIONS = {"linf": projection_linf, "l2": projection_l2, "l1": projection_l1}
# The dual norm measures the distance to a linearised boundary.
_DUAL = {"linf": "l1", "l2": "l2", "l1": "linf"}

LogitsFn = Callable[..., jax.Array]

_NO_ADV = 1e10  # upstream's "no adversarial point found yet" norm


def _target_diff_grad(logits_fn: LogitsFn, x1: jax.Array, y: jax.Array,
                      t: jax.Array) -> Tuple[jax.Array, jax.Array]:
    """``(z_t - z_y)`` per example and its input gradient (one VJP)."""
    def diff(x_in):
        z = logits_fn(x_in)
        z_y = jnp.take_along_axis(z, y[:, None], axis=1)[:, 0]
        z_t = jnp.take_along_axis(z, t[:, None], axis=1)[:, 0]
        return z_t - z_y

    df, vjp = jax.vjp(diff, x1)
    (dg,) = vjp(jnp.ones_like(df))
    return df, dg


def _closest_diff_grad(logits_fn: LogitsFn, x1: jax.Array, y: jax.Array,
                       norm: str) -> Tuple[jax.Array, jax.Array]:
    """Untargeted FAB: the ``z_j - z_y`` (j != y) whose linearised boundary is
    closest in ``norm``, and its gradient (one VJP per class for the Jacobian)."""
    z, vjp = jax.vjp(logits_fn, x1)
    num_classes = z.shape[-1]
    eye = jnp.eye(num_classes, dtype=z.dtype)
    # jac[k] = d z_k / d x, shape (K, B, ...).
    jac = jax.vmap(lambda e: vjp(jnp.broadcast_to(e, z.shape))[0])(eye)
    jac = jnp.moveaxis(jac, 0, 1)  # (B, K, ...)
    batch = x1.shape[0]
    rows = jnp.arange(batch)
    df = z - z[rows, y][:, None]
    dg = jac - jac[rows, y][:, None]
    df = df.at[rows, y].set(_NO_ADV)
    dual = flat_norm(dg.reshape(batch * num_classes, -1), _DUAL[norm]).reshape(batch, num_classes)
    dist = jnp.abs(df) / (1e-12 + dual)
    ind = jnp.argmin(dist, axis=1)
    return df[rows, ind], dg[rows, ind]


def _single_run(
    logits_fn: LogitsFn, x: jax.Array, y: jax.Array, t: Optional[jax.Array],
    key: jax.Array, rand_start: jax.Array, *, eps: float, norm: str, num_iters: int,
    alpha_max: float, eta: float, beta: float, unroll: int,
) -> jax.Array:
    """Upstream ``attack_single_run`` for every point; returns the closest
    adversarial point found, or ``x`` where none was found."""
    batch = x.shape[0]
    flat = lambda v: v.reshape(batch, -1)  # noqa: E731
    x0 = flat(x)
    # res2 is 1e10 at the start of a run, so min(res2, eps) = eps (upstream).
    if norm == "linf":
        u = jax.random.uniform(key, x.shape, x.dtype, minval=-1.0, maxval=1.0)
        u_max = jnp.max(jnp.abs(flat(u)), axis=1)
        x_rand = x + 0.5 * eps * u / bcast(u_max, x)
    else:
        u = jax.random.normal(key, x.shape, x.dtype)
        # Upstream's operation order: eps * u / ||u|| * 0.5 (L2), / 2 (L1).
        x_rand = x + eps * u / bcast(flat_norm(u, norm), x) * 0.5
    x1 = jnp.where(rand_start, jnp.clip(x_rand, 0.0, 1.0), x)
    projection = _PROJECTIONS[norm]

    def body(_, c):
        x1, adv, res2 = c
        if t is None:
            df, dg = _closest_diff_grad(logits_fn, x1, y, norm)
        else:
            df, dg = _target_diff_grad(logits_fn, x1, y, t)
        w = flat(dg)
        x1f = flat(x1)
        b = -df + jnp.sum(w * x1f, axis=1)
        d3 = projection(jnp.concatenate([x1f, x0], 0), jnp.concatenate([w, w], 0),
                        jnp.concatenate([b, b], 0))
        d1, d2 = d3[:batch], d3[batch:]
        a0 = jnp.maximum(flat_norm(d3, norm), 1e-8)
        a1, a2 = a0[:batch], a0[batch:]
        alpha = jnp.clip(a1 / (a1 + a2), 0.0, alpha_max)[:, None]
        x1f = jnp.clip((x1f + eta * d1) * (1.0 - alpha) + (x0 + eta * d2) * alpha, 0.0, 1.0)
        x1 = x1f.reshape(x.shape)
        is_adv = jnp.argmax(logits_fn(x1), axis=-1) != y
        dist = flat_norm(x1f - x0, norm)
        better = is_adv & (dist < res2)
        adv = jnp.where(bcast(better, x), x1, adv)
        res2 = jnp.where(better, dist, res2)
        x1 = jnp.where(bcast(is_adv, x), x + (x1 - x) * beta, x1)
        return x1, adv, res2

    init = (x1, x, jnp.full((batch,), _NO_ADV, x.dtype))
    _, adv, res2 = jax.lax.fori_loop(0, num_iters, body, init, unroll=unroll)
    return jnp.where(bcast(res2 < _NO_ADV, x), adv, x)


def _validate(x, y, *, eps, norm, num_iters, restarts, alpha_max, eta, beta, unroll) -> str:
    check_common(x, y, eps)
    norm = canonical_norm(norm)
    val.check_int("num_iters", num_iters, min_value=1)
    val.check_int("restarts", restarts, min_value=1)
    val.check_number("alpha_max", alpha_max, min_value=0.0, max_value=1.0)
    val.check_number("eta", eta, min_value=0.0, strict=True)
    val.check_number("beta", beta, min_value=0.0, max_value=1.0)
    val.check_int("unroll", unroll, min_value=1)
    return norm


def _perturb(
    logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *, targeted: bool,
    eps: float, norm: str, num_iters: int, n_target_classes: int, alpha_max: float, eta: float,
    beta: float, restarts: int, active: Optional[jax.Array], unroll: int,
) -> Tuple[jax.Array, jax.Array]:
    """Upstream ``FABAttack.perturb``: runs on still-robust points only; a
    run's point counts if it is misclassified and within ``eps``."""
    active = as_active(active, x.shape[0])
    logits = logits_fn(x)
    num_classes = logits.shape[-1]
    if targeted and n_target_classes > num_classes - 1:
        raise ValueError(
            f"n_target_classes must be <= num_classes - 1 = {num_classes - 1}, "
            f"got {n_target_classes}")
    to_fool = (jnp.argmax(logits, axis=-1) == y) & active
    order = jnp.argsort(logits, axis=-1)
    n_runs = (n_target_classes if targeted else 1) * restarts

    def cond(c):
        r, acc, _ = c
        return (r < n_runs) & jnp.any(acc)

    def body(c):
        r, acc, adv = c
        restart = r % restarts
        t = None
        if targeted:
            rank = 2 + r // restarts
            t = jax.lax.dynamic_index_in_dim(order, num_classes - rank, axis=1, keepdims=False)
        adv_curr = _single_run(
            logits_fn, x, y, t, jax.random.fold_in(key, r), restart > 0, eps=eps, norm=norm,
            num_iters=num_iters, alpha_max=alpha_max, eta=eta, beta=beta, unroll=unroll)
        still_ok = jnp.argmax(logits_fn(adv_curr), axis=-1) == y
        too_far = flat_norm(adv_curr - x, norm) > eps
        broken = acc & ~(still_ok | too_far)
        return r + 1, acc & ~broken, jnp.where(bcast(broken, x), adv_curr, adv)

    _, acc, adv = jax.lax.while_loop(cond, body, (jnp.int32(0), to_fool, x))
    return jax.lax.stop_gradient(adv), jnp.where(active, acc, True)


def fab_targeted_with_flags(
    logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
    eps: float, norm: str = "linf", num_iters: int = 100, n_target_classes: int = 9,
    alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9, restarts: int = 1,
    active: Optional[jax.Array] = None, unroll: int = 1,
) -> Tuple[jax.Array, jax.Array]:
    """:func:`fab_targeted` that also returns the per-point "still robust" flags."""
    norm = _validate(x, y, eps=eps, norm=norm, num_iters=num_iters, restarts=restarts,
                     alpha_max=alpha_max, eta=eta, beta=beta, unroll=unroll)
    val.check_int("n_target_classes", n_target_classes, min_value=1)
    return _perturb(logits_fn, x, y, key, targeted=True, eps=eps, norm=norm,
                    num_iters=num_iters,
                    n_target_classes=n_target_classes, alpha_max=alpha_max, eta=eta,
                    beta=beta, restarts=restarts, active=active, unroll=unroll)


def fab_targeted(
    logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
    eps: float, norm: str = "linf", num_iters: int = 100, n_target_classes: int = 9,
    alpha_max: float = 0.1, eta: float = 1.05, beta: float = 0.9, restarts: int = 1,
    active: Optional[jax.Array] = None, unroll: int = 1,
) -> jax.Array:
    """Targeted FAB (FAB-T, Croce & Hein 2020), L-inf, L2 or L1.

    For each target rank ``j = 2 .. n_target_classes + 1`` (by clean logit)
    and restart, one FAB run on the points not broken yet; the first run whose
    output is misclassified and within ``eps`` sets the point's output.

    Args:
      logits_fn: NHWC float images in [0, 1] -> logits ``(B, K)``.
      x, y: clean images and int labels.
      key: PRNG key (only used by restarts after the first).
      eps: success radius and scale of random restarts.
      norm: ``"linf"`` (default), ``"l2"`` or ``"l1"``.
      num_iters: FAB iterations per run (100).
      n_target_classes: targets tried (9; needs ``<= K - 1``).
      alpha_max, eta, beta: FAB's step bias cap (0.1), overshoot (1.05) and
        backtracking factor (0.9).
      restarts: runs per target (1, as AutoAttack's FAB-T); restarts after
        the first start at a random point ``0.5 eps`` away (in ``norm``).
      active: boolean ``(B,)`` mask of points to attack (None: all).
      unroll: ``fori_loop`` unroll factor.

    Returns:
      ``x_adv`` (stop-gradient): a misclassified point within ``eps`` for
      broken points, ``x`` elsewhere.
    """
    adv, _ = fab_targeted_with_flags(
        logits_fn, x, y, key, eps=eps, norm=norm, num_iters=num_iters,
        n_target_classes=n_target_classes, alpha_max=alpha_max, eta=eta, beta=beta,
        restarts=restarts, active=active, unroll=unroll)
    return adv


def fab_with_flags(
    logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
    eps: float, norm: str = "linf", num_iters: int = 100, alpha_max: float = 0.1,
    eta: float = 1.05, beta: float = 0.9, restarts: int = 1,
    active: Optional[jax.Array] = None, unroll: int = 1,
) -> Tuple[jax.Array, jax.Array]:
    """:func:`fab` that also returns the per-point "still robust" flags."""
    norm = _validate(x, y, eps=eps, norm=norm, num_iters=num_iters, restarts=restarts,
                     alpha_max=alpha_max, eta=eta, beta=beta, unroll=unroll)
    return _perturb(logits_fn, x, y, key, targeted=False, eps=eps, norm=norm,
                    num_iters=num_iters,
                    n_target_classes=1, alpha_max=alpha_max, eta=eta, beta=beta,
                    restarts=restarts, active=active, unroll=unroll)


def fab(
    logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
    eps: float, norm: str = "linf", num_iters: int = 100, alpha_max: float = 0.1,
    eta: float = 1.05, beta: float = 0.9, restarts: int = 1,
    active: Optional[jax.Array] = None, unroll: int = 1,
) -> jax.Array:
    """Untargeted FAB (Croce & Hein 2020), L-inf / L2 / L1; AutoAttack 'plus' uses 5 restarts.

    Each iteration linearises the closest of the ``K - 1`` boundaries (a full
    input Jacobian: ``K`` VJPs). Arguments as in :func:`fab_targeted`.
    """
    adv, _ = fab_with_flags(
        logits_fn, x, y, key, eps=eps, norm=norm, num_iters=num_iters, alpha_max=alpha_max,
        eta=eta, beta=beta, restarts=restarts, active=active, unroll=unroll)
    return adv
