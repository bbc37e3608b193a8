"""PostgreSQL -> PostgreSQL type fidelity: every warehouse column has the source's type and every
value's text equals the source's; types that cannot be carried fail the extract, naming them.

The cases are the SQL files of tests/bad_inputs/sql_types/, each with its documented outcome in
its header (``-- outcome: exact|error``, ``-- column_types: {json}``, ``-- types: {json}`` for the
expected warehouse types that differ from the source's, ``-- error: part | part`` for the words
the error must name).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from datetime import date
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sndw.errors import ExtractError, PermanentError
from sndw.extract.sql import iter_postgres_batches, table_query
from sndw.lake import write_partition
from sndw.naming import lake_table_dir
from sndw.warehouse import LoadSpec, load_manifest

from tests.conftest import DAY, ROOT, TEST_DB_PREFIX, run, states, with_database

CASES = Path(__file__).parent / "bad_inputs" / "sql_types"
PARTITION = date(2024, 1, 2)
PAGILA = ROOT.parent / "shared" / "datasets" / "pagila"


def header(path: Path) -> dict[str, Any]:
    meta: dict[str, Any] = {"column_types": {}, "types": {}, "error": []}
    for line in path.read_text().splitlines():
        if not line.startswith("-- ") or ":" not in line:
            continue
        key, _, value = line[3:].partition(":")
        if key in ("column_types", "types"):
            meta[key] = json.loads(value)
        elif key == "error":
            meta[key] = [part.strip() for part in value.split("|")]
        elif key == "outcome":
            meta[key] = value.strip()
    return meta


def source_types(conn: psycopg.Connection, table: str) -> dict[str, str]:
    """What each column should become: domains their base type, enums and composites text."""
    rows = conn.execute(
        """
        SELECT a.attname,
               CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod)
                    WHEN t.typtype IN ('e', 'c') THEN 'text'
                    WHEN e.typtype IN ('e', 'c') THEN 'text[]'
                    ELSE format_type(a.atttypid, a.atttypmod) END
        FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid LEFT JOIN pg_type e ON e.oid = t.typelem
        WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum
        """, (table,)).fetchall()
    return dict(rows)


def table_types(conn: psycopg.Connection, table: str) -> dict[str, str]:
    rows = conn.execute("SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
                        "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped", (table,)).fetchall()
    return dict(rows)


def texts(conn: psycopg.Connection, table: str, column: str, key: str = "id") -> list[tuple[Any, ...]]:
    return conn.execute(f'SELECT "{column}"::text FROM {table} ORDER BY "{key}"').fetchall()  # noqa: S608


def assert_same(source: psycopg.Connection, dw: psycopg.Connection, table: str, target: str,
                expected_types: dict[str, str], key: str = "id") -> None:
    got = table_types(dw, target)
    assert {c: got.get(c) for c in expected_types} == expected_types
    for column in expected_types:
        assert texts(dw, target, column, key) == texts(source, table, column, key), column


def extract_and_load(source_db: str, dw_url: str, lake: Path, table: str, column_types: dict[str, str]) -> None:
    batches = iter_postgres_batches(source_db, table_query(f"public.{table}"), batch_bytes=1 << 16, max_rows=2,
                                    table=table, column_types=column_types)
    manifest = write_partition(batches, lake, "sql", "types", table, PARTITION)
    with psycopg.connect(dw_url) as dw:
        load_manifest(dw, manifest, LoadSpec("raw", table))


@pytest.mark.parametrize("case", sorted(CASES.glob("*.sql")), ids=lambda p: p.stem)
def test_sql_type_case(case: Path, source_db: str, dw_url: str, tmp_path: Path) -> None:
    meta = header(case)
    table = case.stem
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute(case.read_text())
    lake = tmp_path / "lake"
    if meta["outcome"] == "error":
        with pytest.raises(ExtractError) as info:
            extract_and_load(source_db, dw_url, lake, table, meta["column_types"])
        for part in meta["error"]:
            assert part in str(info.value)
        folder = lake_table_dir(lake, "sql", "types", table)
        assert not folder.exists() or not any(folder.iterdir())  # nothing in the lake, no temporary folder
        with psycopg.connect(dw_url) as dw:
            assert dw.execute("SELECT to_regclass(%s)", (f"raw.{table}",)).fetchone() == (None,)
        return
    assert meta["outcome"] == "exact"
    extract_and_load(source_db, dw_url, lake, table, meta["column_types"])
    with psycopg.connect(source_db) as source, psycopg.connect(dw_url) as dw:
        expected = {**source_types(source, f"public.{table}"), **meta["types"]}
        assert_same(source, dw, f"public.{table}", f"raw.{table}", expected)


def test_a_second_load_of_the_same_types_appends_exactly(source_db: str, dw_url: str, tmp_path: Path) -> None:
    """The staged path (text columns cast in the warehouse) also works into an existing table."""
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute((CASES / "type_matrix.sql").read_text())
    for _ in range(2):
        batches = iter_postgres_batches(source_db, table_query("public.type_matrix"), table="type_matrix")
        manifest = write_partition(batches, tmp_path / "lake", "sql", "types", "type_matrix", PARTITION)
        with psycopg.connect(dw_url) as dw:
            load_manifest(dw, manifest, LoadSpec("raw", "type_matrix", write_mode="append"))
    with psycopg.connect(source_db) as source, psycopg.connect(dw_url) as dw:
        assert dw.execute("SELECT count(*), count(DISTINCT c_tsvector::text) FROM raw.type_matrix").fetchone() == (
            2 * source.execute("SELECT count(*) FROM type_matrix").fetchone()[0],  # type: ignore[index]
            source.execute("SELECT count(DISTINCT c_tsvector::text) FROM type_matrix").fetchone()[0])  # type: ignore[index]


def test_merge_of_carried_types_updates_exactly(source_db: str, dw_url: str, tmp_path: Path) -> None:
    """merge stages its rows too: the text-carried columns are cast on the way into its staging."""
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute((CASES / "type_matrix.sql").read_text())
    spec = LoadSpec("raw", "type_matrix", write_mode="merge", primary_key=["id"])
    for change in ("", "UPDATE type_matrix SET c_money = c_money / 2, c_tsvector = 'new:1'"):
        if change:
            with psycopg.connect(source_db, autocommit=True) as conn:
                conn.execute(change)
        batches = iter_postgres_batches(source_db, table_query("public.type_matrix"), table="type_matrix")
        manifest = write_partition(batches, tmp_path / "lake", "sql", "types", "type_matrix", PARTITION)
        with psycopg.connect(dw_url) as dw:
            load_manifest(dw, manifest, spec)
    with psycopg.connect(source_db) as source, psycopg.connect(dw_url) as dw:
        assert_same(source, dw, "public.type_matrix", "raw.type_matrix", source_types(source, "public.type_matrix"))


def test_a_query_with_two_columns_of_one_name(source_db: str) -> None:
    query = "SELECT 1 AS id, 12.5::money AS id, 'a'::text AS id"
    batches = list(iter_postgres_batches(source_db, query, table="dupes"))
    assert len(batches) == 1 and batches[0].schema.names == ["id", "id", "id"]
    assert batches[0].columns[1].to_pylist() == ["12.50"] and batches[0].columns[0].to_pylist() == [1]
    assert [f.metadata[b"sndw.pg_type"] for f in batches[0].schema] == [b"integer", b"money", b"text"]


@pytest.mark.slow
def test_type_matrix_through_a_dag_run(env: dict[str, Any], source_db: str, configs: list[Path],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    with psycopg.connect(source_db, autocommit=True) as conn:
        for case in ("type_matrix", "column_types_text", "extension_type"):
            conn.execute((CASES / f"{case}.sql").read_text())
    monkeypatch.setenv("AIRFLOW_CONN_TYPES_PG", source_db)
    config = {
        "name": "types_pg", "kind": "sql", "conn_id": "types_pg", "target_schema": "raw",
        "start_date": "2024-01-01", "retries": 0, "tables": [
            {"name": "type_matrix", "table": "public.type_matrix"},
            {"name": "escape", "table": "public.column_types_text", "column_types": {"h": "text", "r": "text"}},
            {"name": "uncarriable", "table": "public.extension_type"},
        ],
    }
    dag_run = run(config, configs, DAY)
    by_task = states(dag_run)
    assert {t: s for t, s in by_task.items() if "uncarriable" not in t and s != "success"} == {}
    assert any("uncarriable" in t and s == "failed" for t, s in by_task.items()), by_task
    with psycopg.connect(source_db) as source, psycopg.connect(env["dw_url"]) as dw:
        assert_same(source, dw, "public.type_matrix", "raw.type_matrix", source_types(source, "public.type_matrix"))
        assert_same(source, dw, "public.column_types_text", "raw.escape", {"id": "integer", "h": "text", "r": "text"})
        assert dw.execute("SELECT to_regclass('raw.uncarriable')").fetchone() == (None,)
        errors = [r[0] for r in dw.execute("SELECT error_message FROM etl_audit_log WHERE status <> 'success' "
                                           "AND target_table LIKE %s", ("%uncarriable%",)).fetchall()]
    assert errors and all(w in errors[0] for w in (
        "types_pg.uncarriable", "public.extension_type", "column 'h'", "hstore", "column_types")), errors
    lake = lake_table_dir(env["lake"], "sql", "types_pg", "uncarriable")
    assert not lake.exists() or not any(lake.iterdir())


@pytest.mark.skipif(not (PAGILA / "pagila-schema.sql").is_file(), reason="Pagila is not in ../shared/datasets")
def test_pagila_film_every_column_exact(source_db: str, dw_url: str, tmp_path: Path) -> None:
    """Pagila's film: a tsvector, an enum, a domain over integer, text[] and numeric(4,2)."""
    psql = shutil.which("psql") or next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin/psql"))), None)
    if psql is None:
        pytest.skip("psql is not installed")
    with psycopg.connect(source_db, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = 'postgres'").fetchone():
            conn.execute("CREATE ROLE postgres NOLOGIN")
    for part in ("pagila-schema.sql", "pagila-data.sql"):
        subprocess.run([str(psql), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", source_db, "-f", str(PAGILA / part)],
                       check=True, capture_output=True)
    batches = iter_postgres_batches(source_db, table_query("public.film"), table="film")
    manifest = write_partition(batches, tmp_path / "lake", "sql", "pagila", "film", PARTITION)
    with psycopg.connect(dw_url) as dw:
        load_manifest(dw, manifest, LoadSpec("raw", "film"))
    with psycopg.connect(source_db) as source, psycopg.connect(dw_url) as dw:
        expected = source_types(source, "public.film")
        assert expected["fulltext"] == "tsvector" and expected["release_year"] == "integer"
        assert_same(source, dw, "public.film", "raw.film", expected, key="film_id")


# ------------------------------------------------------------ source database encodings, limits


@pytest.fixture
def encoded_db(pg_url: str) -> Iterator[Callable[[str], str]]:
    """A factory of source databases in a given server encoding (C locale), dropped afterwards."""
    made: list[str] = []

    def make(encoding: str) -> str:
        name = f"{TEST_DB_PREFIX}enc_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} ENCODING {} LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0").format(
                sql.Identifier(name), sql.Literal(encoding)))
        made.append(name)
        return with_database(pg_url, name)

    yield make
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for name in made:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def test_a_latin1_source_loads_exactly(encoded_db: Callable[[str], str], dw_url: str, tmp_path: Path) -> None:
    """LATIN1 text reaches the lake as UTF-8 (the server converts it, exactly) and loads as the source's."""
    source_db = encoded_db("LATIN1")
    with psycopg.connect(source_db, autocommit=True) as conn:
        assert conn.info.encoding == "iso8859-1"  # psycopg reads the source in its own encoding: the truth
        conn.execute("CREATE TYPE mood AS ENUM ('süß', 'ça va'); "
                     "CREATE TABLE latin1 (id integer PRIMARY KEY, t text, v varchar(10), c char(4), m mood, "
                     "a text[], j jsonb, x xml)")
        conn.execute("INSERT INTO latin1 VALUES (1, 'café ÿ ¿ © µ', 'Größe', 'éèêë', 'süß', '{à,\"ß\",NULL}', "
                     "'{\"clé\": \"valeur é\"}', '<a>é</a>'), (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL), "
                     "(3, %s, 'ASCII', 'abcd', 'ça va', '{}', '[]', '')", (bytes(range(0xA0, 0x100)).decode("latin1"),))
    extract_and_load(source_db, dw_url, tmp_path / "lake", "latin1", {})
    import pyarrow.parquet as pq

    lake_text = pq.read_table(next((tmp_path / "lake").rglob("*.parquet"))).column("t").combine_chunks()
    lake_text.validate(full=True)  # valid UTF-8 in the lake
    assert lake_text.to_pylist()[0] == "café ÿ ¿ © µ"
    with psycopg.connect(source_db) as source, psycopg.connect(dw_url) as dw:
        expected = source_types(source, "public.latin1")
        assert_same(source, dw, "public.latin1", "raw.latin1", expected)
        assert dw.execute("SELECT t FROM raw.latin1 WHERE id = 1").fetchone() == ("café ÿ ¿ © µ",)


