"""Extractors against real sources: PostgreSQL and SQLite, an HTTP server on localhost, real files."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import sqlite3
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pyarrow as pa
import pytest
from sndw.config import FileTable, HttpTable, table_spec
from sndw.demo.api import DemoApi, todos, users
from sndw.errors import ExtractError, PermanentError, SourceDataError
from sndw.extract import flatten_record, records_to_batch
from sndw.extract.files import iter_file_batches
from sndw.extract.http import HttpResponse, iter_http_batches
from sndw.extract.sql import iter_postgres_batches, iter_query_batches, table_query
from sndw.typeplan import PG_TYPE_KEY

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def requests_fetch(base_url: str):  # the same contract the HttpHook-based fetch fulfils
    import requests

    def fetch(endpoint: str, params: dict[str, Any]) -> HttpResponse:
        url = endpoint if endpoint.startswith("http") else base_url + endpoint
        response = requests.get(url, params=params or None, timeout=10)
        response.raise_for_status()
        return HttpResponse(body=response.json(), status=response.status_code, headers=response.headers,
                            url=response.url)

    return fetch


# ------------------------------------------------------------------------------ records


def test_flatten_nested_objects_and_keep_lists() -> None:
    flat = flatten_record({"a": {"b": {"c": 1}}, "l": [1, {"x": 2}], "e": {}})
    assert flat == {"a__b__c": 1, "l": [1, {"x": 2}], "e": {}}


def test_records_to_batch_types_and_mixed_values() -> None:
    batch = records_to_batch([
        {"id": 1, "tags": ["x"], "v": 1, "geo": {"lat": "1.5"}},
        {"id": 2, "tags": None, "v": "two", "new": True},
    ])
    assert batch.schema.names == ["id", "tags", "v", "geo__lat", "new"]
    assert batch.schema.field("tags").type == pa.json_()
    assert batch.column("v").to_pylist() == ["1", "two"]  # mixed types become text, nothing lost
    assert batch.column("new").to_pylist() == [None, True]


# ---------------------------------------------------------------------------------- sql


@pytest.fixture
def typed_source(source_db: str) -> str:
    with psycopg.connect(source_db) as conn:
        conn.execute("""CREATE TABLE t (id int PRIMARY KEY, amount numeric(8,2), big numeric, ok boolean,
                        at timestamptz, naive timestamp, day date, doc jsonb, u uuid, note text,
                        took interval, rating text[])""")
        conn.execute("""INSERT INTO t SELECT g, g * 1.25, 10::numeric ^ 30 + g, g % 2 = 0,
                        '2024-01-01 10:00+02'::timestamptz, '2024-01-01 10:00', '2024-01-01'::date + g,
                        jsonb_build_object('g', g), gen_random_uuid(),
                        CASE WHEN g % 3 = 0 THEN NULL ELSE 'n' || g END, interval '1 day 2 hours',
                        ARRAY['a', 'b'] FROM generate_series(1, 2500) g""")
    return source_db


def _pg_batches(url: str, path: str) -> list[pa.RecordBatch]:
    query = "SELECT * FROM t ORDER BY id"
    if path == "adbc":
        return list(iter_postgres_batches(url, query, batch_bytes=64_000))
    with psycopg.connect(url) as conn:
        return list(iter_query_batches(conn, query, batch_rows=1000))


@pytest.mark.parametrize("path", ["adbc", "dbapi"])
def test_postgres_streams_batches_with_exact_types(typed_source: str, path: str) -> None:
    batches = _pg_batches(typed_source, path)
    assert len(batches) >= 3 and sum(b.num_rows for b in batches) == 2500
    schema = batches[0].schema
    assert schema.field("id").type == pa.int32() and schema.field("amount").type == pa.decimal128(8, 2)
    assert schema.field("at").type == pa.timestamp("us", tz="UTC") and schema.field("doc").type == pa.json_()
    first = batches[0].to_pylist()[0]
    assert first["amount"] == decimal.Decimal("1.25")
    assert first["at"] == dt.datetime(2024, 1, 1, 8, 0, tzinfo=dt.UTC)
    assert json.loads(first["doc"]) == {"g": 1} and uuid.UUID(first["u"])
    if path == "adbc":  # types Arrow cannot hold exactly come as PostgreSQL's text, their type in metadata
        assert schema.field("u").type == pa.string() and schema.field("took").type == pa.string()
        assert decimal.Decimal(first["big"]) == 10**30 + 1 and first["took"] == "1 day 02:00:00" and first["rating"] == "{a,b}"
        declared = {f.name: f.metadata[PG_TYPE_KEY].decode() for f in schema}
        assert declared == {"id": "integer", "amount": "numeric(8,2)", "big": "numeric", "ok": "boolean",
                            "at": "timestamp with time zone", "naive": "timestamp without time zone",
                            "day": "date", "doc": "jsonb", "u": "uuid", "note": "text", "took": "interval",
                            "rating": "text[]"}
    else:
        assert schema.field("u").type == pa.string() and schema.field("took").type == pa.duration("us")
        assert first["big"] == decimal.Decimal(10**30 + 1) and first["took"] == dt.timedelta(days=1, hours=2)
        assert first["rating"] in (["a", "b"], '["a", "b"]')
    assert all(b.schema.field("amount").type == pa.decimal128(8, 2) for b in batches)


def test_adbc_connection_errors_never_show_the_password(typed_source: str) -> None:
    wrong = typed_source.rsplit("/", 1)[0] + "/no_such_database"
    password = urlsplit(typed_source).password
    assert password
    with pytest.raises(ExtractError) as info:
        list(iter_postgres_batches(wrong, "SELECT 1"))
    assert password not in str(info.value) and "no_such_database" in str(info.value)


def test_a_source_backend_terminated_mid_read_fails_naming_the_table(source_db: str) -> None:
    """The driver's own message names no table ("terminating connection due to administrator
    command"): the error says which table and how far it read, and stays retryable."""
    query = "SELECT g AS sndw_terminate_me, pg_sleep(0.0005) AS pause FROM generate_series(1, 20000) g"
    killed: list[Any] = []
    with pytest.raises(ExtractError) as info:
        for _batch in iter_postgres_batches(source_db, query, batch_bytes=1 << 16, table="src.slow"):
            if not killed:  # after the first batch: the read is under way
                with psycopg.connect(source_db, autocommit=True) as admin:
                    killed = admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE "
                                           "'%sndw_terminate_me%' AND pid <> pg_backend_pid()").fetchall()
                assert killed == [(True,)], killed
    message = str(info.value)
    assert message.startswith("src.slow: reading the PostgreSQL source failed after "), message
    assert "terminating connection" in message, message
    assert not isinstance(info.value, PermanentError)


