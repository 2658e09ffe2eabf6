"""The studies' small files: ``advcore.files``' atomic writes and tolerant reads.

A study is killed and resumed often (hours-long runs, one per core), so a
reader treats a missing or half-written file as absent, and a writer replaces
the file atomically: a reader never sees a partial one.
"""

from advcore.files import read_json, write_json, write_text

__all__ = ["read_json", "write_json", "write_text"]