def test_a_sql_ascii_source_carries_utf8_and_refuses_other_bytes(encoded_db: Callable[[str], str], dw_url: str,
                                                                 tmp_path: Path) -> None:
    """SQL_ASCII declares no encoding: UTF-8 text (and every non-text type) is carried exactly;
    text that is not UTF-8 fails the extract naming table, column and value, before the lake."""
    source_db = encoded_db("SQL_ASCII")
    with psycopg.connect(source_db, autocommit=True) as conn:
        conn.execute("CREATE TABLE ascii_ok (id integer PRIMARY KEY, n numeric(8,2), d date, t text, j jsonb)")
        conn.execute("INSERT INTO ascii_ok VALUES (1, 12.50, '2024-01-02', convert_from('\\x636166c3a9'::bytea, "
                     "'SQL_ASCII'), '{\"a\": 1}'), (2, NULL, NULL, NULL, NULL), (3, -1, 'infinity', 'plain', '[]')")
        conn.execute("CREATE TABLE ascii_bad (id integer, good text, bad text)")
        conn.execute("INSERT INTO ascii_bad VALUES (1, 'x', 'ok'), (2, 'y', convert_from('\\x636166e9'::bytea, "
                     "'SQL_ASCII'))")
    extract_and_load(source_db, dw_url, tmp_path / "lake", "ascii_ok", {})
    with psycopg.connect(dw_url) as dw:
        assert dw.execute("SELECT id, n::text, d::text, t, j::text FROM raw.ascii_ok ORDER BY id").fetchall() == [
            (1, "12.50", "2024-01-02", "café", '{"a": 1}'), (2, None, None, None, None),
            (3, "-1.00", "infinity", "plain", "[]")]
        assert table_types(dw, "raw.ascii_ok")["n"] == "numeric(8,2)"
    with pytest.raises(ExtractError) as info:
        extract_and_load(source_db, dw_url, tmp_path / "lake", "ascii_bad", {})
    message = str(info.value)
    for part in ("ascii_bad", "column 'bad'", "b'caf\\xe9'", "not UTF-8", "SQL_ASCII", "convert_from("):
        assert part in message, (part, message)
    folder = lake_table_dir(tmp_path / "lake", "sql", "types", "ascii_bad")
    assert not folder.exists() or not any(folder.iterdir())
    with psycopg.connect(dw_url) as dw:
        assert dw.execute("SELECT to_regclass('raw.ascii_bad')").fetchone() == (None,)
    # The documented way out: convert the column in a query from the encoding it was written in.
    query = ("SELECT id, good, convert_from(convert(convert_to(bad, 'SQL_ASCII'), 'LATIN1', 'UTF8'), 'UTF8') AS bad "
             "FROM ascii_bad")
    manifest = write_partition(iter_postgres_batches(source_db, query, table="ascii_bad"), tmp_path / "lake",
                               "sql", "types", "ascii_bad", PARTITION)
    with psycopg.connect(dw_url) as dw:
        load_manifest(dw, manifest, LoadSpec("raw", "ascii_bad"))
        assert dw.execute("SELECT bad FROM raw.ascii_bad ORDER BY id").fetchall() == [("ok",), ("café",)]


