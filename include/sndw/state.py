"""Watermarks of incremental tables: the etl_state table in the warehouse.

A watermark advances only inside the load transaction that commits the rows it covers (and
their audit row), so a crash can neither advance it without the data nor load data without it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import sql

from sndw.ddl import create_schema
from sndw.typeplan import PG_TYPE_KEY, base_pg_type

log = logging.getLogger(__name__)

STATE_TABLE = "etl_state"

STATE_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    pipeline_name TEXT NOT NULL,
    table_name    TEXT NOT NULL,
    cursor_column TEXT NOT NULL,
    value         TEXT,
    value_type    TEXT NOT NULL CHECK (value_type IN ('timestamp', 'number', 'text')),
    updated_at    TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now(),
    run_id        TEXT,
    PRIMARY KEY (pipeline_name, table_name)
)
"""


@dataclass(frozen=True)
class Watermark:
    """The last loaded cursor value, as exact text: ISO-8601 with zone and microseconds, or a number."""

    cursor: str
    value: str | None
    value_type: str  # timestamp | number | text

    def to_dict(self) -> dict[str, Any]:
        return {"cursor": self.cursor, "value": self.value, "value_type": self.value_type}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Watermark | None:
        return cls(data["cursor"], data.get("value"), data["value_type"]) if data else None

    def typed(self) -> Any:
        return parse_value(self.value, self.value_type)


def parse_value(value: str | None, value_type: str) -> Any:
    if value is None:
        return None
    if value_type == "timestamp":
        parsed = datetime.fromisoformat(value)
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if value_type == "number":
        return Decimal(value)
    return value


def value_type_of(data_type: pa.DataType) -> str:
    if pa.types.is_timestamp(data_type) or pa.types.is_date(data_type):
        return "timestamp"
    if pa.types.is_integer(data_type) or pa.types.is_decimal(data_type) or pa.types.is_floating(data_type):
        return "number"
    return "text"


def format_value(value: Any) -> str | None:
    """Exact text of a cursor value: no float rounding, no naive times."""
    if value is None:
        return None
    if isinstance(value, datetime):
        aware = value if value.tzinfo else value.replace(tzinfo=UTC)
        return aware.astimezone(UTC).isoformat(timespec="microseconds")
    if hasattr(value, "isoformat"):  # a date
        return datetime(value.year, value.month, value.day, tzinfo=UTC).isoformat(timespec="microseconds")
    if isinstance(value, float):
        return repr(value)
    return str(value)


def manual_value(value: str, value_type: str) -> str:
    """A watermark given by hand, checked and written as the pipeline writes one: a timestamp with its
    time zone (in UTC, with microseconds), a finite number, or text as it is. A ValueError says what
    is wrong; a naive timestamp is refused rather than guessed to be UTC."""
    if value_type == "timestamp":
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO-8601 timestamp (e.g. 2024-01-31T00:00:00+00:00)") from None
        if parsed.tzinfo is None:
            raise ValueError(f"{value!r} has no time zone: add one, e.g. {parsed.isoformat()}+00:00 (watermarks "
                             "are stored with their zone)")
        return str(format_value(parsed))
    if value_type == "number":
        try:
            number = Decimal(value)
        except InvalidOperation:
            raise ValueError(f"{value!r} is not a number") from None
        if not number.is_finite():
            raise ValueError(f"{value!r} is not a finite number")
        return str(number)
    return value


def lower_bound(watermark: Watermark | None, lookback: float) -> Any:
    """Where the next extract starts: the watermark minus the lookback window (None: from the start)."""
    if watermark is None or watermark.value is None:
        return None
    value = watermark.typed()
    if not lookback:
        return value
    if watermark.value_type == "timestamp":
        return value - timedelta(seconds=lookback)
    if watermark.value_type == "number":
        return value - Decimal(str(lookback))
    return value


