"""Gaps and reconciliation: per table and date partition, what is expected, extracted, in the lake,
loaded or failed, and whether the row counts agree along the way.

Only tables that keep each date's rows apart have missing dates: ``partition`` tables, and
``append`` tables whose config is templated on the date. A ``replace`` or ``merge`` table (or an
untemplated ``append``) holds the source as of its last load: the report shows that last load only.
Without ``date_from``, a source with ``catchup: true`` is expected from its ``start_date``; one
without catchup (the default: the scheduler makes only the latest run) from each table's first
partition that was extracted or audited, so a source never run reports nothing missing.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from sndw.audit import AUDIT_TABLE
from sndw.config import FileSource, HttpSource, SqlSource, TableBase
from sndw.lake import partition_dates, partition_files, partition_rows
from sndw.naming import PARTITION_DATE, qualified

Source = HttpSource | SqlSource | FileSource
MAX_EXPECTED = 5000


@dataclass
class PartitionStatus:
    table: str
    partition: date
    status: str  # loaded | failed | missing | extracted | unscheduled
    rows_extracted: int | None
    rows_in_lake: int | None
    rows_loaded: int | None
    rows_in_warehouse: int | None
    attempts: int
    last_error: str | None
    counts_agree: bool | None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["partition"] = self.partition.isoformat()
        return data


def expected_dates(source: Source, date_from: date, date_to: date) -> list[date]:
    """The partitions the schedule asks for between two dates (UTC), none for manual-only sources."""
    return list(_expected_dates(source.schedule, source.start_date, source.end_date, date_from, date_to))


@functools.lru_cache(maxsize=1024)
def _expected_dates(schedule: str | None, start_date: date, end_date: date | None, date_from: date,
                    date_to: date) -> tuple[date, ...]:
    """Cached: the ETL page asks this for every source, and most sources share a schedule."""
    if schedule is None or schedule in ("@once", "@continuous"):
        return ()
    from croniter import croniter

    start = max(date_from, start_date)
    end = min(date_to, end_date) if end_date else date_to
    if start > end:
        return ()
    cursor = datetime.combine(start, time.min, tzinfo=UTC) - timedelta(microseconds=1)
    schedule_iter = croniter(schedule, cursor)
    dates: list[date] = []
    while len(dates) < MAX_EXPECTED:
        moment = schedule_iter.get_next(datetime)
        if moment.date() > end:
            break
        if not dates or dates[-1] != moment.date():
            dates.append(moment.date())
    return tuple(dates)


def _audit_by_partition(conn: psycopg.Connection[Any], source: Source, target: str,
                        lake_target: str) -> dict[date, dict[str, Any]]:
    rows = conn.execute(
        sql.SQL("""
            SELECT partition_date,
                   count(*) FILTER (WHERE step = 'load') AS attempts,
                   bool_or(step IN ('load', 'replay') AND status = 'success') AS loaded,
                   (array_agg(rows_extracted ORDER BY id DESC) FILTER (WHERE step IN ('extract', 'load')
                        AND status = 'success' AND rows_extracted IS NOT NULL))[1],
                   (array_agg(rows_loaded ORDER BY id DESC) FILTER (WHERE step IN ('load', 'replay') AND status = 'success'))[1],
                   (array_agg(status ORDER BY id DESC))[1] AS last_status,
                   (array_agg(error_message ORDER BY id DESC) FILTER (WHERE status = 'failure'))[1],
                   (array_agg(coalesce(rows_rejected, 0) ORDER BY id DESC)
                        FILTER (WHERE step IN ('load', 'replay') AND status = 'success'))[1]
            FROM {} WHERE pipeline_name = %s AND target_table IN (%s, %s)
              AND partition_date IS NOT NULL
            GROUP BY partition_date
        """).format(sql.Identifier(AUDIT_TABLE)),
        (source.name, target, lake_target),
    ).fetchall()
    return {r[0]: {"attempts": r[1], "loaded": r[2], "rows_extracted": r[3], "rows_loaded": r[4],
                   "last_status": r[5], "last_error": r[6], "rows_rejected": r[7]} for r in rows}


def _warehouse_counts(conn: psycopg.Connection[Any], schema: str, table: str) -> dict[date, int] | None:
    """Rows per date in the warehouse table; None when it has none to count (no such table)."""
    exists = conn.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
                          "AND column_name = %s", (schema, table, PARTITION_DATE)).fetchone()
    if not exists:
        return None
    rows = conn.execute(sql.SQL("SELECT {c}, count(*) FROM {t} GROUP BY {c}").format(
        c=sql.Identifier(PARTITION_DATE), t=sql.Identifier(schema, table))).fetchall()
    return {r[0]: int(r[1]) for r in rows}


def has_dated_partitions(table: TableBase) -> bool:
    """Whether each date's rows stay apart in the warehouse, so a date never loaded is missing."""
    return table.write_mode == "partition" or (table.write_mode == "append" and "{{" in table.model_dump_json())


