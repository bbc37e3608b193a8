"""What the warehouse API reports: health, run statistics, loaded tables and their rows.

The SQL behind the Airflow plugin's /health, /stats, /data and page (plugins/sndw_plugin.py), kept
here so it needs no Airflow. Nothing a client sends becomes SQL: table and column names are
matched against the audit log and the catalog and quoted as identifiers, values are parameters,
and every query runs in a read-only transaction.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import psycopg
from psycopg import sql

from sndw.audit import AUDIT_TABLE, STATUS_VIEW
from sndw.config import FileSource, HttpSource, SqlSource
from sndw.naming import dag_id_for, qualified
from sndw.quality import RESULTS_TABLE
from sndw.reconcile import expected_dates
from sndw.state import STATE_TABLE

Source = HttpSource | SqlSource | FileSource
MAX_PAGE_SIZE = 100
# The row offset of a page must fit PostgreSQL's bigint OFFSET.
MAX_PAGE = (2**63 - 1) // MAX_PAGE_SIZE
CHART_DATES = 30
# A page of /data holds at most about this many characters of values: each variable-length value
# (text, bytea, json, arrays, numeric...) longer than its share is cut, and the answer says so.
PAGE_CHARS = 2_000_000
MAX_VALUE_CHARS = 100_000
MIN_VALUE_CHARS = 64
TRUNCATION_MARK = "\u2026"
LOADS_SHOWN = 30  # the ETL page's chart: a table's last loads
GAP_DAYS = 30  # the ETL page looks for gaps in the last days the schedule asked for


class NotFound(LookupError):
    """The table is not one the product loaded (or does not exist): HTTP 404."""


class BadRequest(ValueError):
    """A parameter names an unknown column or has a value out of range: HTTP 400."""

    def __init__(self, message: str, parameter: str | None = None) -> None:
        super().__init__(f"{parameter}: {message}" if parameter else message)
        self.parameter = parameter


def ping(conn: psycopg.Connection[Any]) -> float:
    """Round trip of ``SELECT 1`` in milliseconds."""
    start = time.perf_counter()
    conn.execute("SELECT 1").fetchone()
    return round((time.perf_counter() - start) * 1000, 2)


def _has_audit(conn: psycopg.Connection[Any]) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", (AUDIT_TABLE,)).fetchone()
    return bool(row and row[0])


def _relation_exists(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute("SELECT to_regclass(%s)", (name,)).fetchone()
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
    due = _due_time(source.schedule, now)
    if last_success is None:
        status = "never"
    else:
        status = "fresh" if last_success >= due else "stale"
    return {**info, "status": status, "due_since": due.isoformat()}


@functools.lru_cache(maxsize=256)
def _due_time(schedule: str, now: datetime) -> datetime:
    """The scheduled time before the latest one: its run must have loaded by ``now``. Cached: the
    ETL page asks it for every table at the same ``now``, and most sources share a schedule."""
    from croniter import croniter

    times = croniter(schedule, now)
    times.get_prev(datetime)
    return times.get_prev(datetime)


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
    for (source, table), checks in latest_checks(conn, sources).items():
        entry = result["sources"].setdefault(source, {**_stat(_EMPTY), "tables": {}})
        entry["tables"].setdefault(table, _stat(_EMPTY))["checks"] = checks
    return result


def latest_checks(conn: psycopg.Connection[Any], sources: list[str]) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Per (source, table), the latest result of every quality check recorded in etl_check_results."""
    if not sources or not _relation_exists(conn, RESULTS_TABLE):
        return {}
    rows = conn.execute(sql.SQL("""
        SELECT DISTINCT ON (pipeline_name, target_table, check_name)
               pipeline_name, target_table, check_name, kind, severity, status, column_name, failing_rows,
               partition_date, checked_at, run_id, message
        FROM {} WHERE pipeline_name = ANY(%s)
        ORDER BY pipeline_name, target_table, check_name, id DESC
    """).format(sql.Identifier(RESULTS_TABLE)), (sources,)).fetchall()
    out: dict[tuple[str, str], list[dict[str, Any]]] = {}
    keys = ("name", "kind", "severity", "status", "column", "failing_rows", "partition_date", "checked_at", "run_id",
            "message")
    for source, table, *values in rows:
        out.setdefault((source, table), []).append({k: _json(v) for k, v in zip(keys, values, strict=True)})
    return out



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


