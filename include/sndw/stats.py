"""What the warehouse API reports: health, run statistics, loaded tables and their rows.

The SQL behind the Airflow plugin's /health, /stats, /data and page (plugins/sndw_plugin.py), kept
here so it needs no Airflow. Nothing a client sends becomes SQL: table and column names are
matched against the audit log and the catalog and quoted as identifiers, values are parameters,
and every query runs in a read-only transaction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from sndw.audit import AUDIT_TABLE, STATUS_VIEW
from sndw.config import FileSource, HttpSource, SqlSource
from sndw.naming import qualified

Source = HttpSource | SqlSource | FileSource
MAX_PAGE_SIZE = 100
TEXT_TYPES = ("text", "character varying", "character", "citext")
CHART_DATES = 30


class NotFound(LookupError):
    """The table is not one the product loaded (or does not exist): HTTP 404."""


class BadRequest(ValueError):
    """A parameter names an unknown column or has a value out of range: HTTP 400."""


def ping(conn: psycopg.Connection[Any]) -> float:
    """Round trip of ``SELECT 1`` in milliseconds."""
    start = time.perf_counter()
    conn.execute("SELECT 1").fetchone()
    return round((time.perf_counter() - start) * 1000, 2)


def _has_audit(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", (AUDIT_TABLE,)).fetchone()
    return bool(row and row[0])


def _json(value: Any) -> Any:
    """A value as JSON shows it exactly: decimals and big numbers as text, times in ISO 8601."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal | UUID | timedelta):
        return str(value)
    if isinstance(value, bytes | memoryview):
        return bytes(value).hex()
    if isinstance(value, list):
        return [_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _json(v) for k, v in value.items()}
    return value


# ------------------------------------------------------------------ freshness and the last run


def freshness(source: Source, last_success: datetime | None, now: datetime | None = None) -> dict[str, Any]:
    """Whether the last successful load is as recent as the schedule asks.

    ``fresh`` when it finished after the scheduled run before the latest one (the latest may still
    be running), ``stale`` when not, ``never`` with no success yet, ``unscheduled`` for manual sources.
    """
    now = now or datetime.now(UTC)
    info: dict[str, Any] = {"schedule": source.schedule, "last_success": _json(last_success),
                            "age_seconds": round((now - last_success).total_seconds()) if last_success else None}
    if source.schedule is None or source.schedule in ("@once", "@continuous"):
        return {**info, "status": "unscheduled" if last_success is None else "fresh", "due_since": None}
    from croniter import croniter

    schedule = croniter(source.schedule, now)
    schedule.get_prev(datetime)
    due = schedule.get_prev(datetime)  # the run before the latest one must have loaded by now
    if last_success is None:
        status = "never"
    else:
        status = "fresh" if last_success >= due else "stale"
    return {**info, "status": status, "due_since": due.isoformat()}


def last_runs(conn: psycopg.Connection[Any], sources: list[str]) -> dict[str, dict[str, Any]]:
    """Per source, its latest run (the run of its newest audit row): when, and whether every task's
    latest attempt in it succeeded."""
    if not sources or not _has_audit(conn):
        return {}
    rows = conn.execute(sql.SQL("""
        WITH latest AS (
            SELECT DISTINCT ON (pipeline_name) pipeline_name, coalesce(airflow_run_id, run_id) AS run
            FROM {t} WHERE pipeline_name = ANY(%s) ORDER BY pipeline_name, id DESC
        ), attempts AS (
            SELECT DISTINCT ON (a.pipeline_name, a.step, a.target_table)
                   a.pipeline_name, a.status, a.dag_id, a.started_at, a.finished_at, a.error_message, l.run
            FROM {t} a JOIN latest l ON l.pipeline_name = a.pipeline_name
             AND coalesce(a.airflow_run_id, a.run_id) = l.run
            ORDER BY a.pipeline_name, a.step, a.target_table, a.id DESC
        )
        SELECT pipeline_name, run, max(dag_id), min(started_at), max(finished_at),
               bool_and(status = 'success'), count(*) FILTER (WHERE status = 'failure')
        FROM attempts GROUP BY pipeline_name, run
    """).format(t=sql.Identifier(AUDIT_TABLE)), (sources,)).fetchall()
    return {r[0]: {"run_id": r[1], "dag_id": r[2], "started_at": _json(r[3]), "finished_at": _json(r[4]),
                   "status": "success" if r[5] else "failure", "failed_tasks": r[6]} for r in rows}


