"""The ETL page at scale: a warehouse with many sources and a year of audit rows each.

``fill`` writes what a year of daily runs leaves behind (an extract and a load row per table and
day, quality check results, watermarks) and ``write_sources`` the source configs that go with it;
``time_overview`` times the page's queries (sndw.stats.overview). Used by `make bench` and by the
page's browser test (tests/test_plugin.py), which times the HTTP answer too.

The generated history, relative to ``now``: every source runs daily at 02:00 and its runs take
seconds; ``failing_*`` sources' latest load failed (their last error is current); ``stale_*``
sources stopped a few days ago; every fifth source missed three partition dates and every
seventh source's ``orders`` has a failing warn check.
"""

from __future__ import annotations

import json
import random
import statistics
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import yaml
from psycopg import sql
from sndw.audit import AUDIT_TABLE, ensure_audit_table
from sndw.quality import RESULTS_TABLE, ensure_results_table
from sndw.state import STATE_TABLE, ensure_state_table

TABLES = (("orders", "partition"), ("customers", "merge"), ("products", "replace"))
CHECKS = [{"not_null": ["id"]}, {"unique": ["id"]}, {"range": {"column": "amount", "min": 0}, "severity": "warn"}]
CHECK_NAMES = ["not_null(id)", "unique(id)", "range(amount)"]
TAGS = ("finance", "sales", "ops", "hr")


@dataclass
class Generated:
    names: list[str]
    failing: list[str]
    stale: list[str]
    gaps: list[str]
    warned: list[str]
    audit_rows: int


def source_name(i: int) -> str:
    kind = "failing" if i % 25 == 3 else "stale" if i % 17 == 5 else "src"
    return f"{kind}_{i:03d}"


