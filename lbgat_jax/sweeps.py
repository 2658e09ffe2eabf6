"""Sweeps: a config file's ``get_sweep()`` list of dotted-path overrides.

Kept apart from ``main.py`` so that importing it defines no absl flags.
"""

from __future__ import annotations

import copy

from advcore import config_files


def apply_overrides(config, overrides: dict):
    """Returns a copy of ``config`` with dotted-path ``overrides`` applied."""
    config = copy.deepcopy(config)
    with config.unlocked():
        for path, value in overrides.items():
            node = config
            *parents, leaf = path.split(".")
            for p in parents:
                node = node[p]
            if leaf not in node:
                raise ValueError(f"sweep override {path!r} names no config field")
            node[leaf] = value
    return config


def load_sweep(config_path: str) -> list[dict]:
    """``get_sweep()`` of the config file at ``config_path`` (':variant' ignored)."""
    path = config_path.split(":")[0]
    module = config_files.load_module(config_files.resolve(path))
    if not hasattr(module, "get_sweep"):
        raise ValueError(f"--sweep: {path} defines no get_sweep()")
    return module.get_sweep()


def run_name(index: int, overrides: dict) -> str:
    return f"{index:02d}_" + "_".join(f"{k.split('.')[-1]}-{v}" for k, v in overrides.items())
