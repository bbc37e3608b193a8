"""Loading lake partitions into PostgreSQL: DDL from Arrow schemas, schema evolution, binary COPY.

One load is one transaction: the table's DDL changes, the rows, and the audit row commit together
or not at all. Loads into the same table are serialised with a transaction-level advisory lock.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

import pgpq
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from pgpq import encoders as pgpq_encoders
from pgpq import schema as pgpq_schema
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from sndw import storage
from sndw.audit import AuditRecord, audit_table, ensure_audit_table, insert_audit_row
from sndw.checks_config import Check
from sndw.ddl import create_schema
from sndw.errors import EmptyExtractError, LoadError, PermanentError, SchemaConflictError
from sndw.lake import PG_TYPE_KEY, Manifest, iter_file_batches, partition_rows
from sndw.naming import (
    FILE_ID,
    LAKE_FILES_TABLE,
    LOADED_AT,
    META_COLUMNS,
    PARTITION_DATE,
    advisory_lock_key,
    partition_child_table,
    qualified,
)
from sndw.progress import Progress
from sndw.quality import (
    CheckScope,
    QualityCheckError,
    ResultContext,
    insert_results,
    rejected_table_name,
    run_checks,
    summary,
    write_results,
)
from sndw.state import Watermark, save_watermark
from sndw.transform import BatchTransform, load_transform, output_schema, transformed_batches

log = logging.getLogger(__name__)

NUL = "\x00"
NUL_REPLACEMENT = "\ufffd"  # PostgreSQL text cannot hold NUL: it becomes U+FFFD, counted in the log
# The load reads and encodes a file in batches of about this many (uncompressed) bytes: 1M bench
# rows (148 bytes each) loaded 1.01-1.06x psql's binary COPY in batches of 100,000 rows and
# 1.09-1.21x in batches of 10,000-20,000 (3 runs of 6 paired rounds), with 100 MiB less peak RSS:
# smaller batches fit the CPU caches and hand the server its first rows sooner.
LOAD_BATCH_BYTES = 2 << 20

# ------------------------------------------------------------------------------ type mapping


def pg_type_for(data_type: pa.DataType) -> str:
    """The warehouse column type for a lake column type."""
    t = data_type
    if isinstance(t, pa.BaseExtensionType):
        return "jsonb" if t.extension_name == "arrow.json" else pg_type_for(t.storage_type)
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "text"
    if pa.types.is_boolean(t):
        return "boolean"
    if pa.types.is_integer(t):
        return "numeric" if t == pa.uint64() else "bigint"
    if pa.types.is_floating(t):
        return "double precision"
    if pa.types.is_decimal(t):
        return "numeric"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamp with time zone"
    if pa.types.is_time(t):
        return "time without time zone"
    if pa.types.is_duration(t):
        return "interval"
    if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
        return "bytea"
    if pa.types.is_nested(t):  # list, large list, struct, map
        return "jsonb"
    return "text"


def warehouse_type(fld: pa.Field) -> str:
    """The warehouse column type of a lake field: the source's own type when the extract recorded
    it (PostgreSQL sources, ``PG_TYPE_KEY``), else the one its lake type maps to."""
    declared = (fld.metadata or {}).get(PG_TYPE_KEY)
    return declared.decode() if declared else pg_type_for(fld.type)


def _declared(fld: pa.Field) -> str | None:
    value = (fld.metadata or {}).get(PG_TYPE_KEY)
    return value.decode() if value else None


def _base_pg_type(pg_type: str) -> str:
    """The type without its modifiers: ``timestamp(3) with time zone`` -> ``timestamp with time zone``."""
    return " ".join(re.sub(r"\([^)]*\)", " ", pg_type).split())


# What incoming lake types each warehouse type accepts without change, and how to cast them so the
# binary COPY sees the exact width PostgreSQL expects.
_INT_TARGET = {"bigint": pa.int64(), "integer": pa.int32(), "smallint": pa.int16()}
_FLOAT_TARGET = {"double precision": pa.float64(), "real": pa.float32()}
_TEXT_TYPES = {"text", "character varying", "character", "name", "citext"}


@dataclass(frozen=True)
class ColumnPlan:
    """How one lake column is written into an existing warehouse column."""

    name: str
    pg_type: str
    arrow_type: pa.DataType  # what the batch is cast to before encoding
    output: str  # "native", "jsonb" or "json-text" (nested values written as JSON)


def _is_json_like(t: pa.DataType) -> bool:
    if isinstance(t, pa.BaseExtensionType):
        return t.extension_name == "arrow.json"
    return pa.types.is_nested(t)


def plan_column(table: str, name: str, pg_type: str, incoming: pa.DataType,
                declared: str | None = None) -> ColumnPlan | str:
    """The cast for ``incoming`` into a column of ``pg_type``, or the wider type the column needs.

    ``declared`` is the source's own type of a column a PostgreSQL source carried as text (say
    ``tsvector``): it is loaded as text through a staging table and cast there ("staged").
    Raises SchemaConflictError when the change cannot be made safely.
    """
    base = _base_pg_type(pg_type)
    t = incoming
    if pa.types.is_null(t):
        return ColumnPlan(name, pg_type, pa.null(), "null")
    if (declared and pa.types.is_string(t) and base not in _TEXT_TYPES and base not in ("json", "jsonb")):
        if declared.replace(" ", "") != pg_type.replace(" ", ""):
            raise SchemaConflictError(table, name, pg_type, declared)
        return ColumnPlan(name, pg_type, pa.string(), "staged")
    if declared and base in ("json", "jsonb") and pa.types.is_string(t):
        return ColumnPlan(name, pg_type, pa.string(), "jsonb" if base == "jsonb" else "json-text")
    if base in _TEXT_TYPES:
        if _is_json_like(t):
            return ColumnPlan(name, pg_type, pa.string(), "json-text")
        return ColumnPlan(name, pg_type, pa.string(), "native")
    if base in ("jsonb", "json"):
        if _is_json_like(t):
            return ColumnPlan(name, pg_type, pa.string(), "jsonb" if base == "jsonb" else "json-text")
    elif base in _INT_TARGET:
        if pa.types.is_integer(t) and t != pa.uint64():
            return ColumnPlan(name, pg_type, _INT_TARGET[base], "native")
        if pa.types.is_decimal(t) or t == pa.uint64():
            return "numeric"  # BIGINT -> NUMERIC keeps every value exactly
    elif base in _FLOAT_TARGET:
        if pa.types.is_floating(t) or pa.types.is_integer(t):
            return ColumnPlan(name, pg_type, _FLOAT_TARGET[base], "native")
    elif base == "numeric":
        if pa.types.is_decimal(t):
            return ColumnPlan(name, pg_type, t, "native")
        if pa.types.is_integer(t):
            return ColumnPlan(name, pg_type, pa.decimal128(20, 0), "native")
    elif base == "boolean":
        if pa.types.is_boolean(t):
            return ColumnPlan(name, pg_type, pa.bool_(), "native")
    elif base == "date":
        if pa.types.is_date(t):
            return ColumnPlan(name, pg_type, pa.date32(), "native")
    elif base in ("timestamp with time zone", "timestamp without time zone"):
        if pa.types.is_timestamp(t) and t.tz is None and base == "timestamp without time zone":
            return ColumnPlan(name, pg_type, pa.timestamp("us"), "native")  # wall-clock time as is
        if pa.types.is_timestamp(t):
            return ColumnPlan(name, pg_type, pa.timestamp("us", tz="UTC"), "native")
        if pa.types.is_date(t):
            return ColumnPlan(name, pg_type, pa.timestamp("us", tz="UTC"), "native")
    elif base == "time without time zone":
        if pa.types.is_time(t):
            return ColumnPlan(name, pg_type, pa.time64("us"), "native")
    elif base == "interval":
        if pa.types.is_duration(t):
            return ColumnPlan(name, pg_type, pa.duration("us"), "native")
    elif base == "bytea":
        if pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
            return ColumnPlan(name, pg_type, pa.binary(), "native")
    raise SchemaConflictError(table, name, pg_type, f"{incoming} ({pg_type_for(incoming)})")


# ----------------------------------------------------------------------------- table DDL


@dataclass
class LoadSpec:
    schema: str
    table: str
    write_mode: str = "replace"
    primary_key: Sequence[str] = ()
    # replace/partition: an extract of 0 rows would empty the table (or the date); refused unless set.
    allow_empty: bool = False
    # A table's ``transform`` (``package.module:function``), resolved by load_files; see sndw.transform.
    transform: str | BatchTransform | None = None
    # Quality checks (``sndw.checks_config.Check``) run on this load's rows before it commits: sndw.quality.
    checks: Sequence[Check] = ()

    @property
    def qualified(self) -> str:
        return qualified(self.schema, self.table)

    def ident(self, table: str | None = None) -> sql.Composed:
        return sql.SQL(".").join([sql.Identifier(self.schema), sql.Identifier(table or self.table)])


@dataclass
class LoadResult:
    table: str
    write_mode: str
    rows_loaded: int
    files: int
    schema_changes: list[dict[str, Any]] = field(default_factory=list)
    nul_replaced: int = 0
    seconds: float = 0.0
    skipped: bool = False
    # The quality checks' results (sndw.quality.summary) and the rows they moved to _rejected_<table>.
    checks: dict[str, Any] | None = None
    rows_rejected: int = 0
    # The ``_file_id`` of each file this load wrote: its rows in the table, for the checks.
    file_ids: list[int] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "table": self.table, "write_mode": self.write_mode, "rows_loaded": self.rows_loaded,
            "files": self.files, "schema_changes": self.schema_changes, "nul_replaced": self.nul_replaced,
            "seconds": round(self.seconds, 3), "skipped": self.skipped,
        }
        if self.checks is not None:
            out.update(checks=self.checks, rows_rejected=self.rows_rejected)
        return out


def table_columns(cur: psycopg.Cursor[Any], schema: str, table: str) -> dict[str, str]:
    """Existing columns and their types, in order; empty when the table does not exist."""
    cur.execute(
        """
        SELECT a.attname, format_type(a.atttypid, a.atttypmod)
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum
        """,
        (schema, table),
    )
    return {name: pg_type for name, pg_type in cur.fetchall()}


def _is_partitioned(cur: psycopg.Cursor[Any], schema: str, table: str) -> bool:
    cur.execute(
        """
        SELECT c.relkind = 'p' FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %s AND c.relname = %s
        """,
        (schema, table),
    )
    row = cur.fetchone()
    return bool(row and row[0])


def _meta_columns_sql() -> list[sql.Composable]:
    return [
        sql.SQL("{} timestamp with time zone NOT NULL DEFAULT now()").format(sql.Identifier(LOADED_AT)),
        sql.SQL("{} date").format(sql.Identifier(PARTITION_DATE)),
        sql.SQL("{} integer").format(sql.Identifier(FILE_ID)),
    ]


# PostgreSQL's limit of columns in a table (dropped columns count too). The warehouse adds
# META_COLUMNS to every table; a merge that meets a repeated key also numbers its staged rows.
PG_MAX_COLUMNS = 1600
MERGE_ROW_COLUMN = "_sndw_row"


def column_limit_error(table: str, columns: int, write_mode: str | None = None) -> str | None:
    """Why a table of ``columns`` source columns cannot be a warehouse table, or None when it can."""
    added = [*META_COLUMNS, *([MERGE_ROW_COLUMN] if write_mode == "merge" else [])]
    if columns + len(added) <= PG_MAX_COLUMNS:
        return None
    return (f"{table} has {columns} columns, and the warehouse adds {len(added)} ({', '.join(added)}"
            f"{' for a merge' if write_mode == 'merge' else ''}): a PostgreSQL table holds at most "
            f"{PG_MAX_COLUMNS} columns, so at most {PG_MAX_COLUMNS - len(added)} can be loaded; select fewer "
            "columns with a 'query'")


def create_table(cur: psycopg.Cursor[Any], spec: LoadSpec, schema: pa.Schema) -> None:
    columns: list[sql.Composable] = [
        sql.SQL("{} {}").format(sql.Identifier(f.name), sql.SQL(warehouse_type(f))) for f in schema
    ]
    columns += _meta_columns_sql()
    partition_clause: sql.Composable = sql.SQL("")
    if spec.write_mode == "partition":
        columns[-2] = sql.SQL("{} date NOT NULL").format(sql.Identifier(PARTITION_DATE))  # see _meta_columns_sql
        partition_clause = sql.SQL(" PARTITION BY LIST ({})").format(sql.Identifier(PARTITION_DATE))
    statement = sql.SQL("CREATE TABLE IF NOT EXISTS {} ({}){}").format(
        spec.ident(), sql.SQL(", ").join(columns), partition_clause)
    log.info("creating %s (%d columns, mode %s)", spec.qualified, len(schema), spec.write_mode)
    cur.execute(statement)


def _ensure_key_index(cur: psycopg.Cursor[Any], spec: LoadSpec) -> None:
    if not spec.primary_key:
        return
    name = f"{spec.table[:50]}__sndw_key"
    cur.execute(sql.SQL("CREATE UNIQUE INDEX IF NOT EXISTS {} ON {} ({})").format(
        sql.Identifier(name), spec.ident(), sql.SQL(", ").join(sql.Identifier(k) for k in spec.primary_key)))


def evolve_table(cur: psycopg.Cursor[Any], spec: LoadSpec, schema: pa.Schema) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Create the table or bring it up to ``schema``: new columns added, safe widenings applied.

    Returns the table's columns after the change and the list of changes made.
    """
    existing = table_columns(cur, spec.schema, spec.table)
    changes: list[dict[str, Any]] = []
    if not existing:
        too_many = column_limit_error(spec.qualified, len(schema), spec.write_mode)
        if too_many:
            raise PermanentError(f"{too_many}; nothing was loaded")
        create_table(cur, spec, schema)
        changes.append({"change": "create_table", "table": spec.qualified, "columns": len(schema)})
        if spec.write_mode == "merge":
            _ensure_key_index(cur, spec)
        return table_columns(cur, spec.schema, spec.table), changes
    if spec.write_mode == "partition" and not _is_partitioned(cur, spec.schema, spec.table):
        raise PermanentError(
            f"{spec.qualified} exists and is not partitioned, but write_mode is 'partition': "
            "drop or rename the table so it can be created partitioned by _partition_date")
    added = [f.name for f in schema if f.name not in existing]
    if added:
        _check_room(cur, spec, added)
    for f in schema:
        if f.name not in existing:
            pg_type = warehouse_type(f)
            cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                spec.ident(), sql.Identifier(f.name), sql.SQL(pg_type)))
            log.warning("schema change: added column %s.%s %s", spec.qualified, f.name, pg_type)
            changes.append({"change": "add_column", "column": f.name, "type": pg_type})
            continue
        planned = plan_column(spec.qualified, f.name, existing[f.name], f.type, _declared(f))
        if isinstance(planned, str):
            _check_no_dependent_views(cur, spec, f.name, existing[f.name], planned)
            cur.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {}").format(
                spec.ident(), sql.Identifier(f.name), sql.SQL(planned)))
            log.warning("schema change: widened %s.%s from %s to %s", spec.qualified, f.name,
                        existing[f.name], planned)
            changes.append({"change": "widen_column", "column": f.name, "from": existing[f.name], "to": planned})
    if FILE_ID not in existing:  # a table made before lineage moved to etl_lake_files
        cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} integer").format(spec.ident(), sql.Identifier(FILE_ID)))
        changes.append({"change": "add_column", "column": FILE_ID, "type": "integer"})
    missing = [name for name in existing if name not in schema.names and not name.startswith("_")]
    if missing:
        log.info("%s: %d warehouse columns are not in this load and get NULL: %s",
                 spec.qualified, len(missing), ", ".join(missing[:20]))
    if spec.write_mode == "merge":
        _ensure_key_index(cur, spec)
    return table_columns(cur, spec.schema, spec.table), changes


