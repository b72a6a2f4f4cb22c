"""Errors caused by user input: the CLI prints them as one line, without a stack trace."""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the user's data, config or arguments; the message names the file, row or key."""


class BadSampleError(UserError):
    """One product cannot be read (missing, unreadable or corrupt image, path outside the image root)."""
