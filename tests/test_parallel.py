"""`parallel: N` on a sql table (issue 25 part 3): the ranges of one extract, each staged by a task of
its own and retried alone, published as one partition and loaded exactly once.

Real parts only: the test PostgreSQL cluster as the source and the warehouse, real lake folders, a
fault raised by the source itself (a PL/pgSQL function that fails one range's first read), SQLite
as a non-PostgreSQL source, and Airflow's own dag.test() with dynamic task mapping.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from sndw.audit import AuditRecord
from sndw.config import SqlTable
from sndw.errors import PermanentError
from sndw.lake import Manifest, partition_files
from sndw.pipeline import (
    ExtractRequest,
    SourceAccess,
    extract_range,
    extract_table,
    load_table,
    plan_ranges,
    publish_ranges,
    range_resume_key,
)
from sndw.warehouse import LoadSpec

from tests.conftest import run, states

DAY = date(2024, 1, 2)
COLUMNS = "id, v, amount, at, tags, blob"
ROWS = 30_000


def _source(url: str) -> None:
    """items (bigint key), nokey (the same rows, no key: block ranges), and a fault: watch(id) raises
    once at id 25,000 (range 2 of 2), counted by sequences (they are not rolled back)."""
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE items (id bigint PRIMARY KEY, v text, amount numeric(12,2), at timestamptz, "
                     "tags text[], blob bytea)")
        conn.execute(f"""INSERT INTO items SELECT g, CASE WHEN g % 97 = 0 THEN NULL ELSE md5(g::text) END,
                         (g * 7 % 100000) / 100.0, '2024-01-01'::timestamptz + g * interval '1 s',
                         ARRAY[g::text, 'x'], decode(md5(g::text), 'hex')
                         FROM generate_series(1, {ROWS}) g""")  # noqa: S608 - a constant
        conn.execute("CREATE TABLE nokey AS SELECT * FROM items ORDER BY random()")
        conn.execute("CREATE SEQUENCE rows_read; CREATE SEQUENCE failures")
        conn.execute("""CREATE FUNCTION watch(i bigint) RETURNS bigint LANGUAGE plpgsql VOLATILE AS $$
            BEGIN
                PERFORM nextval('rows_read');
                IF i = 25000 AND nextval('failures') = 1 THEN RAISE EXCEPTION 'source went away at row %', i; END IF;
                RETURN i;
            END $$""")


def _request(tmp_path: Path, table: dict[str, Any], name: str = "lake", **kw: Any) -> ExtractRequest:
    spec = SqlTable.model_validate({"name": "t", **table})
    return ExtractRequest(pipeline="p", source="s", kind="sql", table=spec, partition=DAY,
                          lake_root=str(tmp_path / name), run_id="run-1", **kw)


def _load(dw_url: str, manifest: Manifest, target: str, mode: str = "replace", audit: AuditRecord | None = None) -> Any:
    with psycopg.connect(dw_url) as conn:
        spec = LoadSpec(schema="public", table=target, write_mode=mode, primary_key=["id"] if mode == "merge" else [])
        return load_table(conn, manifest, spec, pipeline="p", audit=audit)


def _differ(dw_url: str, a: str, b: str, columns: str = COLUMNS) -> tuple[int, int, int]:
    """Rows of a missing from b and of b missing from a, duplicates counted (EXCEPT ALL both ways); a's rows."""
    with psycopg.connect(dw_url) as conn:
        one = conn.execute(f"SELECT count(*) FROM (SELECT {columns} FROM {a} EXCEPT ALL "  # noqa: S608 - test names
                           f"SELECT {columns} FROM {b}) d").fetchone()
        two = conn.execute(f"SELECT count(*) FROM (SELECT {columns} FROM {b} EXCEPT ALL "  # noqa: S608 - test names
                           f"SELECT {columns} FROM {a}) d").fetchone()
        rows = conn.execute(f"SELECT count(*) FROM {a}").fetchone()  # noqa: S608 - a test table's name
    assert one and two and rows
    return one[0], two[0], rows[0]


@pytest.mark.parametrize(("table", "kind"), [
    ({"table": "items", "primary_key": ["id"]}, "key"),
    ({"table": "nokey"}, "block"),
    # A text key of a query: its percentiles; NULL keys belong to the first range.
    ({"query": "SELECT CASE WHEN id % 1000 = 0 THEN NULL ELSE v END AS code, * FROM nokey", "primary_key": ["code"]},
     "key"),
])
def test_the_parallel_extract_equals_the_serial_one_row_for_row(
        source_db: str, dw_url: str, tmp_path: Path, table: dict[str, Any], kind: str) -> None:
    _source(source_db)
    access = SourceAccess(postgres_conninfo=source_db)
    serial = extract_table(_request(tmp_path, table, "serial"), access)
    request = _request(tmp_path, {**table, "parallel": 3}, "parallel")
    parts = plan_ranges(request, access)
    assert [p["kind"] for p in parts] == [kind] * 3 and len({p["manifest_id"] for p in parts}) == 1
    parallel = extract_table(request, access)
    assert parallel.rows == serial.rows == ROWS
    # One partition of the three ranges' files, none left staged beside it.
    names = sorted(Path(p).name for p in parallel.paths)
    assert {n.split("-")[1] for n in names} == {"r000", "r001", "r002"}
    folder = Path(parallel.paths[0]).parent
    assert sorted(Path(p).name for p in partition_files(request.lake_root, "sql", "s", "t", DAY)) == names
    assert not [p.name for p in folder.parent.iterdir() if p.name.startswith(".") and "readers" not in p.name]
    _load(dw_url, serial, "serial_t")
    _load(dw_url, parallel, "parallel_t")
    columns = COLUMNS + (", code" if "query" in table else "")
    assert _differ(dw_url, "serial_t", "parallel_t", columns) == (0, 0, ROWS)