def _check_room(cur: psycopg.Cursor[Any], spec: LoadSpec, added: list[str]) -> None:
    """Fail, naming the columns, when adding ``added`` would pass PostgreSQL's column limit."""
    cur.execute(
        """
        SELECT count(*) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0
        """, (spec.schema, spec.table))
    row = cur.fetchone()
    used = int(row[0]) if row else 0
    if used + len(added) > PG_MAX_COLUMNS:
        raise PermanentError(
            f"{spec.qualified} uses {used} of PostgreSQL's {PG_MAX_COLUMNS} columns (its own, dropped ones and "
            f"{', '.join(META_COLUMNS)}), and this load would add {len(added)} more ({', '.join(added[:10])}"
            f"{', ...' if len(added) > 10 else ''}): nothing was loaded. Select fewer columns in the source, or "
            "recreate the table (dropped columns keep their place until then)")


def _check_no_dependent_views(cur: psycopg.Cursor[Any], spec: LoadSpec, column: str, old: str, new: str) -> None:
    """Fail, naming them, when views or rules use ``column``: PostgreSQL cannot change its type then."""
    cur.execute(
        """
        SELECT DISTINCT format('%%s %%I.%%I', CASE v.relkind WHEN 'v' THEN 'view' WHEN 'm' THEN 'materialized view'
                                            ELSE 'a rule on' END, vn.nspname, v.relname)
        FROM pg_class c
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_attribute a ON a.attname = %s
                           AND (a.attrelid = c.oid OR a.attrelid IN (SELECT relid FROM pg_partition_tree(c.oid)))
        JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_class'::regclass
                        AND d.refobjid = a.attrelid AND d.refobjsubid = a.attnum
        JOIN pg_rewrite r ON r.oid = d.objid
        JOIN pg_class v ON v.oid = r.ev_class
        JOIN pg_namespace vn ON vn.oid = v.relnamespace
        WHERE n.nspname = %s AND c.relname = %s
        ORDER BY 1
        """, (column, spec.schema, spec.table))
    users = [row[0] for row in cur.fetchall()]
    if users:
        raise PermanentError(
            f"{spec.qualified}.{column} must be widened from {old} to {new} for this load to hold its values "
            f"exactly, but PostgreSQL cannot change the type of a column that views use: {'; '.join(users)}. "
            "Nothing was loaded. Drop them (and the views built on them), run the load again, then create them "
            f"again; or widen it yourself in one transaction: DROP VIEW ..., ALTER TABLE {spec.qualified} ALTER "
            f"COLUMN {column} TYPE {new}, CREATE VIEW ...; then the load goes through."
            + (f" column_types: {{{column}: numeric}} in the source config makes a new table's column numeric "
               "from the start" if new == "numeric" else ""))


