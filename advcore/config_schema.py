"""Declarative config validation, shared by every method package.

A method declares its schema once, as a table ``{dotted.path: check}``, plus
a list of cross-field rules and the paths that may change when a run resumes.
``validate(config, schema)`` then rejects, before anything is built:

* unknown fields (a misspelt field would otherwise be silently ignored) and
  missing ones;
* any value a check refuses, with one line naming the field, the value and
  the valid values, e.g. ``optim.lr must be a finite number in (0, inf), got inf``.

Every check is a function ``check(path, value)`` that raises
``ConfigError`` (a ``ValueError``). Numbers must be finite (NaN and inf are
refused everywhere). Paths are reported as ``config.<path>``, the spelling of
the command-line override (``--config.<path>=...``). Free-form dicts (model keyword arguments, attack overrides) are
declared with ``mapping``.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Iterable, Mapping, Sequence

Check = Callable[[str, Any], None]
Rule = Callable[[Mapping[str, Any]], None]


class ConfigError(ValueError):
    """A config field has an invalid value (the message names field, value and valid values)."""


def is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def choice(choices: Sequence[Any]) -> Check:
    choices = tuple(choices)

    def check(path, v):
        if v not in choices:
            raise ConfigError(f"{path} must be one of {choices}, got {v!r}")

    return check


def integer(lo: int | None = None, hi: int | None = None, extra: tuple = ()) -> Check:
    """An int in ``[lo, hi]`` (either bound optional), or one of ``extra``."""

    def check(path, v):
        if is_int(v) and v in extra:
            return
        if not is_int(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
            rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            alt = f" (or one of {extra})" if extra else ""
            raise ConfigError(f"{path} must be an int {rng}{alt}, got {v!r}")

    return check


def number(lo: float | None = None, hi: float | None = None, lo_open: bool = False,
           hi_open: bool = False, extra: tuple = ()) -> Check:
    """A finite number in the interval (open or closed ends), or one of ``extra``."""

    def check(path, v):
        if is_number(v) and v in extra:
            return
        bad = not is_number(v) or not math.isfinite(v)
        if not bad and lo is not None:
            bad = v <= lo if lo_open else v < lo
        if not bad and hi is not None:
            bad = v >= hi if hi_open else v > hi
        if bad:
            left = "(" if lo_open or lo is None else "["
            right = ")" if hi_open or hi is None else "]"
            lo_s = "-inf" if lo is None else f"{lo:g}"
            hi_s = "inf" if hi is None else f"{hi:g}"
            alt = f" (or one of {extra})" if extra else ""
            raise ConfigError(
                f"{path} must be a number in {left}{lo_s}, {hi_s}{right}{alt}, got {v!r}")

    return check


def boolean(path: str, v: Any) -> None:
    if not isinstance(v, bool):
        raise ConfigError(f"{path} must be True or False, got {v!r}")


def string(path: str, v: Any) -> None:
    if not isinstance(v, str):
        raise ConfigError(f"{path} must be a string, got {v!r}")


def mapping(path: str, v: Any) -> None:
    """A free-form dict (keyword arguments); its entries are not checked here."""
    if not isinstance(v, Mapping) and not hasattr(v, "to_dict"):
        raise ConfigError(f"{path} must be a dict of keyword arguments, got {v!r}")


def subset(choices: Sequence[Any], allow_empty: bool = False) -> Check:
    """A tuple of distinct values from ``choices``."""
    choices = tuple(choices)

    def check(path, v):
        if isinstance(v, str) or not isinstance(v, (tuple, list)):
            raise ConfigError(f"{path} must be a tuple of values from {choices}, got {v!r}")
        if not v and not allow_empty:
            raise ConfigError(f"{path} must not be empty; valid values: {choices}")
        for item in v:
            if item not in choices:
                raise ConfigError(f"{path} entries must be in {choices}, got {item!r}")
        if len(set(v)) != len(v):
            raise ConfigError(f"{path} must not repeat entries, got {tuple(v)!r}")

    return check


def numbers_tuple(lo: float | None = None, lo_open: bool = False, extra: tuple = (),
                  allow_empty: bool = False, increasing: bool = False) -> Check:
    """A tuple of finite numbers, each checked like ``number(lo, lo_open=...)``."""
    each = number(lo, lo_open=lo_open, extra=extra)

    def check(path, v):
        if isinstance(v, str) or not isinstance(v, (tuple, list)) or (not v and not allow_empty):
            raise ConfigError(f"{path} must be a {'' if allow_empty else 'non-empty '}tuple of "
                              f"numbers, got {v!r}")
        for e in v:
            each(f"{path} entries", e)
        if increasing and list(v) != sorted(v):
            raise ConfigError(f"{path} must be increasing, got {tuple(v)!r}")

    return check


def comma_list(item_check: Check, allow_empty: bool = True) -> Check:
    """A comma-separated string whose non-empty items each pass ``item_check``."""

    def check(path, v):
        string(path, v)
        items = [s for s in v.split(",") if s.strip()]
        if not items and not allow_empty:
            raise ConfigError(f"{path} must name at least one item, got {v!r}")
        for item in items:
            item_check(path, item.strip())

    return check


PREFIX = "config."


def flatten(config: Any, free_form: Iterable[str] = (), prefix: str = "") -> dict[str, Any]:
    """``{dotted.path: value}`` of a (nested) config; ``free_form`` paths stay whole."""
    free_form = tuple(free_form)
    items = config.items() if hasattr(config, "items") else []
    out: dict[str, Any] = {}
    for k, v in items:
        path = f"{prefix}{k}"
        if path in free_form:
            out[path] = v.to_dict() if hasattr(v, "to_dict") else v
        elif hasattr(v, "items"):
            out.update(flatten(v, free_form, path + "."))
        else:
            out[path] = v
    return out


def free_form_paths(schema: Mapping[str, Check]) -> tuple[str, ...]:
    return tuple(p for p, c in schema.items() if c is mapping)


def validate(config: Any, schema: Mapping[str, Check], rules: Sequence[Rule] = ()) -> dict:
    """Checks every field of ``config`` against ``schema``, then the cross-field ``rules``.

    Returns the flattened config (unprefixed paths). Raises ``ConfigError``
    naming the first bad field; rules report fields as ``config.<path>`` too.
    """
    flat = flatten(config, free_form_paths(schema))
    for path in flat:
        if path not in schema:
            raise ConfigError(
                f"unknown config field {path!r}; valid fields: {', '.join(sorted(schema))}")
    for path, check in schema.items():
        if path not in flat:
            raise ConfigError(f"config field {path!r} is missing")
        check(PREFIX + path, flat[path])
    for rule in rules:
        rule(flat)
    return flat
