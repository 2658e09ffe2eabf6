"""Auto-PGD (APGD) and targeted APGD (APGD-T), JAX-native (docs/attacks.md#apgd).

Reference: F. Croce and M. Hein, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks", ICML 2020
(arXiv:2003.01690); semantics follow ``fra31/auto-attack``
``autoattack/autopgd_base.py`` (``APGDAttack`` / ``APGDAttack_targeted``) for
the L-inf, L2 and L1 threat models (L1: Croce and Hein, "Mind the box:
l1-APGD for sparse adversarial attacks on image classifiers", ICML 2021).

Algorithm per run for L-inf / L2 (defaults: 100 iterations, rho 0.75,
eta_0 = 2 eps):

* start ``x0 = clip(x + eps * u / ||u||)`` (``u ~ U[-1, 1]`` for L-inf,
  ``N(0, 1)`` for L2), clipped to [0, 1];
* ``z = P(x_k + eta * dir(g_k))``, ``x_{k+1} = P(x_k + a (z - x_k) + (1 - a)
  (x_k - x_{k-1}))`` with ``a = 1`` at ``k = 0`` and 0.75 afterwards; ``P``
  projects onto the eps-ball, then clips to [0, 1];
* per-point best loss, best point ``x_max`` and its gradient are tracked;
* at the checkpoints of :func:`apgd_checkpoints` the step size of a point is
  halved and the point restarts from ``x_max`` (with its gradient) when (i)
  the loss increased in at most ``rho`` of the window's steps or (ii) the step
  was not halved at the previous checkpoint and the best loss did not improve
  since then;
* the returned point is the *last misclassified iterate* (upstream
  ``x_best_adv``); points never misclassified are returned unchanged (as
  upstream's ``perturb``), or, with ``best_loss=True``, the highest-loss point.

L1 (:func:`_single_run_l1`): start ``x + n`` with ``n ~ N(0, I)`` corrected
onto the L1-ball-and-box intersection (``norms.l1_box_projection``, the
reference's ``L1_projection``); step ``eta_0 = eps``; each step moves by
``eta`` in L1, spread evenly over the signs of the largest-magnitude
gradient entries (a top-k fraction, initially 0.2), then projects; no
momentum. Every ``max(int(0.04 n), 1)`` iterations the top-k fraction
becomes ``||x_max - x||_0 / D / 1.5``; where that sparsity dropped below 0.95
of its previous value the step is reset to ``eps`` and the point restarts
from ``x_max``, elsewhere the step is divided by 1.5 (not below
``eps / 10``). With ``use_largereps`` (AutoAttack 'standard' for L1) each run
is three runs at radii ``3 eps, 2 eps, eps`` (30 + 30 + 40 of 100
iterations), each started from the previous one's best point projected onto
its smaller ball (upstream ``decr_eps_pgd``); each of them places its
checkpoints by its own length, so every iteration is a checkpoint
(``max(int(0.04 * 30), 1) = 1``).

JAX form: every run is one ``lax.fori_loop`` over fixed-shape arrays with
per-example ``jnp.where`` updates; points that upstream would not attack
(``active`` False, clean-misclassified, or already broken by an earlier
restart / target) are computed but discarded, so shapes never change and the
whole attack is jit-able. Restart and target loops are ``lax.while_loop`` s
that stop as soon as no point is left to attack.

Upstream quirks kept on purpose: the first checkpoint's oscillation count
wraps one comparison to the unfilled (zero) last entry of the loss history;
after a restart from ``x_max`` the momentum term uses the pre-restart
iterate as ``x_{k-1}``; the returned adversarial point is the last
misclassified iterate, not the best-loss one; with ``use_largereps`` the
flags and points come from the last (radius ``eps``) run only, and the L1
checkpoint window is computed from each run's own length.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from advcore.attacks import _validation as val
from advcore.attacks import losses
from advcore.attacks.norms import (ATTACK_NORMS, bcast, canonical_norm, flat_norm, l0_norm,
                                   l1_box_projection, normalize)

__all__ = ["apgd", "apgd_checkpoints", "apgd_targeted"]

LogitsFn = Callable[..., jax.Array]

NORMS = ATTACK_NORMS
UNTARGETED_LOSSES = ("ce", "dlr")
TARGETED_LOSSES = ("dlr_targeted", "ce_targeted")

# --------------------------------------------------------------------------
# Small shared helpers (also used by fab.py / square.py / autoattack.py).
# --------------------------------------------------------------------------


def as_active(active: Optional[jax.Array], batch: int) -> jax.Array:
    """The per-example attack mask (all True when ``active`` is None)."""
    if active is None:
        return jnp.ones((batch,), jnp.bool_)
    active = jnp.asarray(active)
    if active.shape != (batch,):
        raise ValueError(f"active must have shape ({batch},), got {active.shape}")
    return active.astype(jnp.bool_)


def call_logits(logits_fn: LogitsFn, x: jax.Array, key: jax.Array, stochastic: bool) -> jax.Array:
    """``logits_fn(x, key)`` for a randomised model, ``logits_fn(x)`` otherwise."""
    return logits_fn(x, key) if stochastic else logits_fn(x)


def check_common(x: jax.Array, y: jax.Array, eps: float) -> None:
    """Shape and eps checks shared by every AutoAttack component."""
    val.check_batch(x, y)
    val.check_number("eps", eps, min_value=0.0)


_normalize = normalize  # upstream ``normalize``: v / (||v|| + 1e-12) per example


def _project(x_new: jax.Array, x: jax.Array, eps: float, norm: str) -> jax.Array:
    """Upstream's APGD projection: eps-ball first, then [0, 1].

    L2 uses upstream's form ``x + normalize(d) * min(eps, ||d||)``.
    """
    if norm == "linf":
        return jnp.clip(jnp.minimum(jnp.maximum(x_new, x - eps), x + eps), 0.0, 1.0)
    d = x_new - x
    scale = jnp.minimum(eps, flat_norm(d, "l2"))
    return jnp.clip(x + _normalize(d, "l2") * bcast(scale, d), 0.0, 1.0)


# --------------------------------------------------------------------------
# Checkpoint schedule.
# --------------------------------------------------------------------------


def _schedule_params(num_iters: int) -> Tuple[int, int, int]:
    """Upstream's (first window, minimum window, shrink) in iterations.

    The same Python float expressions as upstream, so the integer rounding
    (``int(0.22 * 100) == 22``) matches exactly.
    """
    first = max(int(0.22 * num_iters), 1)
    minimum = max(int(0.06 * num_iters), 1)
    shrink = max(int(0.03 * num_iters), 1)
    return first, minimum, shrink


def apgd_checkpoints(num_iters: int) -> list[int]:
    """The APGD checkpoints as 1-based iteration counts (docs/attacks.md#apgd).

    The first window is 22% of ``num_iters``; each next window is 3% shorter,
    down to a minimum of 6%. For 100 iterations this gives
    ``[22, 41, 57, 70, 80, 87, 93, 99]``: the step-size check runs right after
    the 22nd, 41st, ... iteration.
    """
    val.check_int("num_iters", num_iters, min_value=1)
    first, minimum, shrink = _schedule_params(num_iters)
    out, count, window = [], first, first
    while count <= num_iters:
        out.append(count)
        window = max(window - shrink, minimum)
        count += window
    return out


def _checkpoint_tables(num_iters: int) -> Tuple[np.ndarray, np.ndarray]:
    """Static per-iteration tables: is iteration ``i`` (0-based) a checkpoint,
    and the window length checked there."""
    is_ckpt = np.zeros(num_iters, np.bool_)
    window = np.ones(num_iters, np.int32)
    first, minimum, shrink = _schedule_params(num_iters)
    w = first
    for c in apgd_checkpoints(num_iters):
        is_ckpt[c - 1] = True
        window[c - 1] = w
        w = max(w - shrink, minimum)
    return is_ckpt, window


# --------------------------------------------------------------------------
# Losses and their gradient (with EOT).
# --------------------------------------------------------------------------


def _loss_fn(loss: str) -> Callable[[jax.Array, jax.Array, jax.Array], jax.Array]:
    """Per-example loss ``(logits, y, y_target) -> (B,)`` that APGD *ascends*."""
    if loss == "ce":
        return lambda z, y, t: losses.ce(z, y)
    if loss == "dlr":
        return lambda z, y, t: losses.dlr(z, y)
    if loss == "dlr_targeted":
        return lambda z, y, t: losses.targeted_dlr(z, y, t)
    if loss == "ce_targeted":
        # Upstream 'ce-targeted': -CE(z, t), ascended.
        return lambda z, y, t: -losses.ce(z, t)
    raise ValueError(f"loss must be one of {UNTARGETED_LOSSES + TARGETED_LOSSES}, got {loss!r}")


def _make_loss_grad(
    logits_fn: LogitsFn, loss: str, stochastic: bool, eot_iters: int
) -> Callable[..., Tuple[jax.Array, jax.Array, jax.Array]]:
    """``(x, y, t, key) -> (loss (B,), grad, logits)``; grad of the summed loss.

    With EOT the gradient is averaged over ``eot_iters`` calls, each with its
    own key; loss and logits are those of the last call (as upstream). A
    deterministic ``logits_fn`` gives identical gradients on every call, so it
    is called once (same result, ``eot_iters`` times cheaper).
    """
    per_example = _loss_fn(loss)

    def objective(x_adv, y, t, key):
        logits = call_logits(logits_fn, x_adv, key, stochastic)
        value = per_example(logits, y, t)
        return jnp.sum(value), (value, logits)

    grad_fn = jax.grad(objective, has_aux=True)

    def loss_grad(x_adv, y, t, key):
        if not stochastic or eot_iters == 1:
            g, (value, logits) = grad_fn(x_adv, y, t, key)
            return value, g, logits

        def eot_body(j, carry):
            g_sum, _, _ = carry
            g, (value, logits) = grad_fn(x_adv, y, t, jax.random.fold_in(key, j))
            return g_sum + g, value, logits

        g0, (v0, l0) = grad_fn(x_adv, y, t, jax.random.fold_in(key, 0))
        g_sum, value, logits = jax.lax.fori_loop(1, eot_iters, eot_body, (g0, v0, l0))
        return value, g_sum / eot_iters, logits

    return loss_grad


# --------------------------------------------------------------------------
# One APGD run on the whole (fixed-shape) batch.
# --------------------------------------------------------------------------


def _single_run(
    loss_grad: Callable, x: jax.Array, y: jax.Array, t: jax.Array, key: jax.Array, *,
    eps: float, norm: str, num_iters: int, rho: float, unroll: int,
    x_init: Optional[jax.Array] = None,
) -> Tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Upstream ``attack_single_run`` for every point of the batch.

    ``x_init`` replaces the random start (upstream's ``x_init``; used by the
    PyTorch cross-check to run both implementations from the same point).
    Returns ``(x_best, acc, loss_best, x_best_adv)``: the highest-loss point,
    whether the point was never misclassified along the run, the highest
    loss, and the last misclassified iterate (the start point if never).
    """
    if norm == "l1":
        return _single_run_l1(loss_grad, x, y, t, key, eps=eps, num_iters=num_iters,
                              unroll=unroll, x_init=x_init)
    k_init, k_loss = jax.random.split(key)
    batch = x.shape[0]
    if x_init is not None:
        x_adv = jnp.clip(x_init, 0.0, 1.0)
    else:
        if norm == "linf":
            u = jax.random.uniform(k_init, x.shape, x.dtype, minval=-1.0, maxval=1.0)
        else:
            u = jax.random.normal(k_init, x.shape, x.dtype)
        x_adv = jnp.clip(x + eps * _normalize(u, norm), 0.0, 1.0)

    loss0, grad0, logits0 = loss_grad(x_adv, y, t, jax.random.fold_in(k_loss, 0))
    acc0 = jnp.argmax(logits0, axis=-1) == y
    step0 = jnp.full((batch,), 2.0 * eps, x.dtype)

    is_ckpt_np, window_np = _checkpoint_tables(num_iters)
    is_ckpt, window = jnp.asarray(is_ckpt_np), jnp.asarray(window_np)
    hist_idx = jnp.arange(num_iters)

    def body(i, c):
        (x_adv, x_old, grad, x_best, grad_best, loss_best, x_best_adv, acc, step,
         loss_steps, loss_best_last, reduced_last) = c
        momentum = x_adv - x_old
        x_old = x_adv
        a = jnp.where(i > 0, 0.75, 1.0).astype(x.dtype)
        if norm == "linf":
            direction = jnp.sign(grad)
        else:
            direction = _normalize(grad, "l2")
        z = _project(x_adv + bcast(step, x) * direction, x, eps, norm)
        x_adv = _project(x_adv + (z - x_adv) * a + momentum * (1.0 - a), x, eps, norm)

        value, grad, logits = loss_grad(x_adv, y, t, jax.random.fold_in(k_loss, i + 1))
        pred_ok = jnp.argmax(logits, axis=-1) == y
        acc = acc & pred_ok
        x_best_adv = jnp.where(bcast(~pred_ok, x), x_adv, x_best_adv)

        loss_steps = loss_steps.at[i].set(value)
        improved = value > loss_best
        x_best = jnp.where(bcast(improved, x), x_adv, x_best)
        grad_best = jnp.where(bcast(improved, x), grad, grad_best)
        loss_best = jnp.where(improved, value, loss_best)

        # Checkpoint (a no-op mask off-checkpoint). Condition (i): count the
        # loss increases over the last `k` steps; indices wrap like Python's
        # negative indexing (the first checkpoint reads the unfilled last row).
        ckpt = is_ckpt[i]
        k = window[i]
        cur = loss_steps[(i - hist_idx) % num_iters]
        prev = loss_steps[(i - hist_idx - 1) % num_iters]
        in_window = (hist_idx < k)[:, None]
        n_incr = jnp.sum((cur > prev) & in_window, axis=0)
        oscillating = n_incr <= k.astype(x.dtype) * rho
        # Condition (ii): not halved last time and no improvement since.
        stalled = (~reduced_last) & (loss_best_last >= loss_best)
        reduce = ckpt & (oscillating | stalled)
        reduced_last = jnp.where(ckpt, reduce, reduced_last)
        loss_best_last = jnp.where(ckpt, loss_best, loss_best_last)
        step = jnp.where(reduce, step / 2.0, step)
        x_adv = jnp.where(bcast(reduce, x), x_best, x_adv)
        grad = jnp.where(bcast(reduce, x), grad_best, grad)
        return (x_adv, x_old, grad, x_best, grad_best, loss_best, x_best_adv, acc, step,
                loss_steps, loss_best_last, reduced_last)

    carry = (
        x_adv, x_adv, grad0, x_adv, grad0, loss0, x_adv, acc0, step0,
        jnp.zeros((num_iters, batch), loss0.dtype), loss0, jnp.ones((batch,), jnp.bool_),
    )
    carry = jax.lax.fori_loop(0, num_iters, body, carry, unroll=unroll)
    x_best, loss_best, x_best_adv, acc = carry[3], carry[5], carry[6], carry[7]
    return x_best, acc, loss_best, x_best_adv


# --------------------------------------------------------------------------
# L1: sparse steps, the L1-ball-and-box projection, the "large reps" schedule.
# --------------------------------------------------------------------------

# Upstream's L1 constants: initial step alpha * eps with alpha = 1 (2 for
# L-inf / L2), the step divided by 1.5 at a checkpoint without enough
# sparsity progress and never below eps / 10, initial top-k fraction 0.2.
_L1_ALPHA = 1.0
_L1_STEP_DECAY = 1.5
_L1_MIN_STEP_DIVISOR = 10.0
_L1_TOPK_INIT = 0.2


def l1_checkpoint_window(num_iters: int) -> int:
    """Iterations between two L1 checkpoints: ``max(int(0.04 n), 1)`` (upstream;
    fixed, unlike the shrinking L-inf / L2 windows). 4 for 100 iterations."""
    return max(int(0.04 * num_iters), 1)


def largereps_schedule(eps: float, num_iters: int) -> Tuple[Tuple[float, ...], Tuple[int, ...]]:
    """Upstream's ``use_largereps`` schedule: radii ``3 eps, 2 eps, eps`` for
    ``ceil(0.3 n), ceil(0.3 n)`` and the remaining iterations (30 + 30 + 40
    for 100), computed with upstream's Python float expressions.
    """
    epss = (3.0 * eps, 2.0 * eps, 1.0 * eps)
    iters = [math.ceil(c) for c in (0.3 * num_iters, 0.3 * num_iters, 0.4 * num_iters)]
    iters[-1] = num_iters - sum(iters[:-1])
    if iters[-1] < 0:
        raise ValueError(f"num_iters must be >= 2 with use_largereps, got {num_iters}")
    return epss, tuple(iters)


def l1_checkpoint_step(step: jax.Array, sparsity: jax.Array, sparsity_before: jax.Array,
                       max_step: float) -> Tuple[jax.Array, jax.Array]:
    """Upstream's L1 step-size rule at a checkpoint: ``(new_step, restart)``.

    ``sparsity`` is ``||x_best - x||_0`` now, ``sparsity_before`` at the
    previous checkpoint. Where it fell below 0.95 of that (``restart``), the
    step goes back to ``max_step`` (``eps``) and the run restarts from
    ``x_best``; elsewhere it is divided by 1.5; then it is clipped to
    ``[max_step / 10, max_step]``.
    """
    restart = sparsity / sparsity_before < 0.95
    new_step = jnp.clip(jnp.where(restart, max_step, step / _L1_STEP_DECAY),
                        max_step / _L1_MIN_STEP_DIVISOR, max_step)
    return new_step, restart


def _sparse_step(grad: jax.Array, topk: jax.Array) -> jax.Array:
    """Upstream's L1 direction: the signs of the gradient's largest-magnitude
    entries (a ``topk`` fraction of the features, at least those tied with
    the threshold), divided by their count (unit L1 norm)."""
    batch = grad.shape[0]
    n_fts = int(np.prod(grad.shape[1:]))
    magnitude = jnp.abs(grad)
    ascending = jnp.sort(magnitude.reshape(batch, -1), axis=1)
    # float32 arithmetic and truncation as upstream's ``.long()``.
    position = jnp.clip((1.0 - topk) * n_fts, 0, n_fts - 1).astype(jnp.int32)
    threshold = ascending[jnp.arange(batch), position]
    signs = jnp.sign(grad * (magnitude >= bcast(threshold, grad)).astype(grad.dtype))
    return signs / bcast(flat_norm(signs, "l1") + 1e-10, signs)


def _single_run_l1(
    loss_grad: Callable, x: jax.Array, y: jax.Array, t: jax.Array, key: jax.Array, *,
    eps: float, num_iters: int, unroll: int, x_init: Optional[jax.Array] = None,
) -> Tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Upstream ``attack_single_run`` for ``norm='L1'`` on every point.

    Start: ``x + n + r`` with ``n ~ N(0, I)`` and ``r`` its L1-ball-and-box
    correction (``l1_box_projection``), clipped; top-k fraction 0.2. With
    ``x_init`` the start is ``clip(x_init)`` and the top-k fraction is its
    sparsity ``||x_init - x||_0 / D / 1.5`` (upstream, also used by the
    large-reps schedule). Each step moves by ``step`` in L1 along
    :func:`_sparse_step` and projects with ``l1_box_projection``; there is no
    momentum. Every :func:`l1_checkpoint_window` iterations, with
    ``sp = ||x_best - x||_0``: if ``sp`` fell below 0.95 of its value at the
    previous checkpoint, the step is reset to ``eps`` and the point restarts
    from ``x_best``; otherwise the step is divided by 1.5 (not below
    ``eps / 10``); the top-k fraction becomes ``sp / D / 1.5``. Returns
    ``(x_best, acc, loss_best, x_best_adv)`` as :func:`_single_run`.

    Upstream quirk kept: the sparsity ratio is ``0 / 0 = NaN`` (not below
    0.95) when both checkpoints have ``x_best == x``.
    """
    k_init, k_loss = jax.random.split(key)
    batch = x.shape[0]
    n_fts = int(np.prod(x.shape[1:]))
    if x_init is None:
        noise = jax.random.normal(k_init, x.shape, x.dtype)
        x_adv = jnp.clip(x + noise + l1_box_projection(x, noise, eps), 0.0, 1.0)
        topk = jnp.full((batch,), _L1_TOPK_INIT, jnp.float32)
        sp_old = jnp.full((batch,), float(n_fts), jnp.float32)
    else:
        x_adv = jnp.clip(x_init, 0.0, 1.0)
        sp_old = l0_norm(x_adv - x).astype(jnp.float32)
        topk = sp_old / n_fts / 1.5

    loss0, grad0, logits0 = loss_grad(x_adv, y, t, jax.random.fold_in(k_loss, 0))
    acc0 = jnp.argmax(logits0, axis=-1) == y
    max_step = _L1_ALPHA * eps
    step0 = jnp.full((batch,), max_step, x.dtype)
    window = l1_checkpoint_window(num_iters)

    def body(i, c):
        (x_adv, grad, x_best, grad_best, loss_best, x_best_adv, acc, step, topk, sp_old) = c
        x_step = x_adv + bcast(step, x) * _sparse_step(grad, topk)
        delta = x_step - x
        x_adv = x + delta + l1_box_projection(x, delta, eps)

        value, grad, logits = loss_grad(x_adv, y, t, jax.random.fold_in(k_loss, i + 1))
        pred_ok = jnp.argmax(logits, axis=-1) == y
        acc = acc & pred_ok
        x_best_adv = jnp.where(bcast(~pred_ok, x), x_adv, x_best_adv)
        improved = value > loss_best
        x_best = jnp.where(bcast(improved, x), x_adv, x_best)
        grad_best = jnp.where(bcast(improved, x), grad, grad_best)
        loss_best = jnp.where(improved, value, loss_best)

        ckpt = (i + 1) % window == 0
        sp_curr = l0_norm(x_best - x).astype(jnp.float32)
        new_step, sparser = l1_checkpoint_step(step, sp_curr, sp_old, max_step)
        sparser = ckpt & sparser
        step = jnp.where(ckpt, new_step, step)
        topk = jnp.where(ckpt, sp_curr / n_fts / 1.5, topk)
        sp_old = jnp.where(ckpt, sp_curr, sp_old)
        x_adv = jnp.where(bcast(sparser, x), x_best, x_adv)
        grad = jnp.where(bcast(sparser, x), grad_best, grad)
        return (x_adv, grad, x_best, grad_best, loss_best, x_best_adv, acc, step, topk, sp_old)

    carry = (x_adv, grad0, x_adv, grad0, loss0, x_adv, acc0, step0, topk, sp_old)
    carry = jax.lax.fori_loop(0, num_iters, body, carry, unroll=unroll)
    x_best, loss_best, x_best_adv, acc = carry[2], carry[4], carry[5], carry[6]
    return x_best, acc, loss_best, x_best_adv


def _decreasing_eps_run(
    loss_grad: Callable, x: jax.Array, y: jax.Array, t: jax.Array, key: jax.Array, *,
    eps: float, num_iters: int, unroll: int, noise: Optional[jax.Array] = None,
) -> Tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Upstream ``decr_eps_pgd`` (``use_largereps``, L1 only): three L1 runs at
    radii ``3 eps, 2 eps, eps`` (:func:`largereps_schedule`), each started
    from the previous run's highest-loss point projected onto its ball.

    The first start is ``x + noise`` (``noise ~ N(0, I)`` unless given; the
    PyTorch cross-check passes the reference's draw) projected onto the
    ``3 eps`` ball. As upstream, the returned flags and adversarial points
    are those of the last (radius ``eps``) run only, so nothing found
    outside the final ball counts.
    """
    k_noise, k_runs = jax.random.split(key)
    if noise is None:
        noise = jax.random.normal(k_noise, x.shape, x.dtype)
    epss, iters = largereps_schedule(eps, num_iters)
    x_start = x + noise
    x_start = x_start + l1_box_projection(x, x_start - x, epss[0])
    result = None
    for j, (eps_j, iters_j) in enumerate(zip(epss, iters)):
        x_start = x_start + l1_box_projection(x, x_start - x, eps_j)
        result = _single_run_l1(loss_grad, x, y, t, jax.random.fold_in(k_runs, j), eps=eps_j,
                                num_iters=iters_j, unroll=unroll, x_init=x_start)
        x_start = result[0]
    return result


def _one_run(loss_grad, x, y, t, key, *, eps, norm, num_iters, rho, unroll, use_largereps):
    """One APGD run as upstream ``perturb`` calls it: the large-reps schedule
    when ``use_largereps`` (L1), ``attack_single_run`` otherwise."""
    if use_largereps:
        return _decreasing_eps_run(loss_grad, x, y, t, key, eps=eps, num_iters=num_iters,
                                   unroll=unroll)
    return _single_run(loss_grad, x, y, t, key, eps=eps, norm=norm, num_iters=num_iters,
                       rho=rho, unroll=unroll)


# --------------------------------------------------------------------------
# Public attacks.
# --------------------------------------------------------------------------


def check_largereps(norm: str, use_largereps: bool, num_iters: int) -> None:
    """``use_largereps`` is upstream's L1-only schedule (``decr_eps_pgd``
    asserts ``norm == 'L1'``); refused for the other norms."""
    if not isinstance(use_largereps, bool):
        raise ValueError(f"use_largereps must be True or False, got {use_largereps!r}")
    if use_largereps and norm != "l1":
        raise ValueError(
            f"use_largereps=True is defined for norm 'l1' only (the reference's "
            f"decreasing-eps schedule), got norm {norm!r}")
    if use_largereps:
        largereps_schedule(1.0, num_iters)  # raises for num_iters < 2


def _validate(x, y, *, eps, norm, num_iters, restarts, rho, eot_iters, unroll,
              use_largereps=False) -> str:
    check_common(x, y, eps)
    norm = canonical_norm(norm)
    val.check_int("num_iters", num_iters, min_value=1)
    val.check_int("restarts", restarts, min_value=1)
    val.check_number("rho", rho, min_value=0.0, max_value=1.0)
    val.check_int("eot_iters", eot_iters, min_value=1)
    val.check_int("unroll", unroll, min_value=1)
    check_largereps(norm, use_largereps, num_iters)
    return norm


def _runs_until_all_broken(loss_grad, x, y, target_of_run, k_runs, to_fool, active, *,
                           n_runs, eps, norm, num_iters, rho, unroll, use_largereps):
    """Up to ``n_runs`` APGD runs, each on the points no earlier run broke.

    Upstream's ``perturb`` loop: run ``r`` aims at ``target_of_run(r)`` and
    replaces the adversarial example only where it is the first to fool the
    model; the loop stops as soon as no point is left (``while_loop``, so a
    fully broken batch skips the remaining runs). Returns ``(adv, robust)``.
    """

    def cond(c):
        r, acc, _ = c
        return (r < n_runs) & jnp.any(acc)

    def body(c):
        r, acc, adv = c
        _, acc_curr, _, adv_curr = _one_run(
            loss_grad, x, y, target_of_run(r), jax.random.fold_in(k_runs, r), eps=eps,
            norm=norm, num_iters=num_iters, rho=rho, unroll=unroll,
            use_largereps=use_largereps)
        broken = acc & ~acc_curr
        return r + 1, acc & ~broken, jnp.where(bcast(broken, x), adv_curr, adv)

    _, acc, adv = jax.lax.while_loop(cond, body, (jnp.int32(0), to_fool, x))
    # A clean-misclassified active point is not robust either (acc starts False).
    robust = jnp.where(active, acc, True)
    return jax.lax.stop_gradient(adv), robust


def apgd_with_flags(
    logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
    eps: float, norm: str = "linf", loss: str = "ce", num_iters: int = 100,
    restarts: int = 1, rho: float = 0.75, eot_iters: int = 1,
    active: Optional[jax.Array] = None, stochastic: bool = False, unroll: int = 1,
    use_largereps: bool = False,
) -> Tuple[jax.Array, jax.Array]:
    """:func:`apgd` that also returns the per-point "still robust" flags.

    ``robust[i]`` is False iff point ``i`` was attacked and some iterate was
    misclassified (upstream ``acc``); inactive points keep ``True``.
    """
    norm = _validate(x, y, eps=eps, norm=norm, num_iters=num_iters, restarts=restarts,
                     rho=rho, eot_iters=eot_iters, unroll=unroll, use_largereps=use_largereps)
    val.check_choice("loss", loss, UNTARGETED_LOSSES)
    active = as_active(active, x.shape[0])
    loss_grad = _make_loss_grad(logits_fn, loss, stochastic, eot_iters)
    k_clean, k_runs = jax.random.split(key)
    logits = call_logits(logits_fn, x, k_clean, stochastic)
    to_fool = (jnp.argmax(logits, axis=-1) == y) & active
    return _runs_until_all_broken(
        loss_grad, x, y, lambda r: y, k_runs, to_fool, active, n_runs=restarts,
        eps=eps, norm=norm, num_iters=num_iters, rho=rho, unroll=unroll,
        use_largereps=use_largereps)


def apgd(
    logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
    eps: float, norm: str = "linf", loss: str = "ce", num_iters: int = 100,
    restarts: int = 1, rho: float = 0.75, eot_iters: int = 1,
    active: Optional[jax.Array] = None, best_loss: bool = False,
    stochastic: bool = False, unroll: int = 1, use_largereps: bool = False,
) -> jax.Array:
    """Untargeted APGD (Croce & Hein 2020) on ``loss`` in ``("ce", "dlr")``.

    Args:
      logits_fn: NHWC float images in [0, 1] -> logits ``(B, K)``; called as
        ``logits_fn(x, key)`` when ``stochastic`` (randomised defences).
      x, y: clean images and int labels.
      key: PRNG key (random starts; per-call keys for a stochastic model).
      eps: radius of the threat model (L-inf, L2 or L1).
      norm: ``"linf"`` (default), ``"l2"`` or ``"l1"`` (sparse steps and the
        L1-ball-and-box projection; module docstring).
      loss: ``"ce"`` (default; APGD-CE) or ``"dlr"`` (APGD-DLR, >= 3 classes).
      num_iters: iterations per restart (100).
      restarts: random restarts (1); each restart attacks only the points not
        broken so far (upstream ``perturb``).
      rho: oscillation threshold of condition (i) (0.75; unused for L1,
        whose checkpoints look at sparsity instead, as upstream).
      eot_iters: gradients averaged per step for randomised models (1).
      active: boolean ``(B,)`` mask of points to attack; others are returned
        unchanged (None: all).
      best_loss: if True, return each active point's highest-loss iterate
        over all restarts (upstream ``perturb(best_loss=True)``; every active
        point is attacked in every restart) instead of adversarial examples.
      stochastic: whether ``logits_fn`` takes a key.
      unroll: ``fori_loop`` unroll factor of the iteration loop.
      use_largereps: L1 only: every run is upstream's decreasing-eps schedule
        (radii 3, 2, 1 x eps over 30 + 30 + 40 of 100 iterations;
        :func:`largereps_schedule`), as AutoAttack 'standard' runs L1. As
        upstream, ``best_loss=True`` ignores it.

    Returns:
      ``x_adv`` (stop-gradient), same shape as ``x``: the last misclassified
      iterate for broken points, ``x`` for points never broken or inactive.
    """
    if not best_loss:
        adv, _ = apgd_with_flags(
            logits_fn, x, y, key, eps=eps, norm=norm, loss=loss, num_iters=num_iters,
            restarts=restarts, rho=rho, eot_iters=eot_iters, active=active,
            stochastic=stochastic, unroll=unroll, use_largereps=use_largereps)
        return adv

    norm = _validate(x, y, eps=eps, norm=norm, num_iters=num_iters, restarts=restarts,
                     rho=rho, eot_iters=eot_iters, unroll=unroll, use_largereps=use_largereps)
    val.check_choice("loss", loss, UNTARGETED_LOSSES)
    active = as_active(active, x.shape[0])
    loss_grad = _make_loss_grad(logits_fn, loss, stochastic, eot_iters)

    def body(r, c):
        adv_best, loss_best = c
        best_curr, _, loss_curr, _ = _single_run(
            loss_grad, x, y, y, jax.random.fold_in(key, r), eps=eps, norm=norm,
            num_iters=num_iters, rho=rho, unroll=unroll)
        improved = (loss_curr > loss_best) & active
        return (jnp.where(bcast(improved, x), best_curr, adv_best),
                jnp.where(improved, loss_curr, loss_best))

    init = (x, jnp.full((x.shape[0],), -jnp.inf, jnp.float32))
    adv, _ = jax.lax.fori_loop(0, restarts, body, init)
    return jax.lax.stop_gradient(adv)


def apgd_targeted_with_flags(
    logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
    eps: float, norm: str = "linf", num_iters: int = 100, n_target_classes: int = 9,
    restarts: int = 1, rho: float = 0.75, eot_iters: int = 1, loss: str = "dlr_targeted",
    active: Optional[jax.Array] = None, stochastic: bool = False, unroll: int = 1,
    use_largereps: bool = False,
) -> Tuple[jax.Array, jax.Array]:
    """:func:`apgd_targeted` that also returns the per-point "still robust" flags."""
    norm = _validate(x, y, eps=eps, norm=norm, num_iters=num_iters, restarts=restarts,
                     rho=rho, eot_iters=eot_iters, unroll=unroll, use_largereps=use_largereps)
    val.check_choice("loss", loss, TARGETED_LOSSES)
    val.check_int("n_target_classes", n_target_classes, min_value=1)
    k_clean, k_runs = jax.random.split(key)
    logits = call_logits(logits_fn, x, k_clean, stochastic)
    num_classes = logits.shape[-1]
    if n_target_classes > num_classes - 1:
        raise ValueError(
            f"n_target_classes must be <= num_classes - 1 = {num_classes - 1}, "
            f"got {n_target_classes}")
    if loss == "dlr_targeted" and num_classes < 4:
        raise ValueError(f"loss 'dlr_targeted' needs >= 4 classes, got {num_classes}")
    active = as_active(active, x.shape[0])
    loss_grad = _make_loss_grad(logits_fn, loss, stochastic, eot_iters)
    to_fool = (jnp.argmax(logits, axis=-1) == y) & active
    # Classes sorted by clean logit, ascending; target j (2..n+1) is the j-th
    # largest (upstream recomputes this on the same clean points every time).
    order = jnp.argsort(logits, axis=-1)

    def target_of_run(r):
        target_rank = 2 + r // restarts
        return jax.lax.dynamic_index_in_dim(order, num_classes - target_rank, axis=1,
                                            keepdims=False)

    return _runs_until_all_broken(
        loss_grad, x, y, target_of_run, k_runs, to_fool, active,
        n_runs=n_target_classes * restarts, eps=eps, norm=norm, num_iters=num_iters,
        rho=rho, unroll=unroll, use_largereps=use_largereps)


def apgd_targeted(
    logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
    eps: float, norm: str = "linf", num_iters: int = 100, n_target_classes: int = 9,
    restarts: int = 1, rho: float = 0.75, eot_iters: int = 1, loss: str = "dlr_targeted",
    active: Optional[jax.Array] = None, stochastic: bool = False, unroll: int = 1,
    use_largereps: bool = False,
) -> jax.Array:
    """Targeted APGD (APGD-T, Croce & Hein 2020) on the targeted DLR loss.

    For target rank ``j = 2 .. n_target_classes + 1`` (the ``j``-th largest
    clean logit) and each of ``restarts`` restarts, one APGD run maximises
    ``targeted_dlr(z, y, t_j)`` on the points not yet broken; the first
    successful run sets a point's output (upstream ``APGDAttack_targeted``).
    Defaults as AutoAttack 'standard': 9 targets, 1 restart, 100 iterations,
    rho 0.75 (L1 'standard': 5 targets with ``use_largereps``).
    ``loss="ce_targeted"`` (``-CE(z, t)``) is upstream's alternative. The
    other arguments are as in :func:`apgd`; needs >= 4 classes for DLR and
    ``n_target_classes <= K - 1``.
    """
    adv, _ = apgd_targeted_with_flags(
        logits_fn, x, y, key, eps=eps, norm=norm, num_iters=num_iters,
        n_target_classes=n_target_classes, restarts=restarts, rho=rho,
        eot_iters=eot_iters, loss=loss, active=active, stochastic=stochastic,
        unroll=unroll, use_largereps=use_largereps)
    return adv