class MaxTracker:
    """Keeps the maximum of one column over every batch an extract writes."""

    def __init__(self, cursor: str) -> None:
        self.cursor = cursor
        self.value: Any = None
        self.value_type = "text"

    def update(self, batch: pa.RecordBatch) -> None:
        if self.cursor not in batch.schema.names or batch.num_rows == 0:
            return
        column = batch.column(self.cursor)
        self.value_type = value_type_of(column.type)
        if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
            self.value_type = "text"
        declared = (batch.schema.field(self.cursor).metadata or {}).get(PG_TYPE_KEY, b"").decode()
        if self.value_type == "text" and base_pg_type(declared) == "numeric":
            # A numeric wider than Arrow's decimals travels as its text: its largest value is the
            # largest number ('10'), not the largest text ('9', which read 10 again every run).
            self.value_type = "number"
            numbers = (Decimal(v) for v in column.to_pylist() if v is not None)
            batch_max = max((n for n in numbers if n.is_finite()), default=None)
        else:
            batch_max = pc.max(column).as_py()
        if batch_max is None:
            return
        if self.value is None or _compare(batch_max, self.value) > 0:
            self.value = batch_max

    def watermark(self, previous: Watermark | None) -> Watermark | None:
        """The new watermark: this extract's maximum, never behind the previous one."""
        if self.value is None:
            return previous
        new = Watermark(self.cursor, format_value(self.value), self.value_type)
        if previous is not None and previous.value is not None and previous.value_type == new.value_type:
            if _compare(new.typed(), previous.typed()) < 0:
                return previous
        return new


def _compare(a: Any, b: Any) -> int:
    try:
        if isinstance(a, (int, float, Decimal)) and isinstance(b, (int, float, Decimal)):
            a, b = Decimal(str(a)), Decimal(str(b))
        return (a > b) - (a < b)
    except (TypeError, InvalidOperation):
        return (str(a) > str(b)) - (str(a) < str(b))


def state_table(schema: str = "public") -> sql.Composed:
    return sql.SQL(".").join([sql.Identifier(schema), sql.Identifier(STATE_TABLE)])


def ensure_state_table(conn: psycopg.Connection[Any], schema: str = "public") -> None:
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('sndw:state-ddl'))")
        create_schema(cur, schema)
        cur.execute(sql.SQL(STATE_DDL).format(table=state_table(schema)))


def get_watermark(conn: psycopg.Connection[Any], pipeline: str, table: str, schema: str = "public") -> Watermark | None:
    ensure_state_table(conn, schema)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT cursor_column, value, value_type FROM {} WHERE pipeline_name = %s AND table_name = %s")
                    .format(state_table(schema)), (pipeline, table))
        row = cur.fetchone()
    return Watermark(row[0], row[1], row[2]) if row else None


def save_watermark(cur: psycopg.Cursor[Any], pipeline: str, table: str, watermark: Watermark,
                   run_id: str | None, schema: str = "public") -> None:
    """Store the watermark inside the caller's (load) transaction."""
    cur.execute(sql.SQL(STATE_DDL).format(table=state_table(schema)))
    cur.execute(
        sql.SQL("""
            INSERT INTO {} (pipeline_name, table_name, cursor_column, value, value_type, updated_at, run_id)
            VALUES (%s, %s, %s, %s, %s, now(), %s)
            ON CONFLICT (pipeline_name, table_name) DO UPDATE SET cursor_column = EXCLUDED.cursor_column,
                value = EXCLUDED.value, value_type = EXCLUDED.value_type, updated_at = now(),
                run_id = EXCLUDED.run_id
        """).format(state_table(schema)),
        (pipeline, table, watermark.cursor, watermark.value, watermark.value_type, run_id),
    )
    log.info("watermark of %s.%s: %s = %s", pipeline, table, watermark.cursor, watermark.value)


def set_watermark(conn: psycopg.Connection[Any], pipeline: str, table: str, cursor: str, value: str | None,
                  value_type: str, schema: str = "public") -> None:
    """Set (or, with ``value=None``, reset) a watermark by hand, e.g. for a re-sync."""
    ensure_state_table(conn, schema)
    with conn.transaction(), conn.cursor() as cur:
        if value is None:
            cur.execute(sql.SQL("DELETE FROM {} WHERE pipeline_name = %s AND table_name = %s").format(
                state_table(schema)), (pipeline, table))
        else:  # checked (ValueError) before anything is written
            save_watermark(cur, pipeline, table, Watermark(cursor, manual_value(value, value_type), value_type),
                           "manual", schema)


def list_watermarks(conn: psycopg.Connection[Any], schema: str = "public") -> list[tuple[Any, ...]]:
    ensure_state_table(conn, schema)
    with conn.transaction(), conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT pipeline_name, table_name, cursor_column, value, value_type, updated_at, run_id "
                            "FROM {} ORDER BY 1, 2").format(state_table(schema)))
        return cur.fetchall()