# ----------------------------------------------------------------------- encoding batches


def _json_text(array: pa.Array) -> pa.Array:
    """Nested values (lists, structs, maps) as JSON text, nulls kept."""
    if isinstance(array.type, pa.BaseExtensionType):
        return array.storage.cast(pa.string())
    import polars as pl  # only here: importing it cost every load process 0.15 s

    series = pl.Series("v", array)
    if series.dtype == pl.Struct:
        encoded = series.struct.json_encode()
    else:
        wrapped = pl.DataFrame({"v": series}).select(pl.struct("v").struct.json_encode())["v"]
        encoded = wrapped.str.slice(5, wrapped.str.len_chars() - 6)  # strip the {"v": ... } wrapper
    encoded = pl.select(pl.when(series.is_null()).then(None).otherwise(encoded)).to_series()
    return encoded.to_arrow().cast(pa.string())


def _may_hold_nul(array: pa.Array) -> bool:
    """A quick scan of the raw character buffer (one pass, no per-value work); may say yes wrongly
    for a sliced array, never no wrongly."""
    buffers = array.buffers()
    data = buffers[2] if len(buffers) > 2 else None
    if data is None or data.size == 0:
        return False
    return bool(pc.min(pa.Array.from_buffers(pa.uint8(), data.size, [None, data])).as_py() == 0)


