"""Fixtures of the fault-injection suite (helpers in faults_helpers.py)."""

from faults_helpers import cache_dir, reference  # noqa: F401
