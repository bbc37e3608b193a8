"""The project's exceptions: one base class, specific subclasses that carry their context."""

from __future__ import annotations


class SndwError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(SndwError, ValueError):
    """A source config is invalid; the message names the file and the field."""

    def __init__(self, path: str, field: str, message: str) -> None:
        self.path = path
        self.field = field
        self.detail = message
        where = f"{path}: {field}" if field else path
        super().__init__(f"{where}: {message}")


class PermanentError(SndwError):
    """An error that no retry can fix (bad config, schema conflict, unreadable input)."""


class SchemaConflictError(PermanentError):
    """A source column's type no longer fits the warehouse column and cannot be widened safely."""

    def __init__(self, table: str, column: str, old_type: str, new_type: str) -> None:
        self.table = table
        self.column = column
        self.old_type = old_type
        self.new_type = new_type
        super().__init__(
            f"schema conflict in {table}.{column}: warehouse type {old_type} cannot hold source type "
            f"{new_type}; widen or rename the column in the warehouse, or cast it in the source config"
        )


class ExtractError(SndwError):
    """A source could not be read."""


class SourceDataError(PermanentError, ExtractError):
    """The source returned data that cannot be turned into rows (malformed JSON, bad file)."""


class LoadError(SndwError):
    """A load into the warehouse failed; the transaction was rolled back."""
