"""Records and nesting (max_depth, unnested child tables) and type drift between pages and runs,
from a real HTTP server through the lake into a real PostgreSQL."""

from __future__ import annotations

import datetime as dt
import decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from sndw.config import HttpTable, table_spec
from sndw.errors import ConfigError, SchemaConflictError, SourceDataError
from sndw.extract import SchemaDriftError
from sndw.extract.http import ChildPartitions, iter_http_batches, requests_client
from sndw.lake import Manifest, write_partition
from sndw.warehouse import LoadSpec, load_manifest

from tests.http_api import Req, Resp, TestApi

DAY = dt.date(2024, 1, 2)
CORPUS = Path(__file__).parent / "bad_inputs" / "json"
HTTP_CASES = yaml.safe_load((CORPUS / "http_cases.yaml").read_text(encoding="utf-8"))


def table(**spec: Any) -> HttpTable:
    parsed = table_spec("http", {"name": "posts", "endpoint": "/posts", "records_path": "data",
                                 "pagination": {"type": "page_number"}, **spec})
    assert isinstance(parsed, HttpTable)
    return parsed


def pages(*page_records: list[dict[str, Any]]) -> Any:
    def route(req: Req) -> Resp:
        page = req.arg("page", 1)
        return Resp(body={"data": page_records[page - 1] if page <= len(page_records) else []})

    return route


def extract(api: TestApi, spec: HttpTable, lake: Path, source: str = "src") -> tuple[Manifest, dict[str, Manifest]]:
    children = ChildPartitions(lake, source, spec, DAY, run_id="r1") if spec.child_tables else None
    with requests_client(api.url, spec) as client:
        manifest = write_partition(iter_http_batches(client, spec, children=children.write if children else None,
                                                     source=source),
                                   lake, "http", source, spec.name, DAY, run_id="r1")
    return manifest, (children.commit() if children else {})


def load(dw: psycopg.Connection, manifest: Manifest, name: str, mode: str = "replace", key: tuple[str, ...] = ()) -> Any:
    return load_manifest(dw, manifest, LoadSpec(schema="public", table=name, write_mode=mode, primary_key=key))


def column_types(dw: psycopg.Connection, name: str) -> dict[str, str]:
    rows = dw.execute("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = %s "
                      "AND column_name NOT LIKE '\\_%%'", (name,)).fetchall()
    return dict(rows)


# ----------------------------------------------------------------------------------- nesting


DEEP = {"id": 1, "a": {"b": {"c": {"d": 1}}, "x": 2}, "tags": ["t"]}


@pytest.mark.parametrize(("depth", "columns"), [
    (1, {"id", "a", "tags"}),
    (2, {"id", "a__b", "a__x", "tags"}),
    (3, {"id", "a__b__c", "a__x", "tags"}),
    (10, {"id", "a__b__c__d", "a__x", "tags"}),
])
def test_max_depth_keeps_deeper_objects_as_json(depth: int, columns: set[str]) -> None:
    with TestApi({"/posts": pages([DEEP])}) as api:
        spec = table(max_depth=depth)
        with requests_client(api.url, spec) as client:
            batch = next(iter_http_batches(client, spec))
    assert set(batch.schema.names) == columns
    for name in columns - {"id", "a__x", "a__b__c__d"}:
        assert batch.schema.field(name).type == pa.json_()


POSTS = [
    {"id": 1, "title": "one", "comments": [{"by": "ann", "text": "hi", "meta": {"likes": 2}},
                                           {"by": "bob", "text": "yo", "meta": {"likes": 0}}],
     "labels": ["a", "b", "c"]},
    {"id": 2, "title": "two", "comments": [], "labels": None},
    {"id": 3, "title": "three", "comments": [{"by": "cy", "text": "!", "meta": None}]},
]


