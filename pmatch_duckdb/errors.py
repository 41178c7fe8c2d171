"""Exceptions users see. Each message says what went wrong and how to fix it."""

from __future__ import annotations


class PmatchError(Exception):
    """Base class of every error pmatch-duckdb raises on purpose."""


class ModelNotFoundError(PmatchError):
    """A model bundle is not installed under the pmatch home."""


class ModelIntegrityError(PmatchError):
    """A model bundle's files do not match the hashes recorded in its manifest."""


class ConfigError(PmatchError):
    """A setting (image roots, model name, limits) is invalid."""