# ------------------------------------------------------------------ the ETL page


def _ts(value: datetime | None) -> str | None:
    """A time as the page shows it: UTC, to the second."""
    return value.astimezone(UTC).replace(microsecond=0).isoformat() if value else None


def _first_line(text: str | None) -> str | None:
    return text.strip().splitlines()[0] if text and text.strip() else text


def _due(source: Source, now: datetime) -> datetime | None:
    """The scheduled time whose run must have loaded by now (the one before the latest), or None."""
    if source.schedule is None or source.schedule in ("@once", "@continuous"):
        return None
    return datetime.fromisoformat(freshness(source, None, now)["due_since"])


def _gap_window(source: Source, now: datetime) -> tuple[date, date, list[date]] | None:
    """The last ``GAP_DAYS`` days up to the last due run, and the dates the schedule asked for in them."""
    due = _due(source, now)
    if due is None:
        return None
    last = due.date()
    first = last - timedelta(days=GAP_DAYS - 1)
    return first, last, expected_dates(source, first, last)


def _table_rows(sources: list[Source]) -> list[tuple[Source, Any, str, str]]:
    return [(s, t, qualified(s.target_schema, t.target), f"lake:{s.kind}/{s.name}/{t.name}")
            for s in sources for t in s.tables]


def overview(conn: psycopg.Connection[Any], sources: list[Source], now: datetime | None = None) -> dict[str, Any]:
    """Everything the ETL page shows, for every source and table, in six queries whatever the
    number of sources (each reads only a table's latest rows through etl_audit_log's indexes).

    Per table: its last ``LOADS_SHOWN`` loads (rows, seconds, status), the last error (first line
    and where its task log is), the last successful load and freshness against the schedule, gaps
    where they mean something (``partition`` tables: dates not loaded; other write modes: scheduled
    runs that never started), the latest result of each configured quality check, and its
    ``etl_state`` row (watermark, or change data capture position) where there is one. Sources come
    failing first, then stale, then by name.
    """
    now = now or datetime.now(UTC)
    tables = _table_rows(sources)
    windows = {s.name: _gap_window(s, now) for s in sources}
    has_audit = _has_audit(conn)
    pipelines = [s.name for s, _, _, _ in tables]
    targets = [target for _, _, target, _ in tables]
    lakes = [lake for _, _, _, lake in tables]
    loads: dict[tuple[str, str], list[dict[str, Any]]] = {}
    newest: dict[tuple[str, str], tuple[datetime, dict[str, Any]]] = {}
    last_ok: dict[tuple[str, str], tuple[datetime, str | None, str | None]] = {}
    last_fail: dict[tuple[str, str], dict[str, Any]] = {}
    seen: dict[tuple[str, str], tuple[set[date], set[date]]] = {}
    if has_audit and tables:
        audit = sql.Identifier(AUDIT_TABLE)
        for p, target, *row in conn.execute(sql.SQL("""
            SELECT t.p, t.target, l.status, l.rows_loaded, l.partition_date, l.started_at, l.finished_at,
                   l.airflow_run_id, l.dag_id
            FROM unnest(%s::text[], %s::text[]) AS t(p, target)
            CROSS JOIN LATERAL (
                SELECT * FROM {a} a WHERE a.pipeline_name = t.p AND a.target_table = t.target
                  AND a.step IN ('load', 'replay')
                ORDER BY a.pipeline_name DESC, a.target_table DESC, a.id DESC LIMIT %s) l
        """).format(a=audit), (pipelines, targets, LOADS_SHOWN)).fetchall():
            status, rows, day, started, finished, run, dag = row
            if (p, target) not in loads and finished is not None:  # the newest comes first
                newest[(p, target)] = (finished, {"finished_at": _ts(finished), "status": status,
                                                  "run_id": run, "dag_id": dag})
            loads.setdefault((p, target), []).append({
                "status": status, "rows": rows, "partition": _json(day), "finished_at": _ts(finished),
                "seconds": round((finished - started).total_seconds(), 3) if finished and started else None})
        for p, target, finished, run, dag in conn.execute(sql.SQL("""
            SELECT t.p, t.target, l.finished_at, l.airflow_run_id, l.dag_id
            FROM unnest(%s::text[], %s::text[]) AS t(p, target)
            CROSS JOIN LATERAL (
                SELECT * FROM {a} a WHERE a.pipeline_name = t.p AND a.target_table = t.target
                  AND a.step IN ('load', 'replay') AND a.status = 'success'
                ORDER BY a.pipeline_name DESC, a.target_table DESC, a.id DESC LIMIT 1) l
        """).format(a=audit), (pipelines, targets)).fetchall():
            last_ok[(p, target)] = (finished, run, dag)
        # Extracts are audited under the lake's name: a table's last error is the newer of both.
        for p, target, *row in conn.execute(sql.SQL("""
            SELECT t.p, t.target, f.step, f.finished_at, f.error_message, f.dag_id, f.airflow_run_id, f.task_id,
                   f.try_number, f.partition_date
            FROM unnest(%s::text[], %s::text[], %s::text[]) AS t(p, target, lake)
            CROSS JOIN LATERAL (
                SELECT * FROM (
                    (SELECT * FROM {a} a WHERE a.pipeline_name = t.p AND a.target_table = t.target
                       AND a.status = 'failure'
                       ORDER BY a.pipeline_name DESC, a.target_table DESC, a.id DESC LIMIT 1)
                    UNION ALL
                    (SELECT * FROM {a} a WHERE a.pipeline_name = t.p AND a.target_table = t.lake
                       AND a.status = 'failure'
                       ORDER BY a.pipeline_name DESC, a.target_table DESC, a.id DESC LIMIT 1)) both_steps
                ORDER BY id DESC LIMIT 1) f
        """).format(a=audit), (pipelines, targets, lakes)).fetchall():
            step, finished, error, dag, run, task, attempt, day = row
            last_fail[(p, target)] = {
                "step": step, "finished_at": _ts(finished), "at": finished, "message": _first_line(error),
                "dag_id": dag, "run_id": run, "task_id": task, "try_number": attempt, "partition": _json(day)}
        first_day = min((w[0] for w in windows.values() if w), default=None)
        if first_day is not None:
            for p, target, loaded, attempted in conn.execute(sql.SQL("""
                SELECT t.p, t.target,
                       array_agg(DISTINCT a.partition_date) FILTER (WHERE a.status = 'success'
                                                                  AND a.step IN ('load', 'replay')),
                       array_agg(DISTINCT a.partition_date)
                FROM unnest(%s::text[], %s::text[], %s::text[]) AS t(p, target, audited)
                CROSS JOIN LATERAL (
                    SELECT partition_date, status, step FROM {a} a
                    WHERE a.pipeline_name = t.p AND a.target_table = t.audited AND a.partition_date >= %s) a
                GROUP BY t.p, t.target
            """).format(a=audit), (pipelines * 2, targets * 2, targets + lakes, first_day)).fetchall():
                seen[(p, target)] = (set(loaded or []), set(attempted or []))
    quality = _latest_checks(conn, tables)
    states = _states(conn, sources)
    out: list[dict[str, Any]] = []
    for source in sources:
        window = windows[source.name]
        rows = []
        for s, table, target, _ in tables:
            if s is not source:
                continue
            key = (source.name, target)
            ok = last_ok.get(key)
            failure = last_fail.get(key)
            failing = bool(failure and (ok is None or failure["at"] > ok[0]))
            if failure:
                failure.pop("at")
                failure["current"] = failing
            fresh = freshness(source, ok[0] if ok else None, now)
            gaps = None
            if window:
                first, last, expected = window
                loaded, attempted = seen.get(key, (set(), set()))
                partition = table.write_mode == "partition"
                # A table that never ran misses nothing yet: it shows as "never" loaded.
                ran = bool(attempted or loads.get(key) or key in last_fail)
                missing = [d for d in expected if ran and (d not in loaded if partition else d not in attempted)]
                gaps = {"kind": "dates" if partition else "runs", "from": first.isoformat(), "to": last.isoformat(),
                        "expected": len(expected), "missing": [d.isoformat() for d in missing]}
            state = "failing" if failing else fresh["status"]
            rows.append({"name": table.name, "target": target, "write_mode": table.write_mode, "state": state,
                         "loads": list(reversed(loads.get(key, []))), "last_success": _ts(ok[0]) if ok else None,
                         "last_error": failure, "freshness": fresh, "gaps": gaps,
                         "quality": quality.get(key), "state_row": states.get((source.name, table.name))})
        order = ("failing", "never", "stale", "fresh", "unscheduled")
        state = min((r["state"] for r in rows), key=order.index, default="unscheduled")
        latest = max((newest[(source.name, r["target"])] for r in rows if (source.name, r["target"]) in newest),
                     key=lambda x: x[0], default=None)
        out.append({"name": source.name, "dag_id": dag_id_for(source.name), "kind": source.kind,
                    "schedule": source.schedule, "tags": list(source.tags), "state": state,
                    "last_load": latest[1] if latest else None, "tables": rows})
    rank = {"failing": 0, "never": 1, "stale": 1}
    out.sort(key=lambda s: (rank.get(s["state"], 2), s["name"]))
    return {"generated_at": _ts(now), "sources": out}


