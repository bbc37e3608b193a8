"""Pause and resume between batches: a checkpointed extract of a slow PostgreSQL source, its DAG
paused (Airflow's own ``is_paused``) after 2 batches and resumed later, through ``dag.test()``.

``dag.test()`` shows the reschedule: the extract ends up for reschedule, is started again while the
DAG is still paused (``dag.test`` ignores the pause; the scheduler would not start it) and goes
straight back without reading, and after the resume continues from its checkpoint.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest

from tests.conftest import run, states

pytestmark = pytest.mark.slow

ROWS = 120
BATCH = 10


def _source(source_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """120 wide rows (about 4 kB each, so the driver's 64 kB batches stay small) read at ~25 rows a
    second (at ~50 a second, a busy machine once let the extract finish before the pause was seen);
    one non-transactional sequence per row counts how often the source read it."""
    with psycopg.connect(source_db) as conn:
        conn.execute("CREATE TABLE items (id int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO items SELECT g, repeat(md5(g::text), 128) FROM generate_series(1, %s) g", (ROWS,))
        for i in range(1, ROWS + 1):
            conn.execute(f"CREATE SEQUENCE read_{i}")
        conn.execute("""CREATE FUNCTION watch(i int) RETURNS int LANGUAGE plpgsql VOLATILE AS $$
            BEGIN
                PERFORM nextval('read_' || i);
                PERFORM pg_sleep(0.04);
                RETURN i;
            END $$""")
    parts = urlsplit(source_db)
    # An index-ordered plan streams rows as it reads them; watch() in the WHERE clause lets the resume
    # bound on id reach the index scan.
    monkeypatch.setenv("AIRFLOW_CONN_E2E_PAUSE", json.dumps({
        "conn_type": "postgres", "host": parts.hostname, "port": parts.port, "login": parts.username,
        "password": parts.password, "schema": parts.path.lstrip("/"), "extra": {"options": "-c enable_seqscan=off"}}))


def _reads(source_db: str) -> dict[int, int]:
    """How often each row was read (a sequence never called reads 0)."""
    with psycopg.connect(source_db) as conn:
        rows = conn.execute(
            "SELECT substr(sequencename, 6)::int, coalesce(last_value, 0) FROM pg_sequences "
            "WHERE sequencename LIKE 'read\\_%'").fetchall()
    return {int(i): int(n) for i, n in rows}


def _set_paused(dag_id: str, paused: bool, *, must_exist: bool = True) -> None:
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session

    with create_session() as session:
        dag = session.get(DagModel, dag_id)
        assert dag is not None or not must_exist, f"{dag_id} is not in the metadata DB"
        if dag is not None:
            dag.is_paused = paused


def _extract_state(dag_id: str) -> str | None:
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session

    with create_session() as session:  # this test's run: the newest (the metadata DB outlives test sessions)
        ti = (session.query(TaskInstance).filter_by(dag_id=dag_id, task_id="extract_items")
              .order_by(TaskInstance.id.desc()).first())
        return str(ti.state) if ti is not None else None


class Pauser(threading.Thread):
    """Pauses the DAG once the extract's checkpoint holds 2 batches, waits while it is up for
    reschedule (and started again while paused), records what it saw, then resumes the DAG."""

    def __init__(self, dag_id: str, inprogress_parent: Path) -> None:
        super().__init__(daemon=True)
        self.dag_id = dag_id
        self.parent = inprogress_parent
        self.seen: dict[str, Any] = {}
        self.error: BaseException | None = None

    def checkpoint(self) -> dict[str, Any] | None:
        for path in self.parent.glob(".*.inprogress-*/_checkpoint.json") if self.parent.is_dir() else []:
            try:
                return dict(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError):
                return None
        return None

    def run(self) -> None:
        try:
            deadline = time.monotonic() + 120
            while (state := self.checkpoint()) is None or state["rows"] < BATCH:
                assert time.monotonic() < deadline, "the extract never checkpointed a batch"
                time.sleep(0.01)
            # A DAG that this run created may start paused (a fresh metadata DB): the extract then runs
            # and stops only for a pause made after it saw the DAG unpaused. Unpause it, let a
            # checkpoint see that, then pause. The extract asks right after each checkpoint, before
            # reading the next batch: the checkpoint after the one current once the unpause committed
            # asks after the commit, and its question is answered once the next checkpoint is written.
            # (Pausing one checkpoint after the unpause raced with that question on a busy machine.)
            _set_paused(self.dag_id, False)
            unpaused_at = (self.checkpoint() or state)["rows"]
            while (state := self.checkpoint()) is None or state["rows"] < max(2 * BATCH, unpaused_at + 2 * BATCH):
                assert time.monotonic() < deadline, "the extract never checkpointed 2 batches after the unpause"
                time.sleep(0.01)
            _set_paused(self.dag_id, True)
            # Every checkpoint written after this one asks after the pause was committed.
            self.seen["paused_at_rows"] = (self.checkpoint() or state)["rows"]
            while _extract_state(self.dag_id) != "up_for_reschedule":
                assert time.monotonic() < deadline, "the extract never went up for reschedule"
                time.sleep(0.1)
            self.seen["stopped_at"] = self.checkpoint()
            time.sleep(4)  # dag.test starts it again after pause_retry_seconds: it must not read on
            self.seen["still_paused_at"] = self.checkpoint()
            self.seen["state_while_paused"] = _extract_state(self.dag_id)
        except BaseException as exc:
            self.error = exc
        finally:
            _set_paused(self.dag_id, False)


# Started paused: the DAG an earlier session left paused, or one dag.test creates paused (a fresh
# metadata DB whose settings were read before this test set DAGS_ARE_PAUSED_AT_CREATION).
@pytest.mark.parametrize("start_paused", [False, True], ids=["started_unpaused", "started_paused"])
def test_a_paused_pipeline_stops_at_a_batch_boundary_and_resumes_from_its_checkpoint(
        start_paused: bool, env: dict[str, Any], source_db: str, configs: list[Path],
        monkeypatch: pytest.MonkeyPatch) -> None:
    from sndw_airflow.operators import ExtractToParquetOperator

    _source(source_db, monkeypatch)
    monkeypatch.setattr(ExtractToParquetOperator, "pause_check_seconds", 0.0)
    monkeypatch.setattr(ExtractToParquetOperator, "pause_retry_seconds", 1.0)
    table = {"name": "items", "query": "SELECT id, v FROM items WHERE watch(id) = id", "primary_key": ["id"],
             "write_mode": "replace", "checkpoint": True, "batch_rows": BATCH}
    config = {"name": "e2e_pause", "kind": "sql", "conn_id": "e2e_pause", "start_date": "2024-01-01",
              "retries": 0, "tables": [table]}
    # Unpaused (or paused) from the start: a new DAG (dag.test syncs it, and the first case creates it
    # for the second) and the one an earlier session left behind.
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "False")
    _set_paused("e2e_pause", start_paused, must_exist=False)
    pauser = Pauser("e2e_pause", env["lake"] / "sql" / "e2e_pause" / "items")
    pauser.start()
    dag_run = run(config, configs)
    pauser.join(timeout=30)
    assert pauser.error is None, pauser.error
    assert not pauser.is_alive(), f"the run ended before the extract stopped for the pause: {pauser.seen}"
    assert set(states(dag_run).values()) == {"success"}, states(dag_run)

    # It stopped at a batch boundary soon after the pause, kept its checkpoint while paused, and
    # was started again while paused without reading further.
    stopped, still = pauser.seen["stopped_at"], pauser.seen["still_paused_at"]
    # Batches are at most BATCH rows (the driver's byte-sized batches are sliced): the extract stops
    # at the first checkpoint written after the pause, with ids 1..rows written.
    assert stopped is not None and stopped["position"] == [stopped["rows"]], stopped
    assert pauser.seen["paused_at_rows"] <= stopped["rows"] <= pauser.seen["paused_at_rows"] + BATCH, pauser.seen
    assert 2 * BATCH <= stopped["rows"] < ROWS, stopped
    assert still == stopped and pauser.seen["state_while_paused"] in ("up_for_reschedule", "scheduled",
                                                                      "running"), pauser.seen
    with psycopg.connect(env["dw_url"]) as dw:
        loaded = dw.execute("SELECT md5(string_agg(id || v, ',' ORDER BY id)), count(*) FROM items").fetchone()
        attempts = dw.execute("SELECT status, rows_extracted FROM etl_audit_log WHERE step = 'extract' "
                              "ORDER BY id").fetchall()
    with psycopg.connect(source_db) as conn:
        expected = conn.execute("SELECT md5(string_agg(id || v, ',' ORDER BY id)), count(*) FROM items").fetchone()
    assert loaded == expected and expected[1] == ROWS  # the warehouse equals an uninterrupted run
    assert attempts == [("success", ROWS)], attempts  # a pause is not a failure

    # Every row up to the checkpoint was read once: the resumed attempt started after it, not at
    # the start. The only rows read twice are those right after it that the paused attempt's driver
    # had streamed ahead (ADBC's ~64 kB batches, ~16 of these rows each, up to 3 in flight; 27 rows
    # measured here), never written to the lake by it.
    reads = _reads(source_db)
    position = stopped["position"][0]
    assert len(reads) == ROWS and set(reads.values()) <= {1, 2}, reads
    assert all(reads[i] == 1 for i in range(1, position + 1)), reads
    twice = sorted(i for i, n in reads.items() if n == 2)
    assert twice == list(range(position + 1, position + 1 + len(twice))) and len(twice) <= 64, twice
    partition = env["lake"] / "sql" / "e2e_pause" / "items"
    assert not [p for p in partition.iterdir() if p.name.startswith(".")]  # no in-progress folder left


def test_a_run_started_while_the_dag_is_paused_extracts_without_waiting(
        env: dict[str, Any], source_db: str, configs: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """`airflow dags test` of a DAG never unpaused (new DAGs start paused): Airflow runs it, and a
    checkpointed extract does too instead of waiting for a resume that nobody will give."""
    from sndw_airflow.operators import ExtractToParquetOperator

    _source(source_db, monkeypatch)
    monkeypatch.setattr(ExtractToParquetOperator, "pause_check_seconds", 0.0)
    monkeypatch.setattr(ExtractToParquetOperator, "pause_retry_seconds", 1.0)
    monkeypatch.setenv("AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION", "True")
    _set_paused("e2e_paused_start", True, must_exist=False)
    table = {"name": "items", "query": "SELECT id, v FROM items WHERE watch(id) = id", "primary_key": ["id"],
             "write_mode": "replace", "checkpoint": True, "batch_rows": 4 * BATCH}
    config = {"name": "e2e_paused_start", "kind": "sql", "conn_id": "e2e_pause", "start_date": "2024-01-01",
              "retries": 0, "tables": [table]}
    try:
        dag_run = run(config, configs)
    finally:
        _set_paused("e2e_paused_start", False, must_exist=False)
    assert set(states(dag_run).values()) == {"success"}, states(dag_run)
    from airflow.models.taskreschedule import TaskReschedule
    from airflow.utils.session import create_session

    with create_session() as session:
        tis = {ti.task_id: ti for ti in dag_run.get_task_instances(session=session)}
        reschedules = session.query(TaskReschedule).filter_by(ti_id=tis["extract_items"].id).count()
    assert reschedules == 0
    with psycopg.connect(env["dw_url"]) as dw:
        assert dw.execute("SELECT count(*) FROM items").fetchone() == (ROWS,)
    assert set(_reads(source_db).values()) == {1}
