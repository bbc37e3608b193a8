"""Freshness of the loaded tables (``freshness: {warn_after, error_after}``, as dbt's source freshness
reads): how old each table's data is, against its thresholds, and what changed since the last check.

Age is measured from the table's last successful load in etl_audit_log, or from the newest value of
``column`` in the warehouse table. The outcome of every check is kept in the warehouse table
``etl_freshness`` (one row per table), so a breach is announced once, and its recovery once. No
Airflow here: the maintenance DAG ``sndw_freshness`` and ``sndw freshness <config>`` call it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

from sndw.audit import AUDIT_TABLE
from sndw.config import FileSource, Freshness, HttpSource, SqlSource, TableBase
from sndw.naming import normalize_identifier, qualified

if TYPE_CHECKING:
    import psycopg

Source = HttpSource | SqlSource | FileSource

FRESHNESS_TABLE = "etl_freshness"
FRESHNESS_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    source_name  TEXT NOT NULL,
    target_table TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('fresh', 'warn', 'error')),
    loaded_at    TIMESTAMP WITH TIME ZONE,
    age_seconds  DOUBLE PRECISION,
    measured_by  TEXT NOT NULL,
    checked_at   TIMESTAMP WITH TIME ZONE NOT NULL,
    changed_at   TIMESTAMP WITH TIME ZONE NOT NULL,
    PRIMARY KEY (source_name, target_table)
)
"""
# Worse is higher: an alert goes out when a table gets worse (a breach, or warn turning error) and
# when it is fresh again (a recovery); error turning warn is still a breach and says nothing new.
_RANK = {"fresh": 0, "warn": 1, "error": 2}


@dataclass
class TableFreshness:
    source: str
    table: str  # schema.table in the warehouse
    status: str  # fresh, warn or error
    loaded_at: datetime | None  # the last successful load, or the column's newest value; None: never
    age_seconds: float | None
    warn_after: str | None
    error_after: str | None
    measured_by: str  # "last_load" or "column <name>"
    previous: str | None = None  # the status of the check before; None: the first check
    alert: str | None = None  # "breach", "recovery" or None: nothing to announce

    def describe(self) -> str:
        """One line for people: the table, its age and the threshold it passed."""
        if self.loaded_at is None:
            age = "has never been loaded" if self.measured_by == "last_load" else f"has no {self.measured_by}"
        else:
            age = f"is {format_age(self.age_seconds or 0)} old ({self.measured_by}: {self.loaded_at.isoformat()})"
        limit = {"warn": f"warn_after {self.warn_after}", "error": f"error_after {self.error_after}"}.get(self.status)
        verdict = f"past {limit}" if limit else "fresh again" if self.alert == "recovery" else "fresh"
        return f"{self.source}: {self.table} {age}: {verdict}"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["loaded_at"] = self.loaded_at.isoformat() if self.loaded_at else None
        return data


def format_age(seconds: float) -> str:
    for unit, size, above in (("d", 86400, 172800), ("h", 3600, 3600), ("min", 60, 60)):
        if seconds >= above:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


def policy(source: Source, table: TableBase) -> Freshness | None:
    """The table's own freshness, else its source's."""
    return table.freshness or source.freshness


def _as_utc(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=UTC)
    raise TypeError(f"{type(value).__name__} is not a date or timestamp")


def _last_load(conn: psycopg.Connection[Any], source: Source, target: str) -> datetime | None:
    from psycopg import sql

    row = conn.execute("SELECT to_regclass(%s)", (AUDIT_TABLE,)).fetchone()
    if not row or row[0] is None:
        return None
    found = conn.execute(sql.SQL(
        "SELECT max(finished_at) FROM {} WHERE source_name = %s AND target_table = %s AND status = 'success' "
        "AND step IN ('load', 'replay')").format(sql.Identifier(AUDIT_TABLE)), (source.name, target)).fetchone()
    return _as_utc(found[0]) if found else None


def _newest_value(conn: psycopg.Connection[Any], source: Source, table: TableBase, column: str) -> datetime | None:
    from psycopg import sql

    row = conn.execute("SELECT to_regclass(%s)", (f'"{source.target_schema}"."{table.target}"',)).fetchone()
    if not row or row[0] is None:
        return None
    name = normalize_identifier(column)
    kind = conn.execute("SELECT data_type FROM information_schema.columns WHERE table_schema = %s "
                        "AND table_name = %s AND column_name = %s",
                        (source.target_schema, table.target, name)).fetchone()
    if kind is None:
        raise ValueError(f"source {source.name!r}, table {table.name!r}: freshness.column {column!r} is not a "
                         f"column of {qualified(source.target_schema, table.target)}")
    if kind[0] not in ("date", "timestamp with time zone", "timestamp without time zone"):
        raise ValueError(f"source {source.name!r}, table {table.name!r}: freshness.column {column!r} is "
                         f"{kind[0]}, not a date or timestamp")
    found = conn.execute(sql.SQL("SELECT max({}) FROM {}").format(
        sql.Identifier(name), sql.Identifier(source.target_schema, table.target))).fetchone()
    return _as_utc(found[0]) if found else None


