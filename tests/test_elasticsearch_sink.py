"""The Elasticsearch sink end to end through dag.test(): the official 8.x client's streaming_bulk
against a local server that speaks enough of Elasticsearch's API (tests/es_api.py). No real
Elasticsearch runs here: what a real cluster would do with the documents (mappings) is not tested."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sndw.config import parse_source
from sndw.errors import ConfigError

from tests.conftest import DAY, count, run, states
from tests.es_api import FakeElasticsearch

pytestmark = pytest.mark.slow

PASSWORD = "es-Secret-9f3b"  # a credential that must never show up in an audit row or error
FILMS = [
    (1, "ACADEMY DINOSAUR", Decimal("0.99"), date(2006, 2, 15), datetime(2024, 1, 1, 10, 30, tzinfo=UTC), 6.5),
    (2, "ACE GOLDFINGER", Decimal("4.99"), None, datetime(2024, 1, 1, 11, 0, 0, 123456, tzinfo=UTC), None),
    (3, "ADAPTATION \"HOLES\"\nline two", Decimal("12345678.10"), date(1999, 12, 31), None, 1e300),
]


def create_films(source_db: str, rows: list[tuple[Any, ...]]) -> None:
    with psycopg.connect(source_db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS film (id integer PRIMARY KEY, title text NOT NULL, "
                     "price numeric(10,2), released date, updated_at timestamptz, rating double precision)")
        conn.execute("TRUNCATE film")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO film VALUES (%s, %s, %s, %s, %s, %s)", rows)


def expected_document(row: tuple[Any, ...]) -> dict[str, Any]:
    """The lake's values as JSON: numeric as its exact text, dates and times in ISO 8601 (UTC)."""
    film_id, title, price, released, updated, rating = row
    return {"id": film_id, "title": title, "price": str(price),
            "released": released.isoformat() if released else None,
            "updated_at": updated.isoformat() if updated else None, "rating": rating}


def config(es_conn: str, **sink: Any) -> dict[str, Any]:
    return {"name": "es_films", "kind": "sql", "conn_id": "es_films_src", "start_date": "2024-01-01",
            "retries": 0, "target_schema": "raw",
            "tables": [{"name": "film", "table": "film", "primary_key": ["id"], "write_mode": "merge",
                        "elasticsearch": {"conn_id": es_conn, "index": "films", "chunk_size": 2,
                                          "initial_backoff_seconds": 0.05, **sink}}]}


