"""Every attempt leaves an audit row, also when the warehouse is down: the row waits in the lake's
spool and the next connection writes it, once. The spool's bad inputs are
tests/bad_inputs/faults/audit_spool_cases.yaml."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
import yaml
from sndw.audit import AuditRecord, register_secret, write_audit_record
from sndw.spool import REJECTED_SUFFIX, SPOOL_DIR, STALE_TMP_SECONDS, flush_spool, spool_record, spooled_files

from tests.conftest import DAY, ROOT, run, states
from tests.http_api import Resp, TestApi, items

CASES = yaml.safe_load((Path(__file__).parent / "bad_inputs" / "faults" / "audit_spool_cases.yaml").read_text())
DW_PASSWORD = "Dw-Pa55w0rd/ü!"


def record(try_number: int = 1, status: str = "failure", **more: Any) -> AuditRecord:
    started = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC) + timedelta(minutes=try_number)
    fields: dict[str, Any] = {
        "error_message": "OperationalError: connection refused", "dag_id": "pipe", "task_id": "load_t",
        "airflow_run_id": "manual__2024-01-02", "try_number": try_number, "step": "load",
        "partition_date": date(2024, 1, 2), "finished_at": started + timedelta(seconds=3),
        "lake_paths": ["/lake/file/src/t/2024-01-02/part-00000.parquet"], **more}
    return AuditRecord("pipe", "src", "file", "public.t", status, started, **fields)


def audit_rows(conn: psycopg.Connection) -> list[tuple]:
    return conn.execute("SELECT attempt_key, status, step, try_number, error_message, lake_paths "
                        "FROM etl_audit_log ORDER BY id").fetchall()


def test_a_spooled_record_round_trips_and_one_attempt_is_one_file(tmp_path: Path, dw: psycopg.Connection) -> None:
    first = spool_record(tmp_path, record(1))
    again = spool_record(tmp_path, record(1, error_message="the same attempt, spooled twice"))
    second = spool_record(tmp_path, record(2, status="success", error_message=None, rows_loaded=5))
    assert first == again and first != second and spooled_files(tmp_path) == sorted([first, second])
    assert first.parent == tmp_path / SPOOL_DIR and not list(first.parent.glob(".*"))  # no temporary left
    assert flush_spool(dw, tmp_path) == 2
    assert audit_rows(dw) == [
        ("pipe|load_t|manual__2024-01-02|1", "failure", "load", 1, "the same attempt, spooled twice",
         ["/lake/file/src/t/2024-01-02/part-00000.parquet"]),
        ("pipe|load_t|manual__2024-01-02|2", "success", "load", 2, None,
         ["/lake/file/src/t/2024-01-02/part-00000.parquet"])]
    assert dw.execute("SELECT started_at, partition_date, rows_loaded FROM etl_audit_log ORDER BY id").fetchall() == [
        (record(1).started_at, date(2024, 1, 2), None), (record(2).started_at, date(2024, 1, 2), 5)]
    assert spooled_files(tmp_path) == []


def test_a_flush_that_stopped_half_way_adds_no_duplicate(tmp_path: Path, dw: psycopg.Connection) -> None:
    records = [record(n) for n in range(1, 6)]
    for r in records:
        spool_record(tmp_path, r)
    # What a flush that died after committing three rows leaves: the rows, and all five files.
    for r in records[:3]:
        assert write_audit_record(dw, r) is True
    assert len(spooled_files(tmp_path)) == 5
    assert flush_spool(dw, tmp_path) == 5
    assert flush_spool(dw, tmp_path) == 0  # and once more: nothing left, nothing added
    keys = [row[0] for row in audit_rows(dw)]
    assert keys == [r.attempt_key for r in records] and len(set(keys)) == 5
    assert spooled_files(tmp_path) == []


def test_two_flushes_at_once_write_each_row_once(tmp_path: Path, dw_url: str, dw: psycopg.Connection) -> None:
    """Two processes (two tasks' callbacks) flushing the same spool at the same moment."""
    for n in range(1, 41):
        spool_record(tmp_path, record(n))
    script = ("import sys, psycopg; from sndw.spool import flush_spool\n"
              "with psycopg.connect(sys.argv[1]) as c: print(flush_spool(c, sys.argv[2]))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "include")}
    procs = [subprocess.Popen([sys.executable, "-c", script, dw_url, str(tmp_path)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=120) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    assert dw.execute("SELECT count(*), count(DISTINCT attempt_key) FROM etl_audit_log").fetchone() == (40, 40)
    assert spooled_files(tmp_path) == []


def test_the_spool_holds_no_secret(tmp_path: Path) -> None:
    register_secret(DW_PASSWORD)
    failure = record(1, error_message=RuntimeError(
        f"could not connect to postgresql://dw:{DW_PASSWORD}@db/dw (password={DW_PASSWORD}, "
        f"encoded {DW_PASSWORD.replace('/', '%2F').replace('ü', '%C3%BC').replace('!', '%21')})"))
    text = spool_record(tmp_path, failure).read_text()
    assert "RuntimeError: could not connect" in text and "***" in text
    assert DW_PASSWORD not in text and "Dw-Pa55w0rd" not in text


def test_a_flush_inside_an_open_transaction_is_refused(tmp_path: Path, dw: psycopg.Connection) -> None:
    spool_record(tmp_path, record(1))
    dw.execute("SELECT 1")  # a transaction is open: committing a row would only release a savepoint
    with pytest.raises(RuntimeError, match="outside a transaction"):
        flush_spool(dw, tmp_path)
    dw.rollback()
    assert len(spooled_files(tmp_path)) == 1


# --------------------------------------------------------------------------- the bad-input corpus


def write_case(folder: Path, name: str, case: dict[str, Any]) -> Path:
    from sndw.spool import record_to_json

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / case.get("name", f"{name}.json")
    if "content" in case:
        path.write_text(case["content"])
        return path
    data = record_to_json(record(1, task_id=name))
    for key, value in case["record"].items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_corpus(name: str, tmp_path: Path, dw: psycopg.Connection, caplog: pytest.LogCaptureFixture) -> None:
    case = CASES[name]
    keep = record(9, task_id="earlier")
    write_audit_record(dw, keep)  # the table already holds a row: a reject leaves it as it was
    path = write_case(tmp_path / SPOOL_DIR, name, case)
    if case.get("already_in_table"):
        from sndw.spool import record_from_json

        write_audit_record(dw, record_from_json(json.loads(path.read_text())))
    before = audit_rows(dw)
    dw.rollback()  # the flush commits row by row: it takes a connection outside a transaction
    cleared = flush_spool(dw, tmp_path)
    after = audit_rows(dw)
    if case["outcome"] == "written":
        assert cleared == 1 and not path.exists()
        assert len(after) == 2 and after[0] == before[0]  # the row once, not twice
        assert after[1][0] == (case["record"].get("attempt_id") or f"pipe|{name}|manual__2024-01-02|1")
    elif case["outcome"] == "rejected":
        assert cleared == 0 and after == before
        assert not path.exists() and path.with_name(path.name + REJECTED_SUFFIX).exists()
        for words in case["error_names"]:
            assert words in caplog.text, (words, caplog.text)
        assert flush_spool(dw, tmp_path) == 0 and path.with_name(path.name + REJECTED_SUFFIX).exists()
    else:
        assert case["outcome"] == "ignored"
        assert cleared == 0 and after == before and path.exists()
        old = time.time() - STALE_TMP_SECONDS - 60
        os.utime(path, (old, old))
        flush_spool(dw, tmp_path)
        assert not path.exists()  # a dead writer's leftover goes once it is an hour old


# ----------------------------------------------------------- the warehouse down, through Airflow and the CLI


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_a_dag_run_with_the_warehouse_down_is_audited_by_the_next_run(
        env: dict[str, Any], configs: list[Path], monkeypatch: pytest.MonkeyPatch) -> None:
    data = env["tmp"] / "data"
    data.mkdir()
    (data / "items.csv").write_text("id,name\n1,a\n2,b\n3,c\n")
    config = {"name": "spool_dw_down", "kind": "file", "base_path": str(data), "start_date": "2024-01-01",
              "retries": 0, "tables": [{"name": "items", "path": "items.csv", "write_mode": "append"}]}
    monkeypatch.setenv("AIRFLOW_CONN_DW", f"postgresql://sndw:{quote(DW_PASSWORD, safe='')}@127.0.0.1:{closed_port()}/dw")
    down = run(config, configs, logical_date=DAY)
    assert states(down) == {"extract_items": "success", "load_items": "failed"}, states(down)
    files = spooled_files(env["lake"])
    spooled = [json.loads(f.read_text()) for f in files]
    assert sorted((r["task_id"], r["status"]) for r in spooled) == [("extract_items", "success"),
                                                                     ("load_items", "failure")]
    failure = next(r for r in spooled if r["status"] == "failure")
    assert "connect" in failure["error_message"] and failure["partition_date"] == DAY.date().isoformat()
    assert not any(DW_PASSWORD in f.read_text() or quote(DW_PASSWORD, safe="") in f.read_text() for f in files)

    monkeypatch.setenv("AIRFLOW_CONN_DW", env["dw_url"])
    up = run(config, configs, logical_date=DAY + timedelta(days=1))
    assert set(states(up).values()) == {"success"}, states(up)
    assert spooled_files(env["lake"]) == []
    with psycopg.connect(env["dw_url"]) as dw:
        rows = dw.execute("SELECT task_id, status, partition_date, attempt_key FROM etl_audit_log "
                          "ORDER BY id").fetchall()
        status = dw.execute("SELECT partition_date, last_status FROM etl_partition_status "
                            "ORDER BY partition_date").fetchall()
        assert dw.execute("SELECT count(*) FROM items").fetchone() == (3,)
    failures = [r for r in rows if r[1] == "failure"]
    assert len(failures) == 1 and failures[0][:3] == ("load_items", "failure", DAY.date())
    assert failures[0][3] == failure["attempt_id"]
    # the spooled rows come first: ids keep time order, so each partition's last status is right
    assert [(r[0], r[2]) for r in rows] == [
        ("extract_items", DAY.date()), ("load_items", DAY.date()),
        ("extract_items", DAY.date() + timedelta(days=1)), ("load_items", DAY.date() + timedelta(days=1))]
    assert status == [(DAY.date(), "failure"), (DAY.date() + timedelta(days=1), "success")]


def test_a_cli_run_with_the_warehouse_down_is_audited_by_the_next_run(tmp_path: Path, dw_url: str,
                                                                       dw: psycopg.Connection) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_CONN_", "DW_"))}
    env["PYTHONPATH"] = str(ROOT / "include")

    def cli(warehouse: str) -> tuple[int, dict[str, Any], str]:
        args = ["run", "--config", "c.json", "--query", "/users", "--source", "s", "--table", "users", "--lake", "lake"]
        result = subprocess.run([sys.executable, "-m", "sndw.cli", *args], cwd=tmp_path,
                                env={**env, "AIRFLOW_CONN_DW": warehouse}, capture_output=True, text=True,
                                timeout=120, check=False)
        return result.returncode, json.loads(result.stdout), result.stderr

    with TestApi({"/users": lambda req: Resp(body=items(1, 6))}) as api:
        (tmp_path / "c.json").write_text(json.dumps({"protocol": "http", "base_url": api.url}))
        code, out, err = cli(f"postgresql://sndw:{quote(DW_PASSWORD, safe='')}@127.0.0.1:{closed_port()}/dw")
        assert code == 1 and out["audited"] is False and out["step"] == "load", err
        assert Path(out["audit_spooled"]).is_file() and "next run that reaches the warehouse" in err
        shown = Path(out["audit_spooled"]).read_text() + json.dumps(out) + err
        assert DW_PASSWORD not in shown and quote(DW_PASSWORD, safe="") not in shown
        code, out2, err = cli(dw_url)
        assert code == 0, err
    rows = dw.execute("SELECT status, step, attempt_key FROM etl_audit_log ORDER BY id").fetchall()
    assert rows == [("failure", "load", f"cli|{out['run_id']}"), ("success", "load", f"cli|{out2['run_id']}")]
    assert spooled_files(tmp_path / "lake") == []
