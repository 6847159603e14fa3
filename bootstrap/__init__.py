"""Code that runs on the instances: the data-prep engine (fetch, organise, pack, verify, inspect)."""

__version__ = "0.2.0"
"""The project's version, for both command lines and the package metadata (pyproject reads it here)."""