def test_a_failed_range_is_extracted_again_alone_and_the_load_is_exactly_once(
        source_db: str, dw_url: str, tmp_path: Path) -> None:
    """The core path the mapped tasks take, run twice for the range that failed."""
    _source(source_db)
    access = SourceAccess(postgres_conninfo=source_db)
    table = {"query": "SELECT * FROM items WHERE watch(id) = id", "primary_key": ["id"], "parallel": 2,
             "write_mode": "append"}
    request = _request(tmp_path, table)
    parts = plan_ranges(request, access)
    assert [(p["low"], p["high"]) for p in parts] == [(None, 15001), (15001, None)]
    requests = [dataclasses.replace(request, part=p, resume_key=range_resume_key("p|extract_t|run-1", p))
                for p in parts]
    first = extract_range(requests[0], access)
    staged = {Path(p): Path(p).stat().st_ino for p in first.paths}
    with pytest.raises(Exception, match="source went away at row 25000"):
        extract_range(requests[1], access)
    with psycopg.connect(source_db) as conn:
        read_before = conn.execute("SELECT last_value FROM rows_read").fetchone()
    second = extract_range(requests[1], access)  # the retry of range 2 alone
    with psycopg.connect(source_db) as conn:
        read_after = conn.execute("SELECT last_value FROM rows_read").fetchone()
    assert read_before and read_after
    assert read_after[0] - read_before[0] == ROWS - 15000  # range 2's rows, range 1 not read again
    assert {p: p.stat().st_ino for p in staged} == staged  # range 1's staged files untouched
    manifest = publish_ranges(request, [second.to_dict(), first.to_dict()])
    assert manifest.rows == ROWS and manifest.manifest_id == parts[0]["manifest_id"]
    # The publication run again (a retried task) returns the same partition: same files, same id.
    again = publish_ranges(request, [first, second])
    assert (again.paths, again.manifest_id, again.rows) == (manifest.paths, manifest.manifest_id, manifest.rows)

    def audit(attempt: int) -> AuditRecord:
        return AuditRecord(pipeline_name="p", source_name="s", protocol="sql", target_table="public.items",
                           status="success", started_at=__import__("datetime").datetime.now(), step="load",
                           partition_date=DAY, dag_id="p", task_id="load_t", airflow_run_id="run-1",
                           try_number=attempt)

    loaded = _load(dw_url, manifest, "items", "append", audit(1))
    retried = _load(dw_url, again, "items", "append", audit(2))  # the load's retry after its commit
    assert (loaded.rows_loaded, retried.skipped) == (ROWS, True)
    with psycopg.connect(dw_url) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT id), sum(id) FROM items").fetchone() == (
            ROWS, ROWS, ROWS * (ROWS + 1) // 2)


def test_an_incremental_table_is_split_on_its_first_run_only(source_db: str, dw_url: str, tmp_path: Path) -> None:
    _source(source_db)
    access = SourceAccess(postgres_conninfo=source_db, warehouse=lambda: psycopg.connect(dw_url))
    table = {"table": "items", "primary_key": ["id"], "parallel": 2, "write_mode": "merge",
             "incremental": {"cursor": "at"}}
    request = _request(tmp_path, table)
    first = extract_table(request, access)
    assert first.rows == ROWS and {Path(p).name.split("-")[1] for p in first.paths} == {"r000", "r001"}
    assert first.watermark and first.watermark["value"] == "2024-01-01T08:20:00.000000+00:00"  # id 30,000's
    _load(dw_url, first, "items", "merge")
    with psycopg.connect(dw_url) as conn:
        assert conn.execute("SELECT value FROM etl_state WHERE table_name = 't'").fetchone() == (
            first.watermark["value"],)
    with psycopg.connect(source_db) as conn:
        conn.execute("INSERT INTO items (id, at) VALUES (30001, '2024-02-01')")
    assert [p["kind"] for p in plan_ranges(request, access)] == ["all"]
    later = extract_table(dataclasses.replace(request, run_id="run-2"), access)
    assert later.rows == 1 and later.watermark and later.watermark["value"].startswith("2024-02-01")