def _latest_checks(conn: psycopg.Connection[Any], tables: list[tuple[Source, Any, str, str]]
                   ) -> dict[tuple[str, str], dict[str, Any]]:
    """Per table with checks configured, the latest result of each: counts per status and the
    names of those failing (fail, warn, quarantined or error)."""
    wanted = [(s.name, target, check.label) for s, t, target, _ in tables for check in t.checks]
    if not wanted or not _relation_exists(conn, RESULTS_TABLE):
        return {}
    out: dict[tuple[str, str], dict[str, Any]] = {}
    rows = conn.execute(sql.SQL("""
        SELECT w.p, w.target, w.name, r.status, r.failing_rows, r.checked_at, r.partition_date, r.message
        FROM unnest(%s::text[], %s::text[], %s::text[]) AS w(p, target, name)
        CROSS JOIN LATERAL (
            SELECT * FROM {} r WHERE r.target_table = w.target AND r.check_name = w.name
              AND r.pipeline_name IS NOT DISTINCT FROM w.p
            ORDER BY r.target_table DESC, r.check_name DESC, r.id DESC LIMIT 1) r
    """).format(sql.Identifier(RESULTS_TABLE)), [list(x) for x in zip(*wanted, strict=True)]).fetchall()
    for p, target, name, status, failing_rows, checked, day, message in rows:
        entry = out.setdefault((p, target), {"counts": {}, "failing": [], "checks": []})
        entry["counts"][status] = entry["counts"].get(status, 0) + 1
        if status != "pass":
            entry["failing"].append(name)
        entry["checks"].append({"name": name, "status": status, "failing_rows": failing_rows,
                                "checked_at": _ts(checked), "partition": _json(day),
                                "message": _first_line(message)})
    return out


