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
``MISMATCH_FACTOR`` = 3 allows for that, and ``SLACK_PIXELS`` covers a batch
whose floor happens to be 0 (one flip in the first step moves a few pixels).
A semantic difference (another step size, start, projection, BN mode or
loss) moves most pixels, far beyond the bound.
"""

from __future__ import annotations

import numpy as np

MISMATCH_FACTOR = 3.0
SLACK_PIXELS = 16


def mismatch(a: np.ndarray, b: np.ndarray, *, ulps: int = 0) -> float:
    """Fraction of pixels that differ by more than ``ulps`` float32 units in
    the last place (0: the fraction not exactly equal)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    spacing = np.spacing(np.maximum(np.abs(a), np.abs(b)))
    return float(np.mean(np.abs(a.astype(np.float64) - b) > ulps * spacing))


def allowed_mismatch(floor: float, num_pixels: int) -> float:
    return MISMATCH_FACTOR * floor + SLACK_PIXELS / num_pixels
