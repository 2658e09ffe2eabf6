"""Argument checks shared by the attacks.

Checks run only on concrete Python / NumPy values: a traced hyper-parameter
(e.g. ``eps`` under ``vmap``) is accepted without inspection, since its value
is unknown at trace time. Every failure is a ``ValueError`` naming the field
and the valid range.
"""

from __future__ import annotations

import numbers
from typing import Any, Optional, Sequence, Tuple

import jax


def _concrete(value: Any) -> Optional[float]:
    """``float(value)`` if it is a concrete scalar, ``None`` if traced."""
    if isinstance(value, jax.core.Tracer):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a real number, got {value!r}") from None


def check_number(name: str, value: Any, *, min_value: float = None, strict: bool = False,
                 max_value: float = None) -> None:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a number, got {value!r}")
    try:
        v = _concrete(value)
    except ValueError:
        raise ValueError(f"{name} must be a real number, got {value!r}") from None
    if v is None:
        return
    if v != v:  # NaN
        raise ValueError(f"{name} must not be NaN")
    if min_value is not None:
        if strict and not v > min_value:
            raise ValueError(f"{name} must be > {min_value}, got {value}")
        if not strict and not v >= min_value:
            raise ValueError(f"{name} must be >= {min_value}, got {value}")
    if max_value is not None and not v <= max_value:
        raise ValueError(f"{name} must be <= {max_value}, got {value}")


def check_int(name: str, value: Any, *, min_value: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a Python int >= {min_value}, got {value!r}")
    if value < min_value:
        raise ValueError(f"{name} must be >= {min_value}, got {value}")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_bounds(bounds: Any) -> Tuple[float, float]:
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be a pair (lo, hi) with lo < hi, got {bounds!r}") from None
    lo_v, hi_v = _concrete(lo), _concrete(hi)
    if lo_v is not None and hi_v is not None and not lo_v < hi_v:
        raise ValueError(f"bounds must be a pair (lo, hi) with lo < hi, got {bounds!r}")
    return lo, hi


def check_batch(x: Any, y: Any, name: str = "y") -> None:
    """``x`` has a leading batch axis matching ``y``'s (static shapes)."""
    if getattr(x, "ndim", 0) < 1:
        raise ValueError(f"x must have a leading batch axis, got shape {getattr(x, 'shape', ())}")
    if y is None:
        return
    y_shape = getattr(y, "shape", None)
    if y_shape is None or len(y_shape) != 1 or y_shape[0] != x.shape[0]:
        raise ValueError(
            f"{name} must have shape (batch,) = ({x.shape[0]},) to match x {x.shape}, "
            f"got {y_shape}"
        )
