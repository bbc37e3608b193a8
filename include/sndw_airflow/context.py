"""What a task reads from its Airflow context: the run's partition date and its identity."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime
from typing import Any

from sndw import settings, storage

__all__ = ["attach_lake", "attempt", "lake_root", "partition_date", "started_at"]

LAKE_CONN_ID = "sndw_lake"


def attach_lake(location: str) -> str:
    """Make an object-store lake location readable and writable in this process; returns it.

    ``s3://`` lakes go through Airflow's ``ObjectStoragePath`` with the Amazon provider's
    connection ``SNDW_LAKE_CONN_ID`` (default ``sndw_lake``: an ``aws`` connection; its extra's
    ``endpoint_url`` points at an S3-compatible server). When that connection does not exist, the
    provider falls back to its default credential chain (``AWS_*`` variables, instance roles).
    Local folders need nothing.
    """
    if storage.is_url(location):
        # The filesystem ObjectStoragePath(location, conn_id=...) would use, made afresh (about 10 ms
        # after the first): ObjectStoragePath caches it per connection id for the process's life.
        from airflow.sdk.io import get_fs

        conn_id = os.environ.get("SNDW_LAKE_CONN_ID", LAKE_CONN_ID)
        storage.use_filesystem(storage.protocol_of(location), get_fs(storage.protocol_of(location), conn_id))
    return location


def lake_root() -> str:
    """The default lake (``SNDW_LAKE_ROOT``); ``attach_lake`` it before reading or writing files."""
    return settings.lake_root()


def partition_date(context: Any) -> date:
    """The run's date partition: the start of its data interval, else its ``run_after``.

    Runs triggered through the REST API (and ``dags trigger`` without a date) have no logical
    date and no data interval in Airflow 3; their partition is the day they were due to run.
    """
    for key in ("data_interval_start", "logical_date"):
        value = context.get(key)
        if value is not None:
            return _utc_date(value)
    dag_run = context.get("dag_run")
    run_after = getattr(dag_run, "run_after", None)
    if run_after is not None:
        return _utc_date(run_after)
    return datetime.now(UTC).date()


def _utc_date(value: datetime) -> date:
    if value.tzinfo is None:
        return value.date()
    return value.astimezone(UTC).date()


def attempt(context: Any) -> dict[str, Any]:
    """The attempt's identity for its audit row; a mapped task instance's (a range of a parallel
    extract) names its map index in ``attempt_id``, so each instance's attempts get rows of their own."""
    ti = context.get("ti") or context.get("task_instance")
    fields = {
        "dag_id": getattr(ti, "dag_id", None),
        "task_id": getattr(ti, "task_id", None),
        "airflow_run_id": context.get("run_id") or getattr(ti, "run_id", None),
        "try_number": getattr(ti, "try_number", None),
    }
    map_index = getattr(ti, "map_index", None)
    if isinstance(map_index, int) and map_index >= 0:
        fields["attempt_id"] = (f"{fields['dag_id']}|{fields['task_id']}[{map_index}]|{fields['airflow_run_id']}|"
                                f"{fields['try_number'] or 0}")
    return fields


def started_at(context: Any) -> datetime:
    ti = context.get("ti") or context.get("task_instance")
    start = getattr(ti, "start_date", None)
    if isinstance(start, datetime):
        return start if start.tzinfo else start.replace(tzinfo=UTC)
    return datetime.now(UTC)
