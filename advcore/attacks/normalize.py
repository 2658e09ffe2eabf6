"""Attacking a model that expects normalised inputs, in pixel space.

Attacks work on pixels in [0, 1]: ``eps``, the random start and the box
projection are all defined there. A model trained on ``(x - mean) / std``
must therefore not be fed normalised images by the caller (the attacks refuse
inputs outside their bounds); instead the normalisation moves inside the
``logits_fn`` the attack differentiates through.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np


def _per_channel(name: str, value: Any) -> np.ndarray:
    """``value`` as a finite float32 vector of per-channel constants."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} must be a number or a 1-D sequence of numbers (one per channel), "
            f"got {value!r}") from None
    if arr.ndim > 1 or arr.size == 0:
        raise ValueError(
            f"{name} must be a number or a 1-D sequence of numbers (one per channel), "
            f"got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return arr.reshape(-1).astype(np.float32)


def normalized_logits_fn(logits_fn: Callable[..., jax.Array], mean: Any, std: Any
                         ) -> Callable[..., jax.Array]:
    """``x -> logits_fn((x - mean) / std)``: pixels in, for a normalising model.

    Args:
      logits_fn: the model on *normalised* NHWC inputs, ``(B, H, W, C) ->
        (B, K)``. Extra arguments (a key for randomised models) pass through.
      mean, std: per-channel constants on the pixel scale, a number or a
        sequence of ``C`` numbers (e.g. CIFAR-10's ``(0.4914, 0.4822,
        0.4465)`` and ``(0.2471, 0.2435, 0.2616)``); ``std > 0``. They
        broadcast over the last (channel) axis.

    Returns:
      A ``logits_fn`` on pixels in [0, 1] for any attack: gradients flow
      through the normalisation, so ``eps`` stays in pixel units. Raises
      ``ValueError`` when called on inputs whose channel count differs from
      ``len(mean)``.
    """
    mean_c = _per_channel("mean", mean)
    std_c = _per_channel("std", std)
    if not np.all(std_c > 0):
        raise ValueError(f"std must be > 0 in every channel, got {std!r}")
    if mean_c.size != std_c.size and 1 not in (mean_c.size, std_c.size):
        raise ValueError(
            f"mean and std must have one value per channel (or a single value), got "
            f"{mean_c.size} and {std_c.size} values")
    channels = max(mean_c.size, std_c.size)

    def pixel_logits_fn(x: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        if channels > 1 and x.shape[-1] != channels:
            raise ValueError(
                f"x must have {channels} channels on its last axis (NHWC) to match mean/std, "
                f"got shape {x.shape}")
        normalised = (x - mean_c.astype(x.dtype)) / std_c.astype(x.dtype)
        return logits_fn(normalised, *args, **kwargs)

    return pixel_logits_fn