def _replace_nul(array: pa.Array, escaped: bool) -> tuple[pa.Array, int]:
    if not escaped and not _may_hold_nul(array):
        return array, 0
    hits = pc.sum(pc.match_substring(array, NUL)).as_py() or 0
    if hits:
        array = pc.replace_substring(array, NUL, NUL_REPLACEMENT)
    if escaped:  # jsonb also rejects the escaped form
        more = pc.sum(pc.match_substring(array, "\\u0000")).as_py() or 0
        if more:
            array = pc.replace_substring(array, "\\u0000", "\\ufffd")
            hits += more
    return array, hits


_DAYS_2000, _MICROS_2000 = 10_957, 946_684_800_000_000


def _encoded_type(plan: ColumnPlan) -> pa.DataType:
    """What a column is encoded from: dates and timestamps as PostgreSQL's own integers."""
    if plan.output in ("json-text", "jsonb", "staged"):
        return pa.string()
    if plan.output == "native" and pa.types.is_date32(plan.arrow_type):
        return pa.int32()
    if plan.output == "native" and pa.types.is_timestamp(plan.arrow_type):
        return pa.int64()
    return plan.arrow_type


def _postgres_epoch(name: str, column: pa.Array, storage: pa.DataType, offset: int) -> pa.Array:
    """Days or microseconds since 1970 as PostgreSQL's since 2000, binary COPY's wire form. The
    type's max and min values are the lake's infinities: they become PostgreSQL's (its own max and
    min), so 'infinity' and '-infinity' load exactly, with no text detour."""
    raw = column.view(storage)
    top, bottom = pa.scalar((1 << (storage.bit_width - 1)) - 1, storage), pa.scalar(-(1 << (storage.bit_width - 1)), storage)
    bounds = pc.min_max(raw)
    try:
        if bounds["max"].as_py() != top.as_py() and bounds["min"].as_py() != bottom.as_py():
            return pc.subtract_checked(raw, pa.scalar(offset, storage))
        infinite = pc.or_(pc.equal(raw, top), pc.equal(raw, bottom))
        shifted = pc.subtract_checked(pc.if_else(infinite, pa.scalar(0, storage), raw), pa.scalar(offset, storage))
        return pc.if_else(infinite, raw, shifted)
    except pa.ArrowInvalid as exc:
        raise LoadError(f"column {name}: a value is out of PostgreSQL's range ({exc})") from None


class BatchEncoder:
    """Casts lake batches to the exact warehouse column types and encodes them as binary COPY."""

    def __init__(self, plans: list[ColumnPlan], constants: dict[str, tuple[pa.DataType, Any]]) -> None:
        self.plans = plans
        self.constants = constants
        fields = [pa.field(p.name, _encoded_type(p)) for p in plans]
        fields += [pa.field(name, typ) for name, (typ, _) in constants.items()]
        self.schema = pa.schema(fields)
        builders: dict[str, Any] = {}
        for plan, fld in zip(plans, fields, strict=False):
            if plan.output == "jsonb":
                builders[fld.name] = pgpq_encoders.StringEncoderBuilder.new_with_output(fld, pgpq_schema.Jsonb())
            elif plan.output == "null":
                builders[fld.name] = pgpq_encoders.StringEncoderBuilder(pa.field(fld.name, pa.string()))
            else:
                builders[fld.name] = pgpq.ArrowToPostgresBinaryEncoder.infer_encoder(fld)
        for fld in fields[len(plans):]:
            builders[fld.name] = pgpq.ArrowToPostgresBinaryEncoder.infer_encoder(fld)
        encode_schema = pa.schema([pa.field(f.name, pa.string()) if p.output == "null" else f
                                   for f, p in zip(fields, plans, strict=False)] + fields[len(plans):])
        self.encode_schema = encode_schema
        self.encoder = pgpq.ArrowToPostgresBinaryEncoder.new_with_encoders(encode_schema, builders)
        self.nul_replaced = 0

    @property
    def column_names(self) -> list[str]:
        return list(self.encode_schema.names)

    def prepare(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        arrays = []
        for plan in self.plans:
            column = batch.column(plan.name)
            if plan.output == "null":
                column = pa.nulls(len(column), pa.string())
            elif plan.output in ("json-text", "jsonb"):
                column = _json_text(column) if _is_json_like(column.type) else column.cast(pa.string())
                column, hits = _replace_nul(column, escaped=plan.output == "jsonb")
                self.nul_replaced += hits
            else:
                if column.type != plan.arrow_type:
                    column = column.cast(plan.arrow_type)
                if pa.types.is_string(plan.arrow_type):
                    column, hits = _replace_nul(column, escaped=False)
                    self.nul_replaced += hits
                elif pa.types.is_date32(plan.arrow_type):
                    column = _postgres_epoch(plan.name, column, pa.int32(), _DAYS_2000)
                elif pa.types.is_timestamp(plan.arrow_type):
                    column = _postgres_epoch(plan.name, column, pa.int64(), _MICROS_2000)
            arrays.append(column)
        for _name, (typ, value) in self.constants.items():
            arrays.append(pa.repeat(pa.scalar(value, type=typ), batch.num_rows))
        return pa.RecordBatch.from_arrays(arrays, schema=self.encode_schema)

    def header(self) -> bytes:
        return bytes(self.encoder.write_header())

    def encode(self, batch: pa.RecordBatch) -> bytes:
        return bytes(self.encoder.write_batch(self.prepare(batch)))

    def finish(self) -> bytes:
        return bytes(self.encoder.finish())


class _BoundedQueuedWriter(QueuedLibpqWriter):
    """psycopg's queued writer holds up to 1024 chunks of 512 KiB; 64 keep the send as fast and
    the load's peak memory ~130 MiB lower (measured by `make bench`)."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        super().__init__(cursor)
        self._queue = type(self._queue)(maxsize=64)


def copy_file(cur: psycopg.Cursor[Any], target: sql.Composable, path: str, columns: dict[str, str],
              table: str, constants: dict[str, tuple[pa.DataType, Any]], batch_rows: int = 100_000,
              progress: Progress | None = None, transform: BatchTransform | None = None,
              freeze: bool = False, only: list[str] | None = None) -> tuple[int, int]:
    """Binary COPY of one Parquet file into ``target``; returns rows and NUL replacements. With a
    ``transform``, each batch goes through it first (the first batch's output is the schema).
    ``freeze``: COPY ... FREEZE, only for a table truncated or created in the current subtransaction.
    ``only``: just these columns of the file (no transform), e.g. a merge's keys."""
    file_schema = output_schema(transform, table, path, batch_rows) if transform else storage.read_schema(path)
    if only is not None:
        file_schema = pa.schema([file_schema.field(name) for name in only])
    plans: list[ColumnPlan] = []
    for f in file_schema:
        planned = plan_column(table, f.name, columns[f.name], f.type, _declared(f))
        if isinstance(planned, str):  # evolve_table has already widened it; plan again
            raise LoadError(f"{table}.{f.name} was not widened before the load")
        plans.append(planned)
    encoder = BatchEncoder(plans, constants)
    staged = [p for p in plans if p.output == "staged"]
    final_target = target
    if staged:  # columns carried as text: COPY them into text columns, cast on the way to the table
        target = _staging_table(cur, plans, constants, columns)
    # FREEZE writes the rows frozen and all-visible: no hint-bit rewrite or freezing vacuum of the
    # whole table later (not for the text staging table: its rows reach the table by INSERT).
    statement = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY{})").format(
        target, sql.SQL(", ").join(sql.Identifier(c) for c in encoder.column_names),
        sql.SQL(", FREEZE" if freeze and not staged else ""))
    rows = 0
    # A queued writer sends to the server from its own thread while this one reads and encodes
    # the next batch (shared/POSTGRES-LOADING.md: 0.94x of psql's binary COPY against 0.86x).
    with cur.copy(statement, writer=_BoundedQueuedWriter(cur)) as copy:
        copy.write(encoder.header())
        batches = iter_file_batches(path, batch_rows, columns=only, batch_bytes=LOAD_BATCH_BYTES)
        if transform is not None:
            batches = transformed_batches(transform, table, path, batches)
        for number, batch in enumerate(batches, 1):
            if batch.num_rows == 0:
                continue
            if transform is not None and batch.schema.names != file_schema.names:
                raise PermanentError(
                    f"{table}: transform {transform.reference} returned the columns {batch.schema.names} for "
                    f"batch {number} of {path}, but {file_schema.names} for its first batch: a transform must "
                    "return the same columns for every batch")
            data = encoder.encode(batch)
            copy.write(data)
            rows += batch.num_rows
            if progress is not None:
                progress.add(batch.num_rows, len(data))
        copy.write(encoder.finish())
    if staged:
        names = encoder.column_names
        casts = {p.name: sql.SQL("{}::{}").format(sql.Identifier(p.name), sql.SQL(p.pg_type)) for p in staged}
        try:
            cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(
                final_target, sql.SQL(", ").join(sql.Identifier(n) for n in names),
                sql.SQL(", ").join(casts.get(n, sql.Identifier(n)) for n in names), target))
        except psycopg.errors.DataError as exc:
            raise LoadError(f"{table}: a value of {', '.join(p.name for p in staged)} does not fit its "
                            f"type in {path}: {exc}") from exc
        cur.execute(sql.SQL("DROP TABLE {}").format(target))
    return rows, encoder.nul_replaced


