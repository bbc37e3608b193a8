"""A schema contract per table (issue 22 part 3) on a real PostgreSQL source and warehouse, through
`etl.cli sync` and a DAG run: evolve widens columns in place and records it, freeze fails a run whose
data brings a new or changed column (naming it, the warehouse unchanged), discard_columns loads the
known columns and records the others; a first load creates the table under any contract."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from sndw.typeplan import safe_widening

from tests.conftest import run, states
from tests.test_deletes import rows, same_rows, write_config
from tests.test_quality import table_hash


def source_table(url: str) -> None:
    with psycopg.connect(url) as src:
        src.execute("CREATE TABLE parts (id int PRIMARY KEY, code varchar(5) NOT NULL, n integer, amount numeric(6,2))")
        src.execute("INSERT INTO parts VALUES (1, 'ab', 7, 1234.50), (2, 'cdefg', -3, 0.01)")


def types(dw_url: str, table: str = "parts") -> dict[str, str]:
    return dict(rows(dw_url, "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                             "%s::regclass AND attnum > 0 AND NOT attisdropped AND attname NOT LIKE '\\_%%'", (table,)))


def audits(dw_url: str) -> list[tuple[Any, ...]]:
    return rows(dw_url, "SELECT status, schema_changes, error_message FROM etl_audit_log WHERE step = 'load' ORDER BY id")


def sync(cli: Any, tmp_path: Path, source_db: str, contract: str | None) -> tuple[int, Any, str]:
    table = {"name": "parts", "table": "public.parts", "write_mode": "merge", "primary_key": ["id"]}
    if contract:
        table["schema_contract"] = contract
    path = write_config(tmp_path, "plant", "sql", [table], conn_id="plant_src")
    return cli("sync", str(path), "--lake", str(tmp_path / "lake"), "--json", env={"AIRFLOW_CONN_PLANT_SRC": source_db})  # type: ignore[no-any-return]


def test_evolve_widens_columns_in_place_and_records_it(cli: Any, tmp_path: Path, source_db: str, dw_url: str) -> None:
    source_table(source_db)
    code, out, err = sync(cli, tmp_path, source_db, None)
    assert code == 0, err
    assert types(dw_url) == {"id": "integer", "code": "character varying(5)", "n": "integer", "amount": "numeric(6,2)"}
    with psycopg.connect(source_db) as src:
        src.execute("ALTER TABLE parts ALTER code TYPE varchar(20), ALTER n TYPE bigint, ALTER amount TYPE numeric(12,3)")
        src.execute("INSERT INTO parts VALUES (3, 'a longer code', 9000000000, 123456789.125)")
    code, out, err = sync(cli, tmp_path, source_db, "evolve")
    assert code == 0, err
    assert types(dw_url) == {"id": "integer", "code": "character varying(20)", "n": "bigint",
                             "amount": "numeric(12,3)"}
    assert out[0]["schema_changes"] == [
        {"change": "widen_column", "column": "code", "from": "character varying(5)", "to": "character varying(20)"},
        {"change": "widen_column", "column": "n", "from": "integer", "to": "bigint"},
        {"change": "widen_column", "column": "amount", "from": "numeric(6,2)", "to": "numeric(12,3)"}]
    assert audits(dw_url)[-1][1] == out[0]["schema_changes"]
    same_rows(rows(source_db, "SELECT id, code, n, amount FROM parts"), rows(dw_url, "SELECT id, code, n, amount FROM parts"))
    with psycopg.connect(source_db) as src:  # varchar to text
        src.execute("ALTER TABLE parts ALTER code TYPE text")
        src.execute("INSERT INTO parts VALUES (4, repeat('x', 300), 1, 1)")
    code, out, err = sync(cli, tmp_path, source_db, None)
    assert code == 0, err
    assert types(dw_url)["code"] == "text"
    same_rows(rows(source_db, "SELECT id, code, n, amount FROM parts"), rows(dw_url, "SELECT id, code, n, amount FROM parts"))


def test_freeze_fails_a_new_or_changed_column_by_name(cli: Any, tmp_path: Path, source_db: str, dw_url: str) -> None:
    source_table(source_db)
    code, out, err = sync(cli, tmp_path, source_db, "freeze")  # the first load creates the table
    assert code == 0, err
    frozen = types(dw_url)
    with psycopg.connect(dw_url) as dw:
        before = table_hash(dw, "parts")
    with psycopg.connect(source_db) as src:
        src.execute("ALTER TABLE parts ALTER code TYPE varchar(20)")
        src.execute("UPDATE parts SET n = 8 WHERE id = 1")
    code, out, err = sync(cli, tmp_path, source_db, "freeze")
    assert code == 1
    assert ("public.parts: schema_contract 'freeze': column 'code' changed: the warehouse column is "
            "character varying(5) and the data needs character varying(20)") in out[0]["error"]
    with psycopg.connect(source_db) as src:
        src.execute("ALTER TABLE parts ALTER code TYPE varchar(5), ADD COLUMN note text, ADD COLUMN made date")
    code, out, err = sync(cli, tmp_path, source_db, "freeze")
    assert code == 1
    assert "column 'note' is new (text) in the data, and so are made; nothing was loaded" in out[0]["error"]
    assert types(dw_url) == frozen
    with psycopg.connect(dw_url) as dw:
        assert table_hash(dw, "parts") == before
    assert [(a[0], bool(a[2] and "schema_contract 'freeze'" in a[2])) for a in audits(dw_url)] == [
        ("success", False), ("failure", True), ("failure", True)]


def test_discard_columns_loads_the_known_columns(cli: Any, tmp_path: Path, source_db: str, dw_url: str) -> None:
    source_table(source_db)
    assert sync(cli, tmp_path, source_db, "discard_columns")[0] == 0
    with psycopg.connect(source_db) as src:
        src.execute("ALTER TABLE parts ADD COLUMN note text")
        src.execute("UPDATE parts SET note = 'x', n = 70 WHERE id = 1")
        src.execute("INSERT INTO parts VALUES (3, 'z', 1, 2, 'new')")
    code, out, err = sync(cli, tmp_path, source_db, "discard_columns")
    assert code == 0, err
    assert out[0]["schema_changes"] == [{"change": "discard_column", "column": "note", "type": "text"}]
    assert audits(dw_url)[-1][1] == out[0]["schema_changes"]
    assert "note" not in types(dw_url)
    same_rows(rows(source_db, "SELECT id, code, n, amount FROM parts"), rows(dw_url, "SELECT id, code, n, amount FROM parts"))


@pytest.mark.parametrize(("current", "incoming", "declared", "wider"), [
    ("integer", pa.int64(), "bigint", "bigint"),
    ("smallint", pa.int32(), "integer", "integer"),
    ("bigint", pa.int32(), "integer", None),
    ("integer", pa.int64(), None, None),  # no declared type: the column is the user's choice
    ("character varying(5)", pa.string(), "character varying(9)", "character varying(9)"),
    ("character varying(9)", pa.string(), "character varying(5)", None),
    ("character varying(5)", pa.string(), "text", "text"),
    ("character varying(5)", pa.string(), "character varying", "character varying"),
    ("numeric(6,2)", pa.decimal128(8, 2), "numeric(8,2)", "numeric(8,2)"),
    ("numeric(6,2)", pa.decimal128(6, 4), "numeric(6,4)", "numeric(8,4)"),  # no digit is cut either side
    ("numeric(6,2)", pa.decimal128(38, 10), None, "numeric(38,10)"),
    ("numeric(6,2)", pa.string(), "numeric", "numeric"),
    ("numeric(8,2)", pa.decimal128(6, 2), "numeric(6,2)", None),
    ("text", pa.string(), "character varying(5)", None),
])
def test_safe_widenings(current: str, incoming: pa.DataType, declared: str | None, wider: str | None) -> None:
    assert safe_widening(current, incoming, declared) == wider


@pytest.mark.slow
def test_a_frozen_table_in_a_dag_run(env: dict[str, Any], configs: list[Path]) -> None:
    data = env["tmp"] / "files"
    data.mkdir()
    (data / "items.csv").write_text("id,name\n1,a\n2,b\n")
    source = {"name": "contract_dag", "kind": "file", "base_path": str(data), "start_date": "2024-01-01",
              "retries": 2, "retry_delay_seconds": 0,
              "tables": [{"name": "items", "path": "items.csv", "write_mode": "merge", "primary_key": ["id"],
                          "schema_contract": "freeze"}]}
    assert set(states(run(source, configs)).values()) == {"success"}
    (data / "items.csv").write_text("id,name,colour\n1,a,red\n3,c,blue\n")
    dag_run = run(source, configs)
    assert states(dag_run) == {"extract_items": "success", "load_items": "failed"}
    load = next(t for t in dag_run.get_task_instances() if t.task_id == "load_items")
    assert load.try_number == 1  # a contract is not fixed by a retry
    same_rows([(1, "a"), (2, "b")], rows(env["dw_url"], "SELECT id, name FROM items"))
    error = rows(env["dw_url"], "SELECT error_message FROM etl_audit_log WHERE status = 'failure'")
    assert len(error) == 1 and "column 'colour' is new (text) in the data" in error[0][0], error