def measure(conn: psycopg.Connection[Any], source: Source, now: datetime | None = None) -> list[TableFreshness]:
    """The freshness of every table of ``source`` that has a policy (its own or the source's)."""
    now = now or datetime.now(UTC)
    results = []
    for table in source.tables:
        rule = policy(source, table)
        if rule is None:
            continue
        target = qualified(source.target_schema, table.target)
        if rule.column:
            loaded = _newest_value(conn, source, table, rule.column)
            by = f"column {normalize_identifier(rule.column)}"
        else:
            loaded = _last_load(conn, source, target)
            by = "last_load"
        age = (now - loaded).total_seconds() if loaded else None
        status = "fresh"
        # Never loaded counts as older than every threshold.
        if rule.error_seconds is not None and (age is None or age > rule.error_seconds):
            status = "error"
        elif rule.warn_seconds is not None and (age is None or age > rule.warn_seconds):
            status = "warn"
        results.append(TableFreshness(source.name, target, status, loaded, age,
                                      None if rule.warn_after is None else str(rule.warn_after),
                                      None if rule.error_after is None else str(rule.error_after), by))
    return results


def ensure_freshness_table(conn: psycopg.Connection[Any]) -> None:
    from psycopg import sql

    from sndw.ddl import ensure_table

    ensure_table(conn, "public", FRESHNESS_TABLE, [sql.SQL(FRESHNESS_DDL).format(table=sql.Identifier(FRESHNESS_TABLE))])


def check(conn: psycopg.Connection[Any], sources: Iterable[Source], now: datetime | None = None,
          announce: Callable[[list[TableFreshness]], None] | None = None) -> list[TableFreshness]:
    """Measure every table with a freshness policy, compare with the last check, and keep the outcome.

    ``announce`` gets the tables whose ``alert`` is set (a breach or a recovery) before the new state
    is committed: when it raises, nothing is recorded and the next check announces them again.
    Checks of the same warehouse run one at a time (an advisory lock), so one breach is announced once.
    """
    from psycopg import sql

    now = now or datetime.now(UTC)
    ensure_freshness_table(conn)
    table = sql.Identifier(FRESHNESS_TABLE)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext('sndw:freshness-check'))")
        results = [r for source in sources for r in measure(conn, source, now)]
        known = {(s, t): status for s, t, status in conn.execute(sql.SQL(
            "SELECT source_name, target_table, status FROM {}").format(table)).fetchall()}
        for result in results:
            result.previous = known.get((result.source, result.table))
            before = _RANK[result.previous or "fresh"]
            after = _RANK[result.status]
            if after > before:
                result.alert = "breach"
            elif result.status == "fresh" and before > 0:
                result.alert = "recovery"
            conn.execute(sql.SQL("""
                INSERT INTO {} (source_name, target_table, status, loaded_at, age_seconds, measured_by, checked_at,
                                changed_at)
                VALUES (%(source)s, %(table)s, %(status)s, %(loaded)s, %(age)s, %(by)s, %(now)s, %(now)s)
                ON CONFLICT (source_name, target_table) DO UPDATE SET
                    status = EXCLUDED.status, loaded_at = EXCLUDED.loaded_at, age_seconds = EXCLUDED.age_seconds,
                    measured_by = EXCLUDED.measured_by, checked_at = EXCLUDED.checked_at,
                    changed_at = CASE WHEN {t}.status = EXCLUDED.status THEN {t}.changed_at ELSE EXCLUDED.changed_at END
            """).format(table, t=table), {"source": result.source, "table": result.table, "status": result.status,
                                          "loaded": result.loaded_at, "age": result.age_seconds,
                                          "by": result.measured_by, "now": now})
        changed = [r for r in results if r.alert]
        if changed and announce is not None:
            announce(changed)
    return results


def stored(conn: psycopg.Connection[Any], sources: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """The last check's outcome per source and table (what /sndw/health shows); {} before any check."""
    from psycopg import sql

    row = conn.execute("SELECT to_regclass(%s)", (FRESHNESS_TABLE,)).fetchone()
    if not sources or not row or row[0] is None:
        return {}
    found: dict[str, dict[str, dict[str, Any]]] = {}
    for source, target, status, loaded, age, by, checked, changed in conn.execute(sql.SQL(
            "SELECT source_name, target_table, status, loaded_at, age_seconds, measured_by, checked_at, changed_at "
            "FROM {} WHERE source_name = ANY(%s) ORDER BY 1, 2").format(sql.Identifier(FRESHNESS_TABLE)),
            (sources,)).fetchall():
        found.setdefault(source, {})[target] = {
            "status": status, "loaded_at": loaded.isoformat() if loaded else None,
            "age_seconds": round(age) if age is not None else None, "measured_by": by,
            "checked_at": checked.isoformat(), "since": changed.isoformat()}
    return found
