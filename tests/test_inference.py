"""Type inference that never loses a character (issue 9 items 5, 7 and column names of 6): CSV, JSON,
NDJSON, Parquet and HTTP records, through the lake into a real PostgreSQL, and one DAG run."""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import math
import sqlite3
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from sndw.config import FileTable, HttpTable, table_spec
from sndw.errors import ExtractError, SchemaConflictError, SourceDataError
from sndw.extract import SchemaDriftError
from sndw.extract.files import iter_file_batches
from sndw.extract.http import iter_http_batches, requests_client
from sndw.lake import Manifest, write_partition
from sndw.pipeline import ExtractRequest, SourceAccess, extract_table
from sndw.warehouse import LoadSpec, load_manifest

from tests.conftest import run, states
from tests.http_api import Req, Resp, TestApi

DAY = dt.date(2024, 1, 2)
CORPUS = Path(__file__).parent / "bad_inputs"
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
TABLE = "files_t"


def cases(kind: str) -> dict[str, dict[str, Any]]:
    return yaml.safe_load((CORPUS / kind / "infer_cases.yaml").read_text(encoding="utf-8"))


def file_table(path: str, **spec: Any) -> FileTable:
    parsed = table_spec("file", {"name": TABLE, "path": path, **{k: v for k, v in spec.items() if v is not None}})
    assert isinstance(parsed, FileTable)
    return parsed


def column_info(dw: psycopg.Connection, table: str) -> dict[str, str]:
    rows = dw.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s "
                      "AND column_name NOT LIKE '\\_%%' ORDER BY ordinal_position", (table,)).fetchall()
    return dict(rows)


def texts(dw: psycopg.Connection, table: str, column: str) -> list[str | None]:
    """A column's values as PostgreSQL prints them, in load order (the lake keeps the file's order).

    Numeric values without the trailing zeros of their batch's common scale: an Arrow decimal column
    has one scale, so 2 next to 0.25 is stored as 2.00 (the same number; see the report).
    """
    numeric = column_info(dw, table).get(column) == "numeric"
    query = psycopg.sql.SQL("SELECT {}::text FROM {} ORDER BY ctid").format(
        psycopg.sql.SQL("trim_scale({})").format(psycopg.sql.Identifier(column)) if numeric
        else psycopg.sql.Identifier(column), psycopg.sql.Identifier(table))
    return [r[0] for r in dw.execute(query).fetchall()]


def extract_and_load(dw: psycopg.Connection, spec: FileTable, base: Path, lake: Path) -> Manifest:
    manifest = write_partition(iter_file_batches(spec, str(base)), lake, "file", "src", spec.name, DAY, run_id="r1")
    load_manifest(dw, manifest, LoadSpec(schema="public", table=spec.target, write_mode="replace"))
    return manifest


def check_case(dw: psycopg.Connection, case: dict[str, Any], spec: FileTable, base: Path, lake: Path) -> None:
    """Load one corpus case and hold it to its documented outcome."""
    dw.execute("SET TIME ZONE 'UTC'")
    if case["outcome"] == "error":
        with pytest.raises((SourceDataError, SchemaConflictError)) as info:
            extract_and_load(dw, spec, base, lake)
        for name in case["error_names"]:
            assert str(name) in str(info.value), (name, str(info.value))
        assert not (lake / "file" / "src" / spec.name / DAY.isoformat()).exists()  # nothing swapped in
        assert dw.execute("SELECT to_regclass(%s)", (spec.target,)).fetchone() == (None,)
        return
    extract_and_load(dw, spec, base, lake)
    types = column_info(dw, spec.target)
    for column, (pg_type, values) in case["columns"].items():
        assert types.get(column) == pg_type, (column, types)
        assert texts(dw, spec.target, column) == values, column


# ------------------------------------------------------------------------------- the corpus


@pytest.mark.parametrize("name", sorted(cases("csv")))
def test_csv_corpus(name: str, dw: psycopg.Connection, tmp_path: Path) -> None:
    case = cases("csv")[name]
    spec = file_table(case["file"], column_types=case.get("column_types"), batch_rows=2)
    check_case(dw, case, spec, CORPUS / "csv", tmp_path / "lake")


