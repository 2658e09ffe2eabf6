"""Gradient-sign attacks: FGSM, PGD (L-inf / L2, CE / CW / TRADES-KL) and MI-FGSM.

All three are pure functions of ``logits_fn: (B, H, W, C) in bounds -> (B, K)``
following DESIGN.md: they maximise the **sum over the batch** of a per-example
loss from ``advcore.attacks.losses`` (minimise it at the target labels when
``targeted=True``), differentiate with respect to the input, run their
iterations in ``lax.fori_loop`` and return ``jax.lax.stop_gradient(x_adv)``.
Hyper-parameters are Python values (static under ``jit``); they are validated
with ``ValueError`` when concrete and passed through untouched when traced.

Threat-model safety: ``eps`` must be a finite number in ``[0, D]`` with ``D``
the diameter of the input box (``hi - lo`` for L-inf, ``(hi - lo) * sqrt(d)``
for L2, ``d`` = features per example), so ``eps=8`` meant as 8/255 fails
instead of saturating every pixel. A concrete ``x`` outside ``bounds`` is
refused (``ValueError``), never clipped; a traced ``x`` (under ``jit`` /
``vmap``) cannot be inspected, so jitting callers check each batch with
``advcore.attacks.check_input_range`` first.

References:
  * FGSM: Goodfellow, Shlens & Szegedy, "Explaining and Harnessing Adversarial
    Examples", ICLR 2015.
  * PGD: Madry et al., "Towards Deep Learning Models Resistant to Adversarial
    Attacks", ICLR 2018; the TRADES-KL inner attack: Zhang et al., "Theoretically
    Principled Trade-off between Robustness and Accuracy", ICML 2019.
  * CW margin: Carlini & Wagner, "Towards Evaluating the Robustness of Neural
    Networks", S&P 2017.
  * MI-FGSM: Dong et al., "Boosting Adversarial Attacks with Momentum", CVPR 2018.
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple, Union

import jax
import jax.numpy as jnp
from jax import lax

from advcore.attacks import losses, norms
from advcore.attacks import _validation as V

LogitsFn = Callable[[jax.Array], jax.Array]
LossArg = Union[str, Callable[[jax.Array, jax.Array], jax.Array]]

LOSSES = ("ce", "cw", "kl")


# --------------------------------------------------------------------------
# The objective every attack ascends.
# --------------------------------------------------------------------------


def make_objective(
    logits_fn: LogitsFn, x: jax.Array, y: Optional[jax.Array], *, loss: LossArg,
    targeted: bool = False, target: Optional[jax.Array] = None, kappa: float = 0.0,
) -> Tuple[Callable[[jax.Array], jax.Array], Callable[[jax.Array], jax.Array]]:
    """``(objective, success)`` for an attack on clean inputs ``x``.

    ``objective(logits) -> (B,)`` is the per-example quantity to **ascend**:

    * ``"ce"``: ``ce(z, y)``; targeted: ``-ce(z, target)``.
    * ``"cw"``: ``cw_margin(z, y, kappa) = min(max_{j!=y} z_j - z_y, kappa)``;
      targeted: ``cw_targeted_margin(z, target, kappa)``.
    * ``"kl"``: ``kl(z, z_ref)`` with ``z_ref = stop_gradient(logits_fn(x))``
      computed once here; ``y`` is ignored; no targeted form.
    * a callable ``loss(logits, labels) -> (B,)``: ascended at ``y`` (or
      descended at ``target`` when targeted).

    ``success(logits) -> (B,) bool``: misclassified (``argmax != y``), or
    ``argmax == target`` when targeted; all-False for ``"kl"`` (no labels).
    """
    if loss == "kl":
        if targeted:
            raise ValueError("loss='kl' has no targeted form; use targeted=False")
        z_ref = lax.stop_gradient(logits_fn(x))

        def objective(z):
            return losses.kl(z, z_ref)

        def success(z):
            return jnp.zeros(z.shape[:1], bool)

        return objective, success

    if targeted:
        if target is None:
            raise ValueError("targeted=True needs target labels (target=...), got None")
        labels = target
        if loss == "ce":
            def objective(z):
                return -losses.ce(z, labels)
        elif loss == "cw":
            def objective(z):
                return losses.cw_targeted_margin(z, labels, kappa)
        else:
            def objective(z):
                return -loss(z, labels)

        def success(z):
            return jnp.argmax(z, axis=-1) == labels

        return objective, success

    if y is None:
        raise ValueError(f"loss={loss!r} needs the true labels y, got None")
    if loss == "ce":
        def objective(z):
            return losses.ce(z, y)
    elif loss == "cw":
        def objective(z):
            return losses.cw_margin(z, y, kappa)
    else:
        def objective(z):
            return loss(z, y)

    def success(z):
        return jnp.argmax(z, axis=-1) != y

    return objective, success


def input_grad(logits_fn: LogitsFn, objective: Callable) -> Callable[[jax.Array], jax.Array]:
    """``x -> d/dx sum_b objective(logits_fn(x))_b`` (per-example gradients, not / B)."""

    def total(x_adv):
        return jnp.sum(objective(logits_fn(x_adv)).astype(jnp.float32))

    return jax.grad(total)


def _keep_better(best, cand):
    """Per-example restart selection, see ``pgd``'s ``restarts``."""
    x_b, obj_b, ok_b = best
    x_c, obj_c, ok_c = cand
    take = (ok_c & ~ok_b) | ((ok_c == ok_b) & (obj_c > obj_b))
    x_new = jnp.where(norms._bcast(take, x_b), x_c, x_b)
    return x_new, jnp.where(take, obj_c, obj_b), ok_b | ok_c