def wide_table(conn: psycopg.Connection, name: str, columns: int) -> None:
    conn.execute(sql.SQL("CREATE TABLE {} ({})").format(sql.Identifier(name), sql.SQL(", ").join(
        sql.SQL("{} integer").format(sql.Identifier(f"c{i}")) for i in range(1, columns + 1))))
    conn.execute(sql.SQL("INSERT INTO {} (c1, {}) VALUES (1, 2)").format(
        sql.Identifier(name), sql.Identifier(f"c{columns}")))


@pytest.mark.parametrize("columns", [1597, 1598, 1600])
def test_the_column_limit_is_checked_before_the_extract(columns: int, source_db: str, dw_url: str,
                                                        tmp_path: Path) -> None:
    """1,597 columns + _loaded_at, _partition_date, _file_id = PostgreSQL's 1,600: loaded. One more
    is refused before anything is read, naming the table, its count, the added columns and the limit."""
    table = f"wide_{columns}"
    with psycopg.connect(source_db, autocommit=True) as conn:
        wide_table(conn, table, columns)
    if columns <= 1597:
        extract_and_load(source_db, dw_url, tmp_path / "lake", table, {})
        with psycopg.connect(dw_url) as dw:
            assert len(table_types(dw, f"raw.{table}")) == 1600
            assert dw.execute(f'SELECT c1, "c{columns}" FROM raw.{table}').fetchone() == (1, 2)  # noqa: S608
        return
    with pytest.raises(ExtractError) as info:
        extract_and_load(source_db, dw_url, tmp_path / "lake", table, {})
    message = str(info.value)
    for part in (table, f"{columns} columns", "_loaded_at, _partition_date, _file_id", "1600", "at most 1597"):
        assert part in message, (part, message)
    folder = lake_table_dir(tmp_path / "lake", "sql", "types", table)
    assert not folder.exists() or not any(folder.iterdir())


def test_a_merge_load_counts_its_row_number_column(dw_url: str, tmp_path: Path) -> None:
    """A merge stages rows with _sndw_row: a table of 1,597 columns made for merge is refused at the
    load, before the table is created, naming the added columns; the warehouse is unchanged."""
    import pyarrow as pa

    batch = pa.RecordBatch.from_arrays([pa.array([1])] * 1597, names=[f"c{i}" for i in range(1, 1598)])
    manifest = write_partition(iter([batch]), tmp_path / "lake", "sql", "types", "wide_merge", PARTITION)
    with psycopg.connect(dw_url) as dw:
        with pytest.raises(PermanentError) as info:
            load_manifest(dw, manifest, LoadSpec("raw", "wide_merge", write_mode="merge", primary_key=["c1"]))
        assert dw.execute("SELECT to_regclass('raw.wide_merge')").fetchone() == (None,)
    for part in ("raw.wide_merge", "1597 columns", "_sndw_row", "1600", "at most 1596"):
        assert part in str(info.value), (part, str(info.value))
