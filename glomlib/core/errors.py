"""The configuration error that every layer raises for a wrong parameter.

Kept apart so that core.io and core.config can both use it without importing each other.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A parameter or profile is wrong; the message says which one and what to do."""

    exit_code = 2  # glomlib.cli's exit-code table


__all__ = ["ConfigError"]