def _validate(*, x, eps, step_size, num_steps, norm, loss, random_start, init_std, kappa,
              restarts, bounds, unroll, targeted, target):
    """Checks every argument; returns ``(lo, hi)``.

    ``eps`` must lie in ``[0, diameter of the input box]`` (``hi - lo`` for
    L-inf, ``(hi - lo) * sqrt(d)`` for L2 with ``d`` features per example,
    known from ``x``'s static shape even under ``jit``), and a concrete ``x``
    must lie in ``bounds``: it is refused, never clipped.
    """
    V.check_choice("norm", norm, norms.NORMS)
    bounds = V.check_bounds(bounds)
    V.check_eps(eps, norm=norm, bounds=bounds, num_features=V.features_per_example(x))
    V.check_number("step_size", step_size, min_value=0.0)
    V.check_int("num_steps", num_steps, min_value=1)
    if not callable(loss):
        V.check_choice("loss", loss, LOSSES)
    V.check_choice("random_start", random_start, norms.RANDOM_STARTS)
    V.check_number("init_std", init_std, min_value=0.0)
    V.check_number("kappa", kappa, min_value=0.0)
    V.check_int("restarts", restarts, min_value=1)
    if not (unroll is True or (isinstance(unroll, int) and not isinstance(unroll, bool)
                               and unroll >= 1)):
        raise ValueError(f"unroll must be an int >= 1 or True, got {unroll!r}")
    if not isinstance(targeted, bool):
        raise ValueError(f"targeted must be a bool, got {targeted!r}")
    if targeted and target is None:
        raise ValueError("targeted=True needs target labels (target=...), got None")
    V.check_input_range(x, bounds)
    return bounds


# --------------------------------------------------------------------------
# PGD.
# --------------------------------------------------------------------------