def _staging_table(cur: psycopg.Cursor[Any], plans: list[ColumnPlan], constants: dict[str, tuple[pa.DataType, Any]],
                   columns: dict[str, str]) -> sql.Composable:
    """A temporary table with the target's column types, text for the "staged" columns."""
    name = sql.Identifier("_sndw_cast")
    items = [sql.SQL("{} {}").format(sql.Identifier(p.name), sql.SQL("text" if p.output == "staged" else p.pg_type))
             for p in plans]
    items += [sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(columns.get(c) or pg_type_for(t)))
              for c, (t, _) in constants.items()]
    cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(name))
    cur.execute(sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(name, sql.SQL(", ").join(items)))
    return name


# ------------------------------------------------------------------------------------ loads


def _check_files(paths: Sequence[str]) -> None:
    missing = [p for p in paths if not storage.exists(p)]
    if missing:
        raise PermanentError(
            f"lake files of this load are missing (the partition was replaced by a newer extract, or "
            f"deleted): {', '.join(missing[:5])}; run the extract again")


def _check_not_empty(paths: Sequence[str], spec: LoadSpec, partition: date) -> None:
    """A replace of everything (or of a date) by nothing is refused unless the table allows it:
    an empty extract is far more often a broken export than a source that really emptied."""
    if spec.write_mode not in ("replace", "partition") or spec.allow_empty or partition_rows(paths):
        return
    what = "the table" if spec.write_mode == "replace" else f"its partition {partition}"
    raise EmptyExtractError(
        f"{spec.qualified}: the extract of partition {partition} has 0 rows; a {spec.write_mode} load would "
        f"empty {what}, so nothing was loaded and the table is unchanged. If the source can really be "
        "empty, set 'allow_empty: true' on this table in the source config")


def load_files(conn: psycopg.Connection[Any], paths: Sequence[str], spec: LoadSpec, *, partition: date,
               run_id: str | None = None, audit: AuditRecord | None = None,
               audit_schema: str = "public", batch_rows: int = 100_000,
               watermark: Watermark | None = None, state_key: tuple[str, str] | None = None) -> LoadResult:
    """Load exactly ``paths`` into the warehouse in one transaction.

    The same transaction writes the audit row (if given) and advances the watermark of
    ``state_key`` (pipeline, table) to ``watermark`` (incremental tables). A manifest whose load
    already committed (a retry after a crash just past the commit) is not loaded twice.
    """
    started = time.perf_counter()
    _check_files(paths)
    _check_not_empty(paths, spec, partition)
    if isinstance(spec.transform, str):  # imported before anything is written: a bad one changes nothing
        spec = replace(spec, transform=load_transform(spec.transform))
    transform = spec.transform if isinstance(spec.transform, BatchTransform) else None
    if audit is not None:
        ensure_audit_table(conn, audit_schema)
    ensure_lake_files_table(conn)
    if spec.checks:
        from sndw.quality import ensure_results_table

        ensure_results_table(conn, audit_schema)
    result = LoadResult(table=spec.qualified, write_mode=spec.write_mode, rows_loaded=0, files=len(paths))
    try:
        with conn.transaction(), conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (advisory_lock_key(spec.schema, spec.table),))
            if audit is not None and audit.manifest_id and _already_loaded(cur, audit, audit_schema):
                log.warning("%s: manifest %s is already loaded (a retry after its commit): nothing to do",
                            spec.qualified, audit.manifest_id)
                result.skipped = True
                return result
            create_schema(cur, spec.schema)
            exists = bool(table_columns(cur, spec.schema, spec.table))
            if not paths and not exists:
                log.info("%s: nothing to load and no table yet", spec.qualified)
            else:
                if paths:
                    for path in paths:  # evolve with each file's schema: types may differ across files
                        schema = (output_schema(transform, spec.qualified, path, batch_rows) if transform
                                  else storage.read_schema(path))
                        _, changes = evolve_table(cur, spec, schema)
                        result.schema_changes.extend(changes)
                columns = table_columns(cur, spec.schema, spec.table)
                _WRITERS[spec.write_mode](cur, spec, paths, columns, partition, run_id, result, batch_rows)
            _before_commit(cur, spec, partition, run_id, result, audit, audit_schema)
            if watermark is not None and state_key is not None:
                save_watermark(cur, state_key[0], state_key[1], watermark, run_id, audit_schema)
            if audit is not None:
                audit.rows_loaded = result.rows_loaded
                audit.rows_rejected = result.rows_rejected if spec.checks else None
                audit.parquet_files = len(paths)
                audit.schema_changes = result.schema_changes
                audit.finished_at = datetime.now(UTC)
                insert_audit_row(cur, audit, audit_schema)
    except psycopg.Error as exc:
        raise LoadError(f"loading {spec.qualified} failed and was rolled back: {exc}") from exc
    except QualityCheckError as exc:  # rolled back: its results are still recorded, in a transaction of their own
        write_results(conn, exc.results, _result_context(spec, partition, run_id, audit), committed=False,
                      schema=audit_schema)
        raise
    result.seconds = time.perf_counter() - started
    if result.nul_replaced:
        log.warning("%s: %d text values held NUL bytes, replaced by U+FFFD", spec.qualified, result.nul_replaced)
    log.info("%s: %d rows loaded (%s) from %d files in %.2fs", spec.qualified, result.rows_loaded,
             spec.write_mode, len(paths), result.seconds)
    return result


