"""Carlini-Wagner L2 attack (targeted and untargeted), cleverhans v3 semantics.

Reference: Carlini & Wagner, "Towards Evaluating the Robustness of Neural
Networks", IEEE S&P 2017; defaults and control flow follow cleverhans v3
``CarliniWagnerL2`` (the implementation LADDER used; docs/attacks.md#cw-l2).

Algorithm, per batch (every step is a masked, per-example array op):

* Change of variables: ``x' = (tanh(w + atanh((2 x_s - 1) * 0.999999)) + 1) / 2``
  scaled back to ``bounds``, so ``x'`` is always inside the box; ``w`` starts
  at 0 at every binary-search step (Adam state reset too, as in cleverhans).
* Objective per example: ``||x' - x~||_2^2 + c * f(x')`` with
  ``f = max(0, max_{j!=t} z_j - z_t + confidence)`` (targeted) or
  ``max(0, z_y - max_{j!=y} z_j + confidence)`` (untargeted), summed over the
  batch and minimised with Adam (lr 5e-3, betas 0.9/0.999, eps 1e-8, TF
  bias correction) written inline in a ``lax.while_loop``. ``x~`` is the
  tanh round trip of ``x`` (cleverhans ``other``).
* Abort early: every ``max(max_iterations // 10, 1)`` iterations, stop the
  inner loop if the total loss has not dropped below ``0.9999`` times its
  value at the previous check (the stopping iteration is not recorded).
* Tracking: an iterate counts when it is adversarial *with* the confidence
  margin; per example we keep the successful iterate with the smallest L2
  distance across all binary-search steps. Examples never broken are returned
  unchanged (``x``).
* Binary search on ``c`` per example (start ``initial_const``): success ->
  ``upper = min(upper, c)``, ``c = (lower + upper) / 2``; failure ->
  ``lower = max(lower, c)``, ``c = (lower + upper) / 2`` if an upper bound is
  known (``< 1e9``), else ``c *= 10``. With ``binary_search_steps >= 10`` the
  last step uses ``c = upper`` (cleverhans ``repeat``).

The logits, loss and best-tracking use the pre-update iterate of each Adam
step (TF1 fetches the values read before the update in the same run).
"""

from __future__ import annotations

from typing import Callable, Optional, Tuple

import jax
import jax.numpy as jnp
from jax import lax

from advcore.attacks import _validation as V
from advcore.attacks import norms
from advcore.attacks.targets import num_classes_of, random_targets

_ADAM_B1, _ADAM_B2, _ADAM_EPS = 0.9, 0.999, 1e-8
_BIG = 1e10


