"""Incremental loads by watermark, through dag.test() on real PostgreSQL source and warehouse."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import DAY, run, states

pytestmark = pytest.mark.slow


@pytest.fixture
def events(source_db: str, monkeypatch: pytest.MonkeyPatch) -> str:
    with psycopg.connect(source_db) as conn:
        conn.execute("CREATE TABLE events (id int PRIMARY KEY, payload text, updated_at timestamptz NOT NULL)")
        # Microseconds matter: two rows share the second of the watermark and differ only there.
        conn.execute("""INSERT INTO events SELECT g, 'v1', '2024-01-01 10:00:00+00'::timestamptz
                        + g * interval '1 second' + interval '123456 microseconds'
                        FROM generate_series(1, 500) g""")
        conn.execute("INSERT INTO events VALUES (501, 'v1', '2024-01-01 10:08:20.123455+00')")
    monkeypatch.setenv("AIRFLOW_CONN_E2E_EVENTS", source_db)
    return source_db


def config(**table: Any) -> dict[str, Any]:
    return {"name": "e2e_inc", "kind": "sql", "conn_id": "e2e_events", "start_date": "2024-01-01", "retries": 0,
            "tables": [{"name": "events", "table": "events", "write_mode": "merge", "primary_key": ["id"],
                        "incremental": {"cursor": "updated_at"}, **table}]}


def loads(dw_url: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dw_url) as dw:
        return dw.execute("SELECT rows_extracted, rows_loaded FROM etl_audit_log "
                          "WHERE step = 'load' ORDER BY id").fetchall()


def watermark(dw_url: str) -> tuple[Any, ...] | None:
    with psycopg.connect(dw_url) as dw:
        return dw.execute("SELECT cursor_column, value, value_type FROM etl_state "
                          "WHERE pipeline_name = 'e2e_inc' AND table_name = 'events'").fetchone()


def test_second_run_reads_nothing_then_exactly_the_changed_row(env: dict[str, Any], events: str,
                                                                configs: list[Path]) -> None:
    assert set(states(run(config(), configs)).values()) == {"success"}
    assert watermark(env["dw_url"]) == ("updated_at", "2024-01-01T10:08:20.123456+00:00", "timestamp")
    assert set(states(run(config(), configs, DAY + dt.timedelta(days=1))).values()) == {"success"}
    with psycopg.connect(events) as conn:
        conn.execute("UPDATE events SET payload = 'v2', updated_at = '2024-01-02 00:00:00.000001+00' WHERE id = 7")
    assert set(states(run(config(), configs, DAY + dt.timedelta(days=2))).values()) == {"success"}
    assert loads(env["dw_url"]) == [(501, 501), (0, 0), (1, 1)]
    assert watermark(env["dw_url"])[1] == "2024-01-02T00:00:00.000001+00:00"
    with psycopg.connect(env["dw_url"]) as dw:
        assert dw.execute("SELECT count(*), count(*) FILTER (WHERE payload = 'v2') FROM events").fetchone() == (501, 1)


def test_lookback_rereads_late_rows_and_merge_deduplicates(env: dict[str, Any], events: str,
                                                           configs: list[Path]) -> None:
    cfg = config(incremental={"cursor": "updated_at", "lookback": 30})
    run(cfg, configs)
    with psycopg.connect(events) as conn:  # a row that arrives late, stamped before the watermark
        conn.execute("INSERT INTO events VALUES (900, 'late', '2024-01-01 10:08:00+00')")
    run(cfg, configs, DAY + dt.timedelta(days=1))
    extracted, loaded = loads(env["dw_url"])[-1]
    assert extracted == loaded and extracted > 1  # the overlap window was read again ...
    with psycopg.connect(env["dw_url"]) as dw:  # ... and deduplicated on the key
        assert dw.execute("SELECT count(*), count(DISTINCT id) FROM events").fetchone() == (502, 502)
        assert dw.execute("SELECT payload FROM events WHERE id = 900").fetchone() == ("late",)


def test_reset_and_set_the_watermark_with_run_params(env: dict[str, Any], events: str,
                                                     configs: list[Path]) -> None:
    from sndw.config import parse_source
    from sndw_airflow.factory import build_dag

    from tests.conftest import TEST_SOURCES

    run(config(), configs)
    path = TEST_SOURCES / "e2e_inc.yaml"
    dag = build_dag(parse_source(config(), str(path)), path)
    dag.test(logical_date=DAY + dt.timedelta(days=1), run_conf={"reset_watermark": True})
    dag.test(logical_date=DAY + dt.timedelta(days=2), run_conf={"watermark_from": "2024-01-01T10:08:00+00:00"})
    assert [r[0] for r in loads(env["dw_url"])] == [501, 501, 22]  # ids 480-501


def test_a_failed_load_does_not_advance_the_watermark(env: dict[str, Any], events: str,
                                                      configs: list[Path]) -> None:
    run(config(), configs)
    with psycopg.connect(env["dw_url"]) as dw:
        dw.execute("ALTER TABLE events ADD CONSTRAINT no_v3 CHECK (payload <> 'v3')")
    with psycopg.connect(events) as conn:
        conn.execute("UPDATE events SET payload = 'v3', updated_at = '2024-02-01 00:00+00' WHERE id = 1")
    dag_run = run(config(), configs, DAY + dt.timedelta(days=1))
    assert states(dag_run)["load_events"] == "failed"
    assert watermark(env["dw_url"])[1] == "2024-01-01T10:08:20.123456+00:00"
    with psycopg.connect(env["dw_url"]) as dw:
        dw.execute("ALTER TABLE events DROP CONSTRAINT no_v3")
    run(config(), configs, DAY + dt.timedelta(days=2))  # the change is read again, not lost
    with psycopg.connect(env["dw_url"]) as dw:
        assert dw.execute("SELECT payload FROM events WHERE id = 1").fetchone() == ("v3",)
    assert watermark(env["dw_url"])[1] == "2024-02-01T00:00:00.000000+00:00"
