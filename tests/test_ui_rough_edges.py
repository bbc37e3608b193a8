"""What the UI shows: presets as written, optional trigger-form fields, a demo on recent dates."""

from __future__ import annotations

import importlib.util
from datetime import UTC, datetime, timedelta
from typing import Any

import pendulum
import pytest
from sndw.config import parse_source

from tests.conftest import ROOT, TEST_DAGS


def serialized(dag: Any) -> Any:
    """The DAG as the scheduler and the API server see it: serialized and read back."""
    from airflow.serialization.serialized_objects import DagSerialization

    return DagSerialization.from_dict(DagSerialization.to_dict(dag))


@pytest.mark.parametrize("schedule", ["@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly"])
def test_a_preset_shows_as_written_and_runs_as_airflow_runs_it(schedule: str) -> None:
    from airflow.timetables.base import TimeRestriction
    from airflow.timetables.trigger import CronTriggerTimetable
    from sndw_airflow.factory import build_dag

    source = parse_source({"name": "ui_preset", "kind": "http", "conn_id": "x", "start_date": "2024-01-01",
                           "schedule": schedule, "tables": [{"name": "a", "endpoint": "/a"}]}, "ui_preset.yaml")
    timetable = serialized(build_dag(source)).timetable
    assert timetable.summary == schedule
    plain = CronTriggerTimetable(schedule, timezone="UTC")
    assert timetable.description == plain.description != ""
    restriction = TimeRestriction(pendulum.datetime(2024, 1, 1, tz="UTC"), None, catchup=True)
    last = None
    for _ in range(3):  # the same runs and data intervals as schedule=<preset>
        ours = timetable.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
        theirs = plain.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
        assert ours is not None and theirs is not None
        assert (ours.run_after, ours.data_interval) == (theirs.run_after, theirs.data_interval)
        last = ours.data_interval


def test_cron_expressions_and_none_are_passed_through() -> None:
    from sndw_airflow.factory import schedule_for

    assert schedule_for("0 3 * * *") == "0 3 * * *"
    assert schedule_for(None) is None
    assert schedule_for("@once") == "@once"


def test_replay_form_fields_are_optional() -> None:
    from airflow.dag_processing.dagbag import DagBag

    dag = DagBag(dag_folder=str(TEST_DAGS / "sndw_maintenance.py")).dags["sndw_replay"]
    params = dag.params
    assert params.validate() == {"source": "manufacturing", "table": None, "date_from": None, "date_to": None}
    for name in ("table", "date_from", "date_to"):
        assert params.get_param(name).schema["type"] == ["null", "string"], name
    params["date_from"] = "2024-01-02"  # a value still validates
    assert params.validate()["date_from"] == "2024-01-02"


def test_the_demo_runs_yesterday() -> None:
    spec = importlib.util.spec_from_file_location("sndw_demo_script", ROOT / "scripts" / "demo.py")
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    assert demo.DEMO_DATE == (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
