"""The one place that names things: columns, tables, lake folders, DAG and task ids."""

from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import date
from pathlib import Path

log = logging.getLogger(__name__)

# PostgreSQL truncates identifiers to NAMEDATALEN - 1 bytes.
MAX_IDENTIFIER_BYTES = 63

# Warehouse bookkeeping columns added to every loaded table.
LOADED_AT = "_loaded_at"
PARTITION_DATE = "_partition_date"
# Lineage: an integer id per lake file; etl_lake_files maps it to the file, its run and manifest.
FILE_ID = "_file_id"
META_COLUMNS = (LOADED_AT, PARTITION_DATE, FILE_ID)
# Per-row lineage columns of tables loaded by earlier versions (kept, NULL for new rows).
LEGACY_META_COLUMNS = ("_source_file", "_run_id")
LAKE_FILES_TABLE = "etl_lake_files"
# Tables with ``deletes: soft``: when the source stopped having the row's key (NULL: it has it).
DELETED_AT = "_deleted_at"

# Field metadata: the column an extractor decided for a source field (ColumnNames); the lake uses it.
COLUMN_KEY = b"sndw.column"

# Separator between the levels of a flattened nested object: address.geo.lat -> address__geo__lat
NESTED_SEPARATOR = "__"

_CAMEL_1 = re.compile(r"([A-Z]+)([A-Z][a-z])")
_CAMEL_2 = re.compile(r"([a-z0-9])([A-Z])")
_RUNS = re.compile(r" +")
_SOURCE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


def normalize_identifier(name: str) -> str:
    """Lower snake case: ``userId`` -> ``user_id``, ``FIRST APPEARANCE`` -> ``first_appearance``.

    Letters and digits of any script are kept, lower-cased (``Café`` -> ``café``: PostgreSQL
    identifiers hold them, and dropping them loses the name); each run of other characters becomes
    one ``_``; underscores are kept as they are, so the nested separator ``__`` survives; a leading
    digit gets a ``_`` prefix; the result is cut to PostgreSQL's 63-byte limit, never inside a
    character.
    """
    text = _CAMEL_2.sub(r"\1_\2", _CAMEL_1.sub(r"\1_\2", name.strip()))
    text = unicodedata.normalize("NFC", text.lower())
    # letters, marks (the dot of a lower-cased İ) and digits stay; anything else is a separator
    text = "".join(c if c == "_" or unicodedata.category(c)[0] in "LMN" else " " for c in text)
    text = _RUNS.sub("_", text)
    text = text.strip("_") or "column"
    if text[0].isdigit():
        text = f"_{text}"
    return _truncate(text)


def _truncate(text: str, limit: int = MAX_IDENTIFIER_BYTES) -> str:
    encoded = text.encode("utf-8")[:limit]
    return encoded.decode("utf-8", errors="ignore")


def unique_column_names(names: Sequence[str], context: str = "") -> list[str]:
    """Normalise each name; make collisions unique with ``_2``, ``_3`` ... in order of appearance, and log them."""
    taken: set[str] = set()
    return [_unique(original, taken, context) for original in names]


def _unique(original: str, taken: set[str], context: str) -> str:
    candidate = normalize_identifier(original)
    base = candidate
    n = 1
    while candidate in taken or candidate in META_COLUMNS or candidate in LEGACY_META_COLUMNS:
        n += 1
        suffix = f"_{n}"
        candidate = _truncate(base, MAX_IDENTIFIER_BYTES - len(suffix)) + suffix
    if candidate != base:
        log.warning("column %r%s normalises to %r, already taken: renamed to %r",
                    original, f" in {context}" if context else "", base, candidate)
    taken.add(candidate)
    return candidate


class ColumnNames:
    """The column of each source name of one extract (JSON keys, CSV headers): decided once, kept for
    every later record, batch and file.

    Names first seen together (in one record, one header) are not taken in the order they come in,
    which changes from record to record and file to file, but in a fixed one: a name that is its own
    normal form first (``name`` keeps ``name``, ``Name`` gets ``name_2``), then by the name itself.
    """

    def __init__(self, context: str = "") -> None:
        self.context = context
        self.columns: dict[str, str] = {}
        self._taken: set[str] = set()

    def add(self, names: Iterable[str]) -> None:
        new = {name for name in names if name not in self.columns}
        for original in sorted(new, key=lambda name: (normalize_identifier(name) != name, name)):
            self.columns[original] = _unique(original, self._taken, self.context)

    def __getitem__(self, name: str) -> str:
        return self.columns[name]


def validate_source_name(name: str) -> str:
    if not _SOURCE_NAME.match(name):
        raise ValueError(
            "must start with a lower-case letter and hold only lower-case letters, digits and "
            f"underscores (max 63), got {name!r}"
        )
    return name


def dag_id_for(source: str) -> str:
    return source


# DAG ids the project defines itself (dags/*.py besides the sources): a source of the same name
# would replace that DAG, so source names may not take them, nor start with a reserved prefix.
INVALID_CONFIG_PREFIX = "invalid_config_"
RESERVED_DAG_IDS = frozenset({"example_manual_pipeline", "manufacturing_daily_summary"})
RESERVED_DAG_PREFIXES = ("sndw_", INVALID_CONFIG_PREFIX)  # maintenance DAGs (sndw_replay), error DAGs
_DAG_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")
_MAX_DAG_ID = 250


def reserved_dag_id(name: str) -> str | None:
    """Why ``name`` cannot be a source's DAG id, or None when it can."""
    if name in RESERVED_DAG_IDS:
        return f"{name!r} is the id of one of the project's own DAGs"
    prefix = next((p for p in RESERVED_DAG_PREFIXES if name.startswith(p)), None)
    if prefix:
        return f"names starting with {prefix!r} are reserved for the project's own DAGs"
    return None


def invalid_config_dag_id(path: str | Path) -> str:
    """The DAG id that stands in for an invalid config: unique per file name, and stable.

    It is the whole file name (``invalid_config_a-b.yaml``), so ``a-b.yaml``/``a_b.yaml`` and
    ``x.yaml``/``x.yml`` stay apart; a name with characters a DAG id cannot hold has them replaced
    and gets a hash of the real name. A dot or dash is always in it, so no source name can clash.
    """
    name = Path(path).name
    safe = _DAG_ID_UNSAFE.sub("_", name)
    if safe == name and len(INVALID_CONFIG_PREFIX) + len(name) <= _MAX_DAG_ID:
        return f"{INVALID_CONFIG_PREFIX}{name}"
    digest = hashlib.sha256(name.encode("utf-8", "surrogateescape")).hexdigest()[:10]
    room = _MAX_DAG_ID - len(INVALID_CONFIG_PREFIX) - len(digest) - 1
    return f"{INVALID_CONFIG_PREFIX}{safe[:room]}-{digest}"


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


TRANSFORM_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")


def validate_transform_reference(value: str) -> str:
    """Check a transform's ``package.module:function`` without importing anything (configs are
    parsed by the DAG processor, which never imports a transform or pyarrow)."""
    if not TRANSFORM_RE.match(value):
        raise ValueError(f"{value!r} is not 'package.module:function' (e.g. transforms.manufacturing:add_weight_kg)")
    return value
