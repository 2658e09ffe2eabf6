"""Square Attack for the L2 and L1 threat models, JAX-native.

Reference: M. Andriushchenko, F. Croce, N. Flammarion and M. Hein, "Square
Attack: a query-efficient black-box adversarial attack via random search",
ECCV 2020 (arXiv:1912.00049), and for L1 F. Croce, M. Andriushchenko, N. D.
Singh, N. Flammarion, M. Hein, "Sparse-RS" / "Mind the box" (2021); the
semantics follow ``fra31/auto-attack`` ``autoattack/square.py``
(``SquareAttack``, ``norm='L2'`` / ``'L1'``, margin loss) as AutoAttack calls
it (``p_init=0.8``, 5000 queries, schedule not rescaled). The L-inf version
is :mod:`advcore.attacks.square`.

The perturbation is built from *eta* patterns: an ``s x s`` square whose top
half holds concentric rectangles of weight ``1 / (k + 1)^2`` (L2) or
``1 / (k + 1)^4`` (L1) and whose bottom half the same with a minus sign,
normalised to unit L2 (L1) norm, transposed with probability 1/2.

* Init: the image is tiled with ``s0 = H // 5`` squares starting at
  ``(H - 5 s0) // 2``; each tile gets an eta pattern times a random sign per
  (image, channel). L2: the sum is rescaled to norm ``eps`` and clipped to
  [0, 1]. L1: it is projected onto the L1 ball of radius ``eps (1 - 1e-6)``
  intersected with the box (``norms.l1_box_projection``).
* Query ``i``: side ``s`` from ``p(i)`` (:func:`lp_side_table`: at least 3,
  odd, at most ``min(H, W)``); two random windows ``W1``, ``W2`` of side
  ``s`` (positions shared by the batch). In ``W1`` the current perturbation
  (normalised per channel) plus a fresh signed eta pattern is rescaled so
  that, per channel, its norm takes the budget still unused by the whole
  image (split evenly over channels) plus what ``W1 u W2`` held; ``W2`` is
  zeroed outside ``W1``. L2: the result is rescaled to norm ``eps`` and
  clipped; L1: projected as at the init.
* Acceptance and stopping as for L-inf: a candidate replaces ``x_best`` if
  its margin ``z_y - max_{j != y} z_j`` decreased or it is misclassified; a
  point stops being queried once its margin is <= 0.

JAX form: one ``lax.while_loop`` over queries for the whole batch with
per-example masks; the eta pattern of every side the schedule uses is
computed once in NumPy (both orientations) and moved to the window with
``jnp.roll``, so shapes never change.

Upstream quirks kept: window offsets are ``floor((H - s) U[0, 1))``, so the
last offset is never drawn; the init tiling uses ``H // s0`` tiles in both
directions, silently dropping tiles that start outside the image (an image
where a tile would be cut by the border makes the reference fail, so it is
refused here); L1 perturbations are never clipped to [0, 1] after the
projection, which keeps them in the box only up to float rounding.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from advcore.attacks.apgd import as_active
from advcore.attacks.norms import bcast, flat_norm, l1_box_projection, normalize
from advcore.attacks.square import margin, square_p_schedule

__all__ = ["eta_pattern", "init_draws", "init_tiles", "lp_side_table", "query_draws",
           "square_lp_run", "square_lp_with_flags"]

LogitsFn = Callable[[jax.Array], jax.Array]

# The L1 budget is shrunk by this factor before projecting (upstream), so
# that rounding cannot push a point just outside the ball.
_L1_EPS_SHRINK = 1.0 - 1e-6


def _eta_rectangles(rows: int, cols: int, norm: str) -> np.ndarray:
    """Upstream ``eta_rectangles``: concentric rectangles around the centre
    with weights ``1 / (k + 1)^2`` (L2) or ``^4`` (L1), unit norm (float32)."""
    delta = np.zeros((rows, cols), np.float32)
    r_c, c_c = rows // 2 + 1, cols // 2 + 1
    r0, c0 = r_c - 1, c_c - 1
    power = 2 if norm == "l2" else 4
    for k in range(max(r_c, c_c)):
        weight = np.float32(1.0) / np.float32(k + 1) ** power
        delta[max(r0, 0):min(r0 + 2 * k + 1, rows), max(0, c0):min(c0 + 2 * k + 1, cols)] += weight
        r0 -= 1
        c0 -= 1
    return _unit(delta, norm)


def _unit(delta: np.ndarray, norm: str) -> np.ndarray:
    if delta.size == 0:
        return delta
    if norm == "l2":
        return delta / np.sqrt(np.sum(delta ** 2, dtype=np.float32))
    return delta / np.sum(np.abs(delta), dtype=np.float32)


def eta_pattern(side: int, norm: str) -> np.ndarray:
    """Upstream ``eta(s)`` before its random transposition: ``(s, s)`` float32,
    positive rectangles on top, negative below, unit L2 / L1 norm."""
    delta = np.zeros((side, side), np.float32)
    delta[:side // 2] = _eta_rectangles(side // 2, side, norm)
    delta[side // 2:] = -_eta_rectangles(side - side // 2, side, norm)
    return _unit(delta, norm)


def lp_side_table(n_queries: int, p_init: float, height: int, width: int, channels: int,
                  rescale: bool) -> np.ndarray:
    """Per-query square sides for L2 / L1: upstream's
    ``max(int(round(sqrt(p * n_features / c))), 3)``, made odd, capped at
    ``min(H, W)`` (the same float expression as upstream)."""
    n_features = channels * height * width
    sides = np.empty(n_queries, np.int32)
    for i in range(n_queries):
        p = square_p_schedule(i, p_init, n_queries, rescale)
        s = max(int(round(math.sqrt(p * n_features / channels))), 3)
        if s % 2 == 0:
            s += 1
        sides[i] = min(s, min(height, width))
    return sides


def init_tiles(height: int, width: int) -> Tuple[int, list[Tuple[int, int]]]:
    """The init's tile side ``H // 5`` and the top-left corners of the tiles
    that lie inside the image (upstream's loop, which uses ``H // 5`` for the
    side and ``W // side`` tiles per row)."""
    side = height // 5
    if side == 0:
        raise ValueError(f"Square L2/L1 needs images at least 5 pixels high, got {height}")
    start = (height - 5 * side) // 2
    corners = []
    for i in range(height // side):
        for j in range(width // side):
            vh, vw = start + i * side, start + j * side
            if vh >= height or vw >= width:
                continue  # an empty slice upstream: nothing is added
            if vh + side > height or vw + side > width:
                raise ValueError(
                    f"Square L2/L1 cannot tile a {height}x{width} image: the init tile at "
                    f"({vh}, {vw}) of side {side} crosses the border (the reference fails "
                    "on such shapes too)")
            corners.append((vh, vw))
    return side, corners


def _pattern_table(sides: np.ndarray, height: int, width: int,
                   norm: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(table, index)``: ``table[k, flip]`` is the eta pattern of the ``k``-th
    distinct side at the top-left of an ``(H, W)`` canvas (``flip``:
    transposed); ``index[i]`` is query ``i``'s ``k``."""
    distinct = sorted(set(int(s) for s in sides))
    table = np.zeros((len(distinct), 2, height, width), np.float32)
    for k, side in enumerate(distinct):
        pattern = eta_pattern(side, norm)
        table[k, 0, :side, :side] = pattern
        table[k, 1, :side, :side] = pattern.T
    index = np.asarray([distinct.index(int(s)) for s in sides], np.int32)
    return table, index


def _random_signs(key: jax.Array, batch: int, channels: int, dtype) -> jax.Array:
    """A random sign per (image, channel), shaped ``(B, 1, 1, C)``."""
    signs = jnp.where(jax.random.bernoulli(key, 0.5, (batch, 1, 1, channels)), 1.0, -1.0)
    return signs.astype(dtype)


def _window_sums(v: jax.Array) -> jax.Array:
    """Per (image, channel) sums over the spatial axes, shaped ``(B, 1, 1, C)``."""
    return jnp.sum(v, axis=(1, 2), keepdims=True)


def _to_budget(x: jax.Array, delta: jax.Array, eps: float, norm: str) -> jax.Array:
    """The candidate point for a perturbation direction (upstream): L2
    rescales to norm ``eps`` and clips; L1 projects onto the shrunk ball."""
    if norm == "l2":
        return jnp.clip(x + normalize(delta, "l2") * eps, 0.0, 1.0)
    return x + delta + l1_box_projection(x, delta, eps * _L1_EPS_SHRINK)


def init_draws(key: jax.Array, tile_index: int, batch: int, channels: int,
               dtype=jnp.float32) -> Tuple[jax.Array, jax.Array]:
    """The init's random draws for tile ``tile_index``: whether its eta
    pattern is transposed, and a sign per (image, channel) ``(B, 1, 1, C)``."""
    k_flip, k_sign = jax.random.split(jax.random.fold_in(key, tile_index))
    return jax.random.bernoulli(k_flip, 0.5), _random_signs(k_sign, batch, channels, dtype)


def query_draws(key: jax.Array, i, side, height: int, width: int, batch: int, channels: int,
                dtype=jnp.float32) -> Tuple[jax.Array, ...]:
    """Query ``i``'s random draws: window offsets ``vh, vw, vh2, vw2`` (shared
    by the batch, ``floor((H - s) U)`` as upstream), whether the eta pattern
    is transposed, and a sign per (image, channel)."""
    k_h, k_w, k_h2, k_w2, k_flip, k_sign = jax.random.split(jax.random.fold_in(key, i), 6)

    def offset(k, extent):
        return jnp.floor((extent - side) * jax.random.uniform(k)).astype(jnp.int32)

    return (offset(k_h, height), offset(k_w, width), offset(k_h2, height), offset(k_w2, width),
            jax.random.bernoulli(k_flip, 0.5), _random_signs(k_sign, batch, channels, dtype))


def square_lp_run(
    logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, to_fool: jax.Array, *,
    eps: float, norm: str, n_queries: int, p_init: float, rescale_schedule: bool,
) -> Tuple[jax.Array, jax.Array]:
    """Upstream ``attack_single_run`` (L2 / L1) on every point; ``to_fool``
    masks the points that are queried. Returns ``(x_best, margin_min)``.

    The random draws come from :func:`init_draws` (``fold_in(k_init, tile)``)
    and :func:`query_draws` (``fold_in(k_loop, i)``) with ``k_init, k_loop =
    split(key)``, so a test can replay them in the reference.
    """
    batch, height, width, channels = x.shape
    k_init, k_loop = jax.random.split(key)

    # Init: signed eta tiles.
    tile, corners = init_tiles(height, width)
    tile_pattern = eta_pattern(tile, norm)
    delta_init = jnp.zeros_like(x)
    for j, (vh, vw) in enumerate(corners):
        flip, signs = init_draws(k_init, j, batch, channels, x.dtype)
        pattern = jnp.where(flip, tile_pattern.T, tile_pattern)
        delta_init = delta_init.at[:, vh:vh + tile, vw:vw + tile, :].add(
            pattern[None, :, :, None] * signs)
    x_best = _to_budget(x, delta_init, eps, norm)
    margin_min = margin(logits_fn(x_best), y)

    sides_np = lp_side_table(n_queries, p_init, height, width, channels, rescale_schedule)
    table_np, index_np = _pattern_table(sides_np, height, width, norm)
    sides, table, pattern_index = (jnp.asarray(a) for a in (sides_np, table_np, index_np))
    rows = jnp.arange(height)[None, :, None, None]
    cols = jnp.arange(width)[None, None, :, None]
    eps_sq = jnp.square(jnp.asarray(eps, x.dtype))

    def window(vh, vw, s):
        return ((rows >= vh) & (rows < vh + s) & (cols >= vw) & (cols < vw + s)).astype(x.dtype)

    def cond(c):
        i, margin_min, _ = c
        return (i < n_queries) & jnp.any(to_fool & (margin_min > 0))

    def body(c):
        i, margin_min, x_best = c
        querying = to_fool & (margin_min > 0)
        s = sides[i]
        vh, vw, vh2, vw2, flip, signs = query_draws(k_loop, i, s, height, width, batch,
                                                    channels, x.dtype)
        win1, win2 = window(vh, vw, s), window(vh2, vw2, s)
        delta = x_best - x
        pattern = jnp.roll(table[pattern_index[i], flip.astype(jnp.int32)], (vh, vw),
                           axis=(0, 1))
        fresh = pattern[None, :, :, None] * signs
        union = jnp.maximum(win1, win2)
        if norm == "l2":
            old_norm = jnp.sqrt(_window_sums(jnp.square(delta * win1)))
            image_norm = bcast(flat_norm(delta, "l2"), x)
            union_norm = jnp.sqrt(_window_sums(jnp.square(delta * union)))
            new = fresh + delta * win1 / (1e-12 + old_norm)
            target = jnp.sqrt(jnp.maximum(eps_sq - jnp.square(image_norm), 0.0) / channels
                              + jnp.square(union_norm))
            new = new / (1e-12 + jnp.sqrt(_window_sums(jnp.square(new)))) * target
        else:
            old_norm = _window_sums(jnp.abs(delta * win1))
            image_norm = bcast(flat_norm(delta, "l1"), x)
            union_norm = _window_sums(jnp.abs(delta * union))
            new = fresh + delta * win1 / (1e-12 + old_norm)
            target = (jnp.maximum(eps - image_norm, 0.0) / channels + union_norm) * channels
            new = new / (1e-12 + _window_sums(jnp.abs(new))) * target
        delta = jnp.where(win1 > 0, new, jnp.where(win2 > 0, 0.0, delta))
        x_new = _to_budget(x, delta, eps, norm)
        margin_new = margin(logits_fn(x_new), y)
        accept = querying & ((margin_new < margin_min) | (margin_new <= 0))
        margin_min = jnp.where(accept, margin_new, margin_min)
        x_best = jnp.where(bcast(accept, x), x_new, x_best)
        return i + 1, margin_min, x_best

    _, margin_min, x_best = jax.lax.while_loop(cond, body, (jnp.int32(0), margin_min, x_best))
    return x_best, margin_min


def square_lp_with_flags(
    logits_fn: LogitsFn, x: jax.Array, y: jax.Array, key: jax.Array, *,
    eps: float, norm: str, n_queries: int = 5000, p_init: float = 0.8,
    active: Optional[jax.Array] = None, rescale_schedule: bool = False,
) -> Tuple[jax.Array, jax.Array]:
    """Square Attack for ``norm`` in ``("l2", "l1")``; returns ``(x_adv, robust)``.

    Arguments as :func:`advcore.attacks.square.square` (which validates them
    and calls this for L2 / L1). As upstream ``perturb``, a point is broken
    when the model misclassifies its ``x_best``.
    """
    active = as_active(active, x.shape[0])
    to_fool = (jnp.argmax(logits_fn(x), axis=-1) == y) & active
    x_best, _ = square_lp_run(logits_fn, x, y, key, to_fool, eps=eps, norm=norm,
                              n_queries=n_queries, p_init=p_init,
                              rescale_schedule=rescale_schedule)
    broken = to_fool & (jnp.argmax(logits_fn(x_best), axis=-1) != y)
    adv = jnp.where(bcast(broken, x), x_best, x)
    robust = jnp.where(active, to_fool & ~broken, True)
    return jax.lax.stop_gradient(adv), robust