@pytest.mark.parametrize("batch_rows", [1, 2, None])
@pytest.mark.parametrize("name", sorted(cases("json")))
def test_json_corpus_whatever_the_batch_size(name: str, batch_rows: int | None, dw: psycopg.Connection,
                                             tmp_path: Path) -> None:
    case = cases("json")[name]
    spec = file_table(case["file"], column_types=case.get("column_types"), batch_rows=batch_rows,
                      on_type_change=case.get("on_type_change"))
    check_case(dw, case, spec, CORPUS / "json", tmp_path / "lake")


PARQUET_TYPES = {
    "timestamp[ns]": pa.timestamp("ns"), "timestamp[ns, tz=UTC]": pa.timestamp("ns", tz="UTC"),
    "timestamp[s]": pa.timestamp("s"), "time64[ns]": pa.time64("ns"), "duration[ns]": pa.duration("ns"),
    "decimal256(50,2)": pa.decimal256(50, 2), "decimal256(20,3)": pa.decimal256(20, 3),
}


def parquet_cases() -> dict[str, dict[str, Any]]:
    return yaml.safe_load((CORPUS / "parquet" / "cases.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", sorted(parquet_cases()))
def test_parquet_corpus(name: str, dw: psycopg.Connection, tmp_path: Path) -> None:
    case = parquet_cases()[name]
    arrays = {}
    for column, given in case["columns"].items():
        data_type = PARQUET_TYPES[given["type"]]
        values = [decimal.Decimal(v) if v is not None and pa.types.is_decimal(data_type) else v
                  for v in given["values"]]
        arrays[column] = pa.array(values, data_type)
    pq.write_table(pa.table(arrays), tmp_path / f"{name}.parquet")
    spec = file_table(f"{name}.parquet", column_types=case.get("column_types"))
    check_case(dw, {**case, "columns": case.get("expect", {})}, spec, tmp_path, tmp_path / "lake")


def sqlite_cases() -> dict[str, dict[str, Any]]:
    return yaml.safe_load((CORPUS / "sqlite" / "cases.yaml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("batch_rows", [1, 2, None])
@pytest.mark.parametrize("name", sorted(sqlite_cases()))
def test_sqlite_corpus_whatever_the_batch_size(name: str, batch_rows: int | None, dw: psycopg.Connection,
                                               tmp_path: Path) -> None:
    case = sqlite_cases()[name]
    names = list(case["values"])
    rows = list(zip(*case["values"].values(), strict=True))
    db = tmp_path / "src.db"
    with sqlite3.connect(db) as conn:  # columns without a declared type: SQLite keeps each value's own
        conn.execute(f"CREATE TABLE t ({', '.join(names)})")
        conn.executemany(f"INSERT INTO t VALUES ({', '.join('?' for _ in names)})", rows)  # noqa: S608 - the case's names
    table = table_spec("sql", {k: v for k, v in {"name": "t", "query": "SELECT * FROM t ORDER BY rowid",
                                                 "column_types": case.get("column_types"),
                                                 "batch_rows": batch_rows}.items() if v is not None})
    lake = tmp_path / "lake"
    request = ExtractRequest(pipeline="p", source="s", kind="sql", table=table, partition=DAY, lake_root=str(lake))
    access = SourceAccess(dbapi_connect=lambda: sqlite3.connect(db))

    def extract_and_load() -> None:
        manifest = extract_table(request, access)
        load_manifest(dw, manifest, LoadSpec(schema="public", table="t", write_mode="replace"))

    if case["outcome"] == "error":
        with pytest.raises((ExtractError, SchemaConflictError)) as info:
            extract_and_load()
        for part in case["error_names"]:
            assert str(part) in str(info.value), (part, str(info.value))
        assert not (lake / "sql" / "s" / "t" / DAY.isoformat()).exists()
        assert dw.execute("SELECT to_regclass('t')").fetchone() == (None,)
        return
    extract_and_load()
    types = column_info(dw, "t")
    for column, (pg_type, values) in case["columns"].items():
        assert types.get(column) == pg_type, (column, types)
        assert texts(dw, "t", column) == values, column


def test_a_type_in_one_json_file_holds_for_the_next_file(tmp_path: Path) -> None:
    (tmp_path / "a.ndjson").write_text('{"code": 1}\n{"code": 2}\n')
    (tmp_path / "b.ndjson").write_text('{"code": 3}\n{"code": "X-4"}\n')
    with pytest.raises(SchemaDriftError) as info:
        list(iter_file_batches(file_table("*.ndjson"), str(tmp_path)))
    assert f"{tmp_path / 'b.ndjson'} record 2" in str(info.value) and info.value.column == "code"


# ------------------------------------------------------------------ every value read exactly


def _same(raw: str | None, value: Any) -> bool:
    """Whether a loaded value is exactly the text the file holds."""
    if raw is None or value is None:
        return raw is None and value is None
    if isinstance(value, str):
        return value == raw
    if isinstance(value, bool):
        return raw.lower() == str(value).lower()
    if isinstance(value, int):
        return raw == str(value)
    if isinstance(value, decimal.Decimal):
        return raw == str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return raw.lower().lstrip("-") in ("nan", "inf", "infinity")
        digits = raw.lstrip("-")
        padded = digits[:1] == "0" and digits[1:2].isdigit()  # 01.5: the zero would be lost
        return not padded and decimal.Decimal(repr(value)) == decimal.Decimal(raw)  # 1.50 is 1.5
    if isinstance(value, dt.datetime):
        parsed = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
        if parsed.tzinfo is not None and value.tzinfo is not None:
            return parsed == value
        return parsed == value.replace(tzinfo=None)
    if isinstance(value, (dt.date, dt.time)):
        return type(value).fromisoformat(raw) == value
    return False


CSV_FILES = sorted((CORPUS / "csv").glob("infer_*.csv")) + sorted(
    SHARED.glob("*/*.csv") if SHARED.exists() else [])


@pytest.mark.parametrize("path", CSV_FILES, ids=lambda p: p.name)
def test_every_csv_value_reads_back_as_the_text_the_file_holds(path: Path) -> None:
    # The messy real CSVs of ../shared/datasets too: whatever type a column gets, no character is lost.
    # The texts as Python's own reader sees them (it ends lines at CR too, and keeps repeated names).
    with open(path, encoding="utf-8", newline="") as handle:
        header, *records = list(csv.reader(handle))
    got = pa.Table.from_batches(list(iter_file_batches(file_table(str(path)))))
    assert got.num_rows == len(records) and got.num_columns == len(header)
    for position, name in enumerate(header):
        values = got.column(position).to_pylist()
        for index, (record, value) in enumerate(zip(records, values, strict=True)):
            text = record[position]
            assert _same(text if text != "" else None, value), (path.name, name, index, text, value)


@pytest.mark.skipif(not SHARED.exists(), reason="shared datasets absent")
def test_the_messy_real_csvs_keep_their_types() -> None:
    # What loaded before issue 9 loads the same: the fivethirtyeight files have no lossy column.
    got = pa.Table.from_batches(list(iter_file_batches(file_table(
        str(SHARED / "fivethirtyeight-comic-characters" / "marvel-wikia-data.csv")))))
    types = {f.name: f.type for f in got.schema}
    assert types["page_id"] == pa.int64() and types["APPEARANCES"] == pa.int64() and types["Year"] == pa.int64()
    assert pa.types.is_string(types["name"]) or pa.types.is_large_string(types["name"])


# ------------------------------------------------------------------------- declared types


def test_column_types_apply_to_parquet_files_too(dw: psycopg.Connection, tmp_path: Path) -> None:
    pq.write_table(pa.table({"id": [1, 2], "zip": [1010, 2020], "n": ["12", "-3"]}), tmp_path / "a.parquet")
    spec = file_table("a.parquet", column_types={"zip": "text", "n": "bigint"})
    extract_and_load(dw, spec, tmp_path, tmp_path / "lake")
    assert column_info(dw, TABLE) == {"id": "bigint", "zip": "text", "n": "bigint"}
    assert texts(dw, TABLE, "zip") == ["1010", "2020"] and texts(dw, TABLE, "n") == ["12", "-3"]

    pq.write_table(pa.table({"n": ["12", "twelve"]}), tmp_path / "b.parquet")
    with pytest.raises(SourceDataError) as info:
        list(iter_file_batches(file_table("b.parquet", column_types={"n": "bigint"}), str(tmp_path)))
    assert all(s in str(info.value) for s in ("b.parquet", "row 2", "'n'", "'twelve'"))


def test_column_types_keys_match_normalised_names(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("Zip Code,ID\n01234,1\n")
    batch = next(iter_file_batches(file_table("a.csv", column_types={"zip_code": "bigint"}), str(tmp_path)))
    assert batch.column("Zip Code").to_pylist() == [1234] and batch.schema.field("Zip Code").type == pa.int64()


# --------------------------------------------------------------------- HTTP: batch-independent


def http_table(**spec: Any) -> HttpTable:
    parsed = table_spec("http", {"name": "posts", "endpoint": "/posts", "records_path": "data",
                                 "pagination": {"type": "page_number"},
                                 **{k: v for k, v in spec.items() if v is not None}})
    assert isinstance(parsed, HttpTable)
    return parsed


def pages(*bodies: Any) -> Any:
    def route(req: Req) -> Resp:
        page = req.arg("page", 1)
        return Resp(body=bodies[page - 1] if page <= len(bodies) else {"data": []})

    return route


def http_load(dw: psycopg.Connection, bodies: tuple[Any, ...], lake: Path, **spec: Any) -> None:
    table = http_table(**spec)
    with TestApi({"/posts": pages(*bodies)}) as api, requests_client(api.url, table) as client:
        manifest = write_partition(iter_http_batches(client, table), lake, "http", "src", "posts", DAY, run_id="r1")
    load_manifest(dw, manifest, LoadSpec(schema="public", table="posts", write_mode="replace"))


SPLIT = ({"data": [{"id": 1, "code": 1}, {"id": 2, "code": 2}]}, {"data": [{"id": 3, "code": "X-3"}]})
ONE_PAGE = ({"data": [{"id": 1, "code": 1}, {"id": 2, "code": 2}, {"id": 3, "code": "X-3"}]},)


@pytest.mark.parametrize("bodies", [SPLIT, ONE_PAGE], ids=["two pages", "one page"])
@pytest.mark.parametrize("batch_rows", [1, 2, None])
def test_a_type_change_fails_whatever_the_batching(bodies: tuple[Any, ...], batch_rows: int | None,
                                                   tmp_path: Path) -> None:
    table = http_table(batch_rows=batch_rows)
    with TestApi({"/posts": pages(*bodies)}) as api, requests_client(api.url, table) as client:
        with pytest.raises(SchemaDriftError) as info:
            list(iter_http_batches(client, table))
    error = info.value
    assert (error.table, error.column, error.old_type, error.new_type) == ("posts", "code", "bigint", "text")
    assert "record 3" in str(error) and "'X-3'" in str(error)


@pytest.mark.parametrize("bodies", [SPLIT, ONE_PAGE], ids=["two pages", "one page"])
@pytest.mark.parametrize("batch_rows", [1, 2, None])
def test_variant_columns_are_the_same_whatever_the_batching(bodies: tuple[Any, ...], batch_rows: int | None,
                                                            dw: psycopg.Connection, tmp_path: Path) -> None:
    http_load(dw, bodies, tmp_path, batch_rows=batch_rows, on_type_change="variant")
    assert column_info(dw, "posts") == {"id": "bigint", "code": "bigint", "code__v_text": "text"}
    assert dw.execute("SELECT id, code, code__v_text FROM posts ORDER BY id").fetchall() == [
        (1, 1, None), (2, 2, None), (3, None, "X-3")]


@pytest.mark.parametrize("batch_rows", [1, 2, None])
def test_integers_then_fractions_are_numeric_whatever_the_batching(batch_rows: int | None, dw: psycopg.Connection,
                                                                   tmp_path: Path) -> None:
    # one batch used to give double precision, two batches numeric
    http_load(dw, ({"data": [{"id": 1, "n": 1}, {"id": 2, "n": 0.1}]},), tmp_path, batch_rows=batch_rows)
    assert column_info(dw, "posts")["n"] == "numeric"
    assert [r[0] for r in dw.execute("SELECT trim_scale(n)::text FROM posts ORDER BY id")] == ["1", "0.1"]


def test_json_numbers_no_double_holds_arrive_exactly(dw: psycopg.Connection, tmp_path: Path) -> None:
    body = ('{"data": [{"id": 1, "x": 0.1000000000000000055511151231257827, "big": 123456789012345678901,'
            ' "huge": 1e400, "plain": 0.1}]}')
    http_load(dw, (body,), tmp_path)
    assert column_info(dw, "posts") == {"id": "bigint", "x": "numeric", "big": "numeric", "huge": "text",
                                        "plain": "double precision"}
    assert dw.execute("SELECT x::text, big::text, huge, plain FROM posts").fetchone() == (
        "0.1000000000000000055511151231257827", "123456789012345678901", "1e400", 0.1)


def test_a_declared_type_that_a_value_does_not_fit_is_an_error_even_with_variants(tmp_path: Path) -> None:
    table = http_table(column_types={"code": "bigint"}, on_type_change="variant")
    with TestApi({"/posts": pages(*SPLIT)}) as api, requests_client(api.url, table) as client:
        with pytest.raises(SchemaDriftError, match=r"record 3: value 'X-3' \(text\) does not fit the type bigint"):
            list(iter_http_batches(client, table))


# -------------------------------------------------------------------------------- a DAG run


@pytest.mark.slow
def test_a_file_source_loads_zip_codes_big_integers_and_declared_types(env: dict[str, Any],
                                                                       configs: list[Path]) -> None:
    data = env["tmp"] / "files"
    data.mkdir()
    (data / "shops.csv").write_text(
        "id,zip,big,Prix Café,amount,ref\n"
        "1,01234,123456789012345678901,1.50,0.1000000000000000055511151231257827,0042\n"
        "2,00501,-5,2,3,17\n", encoding="utf-8")
    (data / "events.ndjson").write_text('{"id": 1, "code": 1}\n{"id": 2, "code": "X-3"}\n')
    config = {"name": "e2e_infer", "kind": "file", "base_path": str(data), "start_date": "2024-01-01",
              "retries": 0, "tables": [
                  {"name": "shops", "path": "shops.csv", "column_types": {"amount": "numeric", "ref": "text"}},
                  {"name": "events", "path": "events.ndjson", "on_type_change": "variant", "batch_rows": 1}]}
    dag_run = run(config, configs)
    assert set(states(dag_run).values()) == {"success"}, states(dag_run)
    with psycopg.connect(env["dw_url"]) as dw:
        assert column_info(dw, "shops") == {"id": "bigint", "zip": "text", "big": "numeric",
                                            "prix_café": "double precision", "amount": "numeric", "ref": "text"}
        assert dw.execute("SELECT zip, big::text, prix_café, trim_scale(amount)::text, ref FROM shops "
                          "ORDER BY id").fetchall() == [
            ("01234", "123456789012345678901", 1.5, "0.1000000000000000055511151231257827", "0042"),
            ("00501", "-5", 2.0, "3", "17")]
        assert column_info(dw, "events") == {"id": "bigint", "code": "bigint", "code__v_text": "text"}
        assert dw.execute("SELECT code, code__v_text FROM events ORDER BY id").fetchall() == [(1, None), (None, "X-3")]


@pytest.mark.parametrize(("text", "expected"), [
    ("0.1", 0.1), ("2.5e3", 2500.0), ("-0.25", -0.25),
    ("0.1000000000000000055511151231257827", decimal.Decimal("0.1000000000000000055511151231257827")),
    ("123456789.123456789", decimal.Decimal("123456789.123456789")),
    ("1e400", "1e400"), ("1e-400", "1e-400"),
])
def test_a_json_number_is_a_float_only_when_a_float_holds_it(text: str, expected: Any) -> None:
    from sndw.extract import JsonFloat, JsonNumber, exact_float

    if isinstance(expected, str):  # wider than numeric(38): its own text, marked as a number for JSON
        expected = JsonNumber(expected)
    if isinstance(expected, float) and repr(expected) != text:  # the double, and its text as written
        expected = JsonFloat(text)

    got = exact_float(text)
    assert type(got) is type(expected) and got == expected
    assert getattr(got, "text", text) == text
