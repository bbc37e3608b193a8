"""Maintenance DAGs: `sndw_replay` rebuilds warehouse tables from the lake, without the source."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from airflow.sdk import DAG, Param
from sndw_airflow.maintenance import ReplayFromLakeOperator

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
        sources_folder=str(Path(__file__).parent / "sources"),
        source="{{ params.source }}",
        table="{{ params.table or '' }}",
        date_from="{{ params.date_from or '' }}",
        date_to="{{ params.date_to or '' }}",
    )