def reconcile(conn: psycopg.Connection[Any], source: Source, lake_root: str | Path,
              date_from: date | None = None, date_to: date | None = None) -> list[PartitionStatus]:
    """Per table and date: loaded, failed, extracted, missing or unscheduled (see the module's doc
    for which tables have missing dates and the default range)."""
    today = datetime.now(UTC).date()
    date_to = date_to or today
    has_audit = conn.execute("SELECT to_regclass(%s)", (AUDIT_TABLE,)).fetchone()
    report: list[PartitionStatus] = []
    for table in source.tables:
        target = qualified(source.target_schema, table.target)
        lake_target = f"lake:{source.kind}/{source.name}/{table.name}"
        audit = _audit_by_partition(conn, source, target, lake_target) if has_audit and has_audit[0] else {}
        dated = has_dated_partitions(table)
        # Per-date warehouse counts mean something where rows stay with their partition.
        in_dw = _warehouse_counts(conn, source.target_schema, table.target) if dated else None
        lake = set(partition_dates(lake_root, source.kind, source.name, table.name))
        seen = lake | set(audit)
        start = date_from or (source.start_date if source.catchup else min(seen, default=None))
        if start is None:
            continue  # never extracted nor audited, and no schedule that asks for the past
        expected = set(expected_dates(source, start, date_to)) if dated else set()
        days = sorted(d for d in expected | seen if start <= d <= date_to)
        if not dated:  # the table holds the source as of its last load: that one only
            days = days[-1:]
        for day in days:
            info = audit.get(day, {})
            lake_rows = (partition_rows(partition_files(lake_root, source.kind, source.name, table.name, day))
                         if day in lake else None)
            if info.get("loaded"):
                status = "loaded"
            elif info.get("last_status") == "failure":
                status = "failed"
            elif day in lake:
                status = "extracted"
            else:
                status = "missing" if day in expected else "unscheduled"
            # A dated table that exists holds 0 rows of a date it has none of (emptied since its load).
            in_warehouse = None if in_dw is None else in_dw.get(day, 0)
            loaded = info.get("rows_loaded")
            # What reached the source side: extracted and in the lake; what the load accounted for: the
            # rows loaded plus those its quality checks quarantined; and the loaded rows are the table's.
            taken = None if loaded is None else loaded + int(info.get("rows_rejected") or 0)
            sides = [{c for c in (info.get("rows_extracted"), lake_rows, taken) if c is not None},
                     {c for c in (loaded, in_warehouse) if c is not None}]
            report.append(PartitionStatus(
                table=table.name, partition=day, status=status, rows_extracted=info.get("rows_extracted"),
                rows_in_lake=lake_rows, rows_loaded=loaded, rows_in_warehouse=in_warehouse,
                attempts=int(info.get("attempts") or 0), last_error=info.get("last_error"),
                counts_agree=all(len(side) <= 1 for side in sides) if status == "loaded" and any(sides) else None))
    return report


def format_report(report: list[PartitionStatus]) -> str:
    header = f"{'table':20s} {'partition':10s} {'status':11s} {'extracted':>9} {'lake':>9} {'loaded':>9} {'dw':>9} agree"
    lines = [header]
    for r in report:
        def n(v: int | None) -> str:
            return "" if v is None else str(v)
        agree = {True: "yes", False: "NO", None: ""}[r.counts_agree]
        lines.append(f"{r.table:20s} {r.partition.isoformat():10s} {r.status:11s} {n(r.rows_extracted):>9} "
                     f"{n(r.rows_in_lake):>9} {n(r.rows_loaded):>9} {n(r.rows_in_warehouse):>9} {agree}")
    summary: dict[str, int] = {}
    for r in report:
        summary[r.status] = summary.get(r.status, 0) + 1
    lines.append(", ".join(f"{k}: {v}" for k, v in sorted(summary.items())) or "no partitions")
    return "\n".join(lines)
