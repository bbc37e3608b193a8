"""DAG integrity through Airflow's own DagBag, and the layering rule (the core never imports Airflow)."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from sndw_airflow.factory import INVALID_CONFIG_PREFIX

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_DAGS = {"manufacturing", "demo_api", "demo_csv", "example_manual_pipeline", "manufacturing_daily_summary"}


@pytest.fixture(scope="module")
def project_bag() -> DagBag:
    return DagBag(dag_folder=str(ROOT / "dags"))


def test_no_import_errors_and_every_sample_dag_is_there(project_bag: DagBag) -> None:
    assert project_bag.import_errors == {}
    assert SAMPLE_DAGS <= set(project_bag.dag_ids)
    assert not [d for d in project_bag.dag_ids if d.startswith(INVALID_CONFIG_PREFIX)]


def test_every_dag_has_owner_retries_and_tags(project_bag: DagBag) -> None:
    for dag_id, dag in project_bag.dags.items():
        assert dag.tags, f"{dag_id} has no tags"
        for task in dag.tasks:
            assert task.owner and task.owner != "airflow", f"{dag_id}.{task.task_id} has no owner"
            assert task.retries >= 1, f"{dag_id}.{task.task_id} has no retries"


def test_each_table_is_extract_then_load(project_bag: DagBag) -> None:
    dag = project_bag.dags["manufacturing"]
    for table in ("refills", "bodies", "springs"):
        extract, load = dag.get_task(f"extract_{table}"), dag.get_task(f"load_{table}")
        assert load.task_id in extract.downstream_task_ids
        assert type(extract).__name__ == "ExtractToParquetOperator"
        assert type(load).__name__ == "ParquetToDwOperator"
    assert dag.get_task("load_bodies").write_mode == "merge"
    assert dag.max_active_runs == 1 and dag.catchup is False


def test_parsing_makes_no_network_or_database_call(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a socket was opened while parsing DAG files")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {} and SAMPLE_DAGS <= set(bag.dag_ids)


def test_a_broken_config_does_not_hide_the_other_sources(tmp_path: Path) -> None:
    (tmp_path / "sources").mkdir()
    (tmp_path / "sndw_sources.py").write_text((ROOT / "dags" / "sndw_sources.py").read_text())
    good = "kind: sql\nconn_id: db\nstart_date: 2024-01-01\ntables:\n  - name: t\n    table: t\n"
    (tmp_path / "sources" / "good.yaml").write_text(good)
    (tmp_path / "sources" / "broken.yaml").write_text(good.replace("table: t", "table: t\n    write_mode: upsert"))
    bag = DagBag(dag_folder=str(tmp_path))
    assert bag.import_errors == {}
    assert "good" in bag.dag_ids
    error_dag = bag.dags[f"{INVALID_CONFIG_PREFIX}broken.yaml"]
    assert "broken.yaml: tables[0].write_mode" in error_dag.description
    assert "config-error" in error_dag.tags
    assert error_dag.schedule is None
    warnings = [w for ws in bag.captured_warnings.values() for w in ws]
    assert any("broken.yaml" in w for w in warnings)


def test_core_library_never_imports_airflow() -> None:
    modules = ["sndw.config", "sndw.lake", "sndw.warehouse", "sndw.audit", "sndw.extract.sql",
               "sndw.extract.http", "sndw.extract.files", "sndw.cli", "sndw.demo.api", "sndw.demo.manufacturing"]
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "leaked = sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.'))\n"
            "print(leaked)\nsys.exit(1 if leaked else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_parsing_the_dag_folder_imports_neither_pyarrow_nor_psycopg(tmp_path: Path) -> None:
    """The DAG processor parses every file again and again: the data libraries are imported when a
    task runs (README "Performance": this took the parse of 100 sources from ~0.9 s to ~0.4 s).
    Airflow's own start-up comes first (an empty folder): with PostgreSQL metadata it imports psycopg."""
    code = (
        "import sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"DagBag(dag_folder={str(tmp_path)!r})\n"
        "heavy = ('pyarrow', 'psycopg', 'polars', 'pgpq', 'adbc_driver_manager', 'pandas', 'fsspec')\n"
        "before = {m for m in heavy if m in sys.modules}\n"
        f"bag = DagBag(dag_folder={str(ROOT / 'dags')!r})\n"
        "assert not bag.import_errors, bag.import_errors\n"
        "assert 'manufacturing' in bag.dag_ids, bag.dag_ids\n"
        "print(sorted(m for m in heavy if m in sys.modules and m not in before))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout[-2000:]