def test_postgres_empty_result_keeps_its_columns(source_db: str) -> None:
    with psycopg.connect(source_db) as conn:
        conn.execute("CREATE TABLE e (id bigint, name text)")
        batches = list(iter_query_batches(conn, table_query("public.e")))
    assert len(batches) == 1 and batches[0].num_rows == 0
    assert batches[0].schema == pa.schema([("id", pa.int64()), ("name", pa.string())])


def test_sqlite_through_plain_dbapi(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "s.db")
    conn.execute("CREATE TABLE s (id INTEGER, name TEXT, score REAL)")
    conn.executemany("INSERT INTO s VALUES (?, ?, ?)", [(i, f"n{i}" if i % 2 else None, i / 3) for i in range(25)])
    batches = list(iter_query_batches(conn, "SELECT * FROM s", batch_rows=10))
    assert [b.num_rows for b in batches] == [10, 10, 5]
    assert batches[0].schema.field("score").type == pa.float64()


def test_table_query_refuses_anything_but_a_name() -> None:
    assert table_query("sales.orders") == 'SELECT * FROM "sales"."orders"'
    with pytest.raises(ValueError):
        table_query("orders; DROP TABLE x")


# --------------------------------------------------------------------------------- http


def http_table(**spec: Any) -> HttpTable:
    table = table_spec("http", {"name": "res", **spec})
    assert isinstance(table, HttpTable)
    return table


