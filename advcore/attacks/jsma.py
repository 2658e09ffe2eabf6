"""Jacobian-based Saliency Map Attack (targeted), cleverhans v3 semantics.

Reference: Papernot et al., "The Limitations of Deep Learning in Adversarial
Settings", EuroS&P 2016; control flow follows cleverhans v3 ``jsma_symbolic``
(the implementation LADDER used, docs/attacks.md#jsma: theta = 1, gamma = 1, clip [0, 1],
random targets).

Each iteration, for every example not yet done:

1. ``a = d z_t / dx`` and ``b = d (sum_{j != t} z_j) / dx`` on the logits (two
   VJPs for the whole batch instead of a K-row Jacobian).
2. Over all pairs ``(p, q)``, ``p != q``, of features still in the search
   domain: ``A = a_p + a_q``, ``B = b_p + b_q``; admissible if ``A > 0`` and
   ``B < 0`` (``A < 0``, ``B > 0`` when ``theta < 0``); score ``-A * B``.
3. The best pair is moved by ``theta`` (clipped to the bounds) and removed
   from the domain.

An example is done when it is classified as the target, when fewer than two
features remain in the domain, or (deviation from cleverhans, which then
keeps "modifying" feature 0) when no admissible pair exists. At most
``max_iters = floor(gamma * num_features / 2)`` iterations, i.e. at most
``gamma * num_features`` features change. The initial domain holds the
features that can still move (``x < hi`` for ``theta > 0``, ``x > lo`` else).

Memory: the pair scores are a ``(B, N, N)`` float32 array per iteration
(``N`` = features per example), plus a few temporaries of the same size:
``B * N^2 * 4`` bytes each, about 2.4 MB per MNIST example (N = 784), i.e.
~0.15 GB per temporary at B = 64. Use batches of <= 64 for 28x28 inputs and
much smaller ones for 32x32x3 (N = 3072: 38 MB per example and temporary).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from advcore.attacks import _validation as V
from advcore.attacks.targets import num_classes_of, random_targets


def jsma(
    logits_fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    y: Optional[jax.Array],
    key: Optional[jax.Array] = None,
    *,
    target: Optional[jax.Array] = None,
    theta: float = 1.0,
    gamma: float = 1.0,
    max_iters: Optional[int] = None,
    bounds: Tuple[float, float] = (0.0, 1.0),
) -> jax.Array:
    """Targeted JSMA; see the module docstring.

    Args:
      logits_fn: ``(B, ...) -> (B, K)`` logits (eval mode).
      x: clean inputs ``(B, ...)`` in ``bounds``; a concrete ``x`` outside
        raises ``ValueError`` (a traced one cannot be checked: jitting callers
        run ``check_input_range`` on each batch first).
      y: true labels ``(B,)``; only used to draw random targets.
      key: draws the random targets when ``target`` is None
        (``random_targets(key, y, K)``: uniform over the classes != y).
      target: int target labels ``(B,)``.
      theta: perturbation per changed feature (finite, non-zero; 1.0; > 0
        increases features).
      gamma: maximum fraction of features changed, in (0, 1] (1.0).
      max_iters: cap on pair iterations; default and maximum
        ``floor(gamma * N / 2)``.
      bounds: input box (0, 1).

    Returns:
      ``stop_gradient(x_adv)``, same shape and dtype as ``x``.
    """
    lo, hi = V.check_bounds(bounds)
    V.check_number("theta", theta)
    if not V.is_traced(theta) and float(theta) == 0:
        raise ValueError(f"theta must be a finite non-zero number, got {theta!r}")
    V.check_number("gamma", gamma, min_value=0.0, strict=True, max_value=1.0)
    V.check_input_range(x, bounds)
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"x must have a leading batch axis, got shape {x.shape}")
    batch = x.shape[0]
    num_features = math.prod(x.shape[1:])
    limit = int(math.floor(float(gamma) * num_features / 2))
    if max_iters is None:
        max_iters = limit
    else:
        V.check_int("max_iters", max_iters, min_value=0)
        max_iters = min(max_iters, limit)
    num_classes = num_classes_of(logits_fn, x)
    if target is None:
        if key is None or y is None:
            raise ValueError("jsma needs target=... (or y and a key to draw random targets)")
        target = random_targets(key, jnp.asarray(y), num_classes)
    target = jnp.asarray(target).astype(jnp.int32)
    V.check_batch(x, target, "target")

    increase = float(theta) > 0
    is_target = jax.nn.one_hot(target, num_classes, dtype=jnp.float32)
    dtype = x.dtype
    x_flat = x.reshape(batch, num_features).astype(jnp.float32)
    domain0 = (x_flat < hi) if increase else (x_flat > lo)
    off_diagonal = ~jnp.eye(num_features, dtype=bool)

    def logits_of(xf):
        return logits_fn(xf.reshape(x.shape).astype(dtype)).astype(jnp.float32)

    def grads(xf):
        z, vjp = jax.vjp(logits_of, xf)
        (a,) = vjp(is_target)
        (total,) = vjp(jnp.ones_like(z))
        return z, a, total - a

    def pair_scores(a_p, b_p, dom_p, a_q, b_q, dom_q, distinct):
        """``-A * B`` for pairs (p, q) (rows p, columns q); ``-inf`` if not admissible."""
        pair_a = a_p[:, :, None] + a_q[:, None, :]
        pair_b = b_p[:, :, None] + b_q[:, None, :]
        ok = dom_p[:, :, None] & dom_q[:, None, :] & distinct
        if increase:
            ok = ok & (pair_a > 0) & (pair_b < 0)
        else:
            ok = ok & (pair_a < 0) & (pair_b > 0)
        return jnp.where(ok, -pair_a * pair_b, -jnp.inf)

    def body(carry):
        it, xf, domain, active = carry
        z, a, b = grads(xf)
        on_target = jnp.argmax(z, axis=-1) == target
        # The best pair is the first maximum of the (N, N) score matrix in
        # row-major order (cleverhans' argmax over the flattened scores). A
        # flat argmax is a slow variadic reduction on XLA:CPU, so take it in
        # two steps with the same result: a plain max over q gives each row's
        # best score, the first row holding the overall maximum is p, and
        # q is the first maximum of row p, recomputed as an (N,) vector.
        row_best = jnp.max(pair_scores(a, b, domain, a, b, domain, off_diagonal), axis=-1)
        p = jnp.argmax(row_best, axis=-1)
        has_pair = jnp.max(row_best, axis=-1) > -jnp.inf
        take = lambda v: jnp.take_along_axis(v, p[:, None], axis=1)  # noqa: E731
        row_p = pair_scores(take(a), take(b), take(domain), a, b, domain,
                            (jnp.arange(num_features) != p[:, None])[:, None, :])[:, 0]
        q = jnp.argmax(row_p, axis=-1)
        active = active & ~on_target & (jnp.sum(domain, axis=-1) >= 2) & has_pair
        change = (jax.nn.one_hot(p, num_features, dtype=bool)
                  | jax.nn.one_hot(q, num_features, dtype=bool)) & active[:, None]
        xf = jnp.where(change, jnp.clip(xf + theta, lo, hi), xf)
        domain = domain & ~change
        return it + 1, xf, domain, active

    def cond(carry):
        it, _, _, active = carry
        return (it < max_iters) & jnp.any(active)

    init = (jnp.int32(0), x_flat, domain0, jnp.ones((batch,), bool))
    _, xf, _, _ = lax.while_loop(cond, body, init)
    return lax.stop_gradient(xf.reshape(x.shape).astype(dtype))
