"""Inputs of an adversarial probe of file sources (and http records, which share the flattening):
a value is never dropped or moved to another field's column, through the lake into a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sndw.config import FileTable, HttpTable, table_spec
from sndw.errors import SourceDataError
from sndw.extract.files import iter_file_batches
from sndw.extract.http import iter_http_batches, requests_client
from sndw.lake import Manifest, write_partition
from sndw.naming import ColumnNames
from sndw.warehouse import LoadSpec, load_manifest

from tests.http_api import Req, Resp, TestApi

DAY = dt.date(2024, 1, 2)
TABLE = "adv_t"


def file_table(path: str, **spec: Any) -> FileTable:
    parsed = table_spec("file", {"name": TABLE, "path": path, **{k: v for k, v in spec.items() if v is not None}})
    assert isinstance(parsed, FileTable)
    return parsed


def extract_and_load(dw: psycopg.Connection, spec: FileTable, base: Path, lake: Path) -> Manifest:
    manifest = write_partition(iter_file_batches(spec, str(base)), lake, "file", "src", spec.name, DAY, run_id="r1")
    load_manifest(dw, manifest, LoadSpec(schema="public", table=spec.target, write_mode="replace"))
    return manifest


def rows(dw: psycopg.Connection, *columns: str) -> list[tuple[Any, ...]]:
    query = psycopg.sql.SQL("SELECT {} FROM {} ORDER BY id").format(
        psycopg.sql.SQL(", ").join(psycopg.sql.Identifier(c) for c in columns), psycopg.sql.Identifier(TABLE))
    return dw.execute(query).fetchall()


def columns(dw: psycopg.Connection) -> list[str]:
    found = dw.execute("SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                       "AND column_name NOT LIKE '\\_%%' ORDER BY ordinal_position", (TABLE,)).fetchall()
    return [r[0] for r in found]


def write_ndjson(path: Path, records: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")


def assert_nothing_loaded(dw: psycopg.Connection, lake: Path) -> None:
    assert not (lake / "file" / "src" / TABLE / DAY.isoformat()).exists()
    assert dw.execute("SELECT to_regclass(%s)", (TABLE,)).fetchone() == (None,)


# ------------------------------------------------- a nested key and a flat key of one name (H1)

FLAT_FIRST = {"id": 1, "a__b": "flat-1", "a": {"b": "nested-1"}}
NESTED_FIRST = {"id": 1, "a": {"b": "nested-1"}, "a__b": "flat-1"}


@pytest.mark.parametrize("record", [NESTED_FIRST, FLAT_FIRST], ids=["nested_first", "flat_first"])
def test_a_nested_and_a_flat_key_of_one_flattened_name_fail_naming_both(record: dict[str, Any], dw: psycopg.Connection,
                                                                         tmp_path: Path) -> None:
    write_ndjson(tmp_path / "in" / "x.ndjson", [{"id": 0, "a": {"b": "only-nested"}}, record])
    with pytest.raises(SourceDataError) as info:
        extract_and_load(dw, file_table("x.ndjson"), tmp_path / "in", tmp_path / "lake")
    message = str(info.value)
    for part in (TABLE, str(tmp_path / "in" / "x.ndjson"), "record 2", "'a.b'", "'a__b'"):
        assert part in message, (part, message)
    assert_nothing_loaded(dw, tmp_path / "lake")


def test_keys_that_flatten_apart_still_load(dw: psycopg.Connection, tmp_path: Path) -> None:
    write_ndjson(tmp_path / "in" / "x.ndjson", [{"id": 1, "a": {"b": "nested"}, "a__c": "flat"}])
    extract_and_load(dw, file_table("x.ndjson"), tmp_path / "in", tmp_path / "lake")
    assert rows(dw, "a__b", "a__c") == [("nested", "flat")]


@pytest.mark.parametrize("record", [NESTED_FIRST, FLAT_FIRST], ids=["nested_first", "flat_first"])
def test_http_records_with_a_nested_and_a_flat_key_of_one_name_fail(record: dict[str, Any], tmp_path: Path) -> None:
    def route(req: Req) -> Resp:
        return Resp(body={"data": [record] if req.arg("page", 1) == 1 else []})

    spec = table_spec("http", {"name": "posts", "endpoint": "/posts", "records_path": "data",
                               "pagination": {"type": "page_number"}})
    assert isinstance(spec, HttpTable)
    with TestApi({"/posts": route}) as api, requests_client(api.url, spec) as client:
        with pytest.raises(SourceDataError) as info:
            list(iter_http_batches(client, spec, source="blog"))
    assert "'a.b'" in str(info.value) and "'a__b'" in str(info.value)
    assert str(info.value).startswith("blog.posts: page 1 record 1: fields"), str(info.value)


# ------------------------------------------------ names that collide once normalised (H2)

UPPER_LOWER = [("UPPER-1", "lower-1"), ("UPPER-2", "lower-2"), ("UPPER-3", "lower-3"), ("UPPER-4", "lower-4")]


def case_records(swap_from: int) -> list[dict[str, Any]]:
    """Records with keys ``Name`` and ``name``; from record ``swap_from`` on in the other key order."""
    out = []
    for i, (upper, lower) in enumerate(UPPER_LOWER, 1):
        pairs = [("Name", upper), ("name", lower)]
        out.append({"id": i, **dict(reversed(pairs) if i >= swap_from else pairs)})
    return out


@pytest.mark.parametrize("batch_rows", [1, 2, None])
def test_key_order_changing_between_batches_never_swaps_values(batch_rows: int | None, dw: psycopg.Connection,
                                                                tmp_path: Path) -> None:
    write_ndjson(tmp_path / "in" / "case.ndjson", case_records(swap_from=3))
    extract_and_load(dw, file_table("case.ndjson", batch_rows=batch_rows), tmp_path / "in", tmp_path / "lake")
    assert columns(dw) == ["id", "name_2", "name"]  # order of first appearance; 'name' is the key 'name'
    assert rows(dw, "name_2", "name") == UPPER_LOWER


def test_key_order_changing_between_files_of_a_glob_never_swaps_values(dw: psycopg.Connection, tmp_path: Path) -> None:
    records = case_records(swap_from=2)
    write_ndjson(tmp_path / "in" / "part1.ndjson", records[:1])
    write_ndjson(tmp_path / "in" / "part2.ndjson", records[1:])
    extract_and_load(dw, file_table("*.ndjson"), tmp_path / "in", tmp_path / "lake")
    assert rows(dw, "name_2", "name") == UPPER_LOWER


def test_csv_header_order_changing_between_files_never_swaps_values(dw: psycopg.Connection, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.csv").write_text("id,Name,name\n1,UPPER-1,lower-1\n", encoding="utf-8")
    (tmp_path / "in" / "b.csv").write_text("id,name,Name\n2,lower-2,UPPER-2\n", encoding="utf-8")
    extract_and_load(dw, file_table("*.csv"), tmp_path / "in", tmp_path / "lake")
    assert rows(dw, "name_2", "name") == UPPER_LOWER[:2]


@pytest.mark.parametrize("batch_rows", [1, None])
def test_a_name_first_seen_in_a_later_record_gets_the_same_column_whatever_the_batch(
        batch_rows: int | None, dw: psycopg.Connection, tmp_path: Path) -> None:
    records = [{"id": 1, "Name": "UPPER-1"}, {"id": 2, "name": "lower-2", "Name": "UPPER-2"}]
    write_ndjson(tmp_path / "in" / "x.ndjson", records)
    extract_and_load(dw, file_table("x.ndjson", batch_rows=batch_rows), tmp_path / "in", tmp_path / "lake")
    # 'Name' was alone in record 1, so it has 'name'; 'name' came later and takes 'name_2'
    assert rows(dw, "name", "name_2") == [("UPPER-1", None), ("UPPER-2", "lower-2")]


def test_column_names_are_decided_by_the_names_not_their_order() -> None:
    one, other = ColumnNames(), ColumnNames()
    one.add(["id", "Name", "name", "NAME"])
    other.add(["NAME", "name", "id", "Name"])
    assert one.columns == other.columns == {"id": "id", "name": "name", "NAME": "name_2", "Name": "name_3"}
    one.add(["user_id", "userId"])  # a later group: earlier names keep their columns
    one.add(["Name", "name"])
    assert one.columns["Name"] == "name_3" and one.columns["userId"] == "user_id_2"


# ---------------------------------------------------------------------- CSV null_values (M2)

EMPTIES = 'id,q\n1,""\n2,\n3,x\n4,NULL\n5\n'


@pytest.mark.parametrize(("null_values", "expected"), [
    (None, [None, None, "x", "NULL", None]),  # the default [""]: an empty field, quoted or not, is NULL
    ([""], [None, None, "x", "NULL", None]),
    ([], ["", "", "x", "NULL", None]),  # a missing field (row 5) is NULL whatever the list
    (["NULL"], ["", "", "x", None, None]),
    (["NULL", ""], [None, None, "x", None, None]),
])
def test_null_values_name_exactly_the_values_read_as_null(null_values: list[str] | None, expected: list[Any],
                                                          dw: psycopg.Connection, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "e.csv").write_text(EMPTIES, encoding="utf-8")
    spec = file_table("e.csv", csv={"null_values": null_values} if null_values is not None else None, batch_rows=2)
    extract_and_load(dw, spec, tmp_path / "in", tmp_path / "lake")
    assert [r[0] for r in rows(dw, "q")] == expected


def test_an_empty_field_that_is_not_null_keeps_a_number_column_text(dw: psycopg.Connection, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "e.csv").write_text("id,n\n1,5\n2,\n3\n", encoding="utf-8")
    extract_and_load(dw, file_table("e.csv", csv={"null_values": []}), tmp_path / "in", tmp_path / "lake")
    assert rows(dw, "n") == [("5",), ("",), (None,)]


def test_missing_fields_are_null_without_a_header_too(dw: psycopg.Connection, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "e.csv").write_text("a preamble line\n1,a\n2\n3,\n", encoding="utf-8")
    spec = file_table("e.csv", csv={"null_values": [], "has_header": False, "skip_rows": 1})
    extract_and_load(dw, spec, tmp_path / "in", tmp_path / "lake")
    assert dw.execute("SELECT column_0, column_1 FROM adv_t ORDER BY 1").fetchall() == [(1, "a"), (2, None), (3, "")]


# --------------------------------------------------------------------- byte order marks (E4)


@pytest.mark.parametrize(("name", "text"), [
    ("x.json", '[{"id": 1, "v": "a"}, {"id": 2, "v": "b"}]'),
    ("x.ndjson", '{"id": 1, "v": "a"}\n{"id": 2, "v": "b"}\n'),
])
def test_json_files_with_a_byte_order_mark_load(name: str, text: str, dw: psycopg.Connection, tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_bytes(b"\xef\xbb\xbf" + text.encode())
    extract_and_load(dw, file_table(name), tmp_path / "in", tmp_path / "lake")
    assert columns(dw) == ["id", "v"]
    assert rows(dw, "id", "v") == [(1, "a"), (2, "b")]


# ------------------------------------------------ numbers inside lists and objects (jsonb)

def test_numbers_inside_lists_and_objects_stay_numbers_with_their_digits(dw: psycopg.Connection,
                                                                         tmp_path: Path) -> None:
    """A number no double holds, inside a list or object, was written into jsonb as a string
    ("0.1000000000000000055511"); jsonb's numbers are numeric and hold any of them exactly."""
    path = tmp_path / "in" / "n.ndjson"
    path.parent.mkdir(parents=True)
    path.write_text('{"id": 1, "arr": [0.1000000000000000055511, 1e400, 12345678901234567890123456789012345678901, '
                    '0.1, "1e400"], "obj": {"k": [{"p": 0.1000000000000000055511}]}}\n', encoding="utf-8")
    extract_and_load(dw, file_table("n.ndjson"), tmp_path / "in", tmp_path / "lake")
    got = dw.execute("SELECT jsonb_typeof(arr -> 0), arr ->> 0, jsonb_typeof(arr -> 1), (arr ->> 1)::numeric = 1e400, "
                     "arr ->> 2, arr ->> 3, jsonb_typeof(arr -> 4), obj__k #>> '{0,p}' FROM adv_t").fetchone()
    assert got == ("number", "0.1000000000000000055511", "number", True,
                   "12345678901234567890123456789012345678901", "0.1", "string", "0.1000000000000000055511")