@pytest.fixture(scope="module")
def api():
    with DemoApi() as server:
        yield server


@pytest.mark.parametrize(
    "spec",
    [
        {"endpoint": "/todos", "records_path": "data.items",
         "pagination": {"type": "page_number", "page_size_param": "per_page", "page_size": 30}},
        {"endpoint": "/todos", "records_path": "data.items",
         "pagination": {"type": "page_number", "page_size_param": "per_page", "page_size": 40}},
        {"endpoint": "/todos-offset", "pagination": {"type": "offset", "limit": 33}},
        {"endpoint": "/todos-linked", "records_path": "results", "pagination": {"type": "next_link"}},
    ],
)
def test_pagination_styles_return_every_record_once(api: DemoApi, spec: dict[str, Any]) -> None:
    batches = list(iter_http_batches(requests_fetch(api.url), http_table(batch_rows=70, **spec)))
    ids = [r["id"] for b in batches for r in b.to_pylist()]
    assert ids == [t["id"] for t in todos()]
    assert max(b.num_rows for b in batches) <= 70


def test_nested_users_are_flattened(api: DemoApi) -> None:
    batch = next(iter_http_batches(requests_fetch(api.url), http_table(endpoint="/users")))
    assert "address__geo__lat" in batch.schema.names and "company__catch_phrase" not in batch.schema.names
    assert batch.num_rows == len(users())
    assert batch.schema.field("tags").type == pa.json_()


def test_max_pages_is_a_safety_net(api: DemoApi) -> None:
    spec = http_table(endpoint="/todos-offset", pagination={"type": "offset", "limit": 10}, max_pages=3)
    assert sum(b.num_rows for b in iter_http_batches(requests_fetch(api.url), spec)) == 30


def test_records_that_are_not_a_list_are_a_clear_error() -> None:
    spec = http_table(endpoint="/x", records_path="data")
    with pytest.raises(SourceDataError, match="expected a list of records at data"):
        list(iter_http_batches(lambda e, p: HttpResponse({"data": "oops"}), spec))


# -------------------------------------------------------------------------------- files


def file_table(**spec: Any) -> FileTable:
    table = table_spec("file", {"name": "f", **spec})
    assert isinstance(table, FileTable)
    return table


def test_csv_with_options(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id;name;when\n1;'x;y';2024-01-01 10:00:00\n2;NA;\n", encoding="utf-8")
    spec = file_table(path="*.csv", csv={"delimiter": ";", "quote_char": "'", "null_values": ["NA", ""]})
    rows = [r for b in iter_file_batches(spec, str(tmp_path)) for r in b.to_pylist()]
    assert rows == [{"id": 1, "name": "x;y", "when": dt.datetime(2024, 1, 1, 10, 0)},
                    {"id": 2, "name": None, "when": None}]


def test_csv_in_latin1(tmp_path: Path) -> None:
    (tmp_path / "l.csv").write_bytes("name\nJoão\n".encode("latin-1"))
    spec = file_table(path="l.csv", csv={"encoding": "latin-1"})
    assert next(iter_file_batches(spec, str(tmp_path))).to_pylist() == [{"name": "João"}]


def test_json_ndjson_and_parquet(tmp_path: Path) -> None:
    (tmp_path / "d.json").write_text(json.dumps({"data": [{"a": 1, "n": {"b": 2}}, {"a": 3}]}))
    (tmp_path / "d.ndjson").write_text('{"a": 1}\n\n{"a": 2, "z": [1]}\n')
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"a": [1, 2, 3]}), tmp_path / "d.parquet")
    got_json = next(iter_file_batches(file_table(path="d.json", records_path="data"), str(tmp_path)))
    assert got_json.to_pylist() == [{"a": 1, "n__b": 2}, {"a": 3, "n__b": None}]
    got_nd = next(iter_file_batches(file_table(path="d.ndjson"), str(tmp_path)))
    assert got_nd.column("a").to_pylist() == [1, 2]
    got_pq = next(iter_file_batches(file_table(path="d.parquet", batch_rows=2), str(tmp_path)))
    assert got_pq.num_rows == 2


