"""The two operators composed by hand, without a source config: demo API users -> staging.api_users."""

from __future__ import annotations

from datetime import UTC, datetime

from airflow.sdk import DAG
from sndw_airflow.operators import ExtractToParquetOperator, ParquetToDwOperator

with DAG(
    dag_id="example_manual_pipeline",
    description="Extract the demo API's users to the lake, then merge them into staging.api_users.",
    schedule=None,
    start_date=datetime(2024, 1, 1, tzinfo=UTC),
    catchup=False,
    tags=["sndw", "example"],
    default_args={"owner": "data-eng", "retries": 1},
):
    extract = ExtractToParquetOperator(
        task_id="extract_users",
        source="example_manual",
        kind="http",
        conn_id="demo_api",
        table={"name": "users", "endpoint": "/users"},
    )
    ParquetToDwOperator(
        task_id="load_users",
        manifest=extract.output,  # the manifest travels through XCom; the dependency is implied
        target_table="api_users",
        target_schema="staging",
        write_mode="merge",
        primary_key=["id"],
    )
