"""Argument checks shared by the attacks.

Hyper-parameter checks run only on concrete Python / NumPy values: a traced
hyper-parameter (e.g. ``eps`` under ``vmap``) is accepted without inspection,
since its value is unknown at trace time. Every failure is a ``ValueError``
naming the field, the value and the valid range.

``check_input_range`` is the one check on data rather than on
hyper-parameters: the attacks call it on their input ``x``, which only works
when ``x`` is concrete (an eager call). Under ``jit`` / ``vmap`` ``x`` is a
tracer and its values do not exist yet, so evaluation code calls
``check_input_range`` itself on every batch before handing it to a jitted
attack.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

# Norms the eps check knows (the attacks themselves support a subset).
EPS_NORMS = ("linf", "l2", "l1")


def is_traced(value: Any) -> bool:
    return isinstance(value, jax.core.Tracer)


def _concrete(value: Any) -> Optional[float]:
    """``float(value)`` if it is a concrete scalar, ``None`` if traced."""
    if is_traced(value):
        return None
    if isinstance(value, (str, bytes)):  # float("0.1") would pass: a config typo
        raise ValueError(f"expected a real number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected a real number, got {value!r}") from None


def _fmt(v: float) -> str:
    return format(v, "g")


def _range_text(min_value: Optional[float], max_value: Optional[float], strict: bool) -> str:
    if min_value is not None and max_value is not None:
        return f"in {'(' if strict else '['}{_fmt(min_value)}, {_fmt(max_value)}]"
    if min_value is not None:
        return f"{'>' if strict else '>='} {_fmt(min_value)}"
    if max_value is not None:
        return f"<= {_fmt(max_value)}"
    return ""


def check_number(name: str, value: Any, *, min_value: float = None, strict: bool = False,
                 max_value: float = None) -> None:
    """A finite real number in ``[min_value, max_value]`` (``(min_value, ...`` if strict).

    NaN and +-inf are always refused: no attack hyper-parameter means anything
    at infinity (``step_size=inf`` would just saturate every pixel).
    """
    valid = " ".join(filter(None, ("a finite number", _range_text(min_value, max_value, strict))))
    if isinstance(value, bool):
        raise ValueError(f"{name} must be {valid}, got {value!r}")
    try:
        v = _concrete(value)
    except ValueError:
        raise ValueError(f"{name} must be {valid}, got {value!r}") from None
    if v is None:
        return
    ok = math.isfinite(v)
    if ok and min_value is not None:
        ok = v > min_value if strict else v >= min_value
    if ok and max_value is not None:
        ok = v <= max_value
    if not ok:
        raise ValueError(f"{name} must be {valid}, got {value!r}")


def check_int(name: str, value: Any, *, min_value: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a Python int >= {min_value}, got {value!r}")
    if value < min_value:
        raise ValueError(f"{name} must be >= {min_value}, got {value}")


def check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")


def check_bounds(bounds: Any) -> Tuple[float, float]:
    """``bounds = (lo, hi)``: finite numbers with ``lo < hi``; returns them."""
    valid = "a pair (lo, hi) of finite numbers with lo < hi"
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be {valid}, got {bounds!r}") from None
    if isinstance(lo, bool) or isinstance(hi, bool):
        raise ValueError(f"bounds must be {valid}, got {bounds!r}")
    try:
        lo_v, hi_v = _concrete(lo), _concrete(hi)
    except ValueError:
        raise ValueError(f"bounds must be {valid}, got {bounds!r}") from None
    if lo_v is not None and hi_v is not None and not (
            math.isfinite(lo_v) and math.isfinite(hi_v) and lo_v < hi_v):
        raise ValueError(f"bounds must be {valid}, got {bounds!r}")
    return lo, hi


def eps_upper_bound(norm: str, bounds: Tuple[float, float],
                    num_features: Optional[int] = None) -> Optional[float]:
    """The largest meaningful radius: the diameter of the input box in ``norm``.

    With inputs in ``[lo, hi]`` and ``d`` features per example, no two inputs
    are further apart than ``w = hi - lo`` (L-inf), ``w * sqrt(d)`` (L2) or
    ``w * d`` (L1), so a larger ``eps`` constrains nothing: it is a unit
    mistake (``eps=8`` meant as 8/255). ``None`` when the bound is unknown
    (L2 / L1 without ``num_features``, or traced bounds).
    """
    lo, hi = _concrete(bounds[0]), _concrete(bounds[1])
    if lo is None or hi is None:
        return None
    width = hi - lo
    if norm == "linf":
        return width
    if num_features is None:
        return None
    return width * math.sqrt(num_features) if norm == "l2" else width * num_features


def check_eps(eps: Any, *, norm: str, bounds: Tuple[float, float] = (0.0, 1.0),
              num_features: Optional[int] = None) -> None:
    """``eps`` is a finite number in ``[0, eps_upper_bound(norm, bounds, num_features)]``."""
    check_choice("norm", norm, EPS_NORMS)
    if isinstance(eps, bool):
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
    try:
        v = _concrete(eps)
    except ValueError:
        raise ValueError(f"eps must be a finite number >= 0, got {eps!r}") from None
    if v is None:
        return
    upper = eps_upper_bound(norm, bounds, num_features)
    if upper is None:
        if not (math.isfinite(v) and v >= 0):
            raise ValueError(f"eps must be a finite number >= 0 (norm {norm!r}), got {eps!r}")
        return
    if not (math.isfinite(v) and 0 <= v <= upper):
        lo, hi = _fmt(float(bounds[0])), _fmt(float(bounds[1]))
        where = f"inputs in bounds [{lo}, {hi}]"
        if norm != "linf":
            root = "sqrt(d)" if norm == "l2" else "d"
            where += f" with d = {num_features} features per example: (hi - lo) * {root}"
        raise ValueError(
            f"eps must be in [0, {_fmt(upper)}] for norm {norm!r} ({where}; eps is in input "
            f"units, e.g. 8/255 = 0.0314 for 8-bit images), got {eps!r}")


_min_max = jax.jit(lambda x: (jnp.min(x), jnp.max(x)))


def check_input_range(x: Any, bounds: Tuple[float, float] = (0.0, 1.0), *,
                      name: str = "x") -> None:
    """Raises ``ValueError`` unless every entry of ``x`` lies in ``bounds``.

    Attacks never clip their input into the box silently: a model fed
    normalised images (``(x - mean) / std``, values around [-2, 2.6]) would
    otherwise be attacked in the wrong space with a meaningless ``eps``.
    Wrap such a model with ``advcore.attacks.normalized_logits_fn`` and pass
    pixels in [0, 1].

    Host-side: a traced ``x`` (inside ``jit``, ``vmap``, ``grad``) has no
    values yet and passes unchecked, so code that jits an attack calls this on
    each concrete batch first (``advcore.evaluate`` does). NaN fails the check.
    An empty ``x`` passes.
    """
    lo, hi = check_bounds(bounds)
    if is_traced(x) or is_traced(lo) or is_traced(hi):
        return
    if isinstance(x, jax.Array):
        if x.size == 0:
            return
        # Reduced where x lives (device, possibly sharded); only two scalars
        # move. A concrete x can be a constant inside someone's jit trace:
        # evaluate now rather than stage the reduction into that trace.
        with jax.ensure_compile_time_eval():
            x_min, x_max = (float(v) for v in jax.device_get(_min_max(x)))
    else:
        arr = np.asarray(x)
        if arr.size == 0:
            return
        x_min, x_max = float(np.min(arr)), float(np.max(arr))
    if not (x_min >= float(lo) and x_max <= float(hi)):
        raise ValueError(
            f"{name} must lie in bounds [{_fmt(float(lo))}, {_fmt(float(hi))}] (attacks work in "
            f"pixel space and never clip their input), got min {x_min:.7g}, max {x_max:.7g}. "
            "A model that expects normalised inputs must be wrapped with "
            "advcore.attacks.normalized_logits_fn(logits_fn, mean, std) and fed pixels")


def features_per_example(x: Any) -> int:
    """``d = prod(x.shape[1:])`` (static, also under ``jit``); ``x`` needs a batch axis."""
    shape = jnp.shape(x)
    if len(shape) < 1:
        raise ValueError(f"x must have a leading batch axis, got shape {shape}")
    return math.prod(shape[1:])


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
