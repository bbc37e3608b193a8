"""The lake on a real S3-compatible server (SeaweedFS, scripts/s3-local): partitions published by one
manifest object, so a failed or killed extract never exposes half a partition, and loads, replay and
the gap report read only published ones."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from sndw import lake, storage
from sndw.config import parse_source
from sndw.lake import MANIFEST_FILE, open_partition, partition_dates, partition_files, write_partition
from sndw.reconcile import reconcile
from sndw.replay import replay_table
from sndw.warehouse import LoadSpec, load_manifest

from tests.conftest import DAY as RUN_DAY
from tests.conftest import ROOT, _s3fs, count, run, states

DAY = dt.date(2024, 3, 1)


def objects(lake: str) -> list[str]:
    fs = storage.filesystem(lake)
    return sorted(storage.strip(p) for p in fs.find(storage.strip(lake)))


def batch(first: int, n: int) -> pa.RecordBatch:
    return pa.record_batch({"id": list(range(first, first + n)), "name": [f"n{i}" for i in range(first, first + n)]})


def test_a_partition_is_published_by_its_manifest_and_loads_from_the_store(
        s3_lake: str, dw: psycopg.Connection) -> None:
    manifest = write_partition([batch(0, 3), batch(3, 2)], s3_lake, "sql", "src", "t", DAY, run_id="r1")
    assert manifest.rows == 5 and all(p.startswith(f"{s3_lake}/sql/src/t/2024-03-01/_attempt-") for p in manifest.paths)
    published = json.loads(storage.filesystem(s3_lake).cat_file(
        storage.strip(f"{s3_lake}/sql/src/t/2024-03-01/{MANIFEST_FILE}")))
    assert published["manifest_id"] == manifest.manifest_id and published["paths"] == manifest.paths
    assert partition_dates(s3_lake, "sql", "src", "t") == [DAY]
    assert partition_files(s3_lake, "sql", "src", "t", DAY) == manifest.paths
    result = load_manifest(dw, manifest, LoadSpec("raw", "t", "replace"))
    assert result.rows_loaded == 5
    assert dw.execute("SELECT array_agg(id ORDER BY id), array_agg(name ORDER BY id) FROM raw.t").fetchone() == (
        [0, 1, 2, 3, 4], ["n0", "n1", "n2", "n3", "n4"])
    # no credential anywhere in what travels through XCom
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in json.dumps(manifest.to_dict())


def test_a_failed_extract_leaves_the_published_partition_and_no_parts(s3_lake: str) -> None:
    good = write_partition([batch(0, 3)], s3_lake, "sql", "src", "t", DAY)
    before = objects(s3_lake)

    def broken() -> Any:
        yield batch(10, 3)
        raise RuntimeError("the source broke after one batch")

    with pytest.raises(RuntimeError, match="source broke"):
        write_partition(broken(), s3_lake, "sql", "src", "t", DAY)
    assert objects(s3_lake) == before  # its parts are gone; the manifest still names the good ones
    assert partition_files(s3_lake, "sql", "src", "t", DAY) == good.paths


def test_a_rerun_replaces_the_partition_whole_and_removes_the_old_parts(s3_lake: str) -> None:
    first = write_partition([batch(0, 3)], s3_lake, "sql", "src", "t", DAY)
    second = write_partition([batch(100, 2)], s3_lake, "sql", "src", "t", DAY)
    assert partition_files(s3_lake, "sql", "src", "t", DAY) == second.paths
    remaining = objects(s3_lake)
    assert not any(storage.strip(p) in remaining for p in first.paths)
    assert all(storage.strip(p) in remaining for p in second.paths)


def test_a_killed_extract_never_shows_and_the_next_run_publishes(
        s3_lake: str, s3_env: dict[str, str], dw: psycopg.Connection, monkeypatch: pytest.MonkeyPatch) -> None:
    good = write_partition([batch(0, 3)], s3_lake, "sql", "src", "t", DAY)
    # A writer in its own process, killed with SIGKILL while its parts are on the store.
    script = textwrap.dedent(f"""
        import datetime, sys, time, pyarrow as pa
        from sndw.lake import open_partition
        with open_partition({s3_lake!r}, "sql", "src", "t", datetime.date(2024, 3, 1)) as writer:
            for i in range(3):
                writer.write(pa.record_batch({{"id": [i], "name": ["killed"]}}))
                writer._close_file()  # each part on the store, as a long extract's would be
            print("written", flush=True)
            time.sleep(600)
    """)
    env = {**os.environ, **s3_env, "PYTHONPATH": str(ROOT / "include")}
    child = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "written"
        orphans = [p for p in objects(s3_lake) if "/_attempt-" in p and storage.strip(good.paths[0]).rsplit("/", 1)[0]
                   not in p]
        assert len(orphans) == 3  # the killed attempt's parts exist ...
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert partition_files(s3_lake, "sql", "src", "t", DAY) == good.paths  # ... and nobody reads them
    load_manifest(dw, {"source": "src", "protocol": "sql", "table": "t", "partition": DAY.isoformat(),
                       "paths": partition_files(s3_lake, "sql", "src", "t", DAY)}, LoadSpec("raw", "t", "replace"))
    assert count(dw, "raw.t") == 3
    rerun = write_partition([batch(50, 4)], s3_lake, "sql", "src", "t", DAY)
    assert partition_files(s3_lake, "sql", "src", "t", DAY) == rerun.paths
    assert set(orphans) <= set(objects(s3_lake))  # a young attempt may be a live writer: kept
    monkeypatch.setattr(lake, "STALE_ATTEMPT_SECONDS", 0)  # as if a day had passed
    last = write_partition([batch(60, 1)], s3_lake, "sql", "src", "t", DAY)
    assert not set(orphans) & set(objects(s3_lake))
    assert [p for p in objects(s3_lake) if "/_attempt-" in p] == sorted(storage.strip(p) for p in last.paths)


def test_a_checkpointed_extract_resumes_from_the_store(s3_lake: str) -> None:
    key = "dag|extract_t|run-1"
    with pytest.raises(RuntimeError, match="worker lost"):
        with open_partition(s3_lake, "http", "api", "t", DAY, resume_key=key) as writer:
            writer.write(batch(0, 3))
            writer.checkpoint({"page": 1})
            writer.write(batch(3, 3))  # written after the checkpoint: dropped on failure
            raise RuntimeError("worker lost")
    with open_partition(s3_lake, "http", "api", "t", DAY, resume_key=key) as writer:
        assert writer.resumed is not None and writer.resumed["position"] == {"page": 1}
        assert writer.manifest.rows == 3
        writer.write(batch(3, 2))
        manifest = writer.commit()
    ids = pa.concat_tables(storage.open_parquet(p).read() for p in manifest.paths).column("id").to_pylist()
    assert sorted(ids) == [0, 1, 2, 3, 4] and manifest.rows == 5
    assert not [p for p in objects(s3_lake) if p.endswith("_checkpoint.json")]


def test_replay_and_the_gap_report_read_published_partitions(s3_lake: str, dw: psycopg.Connection) -> None:
    source = parse_source({"name": "src", "kind": "sql", "conn_id": "x", "start_date": "2024-03-01",
                           "tables": [{"name": "t", "query": "SELECT 1", "write_mode": "partition"}]}, "src.yaml")
    for day, n in ((DAY, 2), (DAY + dt.timedelta(days=1), 3)):
        write_partition([batch(0, n)], s3_lake, "sql", "src", "t", day)
    # an attempt folder with no manifest beside it (a killed first extract of a third date)
    with open_partition(s3_lake, "sql", "src", "t", DAY + dt.timedelta(days=2)) as writer:
        writer.write(batch(0, 1))
        writer._close_file()
    assert partition_dates(s3_lake, "sql", "src", "t") == [DAY, DAY + dt.timedelta(days=1)]
    results = replay_table(dw, source, source.tables[0], s3_lake)
    assert [r.rows_loaded for r in results] == [2, 3]
    assert dw.execute("SELECT _partition_date, count(*) FROM public.t GROUP BY 1 ORDER BY 1").fetchall() == [
        (DAY, 2), (DAY + dt.timedelta(days=1), 3)]
    report = reconcile(dw, source, s3_lake, DAY, DAY + dt.timedelta(days=2))
    # the replayed dates are loaded; the third date's unpublished attempt is not in the lake: missing
    assert [(r.partition, r.rows_in_lake, r.status) for r in report] == [
        (DAY, 2, "loaded"), (DAY + dt.timedelta(days=1), 3, "loaded"), (DAY + dt.timedelta(days=2), None, "missing")]


def test_a_source_runs_through_airflow_with_the_lake_on_s3(
        env: dict[str, Any], s3_lake: str, configs: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    """dag.test() with SNDW_LAKE_ROOT=s3://...: the operators reach the store through Airflow's
    ObjectStoragePath and the lake connection (AIRFLOW_CONN_SNDW_LAKE); no secret in XCom."""
    monkeypatch.setenv("SNDW_LAKE_ROOT", s3_lake)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name)  # only the connection holds them
    data = env["tmp"] / "data"
    data.mkdir()
    (data / "orders.csv").write_text("id,amount\n1,10.50\n2,20.25\n3,0.01\n")
    config = {"name": "s3_lake_csv", "kind": "file", "base_path": str(data), "start_date": "2024-01-01",
              "retries": 0, "tables": [{"name": "orders", "path": "orders.csv", "write_mode": "replace",
                                        "column_types": {"amount": "numeric"}}]}
    dag_run = run(config, configs)
    assert set(states(dag_run).values()) == {"success"}, states(dag_run)
    with psycopg.connect(env["dw_url"]) as dw:
        assert dw.execute("SELECT id, amount::text FROM public.orders ORDER BY id").fetchall() == [
            (1, "10.50"), (2, "20.25"), (3, "0.01")]
    paths = partition_files(s3_lake, "file", "s3_lake_csv", "orders", RUN_DAY.date())
    assert paths and all(p.startswith(s3_lake) for p in paths)
    xcom = json.dumps([ti.xcom_pull(task_ids="extract_orders") for ti in dag_run.get_task_instances()][:1],
                      default=str)
    assert "s3://" in xcom and os.environ["AIRFLOW_CONN_SNDW_LAKE"].split('"password": "')[1][:20] not in xcom


def test_the_command_line_runs_into_an_s3_lake(cli: Any, tmp_path: Path, s3_lake: str, s3_env: dict[str, str],
                                              dw_url: str) -> None:
    """`python -m etl.cli run --lake s3://...`: Airflow-free, credentials from the AWS_* variables."""
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE users (id INTEGER, name TEXT)")
        conn.executemany("INSERT INTO users VALUES (?, ?)", [(1, "ada"), (2, "bob")])
    (tmp_path / "sqlite.json").write_text(json.dumps({"protocol": "sqlite", "path": "app.db"}))
    aws = {k: v for k, v in s3_env.items() if k.startswith("AWS_")}
    code, out, err = cli("run", "--config", "sqlite.json", "--query", "SELECT * FROM users", "--source", "app",
                         "--table", "users", "--lake", s3_lake, env=aws)
    assert code == 0 and out["rows_loaded"] == 2, err
    assert partition_dates(s3_lake, "sql", "app", "users") == [dt.date.fromisoformat(out["partition"])]
    assert all(p.startswith(s3_lake) for p in out["lake_paths"])
    assert aws["AWS_SECRET_ACCESS_KEY"] not in out and aws["AWS_SECRET_ACCESS_KEY"] not in err
    with psycopg.connect(dw_url) as dw:
        assert dw.execute("SELECT id, name FROM users ORDER BY id").fetchall() == [(1, "ada"), (2, "bob")]
    # without credentials: a clear failure, nothing loaded twice
    code, out, err = cli("run", "--config", "sqlite.json", "--query", "SELECT * FROM users", "--source", "app",
                         "--table", "users", "--lake", s3_lake,
                         env={"AWS_ENDPOINT_URL": aws["AWS_ENDPOINT_URL"], "AWS_ACCESS_KEY_ID": "nobody",
                              "AWS_SECRET_ACCESS_KEY": "wrong"})
    assert code == 1 and out["status"] == "failure" and "PermissionError" in out["error"], (out, err)
    with psycopg.connect(dw_url) as dw:
        assert dw.execute("SELECT count(*) FROM users").fetchone() == (2,)


MEMORY_SCRIPT = r"""
import datetime, os, sys
import psycopg, pyarrow as pa
from sndw.lake import write_partition
from sndw.warehouse import LoadSpec, load_manifest

