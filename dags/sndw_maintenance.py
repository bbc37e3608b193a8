"""Maintenance DAGs: `sndw_replay` rebuilds warehouse tables from the lake, without the source;
`sndw_freshness` checks the tables' freshness and announces breaches and recoveries."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from airflow.sdk import DAG, Param
from sndw_airflow.maintenance import FreshnessCheckOperator, ReplayFromLakeOperator

SOURCES = str(Path(__file__).parent / "sources")

with DAG(
    dag_id="sndw_replay",
    description="Reload a source's tables (or one table, or a date range) from the Parquet lake.",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["sndw", "maintenance"],
    default_args={"owner": "data-eng", "retries": 1},
    params={
        "source": Param("manufacturing", type="string", description="source name (its config's name)"),
        # Optional: null allowed, so the trigger form shows them as optional and accepts them empty.
        "table": Param(None, type=["null", "string"], description="one table; empty for every table of the source"),
        "date_from": Param(None, type=["null", "string"], description="first partition, YYYY-MM-DD; empty for the first"),
        "date_to": Param(None, type=["null", "string"], description="last partition, YYYY-MM-DD; empty for the last"),
    },
):
    ReplayFromLakeOperator(
        task_id="replay",
        sources_folder=SOURCES,
        source="{{ params.source }}",
        table="{{ params.table or '' }}",
        date_from="{{ params.date_from or '' }}",
        date_to="{{ params.date_to or '' }}",
    )

with DAG(
    dag_id="sndw_freshness",
    description="Freshness of every table with a freshness policy: breaches and recoveries announced once.",
    # Every 30 minutes by default; SNDW_FRESHNESS_SCHEDULE (a cron or preset) where the DAGs are parsed.
    schedule=os.environ.get("SNDW_FRESHNESS_SCHEDULE", "*/30 * * * *"),
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["sndw", "maintenance"],
    default_args={"owner": "data-eng", "retries": 1},
):
    FreshnessCheckOperator(task_id="check_freshness", sources_folder=SOURCES)