def cw_l2(
    logits_fn: Callable[[jax.Array], jax.Array],
    x: jax.Array,
    y: Optional[jax.Array],
    key: Optional[jax.Array] = None,
    *,
    targeted: bool = False,
    target: Optional[jax.Array] = None,
    confidence: float = 0.0,
    learning_rate: float = 5e-3,
    binary_search_steps: int = 5,
    max_iterations: int = 1000,
    initial_const: float = 1e-2,
    abort_early: bool = True,
    bounds: Tuple[float, float] = (0.0, 1.0),
) -> jax.Array:
    """Carlini-Wagner L2 (cleverhans v3 defaults); see the module docstring.

    Args:
      logits_fn: ``(B, ...) -> (B, K)`` logits (eval mode).
      x: clean inputs in ``bounds``; a concrete ``x`` outside raises
        ``ValueError``. A traced ``x`` (under ``jit``) cannot be checked and is
        clipped into the box before the change of variables (``atanh`` needs
        it), so jitting callers run ``check_input_range`` on each batch first.
      y: true labels ``(B,)`` (needed untargeted; for targeted attacks only
        used to draw random targets).
      key: only used to draw random targets when ``targeted`` and ``target``
        is None (``random_targets(key, y, K)``).
      targeted: reach ``target`` instead of leaving ``y``.
      target: int target labels ``(B,)``.
      confidence: kappa, the required logit margin (finite, >= 0; 0).
      learning_rate: Adam step size (finite, > 0; 5e-3).
      binary_search_steps: outer steps over ``c`` (5).
      max_iterations: Adam iterations per outer step (1000; tests use few).
      initial_const: starting ``c`` (finite, > 0; 1e-2).
      abort_early: stop an inner loop that stops improving (True).
      bounds: the input box, finite with ``lo < hi`` (0, 1).

    CW-L2 has no ``eps``: it minimises the distance instead of bounding it.

    Returns:
      ``stop_gradient`` of the smallest-L2 successful adversarial per example
      (``x`` where none was found); same shape and dtype as ``x``.
    """
    lo, hi = V.check_bounds(bounds)
    V.check_number("confidence", confidence, min_value=0.0)
    V.check_number("learning_rate", learning_rate, min_value=0.0, strict=True)
    V.check_int("binary_search_steps", binary_search_steps, min_value=1)
    V.check_int("max_iterations", max_iterations, min_value=1)
    V.check_number("initial_const", initial_const, min_value=0.0, strict=True)
    if not isinstance(targeted, bool):
        raise ValueError(f"targeted must be a bool, got {targeted!r}")
    V.check_input_range(x, bounds)
    x = jnp.asarray(x)
    if targeted:
        if target is None:
            if key is None or y is None:
                raise ValueError("targeted cw_l2 needs target=... (or y and a key to draw "
                                 "random targets)")
            target = random_targets(key, jnp.asarray(y), num_classes_of(logits_fn, x))
        labels = jnp.asarray(target).astype(jnp.int32)
        V.check_batch(x, labels, "target")
    else:
        if y is None:
            raise ValueError("untargeted cw_l2 needs the true labels y, got None")
        labels = jnp.asarray(y).astype(jnp.int32)
        V.check_batch(x, labels)

    dtype = x.dtype
    x32 = x.astype(jnp.float32)
    batch = x.shape[0]
    scale = hi - lo
    x_unit = jnp.clip((x32 - lo) / scale, 0.0, 1.0)
    t_img = jnp.arctanh((x_unit * 2.0 - 1.0) * 0.999999)
    x_ref = (jnp.tanh(t_img) + 1.0) / 2.0 * scale + lo  # cleverhans ``other``
    check_every = max(max_iterations // 10, 1)
    num_classes = num_classes_of(logits_fn, x)
    is_label = jax.nn.one_hot(labels, num_classes, dtype=jnp.bool_)

    def new_image(w):
        return (jnp.tanh(w + t_img) + 1.0) / 2.0 * scale + lo

    def margins(z):
        """(z_label, max_{j != label} z_j) in float32."""
        z = z.astype(jnp.float32)
        real = jnp.sum(jnp.where(is_label, z, 0.0), axis=-1)
        other = jnp.max(jnp.where(is_label, -jnp.inf, z), axis=-1)
        return real, other

    def total_loss(w, const):
        img = new_image(w)
        z = logits_fn(img.astype(dtype))
        real, other = margins(z)
        if targeted:
            f = jnp.maximum(0.0, other - real + confidence)
        else:
            f = jnp.maximum(0.0, real - other + confidence)
        l2 = jnp.sum(jnp.square(img - x_ref), axis=tuple(range(1, img.ndim)))
        return jnp.sum(const * f) + jnp.sum(l2), (l2, z, img)

    loss_and_grad = jax.value_and_grad(total_loss, has_aux=True)

    def succeeds(z):
        """cleverhans ``compare`` on logits: adversarial with the confidence margin."""
        z = z.astype(jnp.float32)
        shift = -confidence if targeted else confidence
        pred = jnp.argmax(jnp.where(is_label, z + shift, z), axis=-1)
        return pred == labels if targeted else pred != labels

    def outer_body(step, carry):
        const, lower, upper, best_l2, best_x = carry
        if binary_search_steps >= 10:
            const = jnp.where(step == binary_search_steps - 1, upper, const)

        def inner_cond(c):
            it, stopped = c[0], c[1]
            return (it < max_iterations) & ~stopped

        def inner_body(c):
            it, _, w, m, v, prev, found, best_l2, best_x = c
            (loss, (l2, z, img)), g = loss_and_grad(w, const)
            check = (it % check_every) == 0
            stop = abort_early & check & (loss > prev * 0.9999)
            prev = jnp.where(check, loss, prev)
            ok = (~stop) & succeeds(z)
            found = found | ok  # this round's success drives the binary search
            improved = ok & (l2 < best_l2)
            best_l2 = jnp.where(improved, l2, best_l2)
            best_x = jnp.where(norms._bcast(improved, best_x), img, best_x)
            # Adam with TF's bias-corrected step size.
            t = (it + 1).astype(jnp.float32)
            m = _ADAM_B1 * m + (1.0 - _ADAM_B1) * g
            v = _ADAM_B2 * v + (1.0 - _ADAM_B2) * jnp.square(g)
            lr_t = learning_rate * jnp.sqrt(1.0 - _ADAM_B2**t) / (1.0 - _ADAM_B1**t)
            w = w - lr_t * m / (jnp.sqrt(v) + _ADAM_EPS)
            return it + 1, stop, w, m, v, prev, found, best_l2, best_x

        zeros = jnp.zeros_like(x32)
        init = (jnp.int32(0), jnp.bool_(False), zeros, zeros, zeros, jnp.float32(1e6),
                jnp.zeros((batch,), bool), best_l2, best_x)
        out = lax.while_loop(inner_cond, inner_body, init)
        found, best_l2, best_x = out[6], out[7], out[8]

        upper = jnp.where(found, jnp.minimum(upper, const), upper)
        lower = jnp.where(found, lower, jnp.maximum(lower, const))
        const = jnp.where(upper < 1e9, (lower + upper) / 2.0,
                          jnp.where(found, const, const * 10.0))
        return const, lower, upper, best_l2, best_x

    init = (jnp.full((batch,), initial_const, jnp.float32), jnp.zeros((batch,), jnp.float32),
            jnp.full((batch,), _BIG, jnp.float32), jnp.full((batch,), _BIG, jnp.float32), x32)
    out = lax.fori_loop(0, binary_search_steps, outer_body, init)
    return lax.stop_gradient(out[4].astype(dtype))
