"""Finding config files by name, in a checkout and in an installed package alike.

A config is named relative to the configs folder, with an optional variant:
``lbgat/mnist.py:smoke``. The same name works everywhere:

1. as a path (absolute, or relative to the current directory; ``configs/``
   may lead it: ``configs/lbgat/mnist.py:smoke`` in a checkout);
2. in the checkout the library was imported from (``<repo>/configs/``);
3. in the installed package's data files
   (``<prefix>/share/boundary-guided-at/configs/``), where ``pip install``
   puts them. There is no importable ``configs`` package in site-packages.

The command lines resolve ``--config`` this way before absl parses it, so
``--config=lbgat/mnist.py:smoke`` works from any directory.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from typing import Any, Optional, Sequence

SHARE_SUBDIR = os.path.join("share", "boundary-guided-at", "configs")
_CHECKOUT_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                 "configs")


def search_roots() -> list[str]:
    """The config folders searched after the current directory, in order."""
    roots = [_CHECKOUT_CONFIGS]
    for prefix in dict.fromkeys([sys.prefix, sys.base_prefix, os.path.expanduser("~/.local")]):
        roots.append(os.path.join(prefix, SHARE_SUBDIR))
    return [r for r in roots if os.path.isdir(r)]


def resolve(spec: str) -> str:
    """``name[:variant]`` -> ``/abs/path/to/file.py[:variant]`` (module docstring)."""
    path, sep, variant = spec.partition(":")
    candidates = [path]
    relative = path[len("configs/"):] if path.startswith("configs/") else path
    if not os.path.isabs(path):
        candidates += [os.path.join(root, relative) for root in search_roots()]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return os.path.abspath(candidate) + sep + variant
    available = sorted({os.path.relpath(os.path.join(d, f), root)
                        for root in search_roots() for d, _, fs in os.walk(root)
                        for f in fs if f.endswith(".py") and not f.startswith("_")})
    raise FileNotFoundError(
        f"--config {path!r} was found neither as a path nor in {search_roots()}; "
        f"valid names: {', '.join(available)}")


def resolve_argv(argv: Sequence[str], flag: str = "config") -> list[str]:
    """``argv`` with the value of ``--<flag>=...`` / ``--<flag> ...`` resolved."""
    out = list(argv)
    for i, arg in enumerate(out):
        if arg.startswith(f"--{flag}="):
            out[i] = f"--{flag}=" + resolve(arg.split("=", 1)[1])
        elif arg == f"--{flag}" and i + 1 < len(out):
            out[i + 1] = resolve(out[i + 1])
    return out


def load_module(path: str) -> Any:
    """Imports a config file by path (as ml_collections' ``config_flags`` does)."""
    name = "_config_" + os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise FileNotFoundError(f"cannot load config file {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(spec: str, lock: bool = True) -> Any:
    """The ``get_config(variant)`` of a named config (``lbgat/mnist.py:demo``)."""
    path, _, variant = resolve(spec).partition(":")
    config = load_module(path).get_config(variant or None)
    if lock:
        config.lock()
    return config


def get_sweep(spec: str) -> Optional[list]:
    """The ``get_sweep()`` list of a named config file (None if it has none)."""
    module = load_module(resolve(spec).partition(":")[0])
    return module.get_sweep() if hasattr(module, "get_sweep") else None
