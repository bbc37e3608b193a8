"""The check engine: a table's quality checks as SQL on the rows of one load, inside its transaction.

A load calls ``run_checks`` after its rows are written and before it commits (``warehouse.load_files``),
so a failing ``block`` check rolls everything back and nothing is published; ``etl.cli check
--quality`` calls it on what is already loaded. Every result goes to ``etl_check_results``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from sndw.checks_config import Check
from sndw.errors import PermanentError

if TYPE_CHECKING:
    import psycopg
    from psycopg import sql

    from sndw.checkstats import RowStats

log = logging.getLogger(__name__)

RESULTS_TABLE = "etl_check_results"
MAX_SAMPLE_KEYS = 5
ROWS_VIEW = "_sndw_load_rows"  # a temporary view of the load's rows: what {{ table }} names

RESULTS_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    id             BIGSERIAL PRIMARY KEY,
    run_id         TEXT,
    attempt_key    TEXT,
    pipeline_name  TEXT,
    source_name    TEXT,
    target_table   TEXT NOT NULL,
    partition_date DATE,
    check_name     TEXT NOT NULL,
    kind           TEXT NOT NULL,
    severity       TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('pass', 'fail', 'warn', 'quarantined', 'error')),
    column_name    TEXT,
    failing_rows   BIGINT,
    sample_keys    JSONB,
    message        TEXT,
    seconds        DOUBLE PRECISION,
    committed      BOOLEAN NOT NULL,
    checked_at     TIMESTAMP WITH TIME ZONE NOT NULL DEFAULT now()
)
"""


@dataclass
class CheckResult:
    """The outcome of one check on one load. ``status``: pass, fail (a block check failed), warn (a
    warn check failed), quarantined (failing rows moved aside), error (the check could not run)."""

    name: str
    kind: str
    severity: str
    status: str
    column: str | None = None
    failing_rows: int | None = None
    sample_keys: list[dict[str, str | None]] = field(default_factory=list)
    message: str = ""
    seconds: float = 0.0

    @property
    def blocks(self) -> bool:
        return self.status in ("fail", "error")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        return out


class QualityCheckError(PermanentError):
    """A block check failed (or a check could not run): the load was rolled back. No retry helps:
    the data or the check must change. ``results`` holds every check's outcome."""

    def __init__(self, table: str, partition: date | None, results: list[CheckResult]) -> None:
        self.table = table
        self.partition = partition
        self.results = results
        failed = [r for r in results if r.blocks]
        where = f"{table}" + (f" partition {partition}" if partition else "")
        parts = []
        for r in failed:
            text = f"check {r.name!r} ({r.kind}"
            text += f", column {r.column})" if r.column else ")"
            text += f": {r.message}"
            if r.sample_keys:
                text += f"; sample keys: {format_keys(r.sample_keys)}"
            parts.append(text)
        super().__init__(f"{where}: quality check failed, the load was rolled back: " + " | ".join(parts)
                         + ". The lake keeps the extract: fix the data or the check and run again")


def format_keys(keys: list[dict[str, str | None]]) -> str:
    return ", ".join(
        "(" + ", ".join(f"{k}={v}" for k, v in key.items()) + ")" if len(key) > 1
        else ", ".join(f"{k}={v}" for k, v in key.items()) for key in keys)


@dataclass
class CheckScope:
    """Which rows of ``schema.table`` a check run looks at.

    ``file_ids``: the rows this load wrote (append, merge: new and changed rows); None: every row of
    ``partition`` when ``by_partition`` is set (partition tables), else the whole table (replace).
    """

    schema: str
    table: str
    partition: date | None = None
    file_ids: list[int] | None = None
    by_partition: bool = False
    primary_key: Sequence[str] = ()
    # row_count_change in `check --quality`: the latest load is the one checked, compare with the one before.
    previous_offset: int = 0
    # source_count: the source's own count (the extract's manifest) and the rows this load wrote.
    source_count: int | None = None
    rows_written: int | None = None
    # What the load saw of its rows as it copied them (sndw.checkstats): checks it proves pass are not
    # read back from the table. None: every check reads the table.
    observed: RowStats | None = None
    # The load replaced the partition's rows (a replay of an append table's date): so are its rejections.
    replaces_partition: bool = False

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.table}"

    def target(self) -> sql.Identifier:
        from psycopg import sql

        return sql.Identifier(self.schema, self.table)

    def condition(self, alias: str = "r") -> sql.Composable:
        """The rows in scope, as a condition on the table aliased ``alias``."""
        from psycopg import sql

        from sndw.naming import FILE_ID, PARTITION_DATE

        if self.file_ids is not None:
            if not self.file_ids:
                return sql.SQL("false")
            return sql.SQL("{}.{} = ANY({})").format(sql.Identifier(alias), sql.Identifier(FILE_ID),
                                                    sql.Literal(sorted(self.file_ids)))
        if self.by_partition and self.partition is not None:
            return sql.SQL("{}.{} = {}").format(sql.Identifier(alias), sql.Identifier(PARTITION_DATE),
                                               sql.Literal(self.partition))
        return sql.SQL("true")

    def unique_condition(self, alias: str = "u") -> sql.Composable:
        """Where ``unique`` looks for repeats: the partition of a partition table, else the whole table
        (an append's new key must not repeat an earlier load's)."""
        from psycopg import sql

        if self.by_partition:
            return self.condition(alias)
        return sql.SQL("true")


