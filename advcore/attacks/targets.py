"""Target-label helpers for targeted attacks (CW-L2, JSMA, targeted PGD)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from advcore.attacks import _validation as V


def random_targets(key: jax.Array, y: jax.Array, num_classes: int) -> jax.Array:
    """A uniformly random target class different from ``y`` per example.

    ``t = (y + U{1, ..., K-1}) mod K`` (cleverhans ``random_targets`` draws
    from the same distribution). Needs ``num_classes >= 2``.
    """
    V.check_int("num_classes", num_classes, min_value=2)
    y = jnp.asarray(y).astype(jnp.int32)
    shift = jax.random.randint(key, y.shape, 1, num_classes, dtype=jnp.int32)
    return (y + shift) % num_classes


def num_classes_of(logits_fn, x: jax.Array) -> int:
    """The static number of logits of ``logits_fn`` on ``x`` (no FLOPs: eval_shape)."""
    return int(jax.eval_shape(logits_fn, x).shape[-1])