def pgd(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: Optional[jax.Array],
    key: Optional[jax.Array],
    *,
    eps: float,
    step_size: float,
    num_steps: int,
    norm: str = "linf",
    loss: LossArg = "ce",
    random_start: str = "uniform",
    init_std: float = 0.001,
    targeted: bool = False,
    target: Optional[jax.Array] = None,
    kappa: float = 0.0,
    restarts: int = 1,
    bounds: Tuple[float, float] = (0.0, 1.0),
    unroll: Union[int, bool] = 1,
) -> jax.Array:
    """Projected gradient ascent (Madry et al. 2018) on a per-example loss.

    Iteration (the official codes' order, docs/attacks.md#projection-order), starting from the *unclipped* random
    start ``x_0'``::

        g   = grad_x sum_b objective(logits_fn(x'))_b
        x'  = x' + step_size * d(g)          d = sign (linf) | g/||g||_2 (l2)
        x'  = clip(project_eps_ball(x', x), *bounds)

    Args:
      logits_fn: ``(B, ...) -> (B, K)`` logits; call the model in eval mode.
      x: clean inputs ``(B, ...)`` in ``bounds``; axis 0 is the batch. A
        concrete ``x`` outside ``bounds`` raises ``ValueError``; a traced one
        is not checked (see the module docstring).
      y: true int labels ``(B,)`` (ignored by ``loss="kl"``; may be None then).
      key: PRNG key for the random start (and restarts); may be None only
        with ``random_start="none"``.
      eps: radius of the threat model, in ``[0, hi - lo]`` (linf) or
        ``[0, (hi - lo) * sqrt(d)]`` (l2). TRADES/LBGAT CIFAR: 0.031.
      step_size: finite step length (>= 0): the L-inf step per coordinate,
        or the L2 length of the step.
      num_steps: iterations (>= 1), a static Python int.
      norm: ``"linf"`` or ``"l2"``.
      loss: ``"ce"`` (default), ``"cw"`` (CW margin, clamp ``kappa``),
        ``"kl"`` (TRADES KL to the clean prediction, reference computed once
        and stop-gradient), or a callable ``(logits, labels) -> (B,)`` to ascend.
      random_start: ``"uniform"`` (default; U(-eps, eps) for linf, uniform in
        the ball for l2, TRADES' evaluation), ``"normal"`` (``x + init_std * N(0, 1)``,
        TRADES' training attack) or ``"none"``. The start is not clipped before the first
        gradient.
      init_std: std of the ``"normal"`` start (TRADES: 0.001).
      targeted: minimise the loss at ``target`` instead of maximising at ``y``.
      target: int target labels ``(B,)``; required when ``targeted``.
      kappa: finite CW confidence (>= 0), only used by ``loss="cw"``.
      restarts: independent runs (keys ``split(key, restarts)``; with one run
        ``key`` is used directly). Per example we keep the **successful** run
        (misclassified, or on target when targeted) with the highest final
        objective; if none succeeds, the run with the highest final
        objective. Ties keep the earlier run. With ``loss="kl"`` only the
        objective counts.
      bounds: the input box ``(lo, hi)``, finite with ``lo < hi``; default
        ``(0, 1)``.
      unroll: ``lax.fori_loop`` unroll factor (XLA:CPU convolutions run ~2x
        faster unrolled).

    Returns:
      ``stop_gradient(x_adv)``, same shape and dtype as ``x``.
    """
    bounds = _validate(x=x, eps=eps, step_size=step_size, num_steps=num_steps, norm=norm,
                       loss=loss, random_start=random_start, init_std=init_std, kappa=kappa,
                       restarts=restarts, bounds=bounds, unroll=unroll, targeted=targeted,
                       target=target)
    x = jnp.asarray(x)
    y = None if y is None else jnp.asarray(y)
    target = None if target is None else jnp.asarray(target)
    V.check_batch(x, None if loss == "kl" else y)
    if targeted:
        V.check_batch(x, target, "target")
    if key is None:
        if random_start != "none" or restarts > 1:
            raise ValueError(f"key is required with random_start={random_start!r} / restarts > 1")
        key = jax.random.PRNGKey(0)  # unused

    objective, success = make_objective(logits_fn, x, y, loss=loss, targeted=targeted,
                                        target=target, kappa=kappa)
    grad_fn = input_grad(logits_fn, objective)

    def body(_, x_adv):
        g = grad_fn(x_adv)
        x_adv = x_adv + (step_size * norms.step_direction(g, norm)).astype(x_adv.dtype)
        return norms.project(x_adv, x, norm=norm, eps=eps, bounds=bounds)

    def run_once(k):
        x_start = norms.random_init(k, x, norm=norm, eps=eps, random_start=random_start,
                                    init_std=init_std)
        return lax.fori_loop(0, num_steps, body, x_start, unroll=unroll)

    if restarts == 1:
        return lax.stop_gradient(run_once(key))

    def scored(k):
        x_adv = run_once(k)
        z = logits_fn(x_adv)
        return x_adv, objective(z).astype(jnp.float32), success(z)

    keys = jax.random.split(key, restarts)

    def restart_body(r, best):
        return _keep_better(best, scored(keys[r]))

    best = lax.fori_loop(1, restarts, restart_body, scored(keys[0]))
    return lax.stop_gradient(best[0])


