"""``check``: row counts of the warehouse tables the product loaded, beside the source's own counts."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from psycopg import sql

from sndw.audit import AUDIT_TABLE
from sndw.naming import DELETED_AT

_LOADED = """
SELECT target_table, max(finished_at) FILTER (WHERE status = 'success') AS last_load,
       (array_agg(status ORDER BY id DESC))[1] AS last_status,
       (array_agg({deleted} ORDER BY id DESC) FILTER (WHERE status = 'success'))[1] AS rows_deleted
FROM {table}
WHERE step IN ('load', 'replay')
GROUP BY target_table
ORDER BY target_table
"""


def check_counts(connect: Callable[[], Any], source: Any = None, config_path: str | None = None,
                 schema: str | None = None) -> list[dict[str, Any]]:
    """One row per warehouse table: rows now, last successful load, last status; with a source
    config its tables only, each with the source's count and whether they agree (``replace`` and
    ``merge`` tables hold what the source holds; ``append``/``partition`` tables keep every date, and
    a templated query reads one date: those are shown, not compared)."""
    with connect() as conn:
        known = conn.execute("SELECT to_regclass(%s)", (AUDIT_TABLE,)).fetchone()
        loaded = {}
        if known and known[0]:
            # An audit table no load has migrated yet has no rows_deleted column.
            has_deleted = conn.execute("SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = "
                                       "'rows_deleted'", (AUDIT_TABLE,)).fetchone()
            query = sql.SQL(_LOADED).format(deleted=sql.SQL("rows_deleted" if has_deleted else "NULL::bigint"),
                                            table=sql.Identifier(AUDIT_TABLE))
            loaded = {r[0]: r for r in conn.execute(query).fetchall()}
        wanted: list[tuple[str, Any]]
        if source is not None:
            wanted = [(f"{source.target_schema}.{t.target}", t) for t in source.tables]
        else:
            wanted = [(name, None) for name in loaded]
        if schema:
            wanted = [(name, t) for name, t in wanted if name.split(".", 1)[0] == schema]
        out = []
        counter = _SourceCounter(source, config_path)
        for name, table in wanted:
            schema_name, _, table_name = name.partition(".")
            exists = conn.execute("SELECT to_regclass(%s)", (sql.Identifier(schema_name, table_name).as_string(conn),)
                                  ).fetchone()
            rows = None
            marked = None
            if exists and exists[0]:
                soft = conn.execute("SELECT 1 FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s "
                                    "AND NOT attisdropped", (exists[0], DELETED_AT)).fetchone()
                # Rows marked deleted (deletes: soft) are not the source's: counted apart.
                row = conn.execute(sql.SQL("SELECT count(*){} FROM {}").format(
                    sql.SQL(", count({})").format(sql.Identifier(DELETED_AT)) if soft else sql.SQL(""),
                    sql.Identifier(schema_name, table_name))).fetchone()
                if row:
                    rows, marked = (int(row[0]) - int(row[1]), int(row[1])) if soft else (int(row[0]), None)
            audit = loaded.get(name)
            entry: dict[str, Any] = {"table": name, "rows": rows, "last_load": audit[1] if audit else None,
                                     "last_status": audit[2] if audit else None,
                                     "rows_deleted": audit[3] if audit else None}
            if marked is not None:
                entry["marked_deleted"] = marked
            if table is not None:
                entry["write_mode"] = table.write_mode
                # A templated table reads one partition: its count is not the warehouse table's.
                templated = "{{" in table.model_dump_json()
                entry["source_rows"], error = (None, None) if templated else counter.rows(table)
                if error:
                    entry["source_error"] = error
                if entry["source_rows"] is not None and table.write_mode in ("replace", "merge"):
                    entry["agrees"] = rows == entry["source_rows"]
            out.append(entry)
    return out


class _SourceCounter:
    """The source's count of each table, its connection found once; a source that cannot be
    reached gives the reason instead of a count (shown, and ``check`` exits 1)."""

    def __init__(self, source: Any, config_path: str | None) -> None:
        self.source = source
        self.config_path = config_path or "."
        self.access: Any = None
        self.error: str | None = None

    def rows(self, table: Any) -> tuple[int | None, str | None]:
        from datetime import UTC, datetime

        from sndw.audit import redact
        from sndw.sync import render, source_access, source_count

        if self.error is not None:
            return None, self.error
        try:
            if self.access is None:
                self.access = source_access(self.source, self.config_path, None)
            return source_count(self.source, render(table, datetime.now(UTC).date()), self.access), None
        except Exception as exc:  # shown beside the table: the check could not compare it
            message = f"{self.source.name}.{table.name}: " + redact(" ".join(str(exc).split()))[:300]
            if self.access is None:  # no connection: every table of the source fails alike
                self.error = message = f"source {self.source.name!r}: " + redact(" ".join(str(exc).split()))[:300]
            return None, message


def format_counts(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no tables loaded yet (etl_audit_log has no load)"
    lines = [f"{'table':40} {'rows':>12} {'source':>12}  {'last load':25} {'status':8} deleted"]
    for r in rows:
        source = "" if r.get("source_rows") is None else str(r["source_rows"])
        mark = {True: "", False: "  DIFFERS", None: ""}[r.get("agrees")]
        last = r["last_load"].isoformat(timespec="seconds") if r["last_load"] else "-"
        rows_text = "missing" if r["rows"] is None else str(r["rows"])
        deleted = "" if r.get("rows_deleted") is None else str(r["rows_deleted"])
        if r.get("marked_deleted") is not None:
            deleted += f" ({r['marked_deleted']} rows marked deleted)"
        lines.append(f"{r['table']:40} {rows_text:>12} {source:>12}  {last:25} {r['last_status'] or '-':8} "
                     f"{deleted}{mark}".rstrip())
    errors = list(dict.fromkeys(r["source_error"] for r in rows if r.get("source_error")))
    lines += [f"not compared, the source could not be counted: {e}" for e in errors]
    return "\n".join(lines)


def check_quality(connect: Callable[[], Any], source: Any, partition: Any = None) -> list[dict[str, Any]]:
    """``check --quality``: run each table's checks on what is loaded, without loading: the whole
    table, or for a ``partition`` table one date (``partition``, default the newest one loaded).
    Nothing changes (quarantine checks count the rows they would move); the results are recorded in
    ``etl_check_results`` with run id ``check:<id>``. One row per check."""
    import uuid

    from sndw.naming import PARTITION_DATE
    from sndw.quality import CheckScope, ResultContext, run_checks, write_results

    run_id = f"check:{uuid.uuid4().hex[:12]}"
    out: list[dict[str, Any]] = []
    with connect() as conn:
        for table in source.tables:
            # source_count compares one extract with its load: `check` without --quality compares counts.
            checks = [c for c in table.checks if c.kind != "source_count"]
            if not checks:
                continue
            name = f"{source.target_schema}.{table.target}"
            day = partition
            if table.write_mode == "partition" and day is None:
                exists = conn.execute("SELECT to_regclass(%s)", (sql.Identifier(source.target_schema, table.target)
                                                                 .as_string(conn),)).fetchone()
                if exists and exists[0]:
                    row = conn.execute(sql.SQL("SELECT max({}) FROM {}").format(
                        sql.Identifier(PARTITION_DATE), sql.Identifier(source.target_schema, table.target))).fetchone()
                    day = row[0] if row else None
            scope = CheckScope(source.target_schema, table.target, day, primary_key=table.key_columns,
                               by_partition=table.write_mode == "partition", previous_offset=1)
            with conn.cursor() as cur:
                results, _ = run_checks(cur, checks, scope, apply=False)
            conn.rollback()  # read only: end the checks' transaction (its temporary view) before recording
            write_results(conn, results, ResultContext(name, day, run_id=run_id, source=source.name),
                          committed=True)
            out += [{"table": name, "partition": day, **r.to_dict()} for r in results]
    return out


def format_quality(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no table of this source has checks"
    from sndw.quality import format_keys

    lines = [f"{'table':32} {'check':32} {'status':11} {'rows':>8}  detail"]
    for r in rows:
        failing = "" if r["failing_rows"] is None else str(r["failing_rows"])
        detail = r["message"] + (f"; keys {format_keys(r['sample_keys'])}" if r["sample_keys"] else "")
        lines.append(f"{r['table']:32} {r['name']:32} {r['status'].upper() if r['status'] in ('fail', 'error') else r['status']:11} "
                     f"{failing:>8}  {detail}")
    return "\n".join(lines)
