"""Exactly one copy of a partition, whatever happens: crashes, retries, concurrent loads, backfills,
replays. Faults are real: a killed process, a server that fails mid-extract, two threads."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pyarrow as pa
import pytest
from sndw.audit import AuditRecord, ensure_audit_table, insert_audit_row
from sndw.cli import main as cli_main
from sndw.demo import manufacturing
from sndw.demo.api import DemoApi, default_routes, todos
from sndw.errors import PartitionReplacedError
from sndw.lake import write_partition
from sndw.warehouse import LoadSpec, load_manifest

from tests.conftest import DAY, TEST_SOURCES, run, states

ROOT = Path(__file__).resolve().parents[1]
PARTITION = dt.date(2024, 3, 1)


def big_manifest(tmp_path: Path, rows: int = 200_000, day: dt.date = PARTITION) -> Any:
    batch = pa.record_batch({"id": pa.array(range(rows), pa.int64()), "v": pa.array(["x" * 20] * rows)})
    return write_partition([batch], tmp_path / "lake", "sql", "src", "t", day, run_id=f"run-{day}")


def test_killed_between_copy_and_commit_leaves_nothing_and_the_retry_loads_once(
        tmp_path: Path, dw_url: str) -> None:
    manifest = big_manifest(tmp_path)
    key = {"dag_id": "d", "task_id": "load_t", "airflow_run_id": "r1", "try_number": 1}
    with psycopg.connect(dw_url) as blocker:
        ensure_audit_table(blocker)
        # Hold the audit row of this attempt in an open transaction: the loader's COPY runs to the
        # end, then its own audit insert (the last statement before COMMIT) has to wait here.
        with blocker.cursor() as cur:
            insert_audit_row(cur, AuditRecord("p", "s", "sql", "public.t", "failure", dt.datetime.now(dt.UTC), **key))
        script = textwrap.dedent(f"""
            import datetime as dt, json, psycopg
            from sndw.audit import AuditRecord
            from sndw.lake import Manifest
            from sndw.warehouse import LoadSpec, load_manifest
            manifest = Manifest.from_dict({manifest.to_dict()!r})
            audit = AuditRecord("p", "s", "sql", "public.t", "success", dt.datetime.now(dt.UTC), **{key!r})
            with psycopg.connect({dw_url!r}) as conn:
                load_manifest(conn, manifest, LoadSpec("public", "t", "partition"), audit=audit)
        """)
        loader = subprocess.Popen([sys.executable, "-c", script], env=os.environ.copy())
        # Polled from its own connection: inside a transaction pg_stat_activity is a frozen snapshot.
        watcher = psycopg.connect(dw_url, autocommit=True)
        try:
            deadline = time.monotonic() + 60
            waiting = None
            while time.monotonic() < deadline and waiting is None:
                waiting = watcher.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE 'INSERT INTO%%etl_audit_log%%' AND pid <> pg_backend_pid()").fetchone()
                assert loader.poll() is None, "the loader ended before reaching its commit"
                time.sleep(0.05)
            assert waiting is not None, "the loader never reached its audit insert"
            loader.send_signal(signal.SIGKILL)
            loader.wait(timeout=10)
        finally:
            watcher.close()
            if loader.poll() is None:
                loader.kill()
        blocker.rollback()
    with psycopg.connect(dw_url) as dw:
        for _ in range(100):  # the server notices the dead client and rolls its transaction back
            if not dw.execute("SELECT 1 FROM pg_stat_activity WHERE pid = %s", (waiting[0],)).fetchone():
                break
            time.sleep(0.05)
        assert dw.execute("SELECT to_regclass('public.t')").fetchone() == (None,)
        assert dw.execute("SELECT count(*) FROM etl_audit_log").fetchone() == (0,)
        for attempt in (2, 3):  # the retry, then a second retry of a load that already committed
            audit = AuditRecord("p", "s", "sql", "public.t", "success", dt.datetime.now(dt.UTC),
                                **{**key, "try_number": attempt})
            load_manifest(dw, manifest, LoadSpec("public", "t", "partition"), audit=audit)
        assert dw.execute("SELECT count(*), count(DISTINCT id) FROM t").fetchone() == (200_000, 200_000)


def test_an_append_load_retried_after_its_commit_is_not_loaded_twice(tmp_path: Path, dw: psycopg.Connection) -> None:
    manifest = big_manifest(tmp_path, rows=1000)
    for attempt in (1, 2):
        audit = AuditRecord("p", "s", "sql", "public.t", "success", dt.datetime.now(dt.UTC), dag_id="d",
                            task_id="load_t", airflow_run_id="r", try_number=attempt)
        result = load_manifest(dw, manifest, LoadSpec("public", "t", "append"), audit=audit)
    assert result.skipped is True
    assert dw.execute("SELECT count(*) FROM t").fetchone() == (1000,)


@pytest.mark.parametrize("mode", ["partition", "append"])
def test_two_loads_of_one_partition_at_once(tmp_path: Path, dw_url: str, mode: str) -> None:
    first = big_manifest(tmp_path / "a", rows=50_000)
    second = first if mode == "append" else big_manifest(tmp_path / "b", rows=50_000)
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def load(manifest: Any, attempt: int) -> None:
        try:
            with psycopg.connect(dw_url) as conn:
                audit = AuditRecord("p", "s", "sql", "public.t", "success", dt.datetime.now(dt.UTC), dag_id="d",
                                    task_id="load_t", airflow_run_id=f"run-{attempt}", try_number=1)
                barrier.wait()
                load_manifest(conn, manifest, LoadSpec("public", "t", mode), audit=audit)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=load, args=(m, i)) for i, m in enumerate((first, second))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    with psycopg.connect(dw_url) as dw:
        assert dw.execute("SELECT count(*), count(DISTINCT id) FROM t").fetchone() == (50_000, 50_000)


def test_a_rerun_of_the_partition_waits_for_the_load_reading_it(tmp_path: Path, dw_url: str) -> None:
    """Two runs of one partition (issue 21 item 13): run 1's load is reading the partition when run 2's
    re-extract commits. Run 2's swap waits for the load (a load whose files vanished failed with a raw
    FileNotFoundError); then run 2's own load replaces the rows: one copy, the newer one."""
    def extract(run: str, rows: int) -> Any:
        batch = pa.record_batch({"id": pa.array(range(rows), pa.int64()), "run": pa.array([run] * rows)})
        return write_partition([batch], tmp_path / "lake", "sql", "src", "t", PARTITION, run_id=run)

    first = extract("run-1", 5_000)
    outcome: dict[str, Any] = {}
    with psycopg.connect(dw_url, autocommit=True) as blocker:
        blocker.execute("SELECT pg_advisory_lock(hashtext('sndw:public.t'))")  # run 1's load waits inside
        def load_first() -> Any:
            with psycopg.connect(dw_url) as conn:
                return load_manifest(conn, first, LoadSpec("public", "t", "replace"))

        loading = threading.Thread(target=lambda: outcome.update(load=_attempt(load_first)))
        loading.start()
        deadline = time.monotonic() + 30
        while not blocker.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                                  ).fetchone()[0]:
            assert time.monotonic() < deadline, "the load never reached the table lock"
            time.sleep(0.05)
        rerun = threading.Thread(target=lambda: outcome.update(second=_attempt(lambda: extract("run-2", 3_000))))
        rerun.start()
        time.sleep(1.0)
        assert rerun.is_alive(), "run 2 swapped the partition while run 1's load was reading it"
        assert all(Path(p).exists() for p in first.paths)
        blocker.execute("SELECT pg_advisory_unlock(hashtext('sndw:public.t'))")
        loading.join(timeout=60)
        rerun.join(timeout=60)
    assert not isinstance(outcome["load"], BaseException), outcome["load"]
    second = outcome["second"]
    assert not isinstance(second, BaseException), second
    with psycopg.connect(dw_url) as dw:
        assert dw.execute("SELECT run, count(*) FROM t GROUP BY run").fetchall() == [("run-1", 5_000)]
        load_manifest(dw, second, LoadSpec("public", "t", "replace"))
        assert dw.execute("SELECT run, count(*), count(DISTINCT id) FROM t GROUP BY run").fetchall() == [
            ("run-2", 3_000, 3_000)]
    partition = Path(second.paths[0]).parent
    assert not [p for p in partition.parent.iterdir() if p.name.startswith(".")]  # no lock file left


