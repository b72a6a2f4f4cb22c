"""Errors the towers raise for a bad setting; the CLI prints them as one line, like the framework's user errors."""

from __future__ import annotations


class ConfigError(ValueError):
    """A tower setting that cannot work (the message names the key and the value)."""