# ------------------------------------------------------------------------------------ the table


def results_table(schema: str = "public") -> sql.Identifier:
    from psycopg import sql

    return sql.Identifier(schema, RESULTS_TABLE)


def ensure_results_table(conn: psycopg.Connection[Any], schema: str = "public") -> None:
    from psycopg import sql

    from sndw.ddl import ensure_table

    ensure_table(conn, schema, RESULTS_TABLE, [
        sql.SQL(RESULTS_DDL).format(table=results_table(schema)),
        sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (target_table, check_name, id)").format(
            sql.Identifier(f"{RESULTS_TABLE}_latest"), results_table(schema))])


@dataclass
class ResultContext:
    """What each results row says about the run that produced it."""

    target_table: str
    partition: date | None
    run_id: str | None = None
    attempt_key: str | None = None
    pipeline: str | None = None
    source: str | None = None


def insert_results(cur: psycopg.Cursor[Any], results: Sequence[CheckResult], where: ResultContext,
                   committed: bool, schema: str = "public") -> None:
    from psycopg import sql

    from sndw.audit import error_text

    if not results:
        return
    cur.executemany(sql.SQL(
        "INSERT INTO {} (run_id, attempt_key, pipeline_name, source_name, target_table, partition_date, check_name, "
        "kind, severity, status, column_name, failing_rows, sample_keys, message, seconds, committed) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)").format(results_table(schema)),
        [(where.run_id, where.attempt_key, where.pipeline, where.source, where.target_table, where.partition,
          r.name, r.kind, r.severity, r.status, r.column, r.failing_rows, json.dumps(r.sample_keys),
          error_text(r.message), r.seconds, committed) for r in results])


def write_results(conn: psycopg.Connection[Any], results: Sequence[CheckResult], where: ResultContext,
                  committed: bool, schema: str = "public") -> None:
    """The results in a transaction of their own: after a rolled-back load, or of `check --quality`."""
    ensure_results_table(conn, schema)
    with conn.transaction(), conn.cursor() as cur:
        insert_results(cur, results, where, committed, schema)