def test_unnested_lists_become_child_tables_linked_to_the_parent(dw: psycopg.Connection, tmp_path: Path) -> None:
    with TestApi({"/posts": pages(POSTS[:2], POSTS[2:])}) as api:
        spec = table(primary_key=["id"], unnest=["comments", "labels"], write_mode="merge", batch_rows=1)
        manifest, children = extract(api, spec, tmp_path)
    assert [c.name for c in spec.child_tables] == ["posts__comments", "posts__labels"]
    assert set(children) == {"posts__comments", "posts__labels"}
    assert manifest.rows == 3 and children["posts__comments"].rows == 3 and children["posts__labels"].rows == 3
    assert (tmp_path / "http" / "src" / "posts__comments" / DAY.isoformat()).is_dir()
    load(dw, manifest, "posts", "merge", ("id",))
    for child in spec.child_tables:
        load(dw, children[child.name], child.target, child.write_mode, tuple(child.key_columns))
    assert "comments" not in column_types(dw, "posts") and "labels" not in column_types(dw, "posts")
    joined = dw.execute("""SELECT p.title, c.parent__index, c.by, c.meta__likes FROM posts p
                           JOIN posts__comments c ON c.parent__id = p.id ORDER BY p.id, c.parent__index""").fetchall()
    assert joined == [("one", 0, "ann", 2), ("one", 1, "bob", 0), ("three", 0, "cy", None)]
    labels = dw.execute("SELECT parent__id, parent__index, value FROM posts__labels ORDER BY 1, 2").fetchall()
    assert labels == [(1, 0, "a"), (1, 1, "b"), (1, 2, "c")]


def test_lists_stay_jsonb_unless_unnested(dw: psycopg.Connection, tmp_path: Path) -> None:
    with TestApi({"/posts": pages(POSTS)}) as api:
        manifest, _ = extract(api, table(), tmp_path)
    load(dw, manifest, "posts")
    assert column_types(dw, "posts")["comments"] == "jsonb"
    assert dw.execute("SELECT comments -> 1 ->> 'by' FROM posts WHERE id = 1").fetchone() == ("bob",)