def write_sources(folder: Path, count: int, data: Path) -> list[str]:
    """``count`` file-source configs of three tables (partition, merge, replace), daily at 02:00."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(count):
        name = source_name(i)
        tables: list[dict[str, Any]] = []
        for table, mode in TABLES:
            spec: dict[str, Any] = {"name": table, "path": f"{table}.csv", "write_mode": mode}
            if mode == "merge":
                spec["primary_key"] = ["id"]
            if table == "orders":
                spec["checks"] = CHECKS
            tables.append(spec)
        config = {"name": name, "kind": "file", "base_path": str(data), "schedule": "0 2 * * *",
                  "start_date": "2020-01-01", "target_schema": f"raw_{i:03d}", "tags": [TAGS[i % len(TAGS)]],
                  "tables": tables}
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        names.append(name)
    return names


def fill(conn: psycopg.Connection[Any], count: int, days: int, now: datetime | None = None) -> Generated:
    """A year (``days``) of daily runs of ``count`` sources, as write_sources configures them."""
    now = now or datetime.now(UTC)
    rnd = random.Random(7)
    ensure_audit_table(conn)
    ensure_results_table(conn)
    ensure_state_table(conn)
    today = now.replace(hour=2, minute=0, second=0, microsecond=0)
    if today > now - timedelta(minutes=20):
        today -= timedelta(days=1)
    audit_cols = ("run_id", "pipeline_name", "source_name", "protocol", "target_table", "status", "rows_loaded",
                  "error_message", "started_at", "finished_at", "dag_id", "task_id", "airflow_run_id", "try_number",
                  "step", "partition_date", "rows_extracted")
    check_cols = ("run_id", "pipeline_name", "source_name", "target_table", "partition_date", "check_name", "kind",
                  "severity", "status", "failing_rows", "sample_keys", "message", "seconds", "committed", "checked_at")
    made = Generated([], [], [], [], [], 0)
    rows = 0
    results: list[tuple[Any, ...]] = []
    with conn.cursor() as cur:
        with cur.copy(f"COPY {AUDIT_TABLE} ({', '.join(audit_cols)}) FROM STDIN") as audit:
            for i in range(count):
                name = source_name(i)
                made.names.append(name)
                stop = 4 if name.startswith("stale") else 0
                skipped = {10, 11, 12} if i % 5 == 0 else set()
                if name.startswith("failing"):
                    made.failing.append(name)
                if stop:
                    made.stale.append(name)
                if skipped:
                    made.gaps.append(name)
                warn = i % 7 == 0
                if warn:
                    made.warned.append(name)
                for back in range(days - 1, stop - 1, -1):
                    run_at = today - timedelta(days=back)
                    day = run_at.date()
                    run_id = f"scheduled__{run_at.isoformat()}"
                    if back in skipped:
                        continue
                    for t, (table, _mode) in enumerate(TABLES):
                        target = f"raw_{i:03d}.{table}"
                        lake = f"lake:file/{name}/{table}"
                        n = rnd.randint(800, 1200) * (t + 1)
                        start = run_at + timedelta(seconds=5 + 20 * t)
                        extract_s, load_s = rnd.uniform(1, 4), rnd.uniform(2, 9) * (t + 1)
                        fail = name.startswith("failing") and back == 0 and table == "orders"
                        audit.write_row((uuid.uuid4().hex, name, name, "file", lake, "success", None, None, start,
                                         start + timedelta(seconds=extract_s), name, f"extract_{table}", run_id, 1,
                                         "extract", day, n))
                        load_start = start + timedelta(seconds=extract_s + 1)
                        audit.write_row((
                            uuid.uuid4().hex, name, name, "file", target, "failure" if fail else "success",
                            None if fail else n,
                            f"CheckViolation: new row for relation \"{table}\" violates check constraint\n"
                            "DETAIL: Failing row contains (...)" if fail else None,
                            load_start, load_start + timedelta(seconds=load_s), name, f"load_{table}", run_id, 1,
                            "load", day, n))
                        rows += 2
                        if table == "orders" and not fail:
                            checked = load_start + timedelta(seconds=load_s)
                            for check, kind in zip(CHECK_NAMES, ("not_null", "unique", "range"), strict=True):
                                bad = warn and kind == "range" and back < 3
                                results.append((run_id, name, name, target, day, check, kind,
                                                  "warn" if kind == "range" else "block", "warn" if bad else "pass",
                                                  4 if bad else 0, "[]", "4 rows out of range" if bad else "",
                                                  0.01, True, checked))
        with cur.copy(f"COPY {RESULTS_TABLE} ({', '.join(check_cols)}) FROM STDIN") as copy:
            for result in results:
                copy.write_row(result)
        cur.executemany(sql.SQL("INSERT INTO {} (pipeline_name, table_name, cursor_column, value, value_type, "
                                "updated_at, run_id) VALUES (%s, 'customers', 'updated_at', %s, 'timestamp', %s, "
                                "'bench')").format(sql.Identifier(STATE_TABLE)),
                        [(name, (today - timedelta(hours=1)).isoformat(), today) for name in made.names])
    conn.commit()
    conn.execute(f"ANALYZE {AUDIT_TABLE}")
    conn.execute(f"ANALYZE {RESULTS_TABLE}")
    conn.commit()
    made.audit_rows = rows
    return made


def time_overview(url: str, folder: Path, rounds: int = 5) -> dict[str, Any]:
    """Seconds of the page's answer, per round: sndw.stats.overview (its queries and what it builds
    of them) and the JSON of it. Not counted: reading the configs and Airflow's login."""
    from sndw.config import iter_sources
    from sndw.errors import ConfigError
    from sndw.stats import overview

    sources = [s for _, s in iter_sources(folder) if not isinstance(s, ConfigError)]
    timings = []
    with psycopg.connect(url, autocommit=True) as conn:
        overview(conn, sources)  # warm-up: the catalog, the schedules' cache
        for _ in range(rounds):
            started = time.perf_counter()
            report = overview(conn, sources)
            json.dumps(report)
            timings.append(time.perf_counter() - started)
    tables = sum(len(s["tables"]) for s in report["sources"])
    return {"sources": len(report["sources"]), "tables": tables, "seconds": round(statistics.median(timings), 3),
            "rounds": [round(t, 3) for t in timings]}