def connect(monkeypatch: pytest.MonkeyPatch, source_db: str, es: FakeElasticsearch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_ES_FILMS_SRC", source_db)
    monkeypatch.setenv("AIRFLOW_CONN_ES_TEST", json.dumps({
        "conn_type": "elasticsearch", "host": "127.0.0.1", "port": es.port, "login": "elastic",
        "password": PASSWORD, "extra": {"scheme": "http"}}))


def audit_rows(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT step, status, target_table, rows_loaded, partition_date, error_message "
                        "FROM etl_audit_log WHERE pipeline_name = 'es_films' ORDER BY id").fetchall()


def task_times(dag_run: Any) -> dict[str, tuple[Any, Any]]:
    return {ti.task_id: (ti.start_date, ti.end_date) for ti in dag_run.get_task_instances()}


def test_indexed_after_the_load_and_a_rerun_overwrites(env: dict[str, Any], source_db: str, configs: list[Path],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """index_film runs after load_film and sends every lake row, values exactly as in the lake, with
    _id = the primary key, in chunks of chunk_size; the run after a source change overwrites the
    same ids (versions 2) and adds the new one, with no duplicates. Both attempts are audited."""
    create_films(source_db, FILMS)
    with FakeElasticsearch() as es:
        connect(monkeypatch, source_db, es)
        dag_run = run(config("es_test"), configs)
        assert states(dag_run) == {"extract_film": "success", "load_film": "success",
                                   "index_film": "success"}, states(dag_run)
        times = task_times(dag_run)
        assert times["load_film"][1] <= times["index_film"][0]  # after the warehouse load
        assert es.problems == []
        assert {doc_id: doc for doc_id, doc in es.indices["films"].items()} == {
            str(row[0]): expected_document(row) for row in FILMS}
        actions = [a["index"] for bulk in es.bulks for a in bulk.actions]
        assert sorted(a["_id"] for a in actions) == ["1", "2", "3"]
        assert {a["_index"] for a in actions} == {"films"}
        assert [len(bulk.actions) for bulk in es.bulks] == [2, 1]  # chunk_size 2: bounded requests
        assert all(auth and auth.startswith("Basic ") for auth in es.auth)  # the connection's login

        changed = [(1, "ACADEMY DINOSAUR (RESTORED)", Decimal("1.99"), *FILMS[0][3:]), *FILMS[1:],
                   (4, "AFRICAN EGG", Decimal("2.50"), None, None, -0.0)]
        create_films(source_db, changed)
        second = run(config("es_test"), configs)
        assert set(states(second).values()) == {"success"}, states(second)
        assert es.indices["films"] == {str(row[0]): expected_document(row) for row in changed}
        assert es.versions == {("films", "1"): 2, ("films", "2"): 2, ("films", "3"): 2, ("films", "4"): 1}
    with psycopg.connect(env["dw_url"]) as dw:
        assert count(dw, "raw.film") == 4
        index_rows = [r for r in audit_rows(dw) if r[0] == "index"]
    assert index_rows == [("index", "success", "elasticsearch:films", 3, DAY.date(), None),
                          ("index", "success", "elasticsearch:films", 4, DAY.date(), None)]


def test_429_items_are_retried(env: dict[str, Any], source_db: str, configs: list[Path],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Documents answered 429 are sent again, alone, until indexed; each exactly once in the end."""
    create_films(source_db, FILMS)
    with FakeElasticsearch(busy={"2": 2, "3": 1}) as es:
        connect(monkeypatch, source_db, es)
        dag_run = run(config("es_test", chunk_size=10), configs)
        assert set(states(dag_run).values()) == {"success"}, states(dag_run)
        assert sorted(es.answered_429) == ["2", "2", "3"]
        sent = [[a["index"]["_id"] for a in bulk.actions] for bulk in es.bulks]
        assert sent == [["1", "2", "3"], ["2", "3"], ["2"]]  # only the rejected ones, again
        assert es.indices["films"] == {str(row[0]): expected_document(row) for row in FILMS}
        assert es.versions == {("films", "1"): 1, ("films", "2"): 1, ("films", "3"): 1}


def test_429_beyond_the_retries_fails_the_attempt(env: dict[str, Any], source_db: str, configs: list[Path],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    create_films(source_db, FILMS)
    with FakeElasticsearch(busy={"1": 10}) as es:
        connect(monkeypatch, source_db, es)
        dag_run = run(config("es_test", max_retries=2), configs)
        assert states(dag_run)["index_film"] == "failed"
        assert es.answered_429 == ["1", "1", "1"]  # the first answer and 2 retries
    with psycopg.connect(env["dw_url"]) as dw:
        (row,) = [r for r in audit_rows(dw) if r[0] == "index"]
    assert row[1] == "failure" and "429" in row[5] and "_id '1'" in row[5], row


def test_a_mapping_error_fails_the_task_naming_id_and_reason(env: dict[str, Any], source_db: str,
                                                            configs: list[Path],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A 400 item (Elasticsearch's mapping refused the document) fails index_film at once, not retried
    by the helper; the audit row names the document's _id and the reason, and no credential."""
    create_films(source_db, FILMS)
    reason = "failed to parse field [price] of type [float] in document with id '3'"
    with FakeElasticsearch(refuse={"3": reason}) as es:
        connect(monkeypatch, source_db, es)
        dag_run = run(config("es_test", chunk_size=10), configs)
        assert states(dag_run) == {"extract_film": "success", "load_film": "success",
                                   "index_film": "failed"}, states(dag_run)
        assert len(es.bulks) == 1  # a 400 is not retried
    with psycopg.connect(env["dw_url"]) as dw:
        assert count(dw, "raw.film") == 3  # the warehouse load stands
        (row,) = [r for r in audit_rows(dw) if r[0] == "index"]
    assert row[:3] == ("index", "failure", "elasticsearch:films")
    assert "_id '3'" in row[5] and "document_parsing_exception" in row[5] and reason in row[5], row[5]
    assert PASSWORD not in row[5]


def test_an_undefined_connection_fails_naming_it(env: dict[str, Any], source_db: str, configs: list[Path],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    create_films(source_db, FILMS[:1])
    monkeypatch.setenv("AIRFLOW_CONN_ES_FILMS_SRC", source_db)
    dag_run = run(config("es_missing"), configs)
    assert states(dag_run)["index_film"] == "failed"
    with psycopg.connect(env["dw_url"]) as dw:
        (row,) = [r for r in audit_rows(dw) if r[0] == "index"]
    assert row[1] == "failure" and "'es_missing' is not defined" in row[5], row


@pytest.mark.parametrize(("sink", "table", "message"), [
    ({"conn_id": "es", "index": "films"}, {}, "elasticsearch needs id_columns or a primary_key"),
    ({"conn_id": "es", "index": "Films"}, {"primary_key": ["id"]}, "is not an Elasticsearch index name"),
    ({"conn_id": "es", "index": "a,b"}, {"primary_key": ["id"]}, "is not an Elasticsearch index name"),
    ({"conn_id": "es"}, {"primary_key": ["id"]}, "elasticsearch.index"),
    ({"conn_id": "es", "index": "films", "chunk_size": 0}, {"primary_key": ["id"]}, "chunk_size"),
    ({"conn_id": "es", "index": "films", "idcolumns": ["id"]}, {"primary_key": ["id"]}, "idcolumns"),
])
def test_sink_config_errors(tmp_path: Path, sink: dict[str, Any], table: dict[str, Any], message: str) -> None:
    base = {"name": "es_cfg", "kind": "sql", "conn_id": "src", "start_date": "2024-01-01",
            "tables": [{"name": "film", "table": "film", "elasticsearch": sink, **table}]}
    with pytest.raises(ConfigError) as exc:
        parse_source(base, str(tmp_path / "es_cfg.yaml"))
    assert "tables[0]" in str(exc.value) and message in str(exc.value), str(exc.value)


def test_id_columns_make_composite_ids() -> None:
    from sndw.sinks.elasticsearch import document_id, json_value

    assert document_id({"a": 1, "b": "x|y"}, ["a", "b"], "w") == '[1,"x|y"]'
    assert document_id({"a": 7}, ["a"], "w") == "7"
    assert json_value(float("nan")) == "NaN" and json_value(float("-inf")) == "-Infinity"
    assert json_value(Decimal("1.10")) == "1.10" and json_value(b"\x00\xff") == "AP8="