def test_a_non_postgresql_source_needs_an_integer_key(tmp_path: Path) -> None:
    path = tmp_path / "src.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, code TEXT, v TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?, ?)", [(i, f"c{i:05d}", str(i)) for i in range(1, 1001)])
    access = SourceAccess(dbapi_connect=lambda: sqlite3.connect(path))
    manifest = extract_table(_request(tmp_path, {"table": "t", "primary_key": ["id"], "parallel": 2}), access)
    assert manifest.rows == 1000 and len({Path(p).name.split("-")[1] for p in manifest.paths}) == 2
    for table, named in (({"table": "t", "primary_key": ["code"]}, "'code' holds str values"),
                         ({"table": "t"}, "it has no primary_key")):
        with pytest.raises(PermanentError, match=f"s.t .source table t.: parallel: 2 splits a non-PostgreSQL table "
                                                 f"by an integer primary_key, but {named}"):
            extract_table(_request(tmp_path, {**table, "parallel": 2}, "refused"), access)
    assert not (tmp_path / "refused").exists()


@pytest.mark.slow
def test_a_dag_run_maps_the_ranges_and_retries_the_failed_one_alone(
        env: dict[str, Any], source_db: str, configs: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    _source(source_db)
    parts = urlsplit(source_db)
    monkeypatch.setenv("AIRFLOW_CONN_E2E_PARALLEL", json.dumps({
        "conn_type": "postgres", "host": parts.hostname, "port": parts.port, "login": parts.username,
        "password": parts.password, "schema": parts.path.lstrip("/")}))
    table = {"name": "items", "query": "SELECT * FROM items WHERE watch(id) = id", "primary_key": ["id"],
             "parallel": 2, "write_mode": "replace"}
    config = {"name": "e2e_parallel", "kind": "sql", "conn_id": "e2e_parallel", "start_date": "2024-01-01",
              "retries": 1, "retry_delay_seconds": 0, "retry_exponential_backoff": 0, "tables": [table]}
    dag_run = run(config, configs)
    assert set(states(dag_run).values()) == {"success"}, states(dag_run)
    tries = sorted((ti.task_id, ti.map_index, ti.try_number) for ti in dag_run.get_task_instances())
    assert tries == [("extract_items", -1, 1), ("load_items", -1, 1), ("plan_items", -1, 1),
                     ("ranges_items", 0, 1), ("ranges_items", 1, 2)]
    with psycopg.connect(env["dw_url"]) as dw:
        loaded = dw.execute("SELECT count(*), count(DISTINCT id), md5(string_agg(id || coalesce(v, '') || at, ',' "
                            "ORDER BY id)) FROM items").fetchone()
        attempts = dw.execute("SELECT task_id, target_table, try_number, status FROM etl_audit_log "
                              "WHERE step = 'extract_range' ORDER BY target_table, try_number").fetchall()
    with psycopg.connect(source_db) as conn:
        expected = conn.execute("SELECT count(*), count(DISTINCT id), md5(string_agg(id || coalesce(v, '') || at, "
                                "',' ORDER BY id)) FROM items").fetchone()
    assert loaded == expected
    assert attempts == [("ranges_items", "lake:sql/e2e_parallel/items range 1/2", 1, "success"),
                        ("ranges_items", "lake:sql/e2e_parallel/items range 2/2", 1, "failure"),
                        ("ranges_items", "lake:sql/e2e_parallel/items range 2/2", 2, "success")]
    partition = env["lake"] / "sql" / "e2e_parallel" / "items" / "2024-01-02"
    assert {p.name.split("-")[1] for p in partition.glob("part-*.parquet")} == {"r000", "r001"}
    assert not [p.name for p in partition.parent.iterdir() if p.name.startswith(".") and "readers" not in p.name]


def test_sync_runs_the_ranges_through_the_same_core_path(cli: Any, tmp_path: Path, source_db: str,
                                                          dw_url: str) -> None:
    """`etl.cli sync` (no Airflow): the ranges in one process, read in one snapshot, one partition."""
    _source(source_db)
    config = {"name": "cli_parallel", "kind": "sql", "conn_id": "cli_parallel_src", "start_date": "2024-01-01",
              "tables": [{"name": "nokey", "table": "nokey", "parallel": 3},
                         {"name": "items", "table": "items", "primary_key": ["id"], "parallel": 2}]}
    path = tmp_path / "cli_parallel.yaml"
    path.write_text(json.dumps(config))
    code, out, err = cli("sync", str(path), "--date", "2024-01-02", "--lake", str(tmp_path / "lake"), "--json",
                         env={"AIRFLOW_CONN_CLI_PARALLEL_SRC": source_db})
    assert code == 0, err
    assert [(r["target_table"], r["rows_loaded"]) for r in out] == [("public.nokey", ROWS), ("public.items", ROWS)]
    for name, ranges in (("nokey", 3), ("items", 2)):
        files = sorted((tmp_path / "lake" / "sql" / "cli_parallel" / name / "2024-01-02").glob("part-*.parquet"))
        assert len({f.name.split("-")[1] for f in files}) == ranges, files
    with psycopg.connect(source_db) as src, psycopg.connect(dw_url) as dw:
        for name in ("nokey", "items"):
            query = (f"SELECT count(*), md5(string_agg(id || coalesce(v, '') || at || amount, ',' "  # noqa: S608
                     f"ORDER BY id)) FROM {name}")
            assert dw.execute(query).fetchone() == src.execute(query).fetchone(), name