def _before_commit(cur: psycopg.Cursor[Any], spec: LoadSpec, partition: date, run_id: str | None,
                   result: LoadResult, audit: AuditRecord | None, audit_schema: str) -> None:
    """What acts on the rows of this load inside its transaction, after they are written and
    before the commit: the quality checks now (a failing block check raises QualityCheckError and
    the whole load rolls back). Deletes of rows the source no longer has belong here too."""
    if not spec.checks:
        return
    mode = spec.write_mode
    scope = CheckScope(spec.schema, spec.table, partition, primary_key=spec.primary_key,
                       file_ids=None if mode in ("replace", "partition") else result.file_ids,
                       by_partition=mode == "partition")
    results, rejected = run_checks(cur, spec.checks, scope, audit_schema=audit_schema)
    result.checks = summary(results)
    result.rows_rejected = rejected
    result.rows_loaded -= rejected
    if any(r.blocks for r in results):
        raise QualityCheckError(spec.qualified, partition, results)
    insert_results(cur, results, _result_context(spec, partition, run_id, audit), committed=True,
                   schema=audit_schema)
    if rejected:
        log.warning("%s: %d rows failed quarantine checks and went to %s.%s", spec.qualified, rejected,
                    spec.schema, rejected_table_name(spec.table))


def _result_context(spec: LoadSpec, partition: date, run_id: str | None, audit: AuditRecord | None) -> ResultContext:
    return ResultContext(spec.qualified, partition, run_id=(audit.airflow_run_id or run_id) if audit else run_id,
                         attempt_key=audit.attempt_key if audit else None,
                         pipeline=audit.pipeline_name if audit else None, source=audit.source_name if audit else None)


def _already_loaded(cur: psycopg.Cursor[Any], audit: AuditRecord, audit_schema: str) -> bool:
    cur.execute(sql.SQL("SELECT 1 FROM {} WHERE manifest_id = %s AND target_table = %s "
                        "AND status = 'success' LIMIT 1").format(audit_table(audit_schema)),
                (audit.manifest_id, audit.target_table))
    return cur.fetchone() is not None


def load_manifest(conn: psycopg.Connection[Any], manifest: Manifest | dict[str, Any], spec: LoadSpec, *,
                  audit: AuditRecord | None = None, audit_schema: str = "public",
                  state_key: tuple[str, str] | None = None) -> LoadResult:
    """Load one extract's manifest: its files, and its watermark when the table is incremental."""
    m = manifest if isinstance(manifest, Manifest) else Manifest.from_dict(manifest)
    if audit is not None:
        audit.manifest_id = m.manifest_id
    return load_files(conn, m.paths, spec, partition=m.partition_date, run_id=m.run_id, audit=audit,
                      audit_schema=audit_schema, watermark=Watermark.from_dict(m.watermark),
                      state_key=state_key)


def _constants(file_id: int, partition: date) -> dict[str, tuple[pa.DataType, Any]]:
    return {
        PARTITION_DATE: (pa.date32(), partition),
        FILE_ID: (pa.int32(), file_id),
    }


# ----------------------------------------------------------------------------------- lineage

LAKE_FILES_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    file_id        SERIAL PRIMARY KEY,
    target_table   TEXT NOT NULL,
    lake_path      TEXT NOT NULL,
    partition_date DATE NOT NULL,
    run_id         TEXT,
    manifest_id    TEXT,
    registered_at  TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    UNIQUE (target_table, lake_path)
)
"""


def lake_files_table(schema: str = "public") -> sql.Composed:
    return sql.SQL(".").join([sql.Identifier(schema), sql.Identifier(LAKE_FILES_TABLE)])


def ensure_lake_files_table(conn: psycopg.Connection[Any], schema: str = "public") -> None:
    """The lineage lookup: every loaded row's ``_file_id`` names one lake file, its run and manifest.

    An integer per row instead of the file's path and the run id as text (about 110 bytes a row):
    the loaded table stays close to its source's size.
    """
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s)", (f'"{schema}"."{LAKE_FILES_TABLE}"',))
        row = cur.fetchone()
        if row is not None and row[0] is not None:
            return
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('sndw:lake-files-ddl'))")
        create_schema(cur, schema)
        cur.execute(sql.SQL(LAKE_FILES_DDL).format(table=lake_files_table(schema)))


def register_file(cur: psycopg.Cursor[Any], spec: LoadSpec, path: str, partition: date, run_id: str | None,
                  schema: str = "public") -> int:
    """The ``_file_id`` of one lake file loaded into ``spec``'s table (the same id when it is loaded again)."""
    from sndw.lake import file_manifest_id

    cur.execute(sql.SQL(
        "INSERT INTO {} (target_table, lake_path, partition_date, run_id, manifest_id) VALUES (%s, %s, %s, %s, %s) "
        "ON CONFLICT (target_table, lake_path) DO UPDATE SET run_id = EXCLUDED.run_id, "
        "partition_date = EXCLUDED.partition_date RETURNING file_id").format(lake_files_table(schema)),
        (spec.qualified, path, partition, run_id, file_manifest_id(path)))
    row = cur.fetchone()
    assert row is not None
    return int(row[0])