@pytest.mark.parametrize("word", ["NaN", "Infinity", "-Infinity"])
def test_nan_or_infinity_inside_a_list_fails_the_extract_naming_the_record(word: str, dw: psycopg.Connection,
                                                                          tmp_path: Path) -> None:
    """Python reads JSON's NaN and Infinity words, jsonb has no number for them: the extract fails
    naming the file, the record and the field, instead of publishing a partition whose load fails."""
    path = tmp_path / "in" / "n.ndjson"
    path.parent.mkdir(parents=True)
    path.write_text(f'{{"id": 1, "arr": [1.5]}}\n{{"id": 2, "arr": [2.5, {word}]}}\n', encoding="utf-8")
    with pytest.raises(SourceDataError) as info:
        extract_and_load(dw, file_table("n.ndjson"), tmp_path / "in", tmp_path / "lake")
    message = str(info.value)
    for part in (TABLE, str(path), "record 2", "field 'arr'", "NaN or Infinity"):
        assert part in message, (part, message)
    assert_nothing_loaded(dw, tmp_path / "lake")


def test_nan_and_infinity_read_as_text_keep_their_spelling(dw: psycopg.Connection, tmp_path: Path) -> None:
    """A field whose values mix numbers and NaN is text: NaN is written as JSON spells it, not 'nan'."""
    write_path = tmp_path / "in" / "t.ndjson"
    write_path.parent.mkdir(parents=True)
    write_path.write_text('{"id": 1, "x": NaN}\n{"id": 2, "x": Infinity}\n{"id": 3, "x": -Infinity}\n{"id": 4, "x": "a"}\n',
                          encoding="utf-8")
    extract_and_load(dw, file_table("t.ndjson"), tmp_path / "in", tmp_path / "lake")
    assert rows(dw, "x") == [("NaN",), ("Infinity",), ("-Infinity",), ("a",)]


def test_a_json_number_read_as_text_keeps_its_digits_as_written(dw: psycopg.Connection, tmp_path: Path) -> None:
    """column_types: {x: text} asks for the text: 1.50 stays '1.50' (it was Python's '1.5'), 1E2 '1E2'."""
    path = tmp_path / "in" / "d.ndjson"
    path.parent.mkdir(parents=True)
    path.write_text('{"id": 1, "x": 1.50, "y": 1.50}\n{"id": 2, "x": 1E2, "y": 2.5e3}\n{"id": 3, "x": 0.1, "y": 7}\n',
                    encoding="utf-8")
    extract_and_load(dw, file_table("d.ndjson", column_types={"x": "text"}), tmp_path / "in", tmp_path / "lake")
    assert rows(dw, "x") == [("1.50",), ("1E2",), ("0.1",)]
    # Undeclared, the same numbers are doubles: their values, as a double holds them.
    assert dw.execute("SELECT y FROM adv_t ORDER BY id").fetchall() == [(1.5,), (2500.0,), (7.0,)]