def _states(conn: psycopg.Connection[Any], sources: list[Source]) -> dict[tuple[str, str], dict[str, Any]]:
    """The ``etl_state`` row of each table that has one (a watermark, or a change data capture
    position): what the page shows as the table's state."""
    if not sources or not _relation_exists(conn, STATE_TABLE):
        return {}
    rows = conn.execute(sql.SQL(
        "SELECT pipeline_name, table_name, cursor_column, value, value_type, updated_at FROM {} "
        "WHERE pipeline_name = ANY(%s)").format(sql.Identifier(STATE_TABLE)), ([s.name for s in sources],)).fetchall()
    return {(r[0], r[1]): {"cursor": r[2], "value": r[3], "value_type": r[4], "updated_at": _ts(r[5])}
            for r in rows}


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


def table_loaders(conn: psycopg.Connection[Any], schema: str, table: str) -> dict[str, set[str | None]]:
    """Per pipeline (source) that loaded ``schema.table``, the DAGs whose successful loads wrote it
    (``None`` for a load outside Airflow, by the command line); NotFound when none did."""
    target = qualified(schema, table)
    loaders: dict[str, set[str | None]] = {}
    if _has_audit(conn):
        for pipeline, dag_id in conn.execute(sql.SQL(
                "SELECT DISTINCT pipeline_name, dag_id FROM {} WHERE status = 'success' AND step IN ('load', 'replay') "
                "AND target_table = %s").format(sql.Identifier(AUDIT_TABLE)), (target,)).fetchall():
            loaders.setdefault(pipeline, set()).add(dag_id)
    if not loaders:
        raise NotFound(f"{target} is not a table this warehouse loaded")
    return loaders