def _copy_all(cur: psycopg.Cursor[Any], target: sql.Composable, spec: LoadSpec, paths: Sequence[str],
              columns: dict[str, str], partition: date, run_id: str | None, result: LoadResult,
              batch_rows: int, freeze: bool = False) -> None:
    progress = Progress(f"load {spec.qualified}")
    for path in paths:
        file_id = register_file(cur, spec, path, partition, run_id)
        result.file_ids.append(file_id)
        rows, nul = copy_file(cur, target, path, columns, spec.qualified, _constants(file_id, partition),
                              batch_rows, progress,
                              spec.transform if isinstance(spec.transform, BatchTransform) else None, freeze)
        result.rows_loaded += rows
        result.nul_replaced += nul


def _append(cur: psycopg.Cursor[Any], spec: LoadSpec, paths: Sequence[str], columns: dict[str, str],
            partition: date, run_id: str | None, result: LoadResult, batch_rows: int) -> None:
    _copy_all(cur, spec.ident(), spec, paths, columns, partition, run_id, result, batch_rows)


def _append_partition(cur: psycopg.Cursor[Any], spec: LoadSpec, paths: Sequence[str], columns: dict[str, str],
                      partition: date, run_id: str | None, result: LoadResult, batch_rows: int) -> None:
    """Replay of an append table: the date's rows are replaced, the other dates are kept."""
    cur.execute(sql.SQL("DELETE FROM {} WHERE {} = %s").format(spec.ident(), sql.Identifier(PARTITION_DATE)),
                (partition,))
    _copy_all(cur, spec.ident(), spec, paths, columns, partition, run_id, result, batch_rows)


def _referenced_keys(cur: psycopg.Cursor[Any], spec: LoadSpec) -> list[list[str]]:
    """The keys of this table that foreign keys of other tables point at (each a column list)."""
    cur.execute(
        """
        SELECT array_agg(a.attname::text ORDER BY k.ord)
        FROM pg_constraint c
        CROSS JOIN LATERAL unnest(c.confkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.attnum
        WHERE c.contype = 'f' AND c.confrelid = to_regclass(%s) AND c.conrelid <> c.confrelid
        GROUP BY c.oid ORDER BY c.oid
        """,
        (spec.ident().as_string(cur.connection),),
    )
    return [list(row[0]) for row in cur.fetchall()]


def _replace(cur: psycopg.Cursor[Any], spec: LoadSpec, paths: Sequence[str], columns: dict[str, str],
             partition: date, run_id: str | None, result: LoadResult, batch_rows: int) -> None:
    """Full refresh in place: TRUNCATE + COPY in the load's transaction (readers wait, never see
    it empty). The table stays the same object, so its grants, owner, comments, indexes,
    constraints, policies, triggers and dependent views all stay; a new table swapped in by
    rename kept none of the first three or the foreign keys pointing at it, for no measurable
    speed gain. A table that other tables' foreign keys point at cannot be truncated: see
    ``_replace_referenced``."""
    keys = _referenced_keys(cur, spec)
    if keys:
        _replace_referenced(cur, spec, keys[0], paths, columns, partition, run_id, result, batch_rows)
        return
    cur.execute(sql.SQL("TRUNCATE {}").format(spec.ident()))
    # Truncated in this (sub)transaction, so COPY may FREEZE; with wal_level=minimal the new
    # file's rows also need no WAL (README "Performance": the settings each figure depends on).
    _copy_all(cur, spec.ident(), spec, paths, columns, partition, run_id, result, batch_rows,
              freeze=not _is_partitioned(cur, spec.schema, spec.table))


def _replace_referenced(cur: psycopg.Cursor[Any], spec: LoadSpec, key: list[str], paths: Sequence[str],
                        columns: dict[str, str], partition: date, run_id: str | None, result: LoadResult,
                        batch_rows: int) -> None:
    """Replace the rows of a table that foreign keys point at, on the key they reference: rows
    whose key left the source are deleted (the referencing tables' own ON DELETE rules apply, so
    a key still in use fails the load), the others are updated in place or inserted. TRUNCATE
    would fail, and TRUNCATE ... CASCADE would empty the referencing tables."""
    staging = f"_sndw_replace_{spec.table[:40]}"
    cur.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(
        sql.Identifier(staging), spec.ident()))
    _copy_all(cur, sql.Identifier(staging), spec, paths, columns, partition, run_id, result, batch_rows)
    keys = [sql.Identifier(k) for k in key]
    cur.execute(sql.SQL("SELECT count(*) - count(DISTINCT ({keys})) FROM {staging} WHERE {not_null}").format(
        keys=sql.SQL(", ").join(keys), staging=sql.Identifier(staging),
        not_null=sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(k) for k in keys)))
    row = cur.fetchone()
    if row and row[0]:
        raise PermanentError(f"{spec.qualified}: other tables' foreign keys point at ({', '.join(key)}), so a "
                             f"replace matches rows on it, but {row[0]} rows of the extract repeat a key")
    cur.execute(sql.SQL("DELETE FROM {target} t WHERE NOT EXISTS (SELECT 1 FROM {staging} s WHERE {match})").format(
        target=spec.ident(), staging=sql.Identifier(staging),
        match=sql.SQL(" AND ").join(sql.SQL("s.{k} = t.{k}").format(k=k) for k in keys)))
    names = [c for c in columns if c != LOADED_AT]
    cols = [sql.Identifier(c) for c in names]
    updates = [sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
               for c in names if c not in key]
    updates.append(sql.SQL("{} = now()").format(sql.Identifier(LOADED_AT)))
    cur.execute(sql.SQL("INSERT INTO {target} ({cols}) SELECT {cols} FROM {staging} "
                        "ON CONFLICT ({keys}) DO UPDATE SET {updates}").format(
        target=spec.ident(), cols=sql.SQL(", ").join(cols), staging=sql.Identifier(staging),
        keys=sql.SQL(", ").join(keys), updates=sql.SQL(", ").join(updates)))


def _partition(cur: psycopg.Cursor[Any], spec: LoadSpec, paths: Sequence[str], columns: dict[str, str],
               partition: date, run_id: str | None, result: LoadResult, batch_rows: int) -> None:
    """Replace one date partition: TRUNCATE the child table of that date and COPY into it."""
    child = partition_child_table(spec.table, partition)
    cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES IN ({})").format(
        spec.ident(child), spec.ident(), sql.Literal(partition)))
    cur.execute(sql.SQL("TRUNCATE {}").format(spec.ident(child)))
    _copy_all(cur, spec.ident(child), spec, paths, columns, partition, run_id, result, batch_rows)


class _RepeatedKeys(Exception):
    """A merge's load holds a key more than once: merged through the staging table instead."""


