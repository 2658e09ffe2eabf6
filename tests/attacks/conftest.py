"""Shared fixtures of the attack tests: the tiny trained MLP of ``aa_tiny_model``."""

import pytest

import aa_tiny_model as tiny


@pytest.fixture(scope="session")
def params():
    """``TinyMLP``'s trained parameters (trained once per session)."""
    return tiny.trained_params()
