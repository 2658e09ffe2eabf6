"""Square Attack, a query-only attack, JAX-native: L-inf here, L2 / L1 in ``square_lp``.

Reference: M. Andriushchenko, F. Croce, N. Flammarion and M. Hein, "Square
Attack: a query-efficient black-box adversarial attack via random search",
ECCV 2020 (arXiv:1912.00049); semantics follow ``fra31/auto-attack``
``autoattack/square.py`` (``SquareAttack``, L-inf, margin loss) as called by
AutoAttack (``p_init=0.8``, 5000 queries, schedule *not* rescaled).

* Init: ``x + eps * s`` with a random sign ``s`` per (image, column,
  channel) -- vertical stripes -- clipped to [0, 1].
* Query ``i`` (0-based): ``p`` is ``p_init`` halved after 10, 50, 200, 500,
  1000, 2000, 4000, 6000, 8000 queries; the square's side is
  ``max(round(sqrt(p * H * W)), 1)`` (Python rounding, capped at
  ``min(H, W)``). One random window position and one random sign per channel
  are drawn per query *for the whole batch* (as upstream); the window of
  ``x_best`` is moved by ``2 eps * sign``, projected to the eps-ball and
  [0, 1].
* A candidate replaces ``x_best`` if its margin loss ``z_y - max_{j != y} z_j``
  decreased or it is misclassified; a point stops being queried once its
  margin is <= 0.

Only forward passes of ``logits_fn`` are used, so the attack works on models
whose gradient is useless (masked / shattered). The query loop is one
``lax.while_loop`` over the whole batch with per-example masks that stops as
soon as every active point is broken.

Upstream quirk kept: the window offset is ``floor((H - s) * U[0, 1))``, so
the last offset ``H - s`` is never drawn.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from advcore.attacks import _validation as val
from advcore.attacks.apgd import as_active, check_common
from advcore.attacks.norms import bcast, canonical_norm

__all__ = ["linf_init_draws", "linf_query_draws", "margin", "square", "square_p_schedule"]

LogitsFn = Callable[[jax.Array], jax.Array]

# Query counts after which p halves (upstream ``p_selection``).
_P_STEPS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_p_schedule(i: int, p_init: float = 0.8, n_queries: int = 5000,
                      rescale: bool = False) -> float:
    """Upstream ``p_selection``: the square fraction at (0-based) query ``i``.

    ``p = p_init / 2**m`` where ``m`` counts the thresholds of ``_P_STEPS``
    strictly below ``i`` (``rescale`` first maps ``i`` to
    ``int(i / n_queries * 10000)``; AutoAttack uses ``rescale=False``).
    """
    if rescale:
        i = int(i / n_queries * 10000)
    halvings = sum(1 for threshold in _P_STEPS if i > threshold)
    return p_init / 2 ** halvings


def _side_table(n_queries: int, p_init: float, height: int, width: int,
                rescale: bool) -> np.ndarray:
    """Static per-query side lengths of the square."""
    sides = np.empty(n_queries, np.int32)
    cap = min(height, width)
    for i in range(n_queries):
        p = square_p_schedule(i, p_init, n_queries, rescale)
        sides[i] = min(max(int(round(math.sqrt(p * height * width))), 1), cap)
    return sides


def margin(logits: jax.Array, y: jax.Array) -> jax.Array:
    """``z_y - max_{j != y} z_j`` per example (<= 0 iff misclassified)."""
    num_classes = logits.shape[-1]
    is_y = jax.nn.one_hot(y, num_classes, dtype=jnp.bool_)
    z_y = jnp.sum(jnp.where(is_y, logits, 0.0), axis=-1)
    z_other = jnp.max(jnp.where(is_y, -jnp.inf, logits), axis=-1)
    return z_y - z_other


def linf_init_draws(key: jax.Array, batch: int, width: int, channels: int,
                    dtype=jnp.float32) -> jax.Array:
    """The L-inf init's random signs, one per (image, column, channel):
    shape ``(B, 1, W, C)`` (vertical stripes)."""
    return jnp.where(jax.random.bernoulli(key, 0.5, (batch, 1, width, channels)),
                     1.0, -1.0).astype(dtype)


def linf_query_draws(key: jax.Array, i, side, height: int, width: int,
                     channels: int) -> Tuple[jax.Array, jax.Array, jax.Array]:
    """L-inf query ``i``'s random draws (shared by the batch, as upstream):
    the window offsets ``floor((H - s) U)``, ``floor((W - s) U)`` and a sign
    per channel. A test replays them in the reference."""
    k_h, k_w, k_s = jax.random.split(jax.random.fold_in(key, i), 3)
    vh = jnp.floor((height - side) * jax.random.uniform(k_h)).astype(jnp.int32)
    vw = jnp.floor((width - side) * jax.random.uniform(k_w)).astype(jnp.int32)
    sign = jnp.where(jax.random.bernoulli(k_s, 0.5, (channels,)), 1.0, -1.0)
    return vh, vw, sign


def square_with_flags(
    logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
    eps: float, norm: str = "linf", n_queries: int = 5000, p_init: float = 0.8,
    active: Optional[jax.Array] = None, rescale_schedule: bool = False,
) -> Tuple[jax.Array, jax.Array]:
    """:func:`square` that also returns the per-point "still robust" flags."""
    check_common(x, y, eps)
    norm = canonical_norm(norm)
    val.check_int("n_queries", n_queries, min_value=1)
    val.check_number("p_init", p_init, min_value=0.0, strict=True, max_value=1.0)
    if x.ndim != 4:
        raise ValueError(f"x must be NHWC images (4-D), got shape {x.shape}")
    if norm != "linf":
        # Imported here: square_lp builds on this module's schedule and margin.
        from advcore.attacks.square_lp import square_lp_with_flags

        return square_lp_with_flags(logits_fn, x, y, key, eps=eps, norm=norm,
                                    n_queries=n_queries, p_init=p_init, active=active,
                                    rescale_schedule=rescale_schedule)
    batch, height, width, channels = x.shape
    active = as_active(active, batch)
    k_init, k_loop = jax.random.split(key)

    clean_ok = jnp.argmax(logits_fn(x), axis=-1) == y
    to_fool = clean_ok & active

    stripes = linf_init_draws(k_init, batch, width, channels, x.dtype)
    x_best = jnp.clip(x + eps * stripes, 0.0, 1.0)
    margin_min = margin(logits_fn(x_best), y)
    sides = jnp.asarray(_side_table(n_queries, p_init, height, width, rescale_schedule))
    rows = jnp.arange(height)[:, None, None]
    cols = jnp.arange(width)[None, :, None]

    def cond(c):
        i, margin_min, _ = c
        return (i < n_queries) & jnp.any(to_fool & (margin_min > 0))

    def body(c):
        i, margin_min, x_best = c
        querying = to_fool & (margin_min > 0)
        s = sides[i]
        vh, vw, sign = linf_query_draws(k_loop, i, s, height, width, channels)
        window = (rows >= vh) & (rows < vh + s) & (cols >= vw) & (cols < vw + s)
        delta = jnp.where(window, 2.0 * eps * sign, 0.0).astype(x.dtype)  # (H, W, C)
        x_new = jnp.clip(jnp.minimum(jnp.maximum(x_best + delta, x - eps), x + eps), 0.0, 1.0)
        margin_new = margin(logits_fn(x_new), y)
        # With the margin loss, "loss improved" and "margin improved" coincide.
        accept = querying & ((margin_new < margin_min) | (margin_new <= 0))
        margin_min = jnp.where(accept, margin_new, margin_min)
        x_best = jnp.where(bcast(accept, x), x_new, x_best)
        return i + 1, margin_min, x_best

    _, margin_min, x_best = jax.lax.while_loop(cond, body, (jnp.int32(0), margin_min, x_best))
    # Upstream perturb: a point is broken if the model misclassifies x_best.
    broken = to_fool & (jnp.argmax(logits_fn(x_best), axis=-1) != y)
    adv = jnp.where(bcast(broken, x), x_best, x)
    robust = jnp.where(active, to_fool & ~broken, True)
    return jax.lax.stop_gradient(adv), robust


def square(
    logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
    eps: float, norm: str = "linf", n_queries: int = 5000, p_init: float = 0.8,
    active: Optional[jax.Array] = None, rescale_schedule: bool = False,
) -> jax.Array:
    """Square Attack (Andriushchenko et al. 2020), margin loss; L-inf, L2 or L1.

    Args:
      logits_fn: NHWC float images in [0, 1] -> logits ``(B, K)``; only
        forward passes are used.
      x, y: clean NHWC images and int labels.
      key: PRNG key (stripes init, per-query window and signs).
      eps: radius of the threat model.
      norm: ``"linf"`` (default), ``"l2"`` or ``"l1"`` (:mod:`advcore.attacks.square_lp`).
      n_queries: query budget per point (5000).
      p_init: initial fraction of pixels per square (0.8).
      active: boolean ``(B,)`` mask of points to attack (None: all).
      rescale_schedule: rescale the p schedule to ``n_queries`` (False, as
        AutoAttack).

    Returns:
      ``x_adv`` (stop-gradient): the misclassified ``x_best`` for broken
      points, ``x`` elsewhere (as upstream ``perturb``).
    """
    adv, _ = square_with_flags(logits_fn, x, y, key, eps=eps, norm=norm, n_queries=n_queries,
                               p_init=p_init, active=active, rescale_schedule=rescale_schedule)
    return adv
