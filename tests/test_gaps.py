"""`sndw gaps`: which dates are missing, from when, for which write modes (issue 26 item 9)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import psycopg
import pyarrow as pa
import pytest
import yaml
from sndw.audit import AuditRecord
from sndw.cli import main as cli_main
from sndw.config import parse_source
from sndw.lake import write_partition
from sndw.reconcile import reconcile
from sndw.warehouse import LoadSpec, load_manifest

FIRST = dt.date(2024, 3, 10)


def source(catchup: bool) -> dict:
    return {"name": "gapsrc", "kind": "sql", "conn_id": "gapsrc", "start_date": "2024-01-01", "schedule": "@daily",
            "catchup": catchup, "tables": [
                {"name": "days", "write_mode": "partition",
                 "query": "SELECT * FROM t WHERE d = DATE '{{ partition_date }}'"},
                {"name": "whole", "query": "SELECT * FROM t", "write_mode": "replace"}]}


def load(dw: psycopg.Connection, lake: Path, table: str, mode: str, day: dt.date) -> None:
    manifest = write_partition([pa.record_batch({"id": [1, 2]})], lake, "sql", "gapsrc", table, day, run_id=f"r{day}")
    spec = LoadSpec("public", table, mode)
    audit = AuditRecord(pipeline_name="gapsrc", source_name="gapsrc", protocol="sql", target_table=spec.qualified,
                        status="success", started_at=dt.datetime.now(dt.UTC), step="load", partition_date=day)
    load_manifest(dw, manifest, spec, audit=audit)


def test_a_source_without_catchup_is_expected_from_its_first_load_and_replace_shows_its_last(
        tmp_path: Path, dw: psycopg.Connection, dw_url: str, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    lake = tmp_path / "lake"
    never_run = reconcile(dw, parse_source(source(False), "gapsrc.yaml"), lake)
    assert never_run == []  # not thousands of "missing" lines from start_date
    for day in (FIRST, FIRST + dt.timedelta(days=2)):  # the day between was not run
        load(dw, lake, "days", "partition", day)
        load(dw, lake, "whole", "replace", day)
    end = FIRST + dt.timedelta(days=3)
    report = reconcile(dw, parse_source(source(False), "gapsrc.yaml"), lake, date_to=end)
    assert [(r.table, r.partition, r.status) for r in report] == [
        ("days", FIRST, "loaded"), ("days", FIRST + dt.timedelta(days=1), "missing"),
        ("days", FIRST + dt.timedelta(days=2), "loaded"), ("days", end, "missing"),
        ("whole", FIRST + dt.timedelta(days=2), "loaded")]
    with_catchup = reconcile(dw, parse_source(source(True), "gapsrc.yaml"), lake, date_to=end)
    days = [r for r in with_catchup if r.table == "days"]
    assert days[0].partition == dt.date(2024, 1, 1) and days[0].status == "missing"
    assert len(days) == (end - dt.date(2024, 1, 1)).days + 1
    assert [(r.partition, r.status) for r in with_catchup if r.table == "whole"] == [
        (FIRST + dt.timedelta(days=2), "loaded")]
    # The command line: --strict fails on the missing date, passes on a range without one.
    config = tmp_path / "gapsrc.yaml"
    config.write_text(yaml.safe_dump(source(False)))
    monkeypatch.setenv("AIRFLOW_CONN_DW", dw_url)
    args = ["gaps", str(config), "--lake", str(lake)]
    dw.commit()  # the loads above ran inside the reports' transaction
    assert cli_main([*args, "--to", end.isoformat(), "--strict"]) == 1
    assert capsys.readouterr().out.splitlines()[-1] == "loaded: 3, missing: 2"
    assert cli_main([*args, "--to", FIRST.isoformat(), "--strict"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "loaded: 2"


def test_the_counts_tell_an_emptied_date_a_quarantine_and_a_command_line_extract(tmp_path: Path,
                                                                                 dw: psycopg.Connection) -> None:
    lake = tmp_path / "lake"
    spec = parse_source(source(False), "gapsrc.yaml")
    later = FIRST + dt.timedelta(days=1)
    load(dw, lake, "days", "partition", FIRST)
    # A load as `sndw sync` records it: rows_extracted on its load row; 2 rows quarantined of 5.
    manifest = write_partition([pa.record_batch({"id": [1, 2, 3, 4, 5]})], lake, "sql", "gapsrc", "days", later,
                               run_id="rq")
    audit = AuditRecord(pipeline_name="gapsrc", source_name="gapsrc", protocol="sql", target_table="public.days",
                        status="success", started_at=dt.datetime.now(dt.UTC), step="load", partition_date=later,
                        rows_extracted=5)
    load_manifest(dw, manifest, LoadSpec("public", "days", "partition"), audit=audit)
    dw.execute("DELETE FROM days WHERE _partition_date = %s AND id > 3", (later,))  # as if 2 were quarantined
    dw.execute("UPDATE etl_audit_log SET rows_loaded = 3, rows_rejected = 2 WHERE partition_date = %s", (later,))
    report = {r.partition: r for r in reconcile(dw, spec, lake, date_to=later) if r.table == "days"}
    quarantined = report[later]
    assert (quarantined.rows_extracted, quarantined.rows_in_lake, quarantined.rows_loaded,
            quarantined.rows_in_warehouse, quarantined.counts_agree) == (5, 5, 3, 3, True)
    # A date whose rows left the warehouse since its load: 0 rows there, not a blank, and NO.
    dw.execute("DELETE FROM days WHERE _partition_date = %s", (FIRST,))
    emptied = {r.partition: r for r in reconcile(dw, spec, lake, date_to=later) if r.table == "days"}[FIRST]
    assert (emptied.rows_in_lake, emptied.rows_loaded, emptied.rows_in_warehouse, emptied.counts_agree) == (
        2, 2, 0, False)
