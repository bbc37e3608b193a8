"""The project's exceptions: one base class, specific subclasses that carry their context."""

from __future__ import annotations

from collections.abc import Sequence


class SndwError(Exception):
    """Base class of every error this project raises on purpose.

    Its message is redacted when the error is made (``sndw.audit.redact``: every registered secret in
    every encoding, URL userinfo, ``password=...``): the text Airflow prints in a task's traceback
    ("Task failed with exception", which ``airflow dags test`` shows unmasked) is the one the audit
    row holds, whichever raise site built it.
    """

    def __init__(self, *args: object) -> None:
        from sndw.audit import redact

        super().__init__(*(redact(arg) if isinstance(arg, str) else arg for arg in args))


class PermanentError(SndwError):
    """An error that no retry can fix (bad config, schema conflict, unreadable input)."""


class ConfigError(PermanentError, ValueError):
    """A source config is invalid; the message names the file and the field. Permanent: a task
    that meets one at run time fails at once instead of retrying.

    A file with several problems gives one line ``<file>: <field>: <message>`` per problem, so a
    user fixes them all in one go; ``field`` and ``detail`` are the first problem's.
    """

    def __init__(self, path: str, field: str, message: str, more: Sequence[tuple[str, str]] = ()) -> None:
        self.path = path
        self.field = field
        self.detail = message
        self.problems: list[tuple[str, str]] = [(field, message), *more]
        super().__init__("\n".join(f"{path}: {f}: {m}" if f else f"{path}: {m}" for f, m in self.problems))


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


class Paused(SndwError):
    """A checkpointed extract stopped at a batch boundary because its pipeline was paused.

    Its progress is in the lake's in-progress folder: the next attempt with the same resume key
    continues after ``position`` instead of starting over.
    """

    def __init__(self, table: str, rows: int, position: object) -> None:
        self.table = table
        self.rows = rows
        self.position = position
        super().__init__(f"{table}: paused after {rows} rows (checkpoint at position {position}); "
                         "resuming the pipeline continues from there")


class PartitionValidationError(PermanentError):
    """An extract's files failed the checks made before they may replace a lake partition."""

    def __init__(self, table: str, partition: str, message: str, column: str | None = None) -> None:
        self.table = table
        self.partition = partition
        self.column = column
        super().__init__(f"lake partition {partition} of {table}: {message}; the previous partition is unchanged")


class EmptyExtractError(PermanentError):
    """A load that would replace data was given an extract of 0 rows and ``allow_empty`` is off."""


class SourceDataError(PermanentError, ExtractError):
    """The source returned data that cannot be turned into rows (malformed JSON, bad file)."""


class LoadError(SndwError):
    """A load into the warehouse failed; the transaction was rolled back."""


class PartitionReplacedError(PermanentError, LoadError):
    """The lake files a load was given are gone: another run's extract of the same partition replaced
    them. No retry of this load can find them again; the newer extract has a load of its own."""