def test_broken_and_missing_files_are_clear_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.ndjson").write_text('{"a": 1}\n{"a": \n')
    with pytest.raises(SourceDataError, match="line 2"):
        list(iter_file_batches(file_table(path="bad.ndjson"), str(tmp_path)))
    with pytest.raises(SourceDataError, match="no file matches"):
        list(iter_file_batches(file_table(path="nothing*.csv"), str(tmp_path)))


def test_a_broken_csv_row_is_named_by_its_line(tmp_path: Path) -> None:
    # polars says "found more fields than defined in 'Schema'" and "expected 0 rows, actual 1
    # rows": the error names the line instead. The quoted newline keeps lines and records apart.
    (tmp_path / "extra.csv").write_text('a,b\n1,"x\ny"\n2,y\n3,z,extra\n4,w\n', encoding="utf-8")
    with pytest.raises(SourceDataError, match=r"extra\.csv: line 5: 3 fields where the header has 2$"):
        list(iter_file_batches(file_table(path="extra.csv"), str(tmp_path)))
    (tmp_path / "open.csv").write_text('a;b\n1;x\n2;"never closed\n3;z\n', encoding="utf-8")
    with pytest.raises(SourceDataError, match=r"open\.csv: line 3: a quoted field opened on this line is not closed"):
        list(iter_file_batches(file_table(path="open.csv", csv={"delimiter": ";"}), str(tmp_path)))
    (tmp_path / "latin.csv").write_bytes("a,b\nJoão,x\n2,y,z\n".encode("latin-1"))  # read from its UTF-8 copy
    with pytest.raises(SourceDataError, match=r"latin\.csv: line 3: 3 fields where the header has 2"):
        list(iter_file_batches(file_table(path="latin.csv", csv={"encoding": "latin-1"}), str(tmp_path)))


def test_a_quote_inside_an_unquoted_csv_field_is_named_by_its_line(tmp_path: Path) -> None:
    """Python's reader keeps 5" screen as text, polars takes its quote for the start of a quoted
    field and fails with "expected 2 rows, actual 3 rows": the error names the line and the field."""
    (tmp_path / "inches.csv").write_text('id,name\n0,"a ""quoted"" one\non two lines"\n1,5" screen\n2,7" screen\n',
                                         encoding="utf-8")
    with pytest.raises(SourceDataError, match=r"inches\.csv: line 4: the field '5\" screen' holds the quote "
                                              r"character \" without being quoted: .*quote_char"):
        list(iter_file_batches(file_table(path="inches.csv"), str(tmp_path)))
    # What it says to do: no quote character, and the field is read as it is.
    batches = list(iter_file_batches(file_table(path="inches.csv", csv={"quote_char": None}), str(tmp_path)))
    assert pa.Table.from_batches(batches).column("name").to_pylist()[-2:] == ['5" screen', '7" screen']


@pytest.mark.skipif(not (SHARED / "fivethirtyeight-mayweather-mcgregor").exists(), reason="shared datasets absent")
def test_messy_real_csv_with_embedded_newlines_and_emoji() -> None:
    spec = file_table(path="tweets.csv")
    batches = list(iter_file_batches(spec, str(SHARED / "fivethirtyeight-mayweather-mcgregor")))
    assert sum(b.num_rows for b in batches) == 12118
