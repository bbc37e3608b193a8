"""The one place that names things: columns, tables, lake folders, DAG and task ids."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from datetime import date
from pathlib import Path

log = logging.getLogger(__name__)

# PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes.
MAX_IDENTIFIER_BYTES = 63

# Warehouse bookkeeping columns added to every loaded table.
LOADED_AT = "_loaded_at"
SOURCE_FILE = "_source_file"
PARTITION_DATE = "_partition_date"
RUN_ID = "_run_id"
META_COLUMNS = (LOADED_AT, SOURCE_FILE, PARTITION_DATE, RUN_ID)

# Separator between the levels of a flattened nested object: address.geo.lat -> address__geo__lat
NESTED_SEPARATOR = "__"

_CAMEL_1 = re.compile(r"([A-Z]+)([A-Z][a-z])")
_CAMEL_2 = re.compile(r"([a-z0-9])([A-Z])")
_INVALID = re.compile(r"[^a-z0-9_]+")
_SOURCE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def normalize_identifier(name: str) -> str:
    """Lower snake case: ``userId`` -> ``user_id``, ``FIRST APPEARANCE`` -> ``first_appearance``.

    Each run of characters that are not letters, digits or underscores becomes one ``_``;
    underscores are kept as they are, so the nested separator ``__`` survives; a leading digit gets
    a ``_`` prefix; the result is cut to PostgreSQL's 63-byte limit.
    """
    text = _CAMEL_2.sub(r"\1_\2", _CAMEL_1.sub(r"\1_\2", name.strip()))
    text = _INVALID.sub("_", text.lower())
    text = text.strip("_") or "column"
    if text[0].isdigit():
        text = f"_{text}"
    return _truncate(text)


def _truncate(text: str, limit: int = MAX_IDENTIFIER_BYTES) -> str:
    encoded = text.encode("utf-8")[:limit]
    return encoded.decode("utf-8", errors="ignore")


def unique_column_names(names: Sequence[str], context: str = "") -> list[str]:
    """Normalise each name; make collisions unique with ``_2``, ``_3`` ... and log them."""
    result: list[str] = []
    taken: set[str] = set()
    for original in names:
        candidate = normalize_identifier(original)
        base = candidate
        n = 1
        while candidate in taken or candidate in META_COLUMNS:
            n += 1
            suffix = f"_{n}"
            candidate = _truncate(base, MAX_IDENTIFIER_BYTES - len(suffix)) + suffix
        if candidate != base:
            log.warning("column %r%s normalises to %r, already taken: renamed to %r",
                        original, f" in {context}" if context else "", base, candidate)
        taken.add(candidate)
        result.append(candidate)
    return result


def validate_source_name(name: str) -> str:
    if not _SOURCE_NAME.match(name):
        raise ValueError(
            "must start with a lower-case letter and hold only lower-case letters, digits and "
            f"underscores (max 63), got {name!r}"
        )
    return name


def dag_id_for(source: str) -> str:
    return source


def extract_task_id(table: str) -> str:
    return f"extract_{table}"


def load_task_id(table: str) -> str:
    return f"load_{table}"


def lake_partition_dir(lake_root: str | Path, protocol: str, source: str, table: str, partition: date) -> Path:
    """``<lake_root>/<protocol>/<source>/<table>/<YYYY-MM-DD>``"""
    return Path(lake_root) / protocol / source / table / partition.isoformat()


def lake_table_dir(lake_root: str | Path, protocol: str, source: str, table: str) -> Path:
    return Path(lake_root) / protocol / source / table


def qualified(schema: str, table: str) -> str:
    """Human-readable ``schema.table`` for logs, audit rows and messages (never for SQL)."""
    return f"{schema}.{table}"


def advisory_lock_key(schema: str, table: str) -> str:
    return f"sndw:{schema}.{table}"


def partition_child_table(table: str, partition: date) -> str:
    suffix = f"__p{partition:%Y%m%d}"
    return _truncate(table, MAX_IDENTIFIER_BYTES - len(suffix)) + suffix


def join_nonempty(parts: Iterable[str], sep: str = ", ") -> str:
    return sep.join(p for p in parts if p)
