"""How two attack implementations' adversarial batches are compared.

Sign-gradient attacks amplify rounding: a gradient component within rounding
of 0 can get a different sign in two correct float32 implementations, which
moves that pixel by a whole step and changes every later gradient a little.
So two runs from the same start agree exactly on most pixels but not all,
and how many may differ is measured, not guessed: the same PyTorch attack is
run once with float32 gradients and once with float64 gradients (the iterate
and its update stay float32, so the runs differ *only* in such sign
decisions); the fraction of pixels where they differ is the floor ``F``.

Each float32 implementation departs from the float64 path at about ``F``,
independently, so the library and the float32 reference may differ on about
``2F`` of the pixels, more where early flips compound over the steps:
``MISMATCH_FACTOR`` = 3 allows for that. The float64 run cannot reveal one
kind of event: a ReLU input within rounding of 0 that only the library's
float32 computation gates differently, which changes the gradient over that
unit's receptive field (measured: 23 pixels of one example, at step 10 of
PGD-20, on a batch whose floor is 0). ``SLACK_FRACTION`` = 0.1 % of the
pixels covers a few such events. A semantic difference (another step size,
start, projection, BN mode or loss) moves most pixels, far beyond the bound.
"""

from __future__ import annotations

import numpy as np

MISMATCH_FACTOR = 3.0
SLACK_FRACTION = 1e-3


def mismatch_mask(a: np.ndarray, b: np.ndarray, *, ulps: int = 0) -> np.ndarray:
    """Where ``a`` and ``b`` differ by more than ``ulps`` float32 units in the
    last place (0: where they are not exactly equal)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    spacing = np.spacing(np.maximum(np.abs(a), np.abs(b)))
    return np.abs(a.astype(np.float64) - b) > ulps * spacing


def mismatch(a: np.ndarray, b: np.ndarray, *, ulps: int = 0) -> float:
    """Fraction of pixels in ``mismatch_mask``."""
    return float(np.mean(mismatch_mask(a, b, ulps=ulps)))


def allowed_mismatch(floor: float) -> float:
    """The largest fraction of differing pixels accepted, given the floor."""
    return MISMATCH_FACTOR * floor + SLACK_FRACTION


def jitted_start(key, x, **random_init_kwargs) -> np.ndarray:
    """The attack's random start for ``key``, computed as the jitted attack computes it.

    Under ``jit`` XLA:CPU fuses ``x + eps·δ`` into a fused multiply-add (one
    rounding instead of two), so an eagerly computed start differs from the
    attack's own start by one ulp on about 2 % of the pixels (measured).
    """
    import jax

    from advcore.attacks import norms

    start = jax.jit(lambda k, z: norms.random_init(k, z, **random_init_kwargs))(key, x)
    return np.asarray(start)