def summary(results: Sequence[CheckResult]) -> dict[str, Any]:
    """What an Asset event and a task's result carry: counts per status and each check's outcome."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status] = counts.get(r.status, 0) + 1
    return {"counts": counts, "results": [
        {"name": r.name, "kind": r.kind, "status": r.status, "failing_rows": r.failing_rows} for r in results]}


# ----------------------------------------------------------------------------------- the engine


def run_checks(cur: psycopg.Cursor[Any], checks: Sequence[Check], scope: CheckScope, *,
               audit_schema: str = "public", apply: bool = True) -> tuple[list[CheckResult], int]:
    """Run ``checks`` on the rows in ``scope``; returns the results and the rows quarantined.

    The row-level checks (and the count of the rows in scope) are one scan of the table: a single
    ``SELECT`` with a ``count(*) FILTER (WHERE ...)`` per check; only a failing check reads its sample
    keys. ``unique`` on columns a unique index already guarantees is not scanned at all.
    Quarantine checks go first and (with ``apply``) move their failing rows to
    ``<schema>._rejected_<table>``, so the other checks see the rows that stay. Each check runs in a
    savepoint: one that cannot run (a missing column, a bad value for the column's type) is an
    ``error`` result and the others still run. Raises nothing: the caller decides what fails.
    """
    from psycopg import sql

    from sndw.warehouse import table_columns

    columns = table_columns(cur, scope.schema, scope.table)
    if not columns:  # nothing loaded and no table yet (an empty first extract): zero rows to check
        return [_without_table(c, scope) for c in checks], 0
    cur.execute(sql.SQL("CREATE OR REPLACE TEMP VIEW {} AS SELECT * FROM {} r WHERE {}").format(
        sql.Identifier(ROWS_VIEW), scope.target(), scope.condition()))
    ordered = sorted(checks, key=lambda c: c.on_fail != "quarantine")  # stable: the listed order otherwise
    proven = _proven(cur, ordered, scope, columns)
    pending = [c for c in ordered if c.label not in proven]
    scan = _scan(cur, pending, scope, columns) if any(c.kind in _SCANNED for c in pending) else _Scan()
    results: dict[str, CheckResult] = {}
    rejected = 0
    cleared = False
    for position, check in enumerate(ordered):
        started = time.perf_counter()
        missing = [c for c in check.columns if c not in columns]
        if check.label in proven:
            result = proven[check.label]
        elif missing:
            result = CheckResult(check.label, check.kind, check.severity, "error", column=missing[0], message=(
                f"the check names column {missing[0]!r}, which {scope.qualified} does not have "
                f"(its columns: {', '.join(c for c in columns if not c.startswith('_'))})"))
        else:
            if rejected != scan.rejected:
                # Rows were moved aside: the checks still to run count on the rows that stay (one more scan).
                scan = _scan(cur, [c for c in ordered[position:] if c.label not in proven], scope, columns)
                scan.rejected = rejected
            try:
                with cur.connection.transaction():  # a savepoint: a check that errors leaves the load intact
                    if check.on_fail == "quarantine" and apply and not cleared:
                        _prepare_rejected(cur, scope, columns)
                        cleared = True
                    result = _run_one(cur, check, scope, columns, audit_schema, apply, scan)
            except Exception as exc:  # the database refused the check's SQL: say which check, and why
                import psycopg

                if not isinstance(exc, (psycopg.Error, PermanentError)):
                    raise
                from sndw.audit import error_text

                result = CheckResult(check.label, check.kind, check.severity, "error", column=_column(check),
                                     message=f"the check could not run: {error_text(str(exc).strip().splitlines()[0])}")
        result.seconds = time.perf_counter() - started
        if result.status == "quarantined" and apply:
            rejected += result.failing_rows or 0
        results[check.label] = result
        log.info("check %s on %s: %s%s", check.label, scope.qualified, result.status,
                 f" ({result.failing_rows} rows)" if result.failing_rows else "")
    cur.execute(sql.SQL("DROP VIEW IF EXISTS {}").format(sql.Identifier(ROWS_VIEW)))
    return [results[c.label] for c in checks], rejected


# The checks the one scan of the table counts for (row_count: the rows in scope, counted on the way).
_SCANNED = ("not_null", "accepted_values", "range", "regex", "unique", "row_count", "row_count_change")


def _proven(cur: psycopg.Cursor[Any], checks: Sequence[Check], scope: CheckScope,
            columns: dict[str, str]) -> dict[str, CheckResult]:
    """The checks the load's rows passed as they were copied (``scope.observed``, sndw.checkstats):
    they need no read of the table. A range's extremes are compared with its bounds, and the distinct
    values of an ``accepted_values`` or ``regex`` put to its condition, by PostgreSQL, with the same
    casts as the check's SQL; anything not proved is left to that SQL."""
    import psycopg
    from psycopg import sql

    observed = scope.observed
    if observed is None:
        return {}
    proven: dict[str, CheckResult] = {}
    # Checks PostgreSQL decides on what the copy saw (a range's extremes, the distinct values): one query.
    decided: list[tuple[Check, sql.Composable]] = []
    for check in checks:
        if not check.columns or any(c not in columns for c in check.columns):
            continue
        passed = False
        if check.kind == "not_null":
            passed = observed.no_nulls(check.columns)
        elif check.kind == "unique" and unique_index(cur, scope, check.columns) is None:  # else: no scan anyway
            passed = observed.distinct(check.columns, [c for c in check.columns if _text_column(cur, scope, c, columns)[0]])
        elif check.kind == "range":
            extremes = observed.extremes(check.columns[0])
            if extremes is not None and extremes[0] is None:
                passed = True  # no value at all: nothing out of range
            elif extremes is not None:
                pg_type = sql.SQL(columns[check.columns[0]])
                ends = [_row_predicate(check, scope, columns, value=sql.SQL("CAST({} AS {})").format(
                    sql.Literal(v), pg_type)) for v in extremes]
                decided.append((check, sql.SQL("NOT coalesce({}, false) AND NOT coalesce({}, false)").format(*ends)))
        elif check.kind in ("accepted_values", "regex"):
            listed = _listed_values(cur, check, scope, columns)
            if listed is not None and not isinstance(listed, bool):
                decided.append((check, listed))
            passed = listed is True
        if passed:
            proven[check.label] = _proof(check, observed.rows)
    if decided:
        try:
            with cur.connection.transaction():
                cur.execute(sql.SQL("SELECT {}").format(sql.SQL(", ").join(e for _, e in decided)))
                row = cur.fetchone() or ()
        except psycopg.Error:  # a bound or value the column's type refuses: the check's own SQL says so
            row = ()
        for (check, _), ok in zip(decided, row, strict=False):
            if ok:
                proven[check.label] = _proof(check, observed.rows)
    return proven


def _listed_values(cur: psycopg.Cursor[Any], check: Check, scope: CheckScope,
                   columns: dict[str, str]) -> sql.Composable | bool | None:
    """``accepted_values`` and ``regex`` on the distinct values the load copied: a condition that holds
    when none of them fails the check's own predicate (evaluated by PostgreSQL), True when there is no
    value at all, None when they cannot stand for the rows (too many, or text whose comparison or
    pattern matching depends on a collation)."""
    import pyarrow as pa
    from psycopg import sql

    assert scope.observed is not None
    column = check.columns[0]
    listed = scope.observed.values(column)
    if listed is None:
        return None
    values, arrow_type = listed
    if not values:
        return True
    if arrow_type is None:
        return None
    if pa.types.is_integer(arrow_type):
        element = sql.SQL("bigint")
    else:  # text: equal values are equal bytes, and a pattern reads them as the database's default does
        equal, default = _text_column(cur, scope, column, columns)
        if not equal or (check.kind == "regex" and not default):
            return None
        element = sql.SQL("text")
    predicate = _row_predicate(check, scope, columns, value=sql.SQL("u.v"))
    return sql.SQL("NOT EXISTS (SELECT 1 FROM unnest(CAST({} AS {}[])) AS u(v) WHERE {})").format(
        sql.Literal([str(v) for v in values]), element, predicate)


def _proof(check: Check, rows: int) -> CheckResult:
    return CheckResult(check.label, check.kind, check.severity, "pass", column=_column(check), failing_rows=0,
                       message=f"checked on the {_n(rows)} as they were copied")


def _text_column(cur: psycopg.Cursor[Any], scope: CheckScope, column: str,
                 columns: dict[str, str]) -> tuple[bool, bool]:
    """Whether the warehouse column is text or varchar under a deterministic collation (equal values
    are equal bytes: not char(n), which ignores trailing blanks, nor a nondeterministic collation),
    and whether its collation is the database's default (what the proofs' text values are matched
    under)."""
    base = columns[column].split("(")[0].strip().lower()
    if base not in ("text", "character varying"):
        return False, False
    cur.execute("""
        SELECT coalesce(co.collisdeterministic, true), a.attcollation IN (0, 100) FROM pg_attribute a
        LEFT JOIN pg_collation co ON co.oid = a.attcollation
        WHERE a.attrelid = to_regclass(%s) AND a.attname = %s""", (scope.target().as_string(cur), column))
    row = cur.fetchone()
    return (bool(row[0]), bool(row[1])) if row else (False, False)


@dataclass
class _Scan:
    """What the one scan of the table counted: the rows in scope, whether the table holds rows
    outside the scope where ``unique`` looks (an append's earlier loads), the failing rows per
    row-level check (by label). None: not counted (the check then counts on its own)."""

    rows: int | None = None
    others: bool | None = None
    failing: dict[str, int] = field(default_factory=dict)
    # unique: whether a key repeats among the rows in scope (their count against their distinct count).
    repeats: dict[str, bool] = field(default_factory=dict)
    seconds: float = 0.0
    rejected: int = 0  # the rows quarantined before the scan: its counts hold until more are


def _scan(cur: psycopg.Cursor[Any], checks: Sequence[Check], scope: CheckScope, columns: dict[str, str]) -> _Scan:
    """One ``SELECT`` over the table for the row-level checks, the rows in scope and (appends, merges)
    whether rows outside the scope exist. A check whose SQL the server refuses makes the combined
    query fail: then nothing is counted here and each check runs (and errors) on its own."""
    import psycopg
    from psycopg import sql

    started = time.perf_counter()
    # Not relationships: its NOT EXISTS inside a FILTER is a subquery run per row (a scan of the parent
    # table each, 12 s for Pagila's 16,049 payments), where its own query is one hash anti-join.
    row_checks = [c for c in checks if c.kind in ("not_null", "accepted_values", "range", "regex")
                  and all(col in columns for col in c.columns)]
    in_scope = scope.condition()
    # Appends and merges: the scope is this load's files, unique looks at the whole table. The scan
    # reads the whole table anyway (no index on _file_id), so it counts the rows outside too.
    whole = scope.file_ids is not None and not scope.by_partition
    items: list[sql.Composable] = []
    if whole:
        items.append(sql.SQL("count(*) FILTER (WHERE {})").format(in_scope))
        items.append(sql.SQL("count(*) FILTER (WHERE NOT coalesce({}, false))").format(in_scope))
        where: sql.Composable = sql.SQL("true")
    else:
        items += [sql.SQL("count(*)"), sql.SQL("0")]
        where = in_scope
    for check in row_checks:
        predicate = _row_predicate(check, scope, columns)
        items.append(sql.SQL("count(*) FILTER (WHERE {} AND ({}))").format(in_scope, predicate) if whole
                     else sql.SQL("count(*) FILTER (WHERE {})").format(predicate))
    # unique, where no index guarantees it: the keys in scope against their distinct count, in the same
    # scan (a sort of the keys); only when they differ, or the table holds other rows, does it look further.
    unique_checks = [c for c in checks if c.kind == "unique" and all(col in columns for col in c.columns)
                     and unique_index(cur, scope, c.columns) is None]
    for check in unique_checks:
        keys = [sql.SQL("r.{}").format(sql.Identifier(c)) for c in check.columns]
        key = keys[0] if len(keys) == 1 else sql.SQL("ROW({})").format(sql.SQL(", ").join(keys))
        condition = sql.SQL(" AND ").join([*([in_scope] if whole else []),
                                           *(sql.SQL("{} IS NOT NULL").format(k) for k in keys)])
        items.append(sql.SQL("count(*) FILTER (WHERE {})").format(condition))
        items.append(sql.SQL("count(DISTINCT {}) FILTER (WHERE {})").format(key, condition))
    scan = _Scan()
    try:
        with cur.connection.transaction():
            cur.execute(sql.SQL("SELECT {} FROM {} r WHERE {}").format(
                sql.SQL(", ").join(items), scope.target(), where))
            row = cur.fetchone()
    except psycopg.Error as exc:
        log.info("checks on %s: the combined scan failed (%s); each check runs on its own", scope.qualified,
                 str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
        return scan
    assert row is not None
    scan.rows, scan.others = int(row[0]), int(row[1]) > 0
    scan.failing = {c.label: int(n) for c, n in zip(row_checks, row[2:2 + len(row_checks)], strict=True)}
    counted = row[2 + len(row_checks):]
    scan.repeats = {c.label: counted[2 * i] != counted[2 * i + 1] for i, c in enumerate(unique_checks)}
    scan.seconds = time.perf_counter() - started
    return scan


def _parent_missing(cur: psycopg.Cursor[Any], check: Check, scope: CheckScope) -> str | None:
    """For ``relationships``: why the table or column it relates to cannot be read, else None."""
    if check.kind != "relationships":
        return None
    from sndw.warehouse import table_columns

    assert check.relationships is not None
    schema, table, parent = check.relationships.target(scope.schema)
    parent_columns = table_columns(cur, schema, table)
    if parent in parent_columns:
        return None
    return (f"{schema}.{table}.{parent}, which it relates to, does not exist"
            if parent_columns else f"{schema}.{table}, which it relates to, does not exist")


def unique_index(cur: psycopg.Cursor[Any], scope: CheckScope, keys: Sequence[str]) -> str | None:
    """A unique index of the table that guarantees ``keys`` never repeat, or None.

    Only one that truly does: valid, enforced at once (not deferred), over the whole table (no
    ``WHERE``), on plain columns all among ``keys``. Rows unique on a subset are unique on the
    whole set, and ``unique`` ignores rows with a NULL in any of its columns, as the index does.
    """
    cur.execute(
        """
        SELECT i.indexrelid::regclass::text FROM pg_index i
        WHERE i.indrelid = to_regclass(%s) AND i.indisunique AND i.indisvalid AND i.indimmediate
          AND i.indpred IS NULL AND i.indexprs IS NULL
          AND (SELECT array_agg(a.attname::text) FROM generate_series(0, i.indnkeyatts - 1) k
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[k]) <@ %s::text[]
        ORDER BY i.indnkeyatts, 1 LIMIT 1
        """, (scope.target().as_string(cur), list(keys)))
    row = cur.fetchone()
    return str(row[0]) if row else None


def _without_table(check: Check, scope: CheckScope) -> CheckResult:
    """A check of a load that wrote no rows into a table that does not exist yet."""
    result = CheckResult(check.label, check.kind, check.severity, "pass", column=_column(check),
                         message=f"{scope.qualified} does not exist yet: no rows to check")
    if check.kind in ("not_null", "unique", "accepted_values", "range", "regex", "relationships", "sql"):
        result.failing_rows = 0
    elif check.kind == "row_count" and check.row_count is not None and (check.row_count.min or 0) > 0:
        result.message, result.status = f"0 rows, fewer than {check.row_count.min}", _failed(check)
    elif check.kind == "freshness":
        result.message, result.status = "no rows: nothing is fresh", _failed(check)
    elif check.kind == "source_count":
        return _source_count(scope, result, check)
    return result


def _column(check: Check) -> str | None:
    return ", ".join(check.columns) or None


def _rows() -> sql.Composable:
    from psycopg import sql

    return sql.SQL("{} r").format(sql.Identifier(ROWS_VIEW))


def _key_columns(check: Check, scope: CheckScope, columns: dict[str, str]) -> list[str]:
    """The sample keys' columns: the table's primary key, else the columns the check reads."""
    if scope.primary_key and all(k in columns for k in scope.primary_key):
        return list(scope.primary_key)
    return check.columns


def _samples(cur: psycopg.Cursor[Any], keys: list[str], relation: sql.Composable,
             predicate: sql.Composable) -> list[dict[str, str | None]]:
    from psycopg import sql

    if not keys:
        return []
    cur.execute(sql.SQL("SELECT {} FROM {} WHERE {} ORDER BY {} LIMIT {}").format(
        sql.SQL(", ").join(sql.SQL("r.{}::text").format(sql.Identifier(k)) for k in keys), relation, predicate,
        sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(k)) for k in keys), sql.Literal(MAX_SAMPLE_KEYS)))
    return [dict(zip(keys, row, strict=True)) for row in cur.fetchall()]