def test_unnest_needs_a_primary_key_and_a_value_for_it(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unnest .* needs primary_key"):
        table(unnest=["comments"])
    # A key named index would link child rows as parent__index, the items' position column.
    for key in ("index", "Index"):
        with pytest.raises(ConfigError, match="primary_key column named 'index' links child rows as 'parent__index'"):
            table(primary_key=[key], unnest=["comments"])
    assert table(primary_key=["index"]).key_columns == ["index"]  # without unnest: no link columns
    with TestApi({"/posts": pages([{"title": "no id", "comments": [{"x": 1}]}])}) as api:
        with pytest.raises(SourceDataError, match="record 1 has no 'id'"):
            extract(api, table(primary_key=["id"], unnest=["comments"]), tmp_path)


# ------------------------------------------------------------------------------------- drift


def codes(*values: Any, start: int = 1) -> list[dict[str, Any]]:
    return [{"id": start + i, "code": v} for i, v in enumerate(values)]


def test_a_new_field_on_a_later_page_becomes_a_new_column(dw: psycopg.Connection, tmp_path: Path) -> None:
    later = [{"id": 3, "code": 3, "extra": {"flag": True}}]
    with TestApi({"/posts": pages(codes(1, 2), later)}) as api:
        manifest, _ = extract(api, table(batch_rows=2), tmp_path)
    load(dw, manifest, "posts")
    assert column_types(dw, "posts") == {"id": "bigint", "code": "bigint", "extra__flag": "boolean"}
    assert dw.execute("SELECT count(*) FILTER (WHERE extra__flag IS NULL) FROM posts").fetchone() == (2,)


def test_values_that_still_fit_keep_the_type(dw: psycopg.Connection, tmp_path: Path) -> None:
    # 3.0 is the integer 3; an int in a double column is exact; numbers in a text column are text.
    first = [{"id": 1, "n": 1, "f": 0.5, "s": "a"}]
    later = [{"id": 2, "n": 3.0, "f": 2, "s": 7}]
    with TestApi({"/posts": pages(first, later)}) as api:
        manifest, _ = extract(api, table(batch_rows=1), tmp_path)
    load(dw, manifest, "posts")
    assert column_types(dw, "posts") == {"id": "bigint", "n": "bigint", "f": "double precision", "s": "text"}
    assert dw.execute("SELECT n, f, s FROM posts ORDER BY id").fetchall() == [(1, 0.5, "a"), (3, 2.0, "7")]


def test_integers_meeting_fractions_widen_to_exact_numeric(dw: psycopg.Connection, tmp_path: Path) -> None:
    with TestApi({"/posts": pages(codes(10, 20), codes(10.25, 0.1, start=3))}) as api:
        manifest, _ = extract(api, table(batch_rows=2), tmp_path)
    result = load(dw, manifest, "posts")
    assert column_types(dw, "posts")["code"] == "numeric"
    assert {"change": "widen_column", "column": "code", "from": "bigint", "to": "numeric"} in result.schema_changes
    got = [r[0] for r in dw.execute("SELECT code FROM posts ORDER BY id").fetchall()]
    assert got == [decimal.Decimal(v) for v in ("10", "20", "10.25", "0.1")]  # 0.1 exactly, not 0.1000000000000000055


def test_a_type_change_between_pages_fails_by_default_and_loads_nothing(tmp_path: Path) -> None:
    with TestApi({"/posts": pages(codes(1, 2), codes("X-3", start=3))}) as api:
        with pytest.raises(SchemaDriftError) as info:
            extract(api, table(batch_rows=2), tmp_path)
    error = info.value
    assert isinstance(error, SchemaConflictError)
    assert (error.table, error.column, error.old_type, error.new_type) == ("posts", "code", "bigint", "text")
    assert "record 3" in str(error) and "on_type_change: variant" in str(error)
    assert not (tmp_path / "http" / "src" / "posts" / DAY.isoformat()).exists()  # the partition was not swapped in


def test_variant_columns_keep_every_value_unchanged(dw: psycopg.Connection, tmp_path: Path) -> None:
    with TestApi({"/posts": pages(codes(1, 2), codes("X-3", 4, True, start=3))}) as api:
        manifest, _ = extract(api, table(batch_rows=2, on_type_change="variant"), tmp_path)
    load(dw, manifest, "posts")
    assert column_types(dw, "posts") == {"id": "bigint", "code": "bigint", "code__v_text": "text",
                                         "code__v_boolean": "boolean"}
    rows = dw.execute("SELECT id, code, code__v_text, code__v_boolean FROM posts ORDER BY id").fetchall()
    assert rows == [(1, 1, None, None), (2, 2, None, None), (3, None, "X-3", None), (4, 4, None, None),
                    (5, None, None, True)]


def test_column_types_fix_a_type_for_every_page(dw: psycopg.Connection, tmp_path: Path) -> None:
    with TestApi({"/posts": pages(codes(1010, 2020), codes("0303", start=3))}) as api:
        manifest, _ = extract(api, table(batch_rows=2, column_types={"code": "text"}), tmp_path)
    load(dw, manifest, "posts")
    assert column_types(dw, "posts")["code"] == "text"
    assert [r[0] for r in dw.execute("SELECT code FROM posts ORDER BY id")] == ["1010", "2020", "0303"]


def test_a_type_change_between_runs_fails_the_load_and_keeps_the_table(dw: psycopg.Connection, tmp_path: Path) -> None:
    with TestApi({"/posts": pages(codes(1, 2))}) as api:
        manifest, _ = extract(api, table(), tmp_path / "run1")
    load(dw, manifest, "posts", "append")
    with TestApi({"/posts": pages(codes("X-3", "X-4", start=3))}) as api:
        manifest, _ = extract(api, table(), tmp_path / "run2")
    with pytest.raises(SchemaConflictError) as info:
        load(dw, manifest, "posts", "append")
    assert (info.value.column, info.value.old_type) == ("code", "bigint") and "string" in info.value.new_type
    dw.rollback()
    assert dw.execute("SELECT id, code FROM posts ORDER BY id").fetchall() == [(1, 1), (2, 2)]


def test_a_type_hint_never_truncates_values() -> None:
    from sndw.extract import column_array

    assert column_array([1.5, 2.0], pa.int64()).to_pylist() == [1.5, 2.0]  # not [1, 2]
    assert column_array([1, 2], pa.float64()).type == pa.float64()
    assert column_array([1, "a"], pa.int64()).to_pylist() == ["1", "a"]


# ------------------------------------------------- JSON Python reads but cannot carry (issue 21)


@pytest.mark.parametrize("name", sorted(HTTP_CASES))
def test_http_json_corpus(name: str, tmp_path: Path) -> None:
    """Each file of tests/bad_inputs/json/http_cases.yaml as the body of the API's one page."""
    case = HTTP_CASES[name]
    body = (CORPUS / case["file"]).read_bytes()
    if case.get("ndjson_as_list"):
        body = b"[" + b",".join(line for line in body.splitlines() if line.strip()) + b"]"
    with TestApi({"/posts": lambda req: Resp(body=body)}) as api:
        spec = table(records_path=None, pagination={"type": "none"})
        if case["outcome"] == "error":
            with pytest.raises(SourceDataError) as info:
                extract(api, spec, tmp_path)
            for text in case["error_names"]:
                assert text in str(info.value), (text, str(info.value))
            assert not (tmp_path / "http" / "src" / "posts" / DAY.isoformat()).exists()  # nothing published
            return
        manifest, _ = extract(api, spec, tmp_path)
    loaded = pa.concat_tables([pq.read_table(path) for path in manifest.paths]).to_pydict()
    for column, values in case["columns"].items():
        assert loaded[column] == values, column


# ------------------------------------------- the body's bytes are decoded strictly (issue 21)


@pytest.mark.parametrize(("payload", "content_type", "names"), [
    # requests' response.json() replaced the invalid byte with U+FFFD and loaded "caf\ufffd"
    (b'[{"id": 1, "name": "caf' + b"\xe9" + b'"}]', "application/json", ["not valid utf-8", "byte 23"]),
    # a declared charset that the bytes do not follow
    (b'[{"id": 1, "name": "caf' + b"\xe9" + b'"}]', "application/json; charset=utf-8", ["not valid utf-8"]),
])
def test_a_body_that_is_not_its_encoding_fails_and_changes_nothing(payload: bytes, content_type: str,
                                                                   names: list[str], tmp_path: Path) -> None:
    with TestApi({"/posts": lambda req: Resp(body=payload, content_type=content_type)}) as api:
        with pytest.raises(SourceDataError) as info:
            extract(api, table(records_path=None, pagination={"type": "none"}), tmp_path)
    for text in ["posts", "/posts", *names]:
        assert text in str(info.value), (text, str(info.value))
    assert not (tmp_path / "http" / "src" / "posts" / DAY.isoformat()).exists()


@pytest.mark.parametrize(("payload", "content_type"), [
    # text/* without a charset: requests read these UTF-8 bytes as Latin-1 and loaded "cafÃ©"
    ('[{"id": 1, "name": "café"}]'.encode(), "text/plain"),
    ('\ufeff[{"id": 1, "name": "café"}]'.encode(), "application/json"),  # a byte order mark
    ('[{"id": 1, "name": "café"}]'.encode("latin-1"), "application/json; charset=ISO-8859-1"),  # declared
    ('[{"id": 1, "name": "café"}]'.encode("utf-16-le"), "application/json"),  # RFC 8259's older encodings
])
def test_a_body_is_read_in_the_encoding_it_has(payload: bytes, content_type: str, tmp_path: Path) -> None:
    with TestApi({"/posts": lambda req: Resp(body=payload, content_type=content_type)}) as api:
        manifest, _ = extract(api, table(records_path=None, pagination={"type": "none"}), tmp_path)
    loaded = pa.concat_tables([pq.read_table(path) for path in manifest.paths]).to_pydict()
    assert loaded["name"] == ["café"]
