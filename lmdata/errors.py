"""Errors shared by every stage. Kept in a module of its own so that importing them pulls in no
stage code (a DVC stage's deps are the import closure of its code: tests/test_dvc_deps.py)."""


class ConfigError(ValueError):
    """Bad configuration (unknown source type, missing path, wrong field): raised before any work."""
