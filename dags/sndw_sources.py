"""One DAG per source config in dags/sources/*.yaml (reference: README, "Source configs")."""

from __future__ import annotations

from pathlib import Path

from sndw_airflow.factory import build_dags

globals().update(build_dags(Path(__file__).parent / "sources"))