def test_a_load_whose_partition_was_already_replaced_says_so(tmp_path: Path, dw: psycopg.Connection) -> None:
    first = big_manifest(tmp_path, rows=1_000)
    big_manifest(tmp_path, rows=2_000)  # another run's re-extract of the same partition, committed first
    with pytest.raises(PartitionReplacedError) as info:
        load_manifest(dw, first, LoadSpec("public", "t", "replace"))
    for part in ("public.t", "lake partition 2024-03-01 of sql/src/t", "replaced by another extract",
                 first.manifest_id, Path(first.paths[0]).name, "Nothing was loaded"):
        assert part in str(info.value), (part, str(info.value))
    assert dw.execute("SELECT to_regclass('t')").fetchone() == (None,)


def _attempt(call: Any) -> Any:
    try:
        return call()
    except BaseException as exc:  # noqa: BLE001 - the test reports it
        return exc


@pytest.mark.slow
def test_an_extract_that_fails_after_some_batches_is_retried_to_one_copy(
        env: dict[str, Any], configs: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    routes = default_routes()
    offset_route = routes["/todos-offset"]

    def flaky(query: dict[str, list[str]], base: str) -> tuple[int, Any]:
        calls["n"] += 1
        if calls["n"] == 4:  # the 4th request fails once: 3 batches were written before it
            return 500, {"error": "upstream hiccup"}
        return offset_route(query, base)

    routes["/flaky"] = flaky
    with DemoApi(routes=routes) as api:
        monkeypatch.setenv("AIRFLOW_CONN_E2E_FLAKY", api.url)
        config = {"name": "e2e_flaky", "kind": "http", "conn_id": "e2e_flaky", "start_date": "2024-01-01",
                  "retries": 1, "retry_delay_seconds": 0, "retry_exponential_backoff": 0,
                  "tables": [{"name": "todos", "endpoint": "/flaky", "batch_rows": 25, "write_mode": "partition",
                              "retries": 0,  # no request retries: the 500 must fail the task
                              "pagination": {"type": "offset", "limit": 25}}]}
        dag_run = run(config, configs)
    assert set(states(dag_run).values()) == {"success"}, states(dag_run)
    with psycopg.connect(env["dw_url"]) as dw:
        assert dw.execute("SELECT count(*), count(DISTINCT id) FROM todos").fetchone() == (len(todos()), len(todos()))
        attempts = dw.execute("SELECT try_number, status FROM etl_audit_log WHERE step = 'extract' ORDER BY id").fetchall()
        assert attempts == [(1, "failure"), (2, "success")]
    files = list((env["lake"] / "http" / "e2e_flaky" / "todos" / "2024-01-02").iterdir())
    assert len(files) == 1 and not [p for p in files[0].parent.parent.iterdir() if p.name.startswith(".")]


MFG = {
    "name": "e2e_backfill", "kind": "sql", "conn_id": "e2e_backfill", "target_schema": "raw", "retries": 0,
    "start_date": "2024-01-01", "schedule": "@daily",
    "tables": [
        {"name": "refills", "table": "refills", "write_mode": "replace"},
        {"name": "bodies", "table": "bodies", "write_mode": "merge", "primary_key": ["id"]},
        {"name": "springs", "write_mode": "partition", "query":
         "SELECT * FROM springs WHERE produced_at >= DATE '{{ partition_date }}' "
         "AND produced_at < DATE '{{ partition_date }}' + 1"},
    ],
}
SNAPSHOT = "SELECT * FROM raw.{} ORDER BY 1"


def snapshot(conn: psycopg.Connection, table: str) -> list[tuple[Any, ...]]:
    cur = conn.execute(SNAPSHOT.format(table))
    names = [d.name for d in cur.description or []]
    keep = [i for i, n in enumerate(names) if n != "_loaded_at"]
    return [tuple(row[i] for i in keep) for row in cur.fetchall()]


@pytest.mark.slow
def test_backfill_three_dates_twice_then_replay_from_the_lake(
        env: dict[str, Any], source_db: str, configs: list[Path], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    with psycopg.connect(source_db) as conn:
        manufacturing.create(conn, rows_per_table=200)
        per_day = dict(conn.execute("SELECT produced_at::date, count(*) FROM springs GROUP BY 1").fetchall())
    monkeypatch.setenv("AIRFLOW_CONN_E2E_BACKFILL", source_db)
    dates = [DAY + dt.timedelta(days=i) for i in range(3)]
    for _ in range(2):
        for day in dates:
            assert set(states(run(MFG, configs, day)).values()) == {"success"}
    with psycopg.connect(env["dw_url"]) as dw:
        counts = dict(dw.execute("SELECT _partition_date, count(*) FROM raw.springs GROUP BY 1").fetchall())
        assert counts == {d.date(): per_day[d.date()] for d in dates}
        assert dw.execute("SELECT count(*), count(DISTINCT id) FROM raw.bodies").fetchone() == (200, 200)
        original = {t: snapshot(dw, t) for t in ("springs", "bodies", "refills")}
    config_path = str(TEST_SOURCES / "e2e_backfill.yaml")

    # Gaps from start_date: Jan 1 was never run; Jan 2-4 are loaded and their counts agree from source
    # to warehouse. The replace and merge tables show their last load only.
    assert cli_main(["gaps", config_path, "--from", "2024-01-01", "--to", "2024-01-04", "--strict"]) == 1
    report = capsys.readouterr().out
    springs_lines = [line for line in report.splitlines() if line.startswith("springs")]
    assert [line.split()[2] for line in springs_lines] == ["missing", "loaded", "loaded", "loaded"]
    assert all(line.endswith("yes") for line in springs_lines[1:]), report
    assert [line.split()[:3] for line in report.splitlines() if line.startswith(("refills", "bodies"))] == [
        ["refills", "2024-01-04", "loaded"], ["bodies", "2024-01-04", "loaded"]], report
    # Without --from a source without catchup is expected from its first run on: nothing is missing.
    assert cli_main(["gaps", config_path, "--to", "2024-01-04", "--strict"]) == 0
    report = capsys.readouterr().out
    assert "missing" not in report and len(report.splitlines()) == 1 + 3 + 1 + 1 + 1, report

    # Replay: drop the tables, rebuild them from the lake alone (the source is gone too).
    with psycopg.connect(source_db) as conn:
        conn.execute("DROP TABLE springs, bodies, refills")
    with psycopg.connect(env["dw_url"]) as dw:
        dw.execute("DROP TABLE raw.springs, raw.bodies, raw.refills")
    assert cli_main(["replay", config_path]) == 0
    with psycopg.connect(env["dw_url"]) as dw:
        for table, rows in original.items():
            assert snapshot(dw, table) == rows, table
        # A date range: one partition's rows damaged, then replayed alone.
        dw.execute("DELETE FROM raw.springs WHERE _partition_date = '2024-01-03'")
        dw.commit()
    assert cli_main(["replay", config_path, "--table", "springs", "--from", "2024-01-03", "--to", "2024-01-03"]) == 0
    with psycopg.connect(env["dw_url"]) as dw:
        assert snapshot(dw, "springs") == original["springs"]


@pytest.mark.slow
@pytest.mark.parametrize("keyed", [True, False])
def test_a_checkpointed_extract_resumes_after_the_last_complete_batch(
        env: dict[str, Any], source_db: str, configs: list[Path], monkeypatch: pytest.MonkeyPatch, keyed: bool) -> None:
    with psycopg.connect(source_db) as conn:
        conn.execute("CREATE TABLE big (id int PRIMARY KEY, v text, at timestamptz)")
        conn.execute("INSERT INTO big SELECT g, md5(g::text), '2024-01-01'::timestamptz + g * interval '1 ms' "
                     "FROM generate_series(1, 10000) g")
        # Sequences are not transactional: they count every row read and fail the first attempt once.
        conn.execute("CREATE SEQUENCE rows_read; CREATE SEQUENCE failures")
        conn.execute("""CREATE FUNCTION watch(i int) RETURNS int LANGUAGE plpgsql VOLATILE AS $$
            BEGIN
                PERFORM nextval('rows_read');
                IF i = 5500 AND nextval('failures') = 1 THEN RAISE EXCEPTION 'source went away at row %', i; END IF;
                RETURN i;
            END $$""")
    # An index-ordered plan streams rows as it reads them (as on a big table); a seq scan + sort would
    # evaluate watch() on every row before the first batch.
    parts = urlsplit(source_db)
    monkeypatch.setenv("AIRFLOW_CONN_E2E_RESUME", json.dumps({
        "conn_type": "postgres", "host": parts.hostname, "port": parts.port, "login": parts.username,
        "password": parts.password, "schema": parts.path.lstrip("/"), "extra": {"options": "-c enable_seqscan=off"}}))
    # watch() sits in the WHERE clause so the resume bound on id is pushed down to the scan.
    table = {"name": "big", "query": "SELECT id, v, at FROM big WHERE watch(id) = id", "write_mode": "replace",
             "checkpoint": True, "batch_rows": 1000}
    if keyed:
        table["primary_key"] = ["id"]
    else:  # without a key the query must still be deterministic to be skipped through
        table["query"] += " ORDER BY id"
    config = {"name": "e2e_resume", "kind": "sql", "conn_id": "e2e_resume", "start_date": "2024-01-01",
              "retries": 1, "retry_delay_seconds": 0, "retry_exponential_backoff": 0, "tables": [table]}
    dag_run = run(config, configs)
    assert set(states(dag_run).values()) == {"success"}, states(dag_run)
    with psycopg.connect(env["dw_url"]) as dw:
        assert dw.execute("SELECT count(*), count(DISTINCT id), sum(id) FROM big").fetchone() == (10000, 10000, 50005000)
        attempts = dw.execute("SELECT try_number, status, rows_extracted FROM etl_audit_log "
                              "WHERE step = 'extract' ORDER BY id").fetchall()
        assert [a[:2] for a in attempts] == [(1, "failure"), (2, "success")] and attempts[1][2] == 10000
        same = dw.execute("SELECT md5(string_agg(id || v || at, ',' ORDER BY id)) FROM big").fetchone()
    with psycopg.connect(source_db) as conn:
        read = conn.execute("SELECT last_value FROM rows_read").fetchone()[0]
        expected = conn.execute("SELECT md5(string_agg(id || v || at, ',' ORDER BY id)) FROM big").fetchone()
    assert same == expected  # identical to an uninterrupted run
    if keyed:
        # The retry started after the last complete batch: far fewer than 5,500 + 10,000 rows read.
        assert read < 5500 + 10000 - 4000, read
    partition = env["lake"] / "sql" / "e2e_resume" / "big" / "2024-01-02"
    assert not [p for p in partition.parent.iterdir() if p.name.startswith(".")]
    assert len(list(partition.glob("part-*.parquet"))) >= 10  # one or more files per checkpointed batch


@pytest.mark.slow
def test_the_replay_dag_rebuilds_a_table_from_the_lake(env: dict[str, Any], configs: list[Path]) -> None:
    from airflow.dag_processing.dagbag import DagBag

    from tests.conftest import TEST_DAGS

    # Lineage after a replay: each row's file, and the run that extracted it, are the original ones.
    LINEAGE = ("SELECT id, v, _partition_date, f.run_id, f.lake_path FROM items "  # noqa: N806
               "JOIN etl_lake_files f ON f.file_id = items._file_id ORDER BY 3, 1")
    data = env["tmp"] / "files"
    data.mkdir()
    (data / "a.csv").write_text("id,v\n1,a\n2,b\n3,c\n")
    config = {"name": "e2e_replayed", "kind": "file", "base_path": str(data), "start_date": "2024-01-01",
              "retries": 0, "tables": [{"name": "items", "path": "a.csv", "write_mode": "append"}]}
    for day in (DAY, DAY + dt.timedelta(days=1)):
        assert set(states(run(config, configs, day)).values()) == {"success"}
    with psycopg.connect(env["dw_url"]) as dw:
        before = dw.execute(LINEAGE).fetchall()
        dw.execute("TRUNCATE items")
    # sndw_replay reads configs from its own folder: the tests' DAG folder holds this source's config.
    dag = DagBag(dag_folder=str(TEST_DAGS / "sndw_maintenance.py")).dags["sndw_replay"]
    dag_run = dag.test(run_conf={"source": "e2e_replayed", "table": "", "date_from": "", "date_to": ""})
    assert set(states(dag_run).values()) == {"success"}, states(dag_run)
    with psycopg.connect(env["dw_url"]) as dw:
        after = dw.execute(LINEAGE).fetchall()
        replays = dw.execute("SELECT count(*) FROM etl_audit_log WHERE step = 'replay' AND status = 'success'").fetchone()
    assert after == before and len(after) == 6 and replays == (2,)
