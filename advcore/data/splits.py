"""tfds-style split strings ('train[:2000]', 'test[10%:]', 'train+test') for local sources.

The tfds source passes split strings straight to tfds; local sources hold the
full split in memory and slice it here with the same rules as tfds
(percent boundaries rounded to the closest example).
"""

from __future__ import annotations

import re
from typing import Callable

import numpy as np

_PART = re.compile(
    r"^\s*(?P<name>[A-Za-z_][\w-]*)\s*"
    r"(?:\[\s*(?P<start>-?\d+%?)?\s*:\s*(?P<stop>-?\d+%?)?\s*\])?\s*$")


def _boundary(text: str | None, n: int) -> int | None:
    if text is None:
        return None
    if text.endswith("%"):
        pct = int(text[:-1])
        if not -100 <= pct <= 100:
            raise ValueError(f"split percentage must be in [-100, 100], got {text}")
        # Same as tfds' default 'closest' rounding.
        return int(round(pct * n / 100.0))
    return int(text)


def parse_split(split: str) -> list[tuple[str, str | None, str | None]]:
    """Parses 'a[x:y]+b' into [(name, start, stop), ...] (boundaries unresolved)."""
    if not isinstance(split, str) or not split.strip():
        raise ValueError(f"split must be a non-empty string, got {split!r}")
    parts = []
    for piece in split.split("+"):
        m = _PART.match(piece)
        if m is None:
            raise ValueError(
                f"split must look like 'train', 'train[:N]', 'train[N:]', "
                f"'train[a:b]' or 'train[a%:b%]' (joined with '+'), got {split!r}")
        parts.append((m["name"], m["start"], m["stop"]))
    return parts


def split_names(split: str) -> list[str]:
    """The base split names used by `split`, e.g. ['train'] for 'train[:10]'."""
    return [name for name, _, _ in parse_split(split)]


def resolve_slice(start: str | None, stop: str | None, n: int) -> slice:
    """Resolves textual boundaries against a split of `n` examples."""
    return slice(*slice(_boundary(start, n), _boundary(stop, n)).indices(n)[:2])


def apply_split(
    split: str,
    get_full: Callable[[str], tuple[np.ndarray, np.ndarray]],
    valid_names: tuple[str, ...] | list[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Applies `split` to full splits returned by `get_full(name) -> (x, y)`."""
    xs, ys = [], []
    for name, start, stop in parse_split(split):
        if name not in valid_names:
            raise ValueError(
                f"split name must be one of {', '.join(valid_names)}, got {name!r}")
        x, y = get_full(name)
        sl = resolve_slice(start, stop, len(y))
        xs.append(x[sl])
        ys.append(y[sl])
    if len(xs) == 1:
        return xs[0], ys[0]
    return np.concatenate(xs), np.concatenate(ys)
