"""Exceptions raised for bad input: each message names the field, the bad value and the fix."""

from __future__ import annotations

__all__ = ["ConfigError", "FitDataError"]


class ConfigError(ValueError):
    """A spec, model or corpus setting that cannot be used as given."""


class FitDataError(ValueError):
    """The data or the options given to a fit are unusable; the message says how to fix them."""