def _scalar(cur: psycopg.Cursor[Any], statement: sql.Composed | sql.SQL, params: Sequence[Any] = ()) -> Any:
    cur.execute(statement, params)
    row = cur.fetchone()
    return row[0] if row else None


def _row_predicate(check: Check, scope: CheckScope, columns: dict[str, str],
                   value: sql.Composable | None = None) -> sql.Composable:
    """The condition a failing row meets, on the table aliased ``r``; ``value``: on that value
    instead of the row's column (the extremes of a range, sndw.checkstats)."""
    from psycopg import sql

    kind = check.kind
    if kind == "not_null":
        return sql.SQL(" OR ").join(sql.SQL("r.{} IS NULL").format(sql.Identifier(c)) for c in check.columns)
    column = check.columns[0]
    col = value if value is not None else sql.SQL("r.{}").format(sql.Identifier(column))
    pg_type = sql.SQL(columns[column])
    if kind == "accepted_values":
        assert check.accepted_values is not None
        values = [_text(v) for v in check.accepted_values.values]
        return sql.SQL("{c} IS NOT NULL AND {c} <> ALL(CAST({v} AS {t}[]))").format(
            c=col, v=sql.Literal(values), t=pg_type)
    if kind == "range":
        assert check.range is not None
        bounds = []
        if check.range.min is not None:
            bounds.append(sql.SQL("{} < CAST({} AS {})").format(col, sql.Literal(_text(check.range.min)), pg_type))
        if check.range.max is not None:
            bounds.append(sql.SQL("{} > CAST({} AS {})").format(col, sql.Literal(_text(check.range.max)), pg_type))
        return sql.SQL("(") + sql.SQL(" OR ").join(bounds) + sql.SQL(")")
    if kind == "regex":
        assert check.regex is not None
        return sql.SQL("{c} IS NOT NULL AND {c}::text !~ {p}").format(c=col, p=sql.Literal(check.regex.pattern))
    if kind == "relationships":
        assert check.relationships is not None
        schema, table, parent = check.relationships.target(scope.schema)
        return sql.SQL("{c} IS NOT NULL AND NOT EXISTS (SELECT 1 FROM {t} p WHERE p.{pc} = {c})").format(
            c=col, t=sql.Identifier(schema, table), pc=sql.Identifier(parent))
    raise ValueError(f"{kind} is not a row-level check")


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _run_one(cur: psycopg.Cursor[Any], check: Check, scope: CheckScope, columns: dict[str, str],
             audit_schema: str, apply: bool, scan: _Scan | None = None) -> CheckResult:
    from psycopg import sql

    scan = scan or _Scan()
    kind = check.kind
    result = CheckResult(check.label, kind, check.severity, "pass", column=_column(check))
    missing_parent = _parent_missing(cur, check, scope)
    if missing_parent:
        result.status = "error"
        result.message = missing_parent
        return result
    if kind in ("not_null", "accepted_values", "range", "regex", "relationships"):
        predicate = _row_predicate(check, scope, columns)
        failing = scan.failing.get(check.label)
        if failing is None:
            failing = int(_scalar(cur, sql.SQL("SELECT count(*) FROM {} WHERE {}").format(_rows(), predicate)))
        result.failing_rows = failing
        if failing:
            result.sample_keys = _samples(cur, _key_columns(check, scope, columns), _rows(), predicate)
            result.message = _row_message(check, failing, cur, predicate)
            if check.on_fail == "quarantine":
                if apply:
                    _quarantine(cur, check, scope, columns, predicate)
                    result.message += f"; moved to {scope.schema}.{rejected_table_name(scope.table)}"
                else:
                    result.message += " (would be quarantined)"
                result.status = "quarantined"
            else:
                result.status = _failed(check)
        return result
    if kind == "unique":
        return _unique(cur, check, scope, result, scan)
    if kind == "row_count":
        assert check.row_count is not None
        rows = _count_rows(cur, scan)
        low, high = check.row_count.min, check.row_count.max
        result.message = f"{rows} rows"
        if (low is not None and rows < low) or (high is not None and rows > high):
            result.message = f"{rows} rows, outside {low if low is not None else '-'}..{high if high is not None else '-'}"
            result.status = _failed(check)
        return result
    if kind == "row_count_change":
        return _row_count_change(cur, check, scope, result, audit_schema, scan)
    if kind == "freshness":
        assert check.freshness is not None
        column = check.columns[0]
        cur.execute(sql.SQL("SELECT max(r.{c})::text, max(r.{c})::timestamptz < now() - make_interval(secs => %s) "
                            "FROM {rows}").format(c=sql.Identifier(column), rows=_rows()), (check.freshness.seconds,))
        row = cur.fetchone()
        newest, stale = (row[0], row[1]) if row else (None, None)
        if newest is None:
            result.message = f"no value of {column} in the rows checked: nothing is fresh"
            result.status = _failed(check)
        elif stale:
            result.message = f"the newest {column} is {newest}, older than {check.freshness.max_age}"
            result.status = _failed(check)
        else:
            result.message = f"the newest {column} is {newest}"
        return result
    if kind == "source_count":
        return _source_count(scope, result, check)
    if kind == "sql":
        assert check.sql is not None
        query = sql.SQL(render_sql(check.sql, scope))  # type: ignore[arg-type,unused-ignore]  # the config's own SQL
        failing = int(_scalar(cur, sql.SQL("SELECT count(*) FROM ({}) q").format(query)))
        result.failing_rows = failing
        if failing:
            cur.execute(sql.SQL("SELECT * FROM ({}) q LIMIT {}").format(query, sql.Literal(MAX_SAMPLE_KEYS)))
            names = [d.name for d in cur.description or []]
            shown = [k for k in scope.primary_key if k in names] or names[:1]
            result.sample_keys = [{k: None if row[names.index(k)] is None else str(row[names.index(k)]) for k in shown}
                                  for row in cur.fetchall()]
            result.message = f"the query returned {_n(failing)}"
            result.status = _failed(check)
        return result
    raise ValueError(f"unknown check kind {kind}")


