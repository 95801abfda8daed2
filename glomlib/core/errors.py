"""The configuration error that every layer raises for a wrong parameter.

Kept apart so that core.io and core.config can both use it without importing each other.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A parameter or profile is wrong; the message says which one and what to do."""

    exit_code = 2  # glomlib.cli's exit-code table


class ModelFileMissing(FileNotFoundError):
    """A model or encoder file (or the run that should hold one) does not exist; the message says how to make it."""

    exit_code = 5  # glomlib.cli's exit-code table: a model or encoder file is missing


__all__ = ["ConfigError", "ModelFileMissing"]
