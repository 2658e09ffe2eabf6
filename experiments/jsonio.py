"""Small files of the studies: JSON markers, cached evaluations, summaries, reports.

A study is killed and resumed often (hours-long runs, one per core), so a
reader treats a missing or half-written file as absent, and a writer replaces
the file atomically: a reader never sees a partial one.
"""

from __future__ import annotations

import json
import os
from typing import Any


def read_json(path: str) -> Any:
    """The file's content, or None if it is missing or not valid JSON."""
    try:
        with open(path) as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (a temporary file, then a rename)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, payload: Any) -> None:
    """Writes ``payload`` (non-JSON values as ``str``) to ``path`` atomically."""
    write_text(path, json.dumps(payload, indent=2, default=str))