lake, dw_url = sys.argv[1], sys.argv[2]

def rss_kb(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])

def growth_kb(step):
    # the peak RSS that step() adds to what the process holds when it starts
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # resets VmHWM to the current RSS
    before = rss_kb("VmRSS")
    result = step()
    return rss_kb("VmHWM") - before, result

def batches(n):  # 300 hex digits a row: ~150 bytes after zstd
    for start in range(0, n, 10_000):
        size = min(10_000, n - start)
        yield pa.record_batch({"id": pa.array(range(start, start + size), pa.int64()),
                               "blob": pa.array([os.urandom(150).hex() for _ in range(size)])})

def extract(n, name):
    return write_partition(batches(n), lake, "sql", "mem", name, datetime.date(2024, 1, 2))

def load(manifest, name, n):
    with psycopg.connect(dw_url) as dw:
        assert load_manifest(dw, manifest, LoadSpec("public", name, "replace")).rows_loaded == n

load(extract(20_000, "warmup"), "warmup", 20_000)
n = int(sys.argv[3])
written, manifest = growth_kb(lambda: extract(n, "measured"))
load(manifest, "measured", n)  # and it loads back whole from the store
print(written, manifest.bytes, len(manifest.paths))
"""


def test_extract_and_load_stream_through_the_store_with_flat_memory(
        s3_lake: str, s3_env: dict[str, str], dw_url: str) -> None:
    """One Parquet part of ~30 or ~90 MB written to the S3 server (and loaded back): the extract's
    peak grows by the same few MiB for both (8 MiB multipart uploads; measured +14-23 MiB). fsspec's
    default 50 MiB block held whole parts in memory: a 45 MB part added 129 MiB."""
    env = {**os.environ, **s3_env, "PYTHONPATH": str(ROOT / "include")}
    written = {}
    for n in (200_000, 600_000):
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, s3_lake, dw_url, str(n)], env=env,
                             capture_output=True, text=True, timeout=600, check=False)
        assert out.returncode == 0, out.stderr[-3000:]
        write_kb, size, files = map(int, out.stdout.split())
        assert files == 1 and size > n * 120  # one large object, not many small ones
        written[n] = write_kb / 1024
    assert written[600_000] <= written[200_000] + 16, written  # MiB; the larger part has 60 MB more


def test_a_long_lived_reader_sees_partitions_another_writer_published(s3_lake: str, s3_env: dict[str, str]) -> None:
    """The API server's gap report lives for days: its filesystem's cached listings must not hide
    what workers publish meanwhile."""
    write_partition([batch(0, 1)], s3_lake, "sql", "src", "t", DAY)
    assert partition_dates(s3_lake, "sql", "src", "t") == [DAY]  # listed (and cached) once
    reader = storage.filesystem(s3_lake)
    storage.use_filesystem("s3", _s3fs(s3_env))  # another process's filesystem writes the next date
    write_partition([batch(0, 1)], s3_lake, "sql", "src", "t", DAY + dt.timedelta(days=1))
    storage.use_filesystem("s3", reader)
    assert partition_dates(s3_lake, "sql", "src", "t") == [DAY, DAY + dt.timedelta(days=1)]
