"""What a task reads from its Airflow context: the run's partition date and its identity."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from sndw.settings import lake_root

__all__ = ["attempt", "lake_root", "partition_date", "started_at"]


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
    ti = context.get("ti") or context.get("task_instance")
    return {
        "dag_id": getattr(ti, "dag_id", None),
        "task_id": getattr(ti, "task_id", None),
        "airflow_run_id": context.get("run_id") or getattr(ti, "run_id", None),
        "try_number": getattr(ti, "try_number", None),
    }


def started_at(context: Any) -> datetime:
    ti = context.get("ti") or context.get("task_instance")
    start = getattr(ti, "start_date", None)
    if isinstance(start, datetime):
        return start if start.tzinfo else start.replace(tzinfo=UTC)
    return datetime.now(UTC)
