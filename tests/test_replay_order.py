"""Replay gives what the live runs gave: partitions in the order they were loaded (a backfill of an
older date after a newer one wins in a merge or a replace), and a replay that fails on one partition
leaves the table as it was."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from sndw.config import parse_source
from sndw.errors import SndwError
from sndw.lake import write_partition
from sndw.replay import replay_table
from sndw.warehouse import LoadSpec, load_manifest

OLDER, NEWER = dt.date(2024, 1, 1), dt.date(2024, 1, 2)
SOURCE = parse_source({"name": "kv", "kind": "sql", "conn_id": "src", "start_date": "2024-01-01", "target_schema": "raw",
                       "tables": [{"name": "m", "table": "public.kv", "write_mode": "merge", "primary_key": ["id"]},
                                  {"name": "r", "table": "public.kv", "write_mode": "replace"}]}, "kv.yaml")


def live_run(dw: psycopg.Connection, lake: Path, day: dt.date, value: str) -> None:
    """What a sync of ``day`` does for both tables, the source holding ``value``."""
    for table in SOURCE.tables:
        manifest = write_partition([pa.record_batch({"id": [1, 2], "v": [value, value]})], lake, "sql", "kv",
                                   table.name, day, run_id=f"run-{day}-{value}")
        load_manifest(dw, manifest, LoadSpec("raw", table.target, table.write_mode, table.key_columns))


def values(dw: psycopg.Connection, table: str) -> list[tuple[Any, ...]]:
    return dw.execute(f"SELECT id, v FROM raw.{table} ORDER BY id").fetchall()  # noqa: S608


def test_a_backfill_of_an_older_date_loaded_last_wins_in_the_replay_too(dw: psycopg.Connection, tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    live_run(dw, lake, NEWER, "old")
    live_run(dw, lake, OLDER, "new")  # the older date run later, with the source's newer values
    live = {t.target: values(dw, t.target) for t in SOURCE.tables}
    assert live == {"m": [(1, "new"), (2, "new")], "r": [(1, "new"), (2, "new")]}
    for table in SOURCE.tables:
        dw.execute(f"DROP TABLE raw.{table.target}")  # noqa: S608
        dw.commit()
        replay_table(dw, SOURCE, table, lake)
        assert values(dw, table.target) == live[table.target], table.name


def test_a_replay_that_fails_on_one_partition_leaves_the_table_as_it_was(dw: psycopg.Connection,
                                                                         tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    live_run(dw, lake, OLDER, "first")
    live_run(dw, lake, NEWER, "second")
    merge = SOURCE.tables[0]
    broken = next((lake / "sql" / "kv" / "m" / NEWER.isoformat()).glob("part-*.parquet"))
    broken.write_bytes(b"not parquet")  # the newer partition cannot be read
    with pytest.raises((SndwError, OSError, pa.ArrowException)):
        replay_table(dw, SOURCE, merge, lake)
    dw.rollback()
    assert values(dw, "m") == [(1, "second"), (2, "second")]  # not the older partition's values
    # the first partition's success row went with its rows (the audit table with them, here)
    if dw.execute("SELECT to_regclass('etl_audit_log')").fetchone() != (None,):
        assert dw.execute("SELECT count(*) FROM etl_audit_log WHERE step = 'replay'").fetchone() == (0,)


def test_a_failed_replay_on_the_command_line_leaves_one_failure_row(dw: psycopg.Connection, dw_url: str,
                                                                     tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from sndw.cli import main as cli_main

    lake = tmp_path / "lake"
    live_run(dw, lake, OLDER, "first")
    dw.commit()
    next((lake / "sql" / "kv" / "m" / OLDER.isoformat()).glob("part-*.parquet")).write_bytes(b"not parquet")
    config = tmp_path / "kv.yaml"
    config.write_text("name: kv\nkind: sql\nconn_id: src\nstart_date: 2024-01-01\ntarget_schema: raw\ntables:\n"
                      "  - {name: m, table: public.kv, write_mode: merge, primary_key: [id]}\n")
    monkeypatch.setenv("AIRFLOW_CONN_DW", dw_url)
    with pytest.raises(Exception):  # noqa: B017, PT011 - the reader's own error, as the command line shows it
        cli_main(["replay", str(config), "--lake", str(lake)])
    rows = dw.execute("SELECT status, step, target_table, error_message IS NOT NULL FROM etl_audit_log").fetchall()
    assert rows == [("failure", "replay", "raw.m", True)]
    assert values(dw, "m") == [(1, "first"), (2, "first")]


def test_a_replayed_append_date_replaces_its_quarantined_rows_too(dw: psycopg.Connection, tmp_path: Path) -> None:
    """Replay replaces an append table's date with its lake partition (the latest extract): the rows an
    earlier extract of that date quarantined go with the rows it loaded."""
    source = parse_source({"name": "q", "kind": "sql", "conn_id": "src", "start_date": "2024-01-01",
                           "target_schema": "raw", "tables": [{
                               "name": "pay", "table": "public.pay", "write_mode": "append",
                               "checks": [{"range": {"column": "amount", "max": 10}, "on_fail": "quarantine"}]}]},
                          "q.yaml")
    table = source.tables[0]
    lake = tmp_path / "lake"
    for amounts in ([1, 2, 20], [1, 2, 30]):  # the date extracted twice: append loads both
        manifest = write_partition([pa.record_batch({"id": [1, 2, 3], "amount": amounts})], lake, "sql", "q", "pay",
                                   OLDER, run_id=f"run-{amounts[-1]}")
        load_manifest(dw, manifest, LoadSpec("raw", "pay", "append", checks=table.checks))
    dw.commit()
    assert dw.execute("SELECT amount FROM raw._rejected_pay ORDER BY 1").fetchall() == [(20,), (30,)]
    replay_table(dw, source, table, lake)
    assert dw.execute("SELECT amount FROM raw.pay ORDER BY 1").fetchall() == [(1,), (2,)]
    assert dw.execute("SELECT amount FROM raw._rejected_pay ORDER BY 1").fetchall() == [(30,)]


def test_replay_takes_several_tables(dw: psycopg.Connection, dw_url: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """`--table` repeated replays each (only the last one was, silently)."""
    from sndw.cli import main as cli_main

    lake = tmp_path / "lake"
    live_run(dw, lake, OLDER, "only")
    dw.execute("DROP TABLE raw.m")
    dw.execute("DROP TABLE raw.r")
    dw.commit()
    config = tmp_path / "kv.yaml"
    config.write_text("name: kv\nkind: sql\nconn_id: src\nstart_date: 2024-01-01\ntarget_schema: raw\ntables:\n"
                      "  - {name: m, table: public.kv, write_mode: merge, primary_key: [id]}\n"
                      "  - {name: r, table: public.kv, write_mode: replace}\n")
    monkeypatch.setenv("AIRFLOW_CONN_DW", dw_url)
    assert cli_main(["replay", str(config), "--lake", str(lake), "--table", "m", "--table", "r"]) == 0
    assert values(dw, "m") == values(dw, "r") == [(1, "only"), (2, "only")]


def test_a_replay_of_several_partitions_through_the_staged_merge(dw: psycopg.Connection, tmp_path: Path) -> None:
    """Every partition's merge in the one transaction: a key repeated within a load takes the staging
    table, which the second partition's merge made again ("already exists", live runs commit between)."""
    lake = tmp_path / "lake"
    merge = SOURCE.tables[0]
    for day, value in ((OLDER, "a"), (NEWER, "b")):
        batch = pa.record_batch({"id": [1, 1, 2], "v": [f"{value}-first", value, value]})
        manifest = write_partition([batch], lake, "sql", "kv", "m", day, run_id=f"run-{day}")
        load_manifest(dw, manifest, LoadSpec("raw", "m", "merge", merge.key_columns))
    dw.execute("DROP TABLE raw.m")
    dw.commit()
    assert [r.rows_loaded for r in replay_table(dw, SOURCE, merge, lake)] == [3, 3]
    assert values(dw, "m") == [(1, "b"), (2, "b")]
