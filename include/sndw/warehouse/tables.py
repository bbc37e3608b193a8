"""Warehouse tables: their columns, creation, and evolution to a new lake schema (added columns,
safe widenings), within PostgreSQL's column limit and the views that use a column."""

from __future__ import annotations

import logging
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql

from sndw.errors import PermanentError
from sndw.naming import FILE_ID, LOADED_AT, META_COLUMNS, PARTITION_DATE
from sndw.typeplan import declared_type, plan_column, warehouse_type
from sndw.warehouse.spec import LoadSpec

log = logging.getLogger(__name__)

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


def is_partitioned(cur: psycopg.Cursor[Any], schema: str, table: str) -> bool:
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
    if spec.write_mode == "partition" and not is_partitioned(cur, spec.schema, spec.table):
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
        planned = plan_column(spec.qualified, f.name, existing[f.name], f.type, declared_type(f))
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


