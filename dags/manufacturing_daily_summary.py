"""A consumer of the warehouse tables' partitioned Assets: one daily production summary per loaded date.

Each load of the manufacturing source emits an event for its table's Asset, keyed by the run's
partition date. This DAG runs once per date for which all three tables were loaded (a backfill of
3 dates: 3 runs, one per date), and rebuilds that date's row of analytics.daily_production_summary
in SQL, in one transaction: a re-run replaces the row, never duplicates it.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from airflow.sdk import DAG, PartitionedAssetTimetable, task
from sndw_airflow.lineage import table_asset

DW_CONN_ID = "dw"
SOURCE_SCHEMA = "raw"  # target_schema of dags/sources/manufacturing.yaml
REFILLS, BODIES, SPRINGS = (table_asset(DW_CONN_ID, SOURCE_SCHEMA, t) for t in ("refills", "bodies", "springs"))
SUMMARY = table_asset(DW_CONN_ID, "analytics", "daily_production_summary")

SUMMARY_SQL = """
CREATE SCHEMA IF NOT EXISTS analytics;
CREATE TABLE IF NOT EXISTS analytics.daily_production_summary (
    day date PRIMARY KEY, refills bigint NOT NULL, refills_passed_qc bigint NOT NULL,
    ink_volume_ml numeric NOT NULL, bodies bigint NOT NULL, body_defects bigint NOT NULL,
    springs bigint NOT NULL, avg_spring_tension_n double precision, summarized_at timestamptz NOT NULL
);
DELETE FROM analytics.daily_production_summary WHERE day = %(day)s;
INSERT INTO analytics.daily_production_summary
SELECT %(day)s::date, r.n, r.passed, r.ml, b.n, b.defects, s.n, s.tension, now()
FROM (SELECT count(*) AS n, count(*) FILTER (WHERE passed_qc) AS passed, coalesce(sum(volume_ml), 0) AS ml
      FROM raw.refills WHERE produced_at >= %(start)s AND produced_at < %(end)s) r,
     (SELECT count(*) AS n, coalesce(sum(defects), 0) AS defects
      FROM raw.bodies WHERE produced_on = %(day)s::date) b,
     (SELECT count(*) AS n, avg(tension_n) AS tension
      FROM raw.springs WHERE _partition_date = %(day)s::date) s;
"""


def partition_day(partition_key: str | None, run_after: datetime | None = None) -> date:
    """The run's partition key as a date; anything else is refused with what was received. A run
    triggered by hand has no key: it summarizes the day it was due to run (``run_after``, UTC)."""
    if partition_key is None and run_after is not None:
        return run_after.astimezone(UTC).date()
    try:
        return date.fromisoformat(str(partition_key))
    except ValueError:
        raise ValueError(f"manufacturing_daily_summary: the partition key must be a date (YYYY-MM-DD); "
                         f"got {partition_key!r}. Runs come from the manufacturing tables' asset events.") from None


def summarize_day(conn: Any, day: date) -> dict[str, Any]:
    """Rebuild ``day``'s summary row on a psycopg connection, in one transaction; returns the row."""
    start = datetime(day.year, day.month, day.day, tzinfo=UTC)
    end = start + timedelta(days=1)
    with conn.transaction(), conn.cursor() as cur:
        for statement in filter(str.strip, SUMMARY_SQL.split(";")):
            cur.execute(statement, {"day": day, "start": start, "end": end} if "%(" in statement else None)
        cur.execute("SELECT * FROM analytics.daily_production_summary WHERE day = %s", (day,))
        names = [c.name for c in cur.description or []]
        row = cur.fetchone()
    return {k: v for k, v in zip(names, row or (), strict=False) if k != "summarized_at"}


with DAG(
    dag_id="manufacturing_daily_summary",
    description="Daily production summary (analytics.daily_production_summary), once per loaded date.",
    doc_md=__doc__,
    schedule=PartitionedAssetTimetable(assets=REFILLS & BODIES & SPRINGS),
    catchup=False,
    max_active_runs=1,
    tags=["sndw", "demo", "manufacturing", "analytics"],
    default_args={"owner": "analytics", "retries": 1, "retry_delay": timedelta(seconds=30)},
):

    @task(outlets=[SUMMARY])
    def summarize(dag_run: Any = None) -> dict[str, Any]:
        """The summary of the run's partition (its key: the date the three tables were loaded for)."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        day = partition_day(dag_run.partition_key, dag_run.run_after)
        conn = PostgresHook(postgres_conn_id=DW_CONN_ID).get_conn()
        try:
            row = summarize_day(conn, day)
        finally:
            conn.close()
        return {k: str(v) if v is not None else None for k, v in row.items()}

    summarize()