@dataclass
class Column:
    name: str
    data_type: str  # as format_type writes it: "text", "json[]", "character varying(20)"
    type_oid: int = 0
    category: str = ""  # pg_type.typcategory of the type (of a domain's base type): "S" is a string
    variable_length: bool = False  # pg_type.typlen = -1: the values that may be of any size
    orderable: bool = True

    @property
    def is_text(self) -> bool:
        return self.category == "S"


def columns(conn: psycopg.Connection[Any], schema: str, table: str) -> list[Column]:
    rows = conn.execute("""
        SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.atttypid, t.typcategory, t.typlen = -1
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_type t ON t.oid = a.atttypid
        WHERE n.nspname = %s AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
        ORDER BY a.attnum""", (schema, table)).fetchall()
    if not rows:
        raise NotFound(f"{qualified(schema, table)} does not exist in the warehouse")
    known: dict[int, bool] = {}
    return [Column(r[0], r[1], r[2], r[3], r[4], _orderable(conn, r[2], known)) for r in rows]


def _orderable(conn: psycopg.Connection[Any], type_oid: int, known: dict[int, bool]) -> bool:
    """Whether ORDER BY can sort a column of this type, as PostgreSQL decides it: a default btree
    operator class for the type (or one it is binary-coercible to); for an array, a composite or a
    domain, the same of its elements, fields or base type (json[] has array_ops, yet comparing two
    arrays of json fails at run time)."""
    if type_oid in known:
        return known[type_oid]
    known[type_oid] = False  # a type that contains itself is not orderable
    row = conn.execute("SELECT typtype, typbasetype, typelem, typrelid, typcategory, typlen FROM pg_type "
                       "WHERE oid = %s", (type_oid,)).fetchone()
    if row is None:
        return False
    kind, base, element, relation, category, length = row
    has_btree = conn.execute("""
        SELECT EXISTS (SELECT 1 FROM pg_opclass o JOIN pg_am m ON m.oid = o.opcmethod
                       WHERE m.amname = 'btree' AND o.opcdefault AND (o.opcintype = %(t)s OR EXISTS (
                           SELECT 1 FROM pg_cast WHERE castsource = %(t)s AND casttarget = o.opcintype
                           AND castmethod = 'b')))""", {"t": type_oid}).fetchone()
    if kind == "d":
        result = _orderable(conn, base, known)
    elif has_btree and has_btree[0]:
        result = True
    elif category == "A" and element and length == -1:
        result = _orderable(conn, element, known)
    elif kind == "c":
        fields = conn.execute("SELECT atttypid FROM pg_attribute WHERE attrelid = %s AND attnum > 0 "
                              "AND NOT attisdropped", (relation,)).fetchall()
        result = all(_orderable(conn, f[0], known) for f in fields)
    else:
        result = kind in ("e", "r", "m")  # enums, ranges and multiranges have their btree classes
    known[type_oid] = result
    return result


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def query_table(conn: psycopg.Connection[Any], schema: str, table: str, *, page: int = 1, page_size: int = 10,
                filters: dict[str, str] | None = None, search: str | None = None, order_by: str | None = None,
                descending: bool = False) -> dict[str, Any]:
    """One page of a loaded table: equality filters (compared as text), ``search`` over the text
    columns (case-insensitive substring), ordered by a column; with ``total`` and ``has_more``.

    A page holds at most about ``PAGE_CHARS`` characters of values: a variable-length value longer
    than its share (``value_chars``) is cut to that many characters of its text form followed by
    ``TRUNCATION_MARK``, and listed in ``truncated`` (row, column, full length)."""
    if not 1 <= page <= MAX_PAGE:
        raise BadRequest(f"must be between 1 and {MAX_PAGE}, not {page}", "page")
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise BadRequest(f"must be between 1 and {MAX_PAGE_SIZE}, not {page_size}", "page_size")
    for name, value in [*(filters or {}).items(), *([("search", search)] if search is not None else [])]:
        if "\x00" in value:
            raise BadRequest("holds a NUL character (\\x00), which no PostgreSQL text can", name)
    # Read-only (the first statement of its own transaction: the connection must be idle).
    with conn.transaction():
        conn.execute("SET TRANSACTION READ ONLY")
        conn.execute("SET LOCAL statement_timeout = '30s'")
        return _query_page(conn, schema, table, page, page_size, filters or {}, search, order_by, descending)