def _source_count(scope: CheckScope, result: CheckResult, check: Check) -> CheckResult:
    """The source's own count of the partition against the rows this load wrote (before quarantine)."""
    if scope.rows_written is None:
        result.status = "error"
        result.message = "source_count compares an extract with its load: run it in a load"
    elif scope.source_count is None:
        result.status = "error"
        result.message = ("the extract of this partition carries no source count (made before the check was "
                          "added): extract the partition again")
    else:
        result.message = f"the source counted {scope.source_count} rows, the load wrote {scope.rows_written}"
        if scope.source_count != scope.rows_written:
            difference = scope.rows_written - scope.source_count
            result.message += f" ({difference:+d})"
            result.status = _failed(check)
    return result


def _count_rows(cur: psycopg.Cursor[Any], scan: _Scan) -> int:
    """The rows in scope: counted by the scan, when it ran and no quarantine moved rows since."""
    from psycopg import sql

    if scan.rows is not None:
        return scan.rows
    return int(_scalar(cur, sql.SQL("SELECT count(*) FROM {}").format(_rows())))


def _unique(cur: psycopg.Cursor[Any], check: Check, scope: CheckScope, result: CheckResult,
            scan: _Scan) -> CheckResult:
    """Rows in scope whose key repeats where ``unique`` looks (the partition, else the whole table).

    A unique index that guarantees the key: nothing to scan. Else the repeats among the rows in
    scope (one aggregate over them) and, only when the table holds other rows (an append's earlier
    loads), the keys of the scope found among those too.
    """
    from psycopg import sql

    index = unique_index(cur, scope, check.columns)
    if index is not None:
        result.failing_rows = 0
        result.message = f"guaranteed by the unique index {index}: not scanned"
        return result
    others = scan.others if scan.others is not None else (scope.file_ids is not None and not scope.by_partition)
    if scan.repeats.get(check.label) is False and not others:  # the scan found every key distinct
        result.failing_rows = 0
        return result
    keys = [sql.Identifier(c) for c in check.columns]

    def listed(alias: str) -> sql.Composable:
        return sql.SQL(", ").join(sql.SQL("{}.{}").format(sql.Identifier(alias), k) for k in keys)

    def not_null(alias: str) -> sql.Composable:
        return sql.SQL(" AND ").join(sql.SQL("{}.{} IS NOT NULL").format(sql.Identifier(alias), k) for k in keys)

    within = sql.SQL("SELECT {keys} FROM {rows} WHERE {nn} GROUP BY {keys} HAVING count(*) > 1").format(
        keys=listed("r"), rows=_rows(), nn=not_null("r"))
    if others:  # the scope's keys that an earlier load of the table already holds
        dup = within + sql.SQL(" UNION SELECT {keys} FROM {target} u WHERE NOT coalesce({scope}, false) AND {nn} "
                               "AND ({keys}) IN (SELECT {rkeys} FROM {rows})").format(
            keys=listed("u"), target=scope.target(), scope=scope.condition("u"), nn=not_null("u"),
            rkeys=listed("r"), rows=_rows())
    else:
        dup = within
    cur.execute(sql.SQL("SELECT {} FROM ({}) d ORDER BY {} LIMIT {}").format(
        sql.SQL(", ").join(sql.SQL("d.{}::text").format(k) for k in keys), dup,
        sql.SQL(", ").join(sql.SQL("d.{}").format(k) for k in keys), sql.Literal(MAX_SAMPLE_KEYS)))
    samples = cur.fetchall()
    if not samples:
        result.failing_rows = 0
        return result
    join = sql.SQL(" AND ").join(sql.SQL("r.{k} = d.{k}").format(k=k) for k in keys)
    failing = int(_scalar(cur, sql.SQL("SELECT count(*) FROM {} JOIN ({}) d ON {}").format(_rows(), dup, join)))
    result.failing_rows = failing
    result.sample_keys = [dict(zip(check.columns, row, strict=True)) for row in samples]
    result.message = f"{_n(failing)} {'repeats' if failing == 1 else 'repeat'} a value of ({', '.join(check.columns)})"
    result.status = _failed(check)
    return result


