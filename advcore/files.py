"""Small files written atomically: a reader never sees a half-written table or marker.

A run can be killed at any moment (preemption, Ctrl-C, a full disk), so every
JSON/markdown result is written to a temporary file and renamed over the old
one, and a reader treats a missing or malformed file as absent.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any


def write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (a temporary file, then a rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_json(path: str, payload: Any) -> None:
    """Writes ``payload`` (non-JSON values as ``str``) to ``path`` atomically."""
    write_text(path, json.dumps(payload, indent=2, default=str) + "\n")


def read_json(path: str) -> Any:
    """The file's content, or None if it is missing or not valid JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