def value_chars(page_size: int, variable_columns: int) -> int:
    """How many characters of one variable-length value a page shows: its share of ``PAGE_CHARS``."""
    share = PAGE_CHARS // (page_size * max(variable_columns, 1))
    return min(MAX_VALUE_CHARS, max(MIN_VALUE_CHARS, share))


def _query_page(conn: psycopg.Connection[Any], schema: str, table: str, page: int, page_size: int,
                filters: dict[str, str], search: str | None, order_by: str | None, descending: bool) -> dict[str, Any]:
    table_sources(conn, schema, table)
    cols = columns(conn, schema, table)
    by_name = {c.name: c for c in cols}
    for name in filters:
        if name not in by_name:
            raise BadRequest(f"unknown column {name!r} in {qualified(schema, table)}; its columns: "
                             f"{', '.join(by_name)}", name)
    if order_by is not None and order_by not in by_name:
        raise BadRequest(f"unknown column {order_by!r} in {qualified(schema, table)}; its columns: "
                         f"{', '.join(by_name)}", "order_by")
    orderable = [c.name for c in cols if c.orderable]
    if order_by is not None and not by_name[order_by].orderable:
        raise BadRequest(f"column {order_by!r} of type {by_name[order_by].data_type} cannot be ordered; the "
                         f"columns that can: {', '.join(orderable) or 'none'}", "order_by")
    where: list[sql.Composable] = []
    params: list[Any] = []
    for name, value in filters.items():
        where.append(sql.SQL("{}::text = %s").format(sql.Identifier(name)))
        params.append(value)
    if search:
        text_cols = [c for c in cols if c.is_text]
        if not text_cols:
            raise BadRequest(f"{qualified(schema, table)} has no text columns to search", "search")
        pattern = f"%{_escape_like(search)}%"
        where.append(sql.SQL("({})").format(sql.SQL(" OR ").join(
            sql.SQL("{} ILIKE %s").format(sql.Identifier(c.name)) for c in text_cols)))
        params.extend([pattern] * len(text_cols))
    clause = sql.SQL(" WHERE ") + sql.SQL(" AND ").join(where) if where else sql.SQL("")
    target = sql.Identifier(schema, table)
    count = conn.execute(sql.SQL("SELECT count(*) FROM {}{}").format(target, clause), params).fetchone()
    total = int(count[0]) if count else 0
    # The page's rows under names of our own (c0, c1, ... and k for the ctid), then per
    # variable-length column its text form's length: a long value is sent as a prefix, never whole.
    direction = sql.SQL("DESC") if descending else sql.SQL("ASC")
    order_name = order_by or (orderable[0] if orderable else None)
    inner_order: list[sql.Composable] = [sql.SQL("ctid")]
    outer_order: list[sql.Composable] = [sql.Identifier("k")]
    if order_name is not None:
        position = [c.name for c in cols].index(order_name)
        inner_order.insert(0, sql.SQL("{} {} NULLS LAST").format(sql.Identifier(order_name), direction))
        outer_order.insert(0, sql.SQL("{} {} NULLS LAST").format(sql.Identifier("t", f"c{position}"), direction))
    inner = sql.SQL("SELECT {}, ctid AS k FROM {}{} ORDER BY {} LIMIT %s OFFSET %s").format(
        sql.SQL(", ").join(sql.SQL("{} AS {}").format(sql.Identifier(c.name), sql.Identifier(f"c{i}"))
                           for i, c in enumerate(cols)),
        target, clause, sql.SQL(", ").join(inner_order))
    wide = [i for i, c in enumerate(cols) if c.variable_length]
    limit = value_chars(page_size, len(wide))
    selected: list[sql.Composable] = []
    lengths: list[sql.Composable] = []
    for i, c in enumerate(cols):
        ref = sql.Identifier("t", f"c{i}")
        if not c.variable_length:
            selected.append(ref)
            continue
        text = sql.SQL("encode({}, 'hex')").format(ref) if c.data_type == "bytea" else sql.SQL("{}::text").format(ref)
        length = sql.Identifier("n", f"n{i}")
        lengths.append(sql.SQL("length({}) AS {}").format(text, sql.Identifier(f"n{i}")))
        selected.append(sql.SQL("CASE WHEN {n} > {L} THEN NULL ELSE {v} END, CASE WHEN {n} > {L} THEN left({t}, {L}) "
                                "END, {n}").format(n=length, L=sql.Literal(limit), v=ref, t=text))
    lateral = (sql.SQL(" CROSS JOIN LATERAL (SELECT {}) AS n").format(sql.SQL(", ").join(lengths))
               if lengths else sql.SQL(""))
    cur = conn.execute(sql.SQL("SELECT {} FROM ({}) AS t{} ORDER BY {}").format(
        sql.SQL(", ").join(selected), inner, lateral, sql.SQL(", ").join(outer_order)),
        [*params, page_size, (page - 1) * page_size])
    data: list[dict[str, Any]] = []
    truncated: list[dict[str, Any]] = []
    for number, row in enumerate(cur.fetchall()):
        values = iter(row)
        record: dict[str, Any] = {}
        for c in cols:
            value = next(values)
            if c.variable_length:
                prefix, length = next(values), next(values)
                if prefix is not None:
                    value = prefix + TRUNCATION_MARK
                    truncated.append({"row": number, "column": c.name, "length": length, "shown": limit})
                    record[c.name] = value
                    continue
            record[c.name] = _json(value)
        data.append(record)
    return {"data": data, "total": total, "page": page, "page_size": page_size,
            "has_more": page * page_size < total, "columns": [c.name for c in cols],
            "order_by": order_name, "value_chars": limit, "truncated": truncated}