def _n(rows: int) -> str:
    return f"{rows} row" if rows == 1 else f"{rows} rows"


def _failed(check: Check) -> str:
    return "fail" if check.severity == "block" else "warn"


def _row_message(check: Check, failing: int, cur: psycopg.Cursor[Any], predicate: sql.Composable) -> str:
    from psycopg import sql

    if check.kind == "not_null" and len(check.columns) > 1:
        cur.execute(sql.SQL("SELECT {} FROM {} WHERE {}").format(
            sql.SQL(", ").join(sql.SQL("count(*) FILTER (WHERE r.{} IS NULL)").format(sql.Identifier(c))
                               for c in check.columns), _rows(), predicate))
        row = cur.fetchone() or ()
        per = ", ".join(f"{c} ({n})" for c, n in zip(check.columns, row, strict=True) if n)
        return f"{_n(failing)} have a NULL in {per}"
    what = {"not_null": "NULL", "accepted_values": "with a value not accepted",
            "range": "out of range", "regex": "not matching the pattern",
            "relationships": f"without a match in {check.relationships.to if check.relationships else ''}"}[check.kind]
    return f"{_n(failing)} {what}"


def _row_count_change(cur: psycopg.Cursor[Any], check: Check, scope: CheckScope, result: CheckResult,
                      audit_schema: str, scan: _Scan) -> CheckResult:
    from psycopg import sql

    from sndw.audit import AUDIT_TABLE

    assert check.row_count_change is not None
    spec = check.row_count_change
    rows = _count_rows(cur, scan)
    previous = None
    if _scalar(cur, sql.SQL("SELECT to_regclass(%s)"), (sql.Identifier(audit_schema, AUDIT_TABLE).as_string(cur),)):
        where = sql.SQL("")
        params: list[Any] = [scope.qualified]
        if spec.compare_to == "same_weekday" and scope.partition is not None:
            where = sql.SQL(" AND partition_date = %s")
            params.append(scope.partition - timedelta(days=7))
        cur.execute(sql.SQL("SELECT rows_loaded FROM {} WHERE target_table = %s AND status = 'success' "
                            "AND step IN ('load', 'replay') AND rows_loaded IS NOT NULL{} "
                            "ORDER BY id DESC LIMIT 1 OFFSET {}").format(
            sql.Identifier(audit_schema, AUDIT_TABLE), where, sql.Literal(scope.previous_offset)), params)
        row = cur.fetchone()
        previous = int(row[0]) if row else None
    if previous is None:
        result.message = f"{rows} rows; no earlier load to compare with"
        return result
    change = (rows - previous) * 100.0 / previous if previous else (0.0 if rows == 0 else float("inf"))
    result.message = f"{rows} rows against {previous} ({change:+.1f}%)"
    if spec.max_drop_pct is not None and change < -spec.max_drop_pct:
        result.message += f", a fall of more than {spec.max_drop_pct:g}%"
        result.status = _failed(check)
    if spec.max_growth_pct is not None and change > spec.max_growth_pct:
        result.message += f", a rise of more than {spec.max_growth_pct:g}%"
        result.status = _failed(check)
    return result


