"""User-facing errors: the CLI shows each as one line on stderr with a non-zero exit code."""

from __future__ import annotations


class RkreproError(Exception):
    """A problem the user can fix; ``str(error)`` is the one line shown to them."""

    exit_code: int = 2


class TableError(RkreproError):
    """Bad tables YAML, or an unknown table/row/variant."""


class DataError(RkreproError):
    """A dataset is missing, truncated or malformed."""


class TrackingError(RkreproError):
    """The MLflow store cannot be reached or used."""
