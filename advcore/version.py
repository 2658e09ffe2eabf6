"""The library's version (also the distribution's, read by pyproject.toml)."""

__version__ = "0.2.0"