# ------------------------------------------------------------------ change data capture slots


def cdc_slots(conn: psycopg.Connection[Any], sources: list[Source],
              conninfo: Callable[[SqlSource], str]) -> dict[str, dict[str, Any]]:
    """Per CDC source, its slot as the SOURCE database shows it (``pg_replication_slots``: the WAL it
    retains, the WAL not confirmed yet) and the position the warehouse stored (``etl_state``, with
    when it was last confirmed), judged against the source's ``cdc.max_slot_lag``.

    ``conninfo`` gives a source's connection string. A source that cannot be reached (or whose
    connection is not defined) is reported as ``unreachable`` with the reason, never raised.
    ``status``: ok, lagging (over ``max_slot_lag``), missing (a position is stored, the slot is
    gone), lost (invalidated by ``max_slot_wal_keep_size``), unreachable, or not_started.
    """
    from sndw.cdc.run import state_keys
    from sndw.cdc.slot import connect, slot_info, slot_names

    followed = [s for s in sources if isinstance(s, SqlSource) and s.cdc is not None]
    if not followed:
        return {}
    positions: dict[tuple[str, str], tuple[str | None, datetime]] = {}
    state = conn.execute("SELECT to_regclass('public.etl_state')").fetchone()
    if state and state[0]:
        for pipeline, key, value, updated in conn.execute(
                "SELECT pipeline_name, table_name, value, updated_at FROM public.etl_state "
                "WHERE pipeline_name = ANY(%s) AND table_name LIKE 'cdc:%%'", ([s.name for s in followed],)):
            positions[(pipeline, key)] = (value, updated)
    now = datetime.now(UTC)
    report: dict[str, dict[str, Any]] = {}
    for source in followed:
        assert source.cdc is not None
        slot, _ = slot_names(source)
        lag = source.cdc.max_slot_lag
        position, confirmed = positions.get((source.name, state_keys(slot)[0]), (None, None))
        entry: dict[str, Any] = {
            "slot": slot, "reachable": True, "exists": None, "active": None, "wal_status": None,
            "retained_wal_bytes": None, "pending_wal_bytes": None, "stored_position": position,
            "last_confirmed_at": _json(confirmed),
            "seconds_since_confirmed": round((now - confirmed).total_seconds(), 1) if confirmed else None,
            "max_slot_lag": {"wal_bytes": lag.wal_bytes, "age_seconds": lag.age_seconds} if lag else None,
            "status": "ok", "problems": []}
        try:
            with connect(conninfo(source), connect_timeout=5) as src:
                src.execute("SET statement_timeout = 10000")
                info = slot_info(src, slot)
        except Exception as exc:  # noqa: BLE001 - unreachable, refused, no such connection: said, not raised
            from sndw.audit import error_text

            entry.update(reachable=False, status="unreachable", error=error_text(exc))
            entry["problems"].append(f"the source cannot be reached to read slot {slot}")
            report[source.name] = entry
            continue
        entry["exists"] = info is not None
        if info is not None:
            entry.update(active=info["active"], wal_status=info["wal_status"],
                         retained_wal_bytes=info["retained_bytes"], pending_wal_bytes=info["pending_bytes"])
        entry["status"], entry["problems"] = _slot_verdict(entry, lag)
        report[source.name] = entry
    return report


def _slot_verdict(entry: dict[str, Any], lag: Any) -> tuple[str, list[str]]:
    slot = entry["slot"]
    if not entry["exists"]:
        if entry["stored_position"]:
            return "missing", [f"slot {slot} is gone after position {entry['stored_position']}: run `sndw cdc reset`"]
        return "not_started", []
    if entry["wal_status"] == "lost":
        return "lost", [f"slot {slot} was invalidated (wal_status lost): run `sndw cdc reset`"]
    problems = []
    retained, age = entry["retained_wal_bytes"], entry["seconds_since_confirmed"]
    if lag is not None and lag.wal_bytes is not None and retained is not None and retained > lag.wal_bytes:
        problems.append(f"slot {slot} retains {retained} bytes of WAL, over max_slot_lag {lag.wal}")
    if lag is not None and lag.age_seconds is not None and age is not None and age > lag.age_seconds:
        problems.append(f"slot {slot} was last confirmed {age:.0f}s ago, over max_slot_lag {lag.age}")
    return ("lagging" if problems else "ok"), problems