def fgsm(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: Optional[jax.Array],
    key: Optional[jax.Array] = None,
    *,
    eps: float,
    loss: LossArg = "ce",
    norm: str = "linf",
    targeted: bool = False,
    target: Optional[jax.Array] = None,
    kappa: float = 0.0,
    bounds: Tuple[float, float] = (0.0, 1.0),
) -> jax.Array:
    """FGSM (Goodfellow et al. 2015): one step of size ``eps``, no random start.

    ``x_adv = clip(x + eps * sign(grad_x loss), *bounds)`` (docs/attacks.md#fgsm: eps 0.031
    on CE for LBGAT; LADDER uses eps 0.3). ``norm="l2"`` gives the
    fast gradient method with an L2-normalised step. ``key`` is unused (kept
    for the common attack signature). Note: with ``loss="kl"`` the gradient
    at ``x`` is zero, so FGSM-KL returns ``x``.
    """
    return pgd(logits_fn, x, y, None, eps=eps, step_size=eps, num_steps=1, norm=norm,
               loss=loss, random_start="none", targeted=targeted, target=target,
               kappa=kappa, bounds=bounds)


def mi_fgsm(
    logits_fn: LogitsFn,
    x: jax.Array,
    y: Optional[jax.Array],
    key: Optional[jax.Array] = None,
    *,
    eps: float,
    num_steps: int = 10,
    step_size: Optional[float] = None,
    decay: float = 1.0,
    norm: str = "linf",
    loss: LossArg = "ce",
    targeted: bool = False,
    target: Optional[jax.Array] = None,
    kappa: float = 0.0,
    bounds: Tuple[float, float] = (0.0, 1.0),
    unroll: Union[int, bool] = 1,
) -> jax.Array:
    """Momentum iterative FGSM (Dong et al. 2018).

    ``g <- decay * g + grad / ||grad||_1`` (per example), then
    ``x' <- clip(project(x' + step_size * d(g)), bounds)`` with ``d = sign``
    (linf) or the L2-normalised direction (l2). Defaults from the paper:
    ``decay = 1.0``, ``num_steps = 10``, ``step_size = eps / num_steps``, no
    random start (``key`` is unused).
    """
    if step_size is None:
        # eps and num_steps first, so that a bad one is named instead of the step.
        V.check_choice("norm", norm, norms.NORMS)
        V.check_eps(eps, norm=norm, bounds=V.check_bounds(bounds),
                    num_features=V.features_per_example(x))
        V.check_int("num_steps", num_steps, min_value=1)
        step_size = eps / num_steps
    bounds = _validate(x=x, eps=eps, step_size=step_size, num_steps=num_steps, norm=norm,
                       loss=loss, random_start="none", init_std=0.0, kappa=kappa, restarts=1,
                       bounds=bounds, unroll=unroll, targeted=targeted, target=target)
    V.check_number("decay", decay, min_value=0.0)
    x = jnp.asarray(x)
    y = None if y is None else jnp.asarray(y)
    target = None if target is None else jnp.asarray(target)
    V.check_batch(x, None if loss == "kl" else y)
    if targeted:
        V.check_batch(x, target, "target")

    objective, _ = make_objective(logits_fn, x, y, loss=loss, targeted=targeted,
                                  target=target, kappa=kappa)
    grad_fn = input_grad(logits_fn, objective)

    def body(_, carry):
        x_adv, momentum = carry
        g = grad_fn(x_adv).astype(jnp.float32)
        g = g / norms._bcast(norms.l1_norm(g) + norms.TINY, g)
        momentum = decay * momentum + g
        step = (step_size * norms.step_direction(momentum, norm)).astype(x_adv.dtype)
        x_adv = norms.project(x_adv + step, x, norm=norm, eps=eps, bounds=bounds)
        return x_adv, momentum

    init = (x, jnp.zeros(x.shape, jnp.float32))
    x_adv, _ = lax.fori_loop(0, num_steps, body, init, unroll=unroll)
    return lax.stop_gradient(x_adv)