def health(conn: psycopg.Connection[Any], sources: list[Source]) -> dict[str, Any]:
    """The warehouse's latency and, per source, its last run and freshness."""
    latency = ping(conn)
    names = [s.name for s in sources]
    runs = last_runs(conn, names)
    successes: dict[str, datetime] = {}
    if names and _has_audit(conn):
        successes = dict(conn.execute(sql.SQL(
            "SELECT pipeline_name, max(finished_at) FROM {} WHERE pipeline_name = ANY(%s) AND status = 'success' "
            "AND step IN ('load', 'replay') GROUP BY pipeline_name").format(sql.Identifier(AUDIT_TABLE)),
            (names,)).fetchall())
    from sndw.freshness import stored

    checked = stored(conn, names)  # the sndw_freshness DAG's last check of each table with a policy
    per_source = {s.name: {"last_run": runs.get(s.name), "freshness": freshness(s, successes.get(s.name)),
                           "table_freshness": checked.get(s.name, {})} for s in sources}
    return {"warehouse": {"reachable": True, "latency_ms": latency}, "sources": per_source}


# ------------------------------------------------------------------ statistics


def _stat(row: Any) -> dict[str, Any]:
    return {"total_records_processed": int(row[0] or 0), "total_duration_seconds": float(row[1] or 0),
            "last_success": _json(row[2]), "last_failure": _json(row[3]), "last_failure_reason": row[4],
            "run_count": int(row[5] or 0)}


_EMPTY = (0, 0, None, None, None, 0)


def stats(conn: psycopg.Connection[Any], sources: list[str]) -> dict[str, Any]:
    """The seed's /stats fields, overall, per source and per target table, from etl_audit_log.

    Records are the rows loaded (load and replay steps); duration sums every attempt of every step;
    a run is one Airflow run (or one command-line run).
    """
    result: dict[str, Any] = {"overall": _stat(_EMPTY), "sources": {}}
    if not sources or not _has_audit(conn):
        return result
    rows = conn.execute(sql.SQL("""
        SELECT GROUPING(pipeline_name, target_table) AS level, pipeline_name, target_table,
               sum(rows_loaded) FILTER (WHERE status = 'success' AND step IN ('load', 'replay')),
               sum(extract(epoch FROM finished_at - started_at)),
               max(finished_at) FILTER (WHERE status = 'success'),
               max(finished_at) FILTER (WHERE status = 'failure'),
               (array_agg(error_message ORDER BY id DESC) FILTER (WHERE status = 'failure'))[1],
               count(DISTINCT coalesce(airflow_run_id, run_id))
        FROM {} WHERE pipeline_name = ANY(%s)
        GROUP BY GROUPING SETS ((), (pipeline_name), (pipeline_name, target_table))
        ORDER BY 1 DESC, 2, 3
    """).format(sql.Identifier(AUDIT_TABLE)), (sources,)).fetchall()
    for level, source, table, *values in rows:
        if level == 3:
            result["overall"] = _stat(values)
        elif level == 1:
            result["sources"][source] = {**_stat(values), "tables": {}}
        else:
            result["sources"][source]["tables"][table] = _stat(values)
    return result


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """``stats`` of several warehouses as one: sources side by side, the overall figures combined."""
    if len(parts) == 1:
        return parts[0]
    result: dict[str, Any] = {"overall": _stat(_EMPTY), "sources": {}}
    overall = result["overall"]
    for part in parts:
        result["sources"].update(part["sources"])
        other = part["overall"]
        overall["total_records_processed"] += other["total_records_processed"]
        overall["total_duration_seconds"] += other["total_duration_seconds"]
        overall["run_count"] += other["run_count"]
        for key in ("last_success", "last_failure"):  # ISO 8601 in UTC: the text order is the time order
            if other[key] and (overall[key] is None or other[key] > overall[key]):
                overall[key] = other[key]
                if key == "last_failure":
                    overall["last_failure_reason"] = other["last_failure_reason"]
    return result


def recent_failures(conn: psycopg.Connection[Any], source: str, limit: int = 20) -> list[dict[str, Any]]:
    """The source's latest failed attempts with their (redacted) messages and runs."""
    if not _has_audit(conn):
        return []
    rows = conn.execute(sql.SQL(
        "SELECT target_table, step, partition_date, finished_at, dag_id, airflow_run_id, task_id, try_number, "
        "error_message FROM {} WHERE pipeline_name = %s AND status = 'failure' ORDER BY id DESC LIMIT %s"
    ).format(sql.Identifier(AUDIT_TABLE)), (source, limit)).fetchall()
    keys = ("table", "step", "partition_date", "finished_at", "dag_id", "run_id", "task_id", "try_number", "error")
    return [{k: _json(v) for k, v in zip(keys, r, strict=True)} for r in rows]


def partition_chart(conn: psycopg.Connection[Any], source: str, dates: int = CHART_DATES) -> dict[str, list[dict[str, Any]]]:
    """Per target table, rows loaded per partition date (its last ``dates`` dates, oldest first)."""
    if not _has_audit(conn):
        return {}
    view = conn.execute("SELECT to_regclass(%s)", (STATUS_VIEW,)).fetchone()
    if not view or not view[0]:
        return {}
    rows = conn.execute(sql.SQL("""
        SELECT target_table, partition_date, rows_loaded, last_status, failures, last_error FROM (
            SELECT *, row_number() OVER (PARTITION BY target_table ORDER BY partition_date DESC) AS n
            FROM {} WHERE pipeline_name = %s) p
        WHERE n <= %s ORDER BY target_table, partition_date
    """).format(sql.Identifier(STATUS_VIEW)), (source, dates)).fetchall()
    chart: dict[str, list[dict[str, Any]]] = {}
    for table, day, loaded, status, failures, error in rows:
        chart.setdefault(table, []).append({"date": day.isoformat(), "rows_loaded": loaded, "status": status,
                                            "failures": failures, "last_error": error})
    return chart