def _merge(cur: psycopg.Cursor[Any], spec: LoadSpec, paths: Sequence[str], columns: dict[str, str],
           partition: date, run_id: str | None, result: LoadResult, batch_rows: int) -> None:
    """Upsert on the primary key; within one load the last row of a key wins; NULL keys fail the load.

    Only the keys go to a temporary table first (a narrow COPY of the files' key columns); the
    table's rows with those keys are deleted and the rows are COPYed straight into the table: no
    per-row INSERT ... SELECT, no full-row UPDATE per key, no sort. A load that repeats a key, a
    transform, or a table that other tables' foreign keys point at go through ``_merge_staged``.
    One transaction either way: readers never see half a merge.
    """
    missing = [k for k in spec.primary_key if k not in columns]
    if missing:
        raise PermanentError(f"{spec.qualified}: primary key columns {missing} are not in the data")
    referenced = bool(_referenced_keys(cur, spec))
    if isinstance(spec.transform, BatchTransform) or referenced:
        _merge_staged(cur, spec, paths, columns, partition, run_id, result, batch_rows, referenced)
        return
    keys = [sql.Identifier(k) for k in spec.primary_key]
    key_list = sql.SQL(", ").join(keys)
    key_table = sql.Identifier(f"_sndw_keys_{spec.table[:40]}")
    try:
        with cur.connection.transaction():  # a savepoint: repeated keys roll the key table back
            cur.execute(sql.SQL("CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA").format(
                key_table, key_list, spec.ident()))
            for path in paths:
                copy_file(cur, key_table, path, columns, spec.qualified, {}, batch_rows, only=list(spec.primary_key))
            _check_null_keys(cur, spec, key_table, keys)
            # A unique index on the load's keys finds a repeated key (it fails to build), and the
            # DELETE below walks it beside the table's own key index: a merge join with no sort.
            # Measured on 250k keys: 45-65 ms, against 190-200 ms for a GROUP BY check, and the
            # DELETE 50 ms faster. Its sort stays in memory up to 128 MB (this transaction only).
            cur.execute("SET LOCAL maintenance_work_mem = '128MB'")
            cur.execute("SET LOCAL work_mem = '128MB'")
            try:
                cur.execute(sql.SQL("CREATE UNIQUE INDEX ON {} ({})").format(key_table, key_list))
            except psycopg.errors.UniqueViolation:
                raise _RepeatedKeys from None
    except _RepeatedKeys:
        _merge_staged(cur, spec, paths, columns, partition, run_id, result, batch_rows, referenced)
        return
    cur.execute(sql.SQL("ANALYZE {}").format(key_table))  # a temporary table has no statistics: the join needs them
    cur.execute(sql.SQL("DELETE FROM {target} t USING {keys} k WHERE {match}").format(
        target=spec.ident(), keys=key_table,
        match=sql.SQL(" AND ").join(sql.SQL("t.{k} = k.{k}").format(k=k) for k in keys)))
    cur.execute(sql.SQL("DROP TABLE {}").format(key_table))
    _copy_all(cur, spec.ident(), spec, paths, columns, partition, run_id, result, batch_rows)


def _check_null_keys(cur: psycopg.Cursor[Any], spec: LoadSpec, table: sql.Identifier,
                     keys: list[sql.Identifier]) -> None:
    cur.execute(sql.SQL("SELECT count(*) FROM {} WHERE {}").format(
        table, sql.SQL(" OR ").join(sql.SQL("{} IS NULL").format(k) for k in keys)))
    row = cur.fetchone()
    if row and row[0]:
        raise PermanentError(f"{spec.qualified}: {row[0]} rows have a NULL primary key ({', '.join(spec.primary_key)})")


def _merge_staged(cur: psycopg.Cursor[Any], spec: LoadSpec, paths: Sequence[str], columns: dict[str, str],
                  partition: date, run_id: str | None, result: LoadResult, batch_rows: int,
                  referenced: bool) -> None:
    """The whole rows go to a staging table by COPY; the last row of a repeated key is kept there,
    then the keys are deleted from the table and the rows inserted. A table that other tables'
    foreign keys point at keeps its rows as the same rows: it is updated in place with ON CONFLICT."""
    staging = sql.Identifier(f"_sndw_stage_{spec.table[:40]}")
    cur.execute(sql.SQL("CREATE TEMP TABLE {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DROP").format(
        staging, spec.ident()))
    cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} bigint GENERATED ALWAYS AS IDENTITY").format(
        staging, sql.Identifier(MERGE_ROW_COLUMN)))
    _copy_all(cur, staging, spec, paths, columns, partition, run_id, result, batch_rows)
    keys = [sql.Identifier(k) for k in spec.primary_key]
    key_list = sql.SQL(", ").join(keys)
    _check_null_keys(cur, spec, staging, keys)
    cur.execute(sql.SQL("ANALYZE {}").format(staging))  # a temporary table has no statistics: the joins need them
    # The key joins hash the load's keys: in memory instead of spilling at the default 4 MB (this
    # transaction only).
    cur.execute("SET LOCAL work_mem = '128MB'")
    cur.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {} GROUP BY {} HAVING count(*) > 1)").format(staging, key_list))
    row = cur.fetchone()
    if row and row[0]:  # a key more than once in this load: the last row wins
        cur.execute(sql.SQL("DELETE FROM {staging} s USING {staging} t WHERE {match} AND s._sndw_row < t._sndw_row").format(
            staging=staging, match=sql.SQL(" AND ").join(sql.SQL("s.{k} = t.{k}").format(k=k) for k in keys)))
    names = [c for c in columns if c != LOADED_AT]
    cols = sql.SQL(", ").join(sql.Identifier(c) for c in names)
    if referenced:
        updates = [sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
                   for c in names if c not in spec.primary_key]
        updates.append(sql.SQL("{} = now()").format(sql.Identifier(LOADED_AT)))
        cur.execute(sql.SQL("INSERT INTO {target} ({cols}) SELECT {cols} FROM {staging} "
                            "ON CONFLICT ({keys}) DO UPDATE SET {updates}").format(
            target=spec.ident(), cols=cols, staging=staging, keys=key_list, updates=sql.SQL(", ").join(updates)))
        return
    cur.execute(sql.SQL("DELETE FROM {target} t USING {staging} s WHERE {match}").format(
        target=spec.ident(), staging=staging,
        match=sql.SQL(" AND ").join(sql.SQL("t.{k} = s.{k}").format(k=k) for k in keys)))
    cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(spec.ident(), cols, cols, staging))


_WRITERS = {"append": _append, "replace": _replace, "partition": _partition, "merge": _merge,
            "append_partition": _append_partition}

