"""etl_audit_log: one row per task attempt, written in the load's own transaction when there is one."""

from __future__ import annotations

import json
import logging
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger(__name__)

AUDIT_TABLE = "etl_audit_log"
MAX_ERROR_CHARS = 4000

# The seed's columns come first, exactly as it had them, so its example queries work unchanged.
AUDIT_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    id             BIGSERIAL PRIMARY KEY,
    run_id         TEXT NOT NULL,
    pipeline_name  TEXT NOT NULL,
    source_name    TEXT NOT NULL,
    protocol       TEXT NOT NULL,
    target_table   TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('success', 'failure')),
    rows_loaded    BIGINT,
    parquet_files  INTEGER,
    error_message  TEXT,
    started_at     TIMESTAMP WITH TIME ZONE NOT NULL,
    finished_at    TIMESTAMP WITH TIME ZONE,
    dag_id         TEXT,
    task_id        TEXT,
    airflow_run_id TEXT,
    try_number     INTEGER,
    step           TEXT,
    partition_date DATE,
    rows_extracted BIGINT,
    bytes          BIGINT,
    lake_paths     JSONB,
    schema_changes JSONB,
    attempt_key    TEXT UNIQUE,
    manifest_id    TEXT
)
"""

# What the health API and the gaps report read: per table and date partition, the latest outcome.
STATUS_VIEW = "etl_partition_status"
STATUS_VIEW_SQL = """
CREATE VIEW {view} AS
SELECT pipeline_name, target_table, partition_date,
       count(*) AS attempts,
       count(*) FILTER (WHERE status = 'failure') AS failures,
       bool_or(status = 'success') AS loaded,
       (array_agg(status ORDER BY id DESC))[1] AS last_status,
       max(finished_at) AS last_attempt_at,
       (array_agg(rows_extracted ORDER BY id DESC) FILTER (WHERE status = 'success'))[1] AS rows_extracted,
       (array_agg(rows_loaded ORDER BY id DESC) FILTER (WHERE status = 'success'))[1] AS rows_loaded,
       (array_agg(error_message ORDER BY id DESC) FILTER (WHERE status = 'failure'))[1] AS last_error
FROM {table}
WHERE step IN ('load', 'replay') AND partition_date IS NOT NULL
GROUP BY pipeline_name, target_table, partition_date
"""

_SECRET_PATTERNS = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 ***"),
    # scheme://user:password@host -> scheme://user:***@host
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]+@"), r"\1***@"),
    # password=..., token: ..., api_key="..."
    (re.compile(r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|apikey|authorization)(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s&,;\"]+)"),
     r"\1\2***"),
]


def redact(text: str) -> str:
    """Remove credentials from a message before it reaches a log or an audit row."""
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def error_text(exc: BaseException | str | None) -> str | None:
    if exc is None:
        return None
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    text = redact(text)
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


@dataclass
class AuditRecord:
    pipeline_name: str
    source_name: str
    protocol: str
    target_table: str
    status: str
    started_at: datetime
    finished_at: datetime | None = None
    rows_loaded: int | None = None
    parquet_files: int | None = None
    error_message: str | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    dag_id: str | None = None
    task_id: str | None = None
    airflow_run_id: str | None = None
    try_number: int | None = None
    step: str | None = None
    partition_date: date | None = None
    rows_extracted: int | None = None
    bytes: int | None = None
    lake_paths: list[str] | None = None
    schema_changes: list[dict[str, Any]] | None = None
    manifest_id: str | None = None

    @property
    def attempt_key(self) -> str | None:
        if self.dag_id is None or self.task_id is None or self.airflow_run_id is None:
            return None
        return f"{self.dag_id}|{self.task_id}|{self.airflow_run_id}|{self.try_number or 0}"


def audit_table(schema: str = "public") -> sql.Composed:
    return sql.SQL(".").join([sql.Identifier(schema), sql.Identifier(AUDIT_TABLE)])


def ensure_audit_table(conn: psycopg.Connection[Any], schema: str = "public") -> None:
    """Create the audit table once; serialised so concurrent first runs do not race on DDL."""
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('sndw:audit-ddl'))")
        cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        cur.execute(sql.SQL(AUDIT_DDL).format(table=audit_table(schema)))
        # Tables made by an earlier version get the columns added since (ALTER only when missing:
        # it locks the table).
        cur.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
                    "AND column_name = 'manifest_id'", (schema, AUDIT_TABLE))
        if cur.fetchone() is None:
            cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN manifest_id TEXT").format(audit_table(schema)))
        cur.execute("SELECT to_regclass(%s)", (f'"{schema}"."{STATUS_VIEW}"',))
        row = cur.fetchone()
        if row is None or row[0] is None:
            cur.execute(sql.SQL(STATUS_VIEW_SQL).format(
                view=sql.Identifier(schema, STATUS_VIEW), table=audit_table(schema)))


def insert_audit_row(cur: psycopg.Cursor[Any], record: AuditRecord, schema: str = "public") -> bool:
    """Insert the row; an attempt that already has one (written inside its load) is left as it is.

    Returns whether a row was inserted.
    """
    finished = record.finished_at or datetime.now(UTC)
    values = {
        "run_id": record.run_id,
        "pipeline_name": record.pipeline_name,
        "source_name": record.source_name,
        "protocol": record.protocol,
        "target_table": record.target_table,
        "status": record.status,
        "rows_loaded": record.rows_loaded,
        "parquet_files": record.parquet_files,
        "error_message": error_text(record.error_message),
        "started_at": record.started_at,
        "finished_at": finished,
        "dag_id": record.dag_id,
        "task_id": record.task_id,
        "airflow_run_id": record.airflow_run_id,
        "try_number": record.try_number,
        "step": record.step,
        "partition_date": record.partition_date,
        "rows_extracted": record.rows_extracted,
        "bytes": record.bytes,
        "lake_paths": json.dumps(record.lake_paths) if record.lake_paths is not None else None,
        "schema_changes": json.dumps(record.schema_changes) if record.schema_changes is not None else None,
        "attempt_key": record.attempt_key,
        "manifest_id": record.manifest_id,
    }
    query = sql.SQL("INSERT INTO {table} ({cols}) VALUES ({vals}) ON CONFLICT (attempt_key) DO NOTHING").format(
        table=audit_table(schema),
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in values),
        vals=sql.SQL(", ").join(sql.Placeholder(c) for c in values),
    )
    cur.execute(query, values)
    return cur.rowcount == 1


def write_audit_record(conn: psycopg.Connection[Any], record: AuditRecord, schema: str = "public") -> bool:
    """Write one row in its own transaction (used by callbacks and the CLI)."""
    ensure_audit_table(conn, schema)
    with conn.transaction(), conn.cursor() as cur:
        return insert_audit_row(cur, record, schema)