# ------------------------------------------------------------------ loaded tables and their rows


def loaded_tables(conn: psycopg.Connection[Any]) -> dict[str, set[str]]:
    """``schema.table`` -> the sources that loaded it, from the audit log's successful loads."""
    if not _has_audit(conn):
        return {}
    tables: dict[str, set[str]] = {}
    for target, source in conn.execute(sql.SQL(
            "SELECT DISTINCT target_table, pipeline_name FROM {} WHERE status = 'success' "
            "AND step IN ('load', 'replay')").format(sql.Identifier(AUDIT_TABLE))).fetchall():
        tables.setdefault(target, set()).add(source)
    return tables


def table_sources(conn: psycopg.Connection[Any], schema: str, table: str) -> set[str]:
    """The sources that loaded ``schema.table``; NotFound when none did."""
    sources = loaded_tables(conn).get(qualified(schema, table))
    if not sources:
        raise NotFound(f"{qualified(schema, table)} is not a table this warehouse loaded")
    return sources


@dataclass
class Column:
    name: str
    data_type: str

    @property
    def is_text(self) -> bool:
        return self.data_type in TEXT_TYPES


def columns(conn: psycopg.Connection[Any], schema: str, table: str) -> list[Column]:
    rows = conn.execute("SELECT column_name, data_type FROM information_schema.columns "
                        "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
                        (schema, table)).fetchall()
    if not rows:
        raise NotFound(f"{qualified(schema, table)} does not exist in the warehouse")
    return [Column(r[0], r[1]) for r in rows]


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def query_table(conn: psycopg.Connection[Any], schema: str, table: str, *, page: int = 1, page_size: int = 10,
                filters: dict[str, str] | None = None, search: str | None = None, order_by: str | None = None,
                descending: bool = False) -> dict[str, Any]:
    """One page of a loaded table: equality filters (compared as text), ``search`` over the text
    columns (case-insensitive substring), ordered by a column; with ``total`` and ``has_more``."""
    if page < 1:
        raise BadRequest(f"page must be 1 or more, not {page}")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise BadRequest(f"page_size must be between 1 and {MAX_PAGE_SIZE}, not {page_size}")
    # Read-only (the first statement of its own transaction: the connection must be idle).
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        conn.execute("SET LOCAL statement_timeout = '30s'")
        return _query_page(conn, schema, table, page, page_size, filters or {}, search, order_by, descending)


def _query_page(conn: psycopg.Connection[Any], schema: str, table: str, page: int, page_size: int,
                filters: dict[str, str], search: str | None, order_by: str | None, descending: bool) -> dict[str, Any]:
    table_sources(conn, schema, table)
    cols = columns(conn, schema, table)
    by_name = {c.name: c for c in cols}
    unknown = [name for name in [*filters, *([order_by] if order_by else [])] if name not in by_name]
    if unknown:
        raise BadRequest(f"unknown column {unknown[0]!r} in {qualified(schema, table)}; its columns: "
                         f"{', '.join(by_name)}")
    where: list[sql.Composable] = []
    params: list[Any] = []
    for name, value in filters.items():
        where.append(sql.SQL("{}::text = %s").format(sql.Identifier(name)))
        params.append(value)
    if search:
        text_cols = [c for c in cols if c.is_text]
        if not text_cols:
            raise BadRequest(f"{qualified(schema, table)} has no text columns to search")
        pattern = f"%{_escape_like(search)}%"
        where.append(sql.SQL("({})").format(sql.SQL(" OR ").join(
            sql.SQL("{} ILIKE %s").format(sql.Identifier(c.name)) for c in text_cols)))
        params.extend([pattern] * len(text_cols))
    clause = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL("")
    target = sql.Identifier(schema, table)
    order = sql.Identifier(order_by or cols[0].name)
    direction = sql.SQL("DESC") if descending else sql.SQL("ASC")
    count = conn.execute(sql.SQL("SELECT count(*) FROM {}{}").format(target, clause), params).fetchone()
    total = int(count[0]) if count else 0
    cur = conn.execute(
        sql.SQL("SELECT * FROM {}{} ORDER BY {} {} NULLS LAST, ctid LIMIT %s OFFSET %s").format(
            target, clause, order, direction),
        [*params, page_size, (page - 1) * page_size])
    names = [d.name for d in cur.description or []]
    data = [{n: _json(v) for n, v in zip(names, row, strict=True)} for row in cur.fetchall()]
    return {"data": data, "total": total, "page": page, "page_size": page_size,
            "has_more": page * page_size < total, "columns": [c.name for c in cols]}
