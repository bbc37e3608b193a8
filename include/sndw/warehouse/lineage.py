"""Lineage: every loaded row's ``_file_id`` names one lake file (``etl_lake_files``), its run and manifest."""

from __future__ import annotations

from datetime import date
from typing import Any

import psycopg
import pyarrow as pa
from psycopg import sql

from sndw.ddl import ensure_table
from sndw.naming import FILE_ID, LAKE_FILES_TABLE, PARTITION_DATE
from sndw.warehouse.spec import LoadSpec


def file_constants(file_id: int, partition: date) -> dict[str, tuple[pa.DataType, Any]]:
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
    ensure_table(conn, schema, LAKE_FILES_TABLE, [sql.SQL(LAKE_FILES_DDL).format(table=lake_files_table(schema))])


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