_PLACEHOLDER = re.compile(r"\{\{\s*(table|target|partition_date)\s*\}\}")


def render_sql(query: str, scope: CheckScope) -> str:
    """A ``sql`` check's query with ``{{ table }}`` (this load's rows), ``{{ target }}`` (the whole
    table) and ``{{ partition_date }}`` filled in."""
    from psycopg import sql

    conn = None  # Identifier.as_string needs no connection for plain quoting
    values = {
        "table": sql.Identifier("pg_temp", ROWS_VIEW).as_string(conn),
        "target": sql.Identifier(scope.schema, scope.table).as_string(conn),
        "partition_date": scope.partition.isoformat() if scope.partition else "",
    }
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], query).strip().rstrip(";")


# ---------------------------------------------------------------------------------- quarantine


def rejected_table_name(table: str) -> str:
    """Where quarantined rows of ``table`` go, within PostgreSQL's 63 bytes."""
    return f"_rejected_{table}".encode()[:63].decode(errors="ignore")


def _prepare_rejected(cur: psycopg.Cursor[Any], scope: CheckScope, columns: dict[str, str]) -> None:
    """``<schema>._rejected_<table>``: the table's columns, the check's name and when; created, or
    given the table's new columns; this load's earlier rejections (a re-run) removed."""
    from psycopg import sql

    from sndw.warehouse import table_columns

    rejected = sql.Identifier(scope.schema, rejected_table_name(scope.table))
    existing = table_columns(cur, scope.schema, rejected_table_name(scope.table))
    if not existing:
        cur.execute(sql.SQL("CREATE TABLE {} ({}, _check text NOT NULL, "
                            "_rejected_at timestamp with time zone NOT NULL DEFAULT now())").format(
            rejected, sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c), sql.SQL(t))
                                         for c, t in columns.items())))
    else:
        for name, pg_type in columns.items():
            if name not in existing:
                cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                    rejected, sql.Identifier(name), sql.SQL(pg_type)))
    cur.execute(sql.SQL("DELETE FROM {} r WHERE {}").format(rejected, scope.condition()))
    if scope.replaces_partition and scope.partition is not None:  # an earlier extract's rejections of the date
        from sndw.naming import PARTITION_DATE

        cur.execute(sql.SQL("DELETE FROM {} WHERE {} = %s").format(rejected, sql.Identifier(PARTITION_DATE)),
                    (scope.partition,))


def _quarantine(cur: psycopg.Cursor[Any], check: Check, scope: CheckScope, columns: dict[str, str],
                predicate: sql.Composable) -> None:
    from psycopg import sql

    names = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    cur.execute(sql.SQL("INSERT INTO {} ({}, _check) SELECT {}, {} FROM {} WHERE {}").format(
        sql.Identifier(scope.schema, rejected_table_name(scope.table)), names,
        sql.SQL(", ").join(sql.SQL("r.{}").format(sql.Identifier(c)) for c in columns),
        sql.Literal(check.label), _rows(), predicate))
    cur.execute(sql.SQL("DELETE FROM {} r WHERE {} AND {}").format(scope.target(), scope.condition(), predicate))
