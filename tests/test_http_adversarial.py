"""Responses that made an extract lose or change records under a green run: a server that caps the
page size below what was asked, a 200 body without the records, item fields named like the child
table's link columns, an empty object where the records list belongs. Real HTTP server on localhost."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sndw.config import HttpTable, table_spec
from sndw.errors import ExtractError, PermanentError, SourceDataError
from sndw.extract.http import ChildPartitions, iter_http_batches, requests_client
from sndw.lake import Manifest, write_partition

from tests.http_api import Req, Resp, TestApi, items

DAY = dt.date(2024, 1, 2)
TOTAL = 10


def table(**spec: Any) -> HttpTable:
    parsed = table_spec("http", {"name": "posts", "endpoint": "/posts", "records_path": "data",
                                 "backoff_seconds": 0.01, **spec})
    assert isinstance(parsed, HttpTable)
    return parsed


def ids(api: TestApi, spec: HttpTable) -> list[int]:
    with requests_client(api.url, spec) as client:
        return [r["id"] for b in iter_http_batches(client, spec, source="src") for r in b.to_pylist()]


def extract(api: TestApi, spec: HttpTable, lake: Path) -> tuple[Manifest, dict[str, Manifest]]:
    children = ChildPartitions(lake, "src", spec, DAY, run_id="r1") if spec.child_tables else None
    try:
        with requests_client(api.url, spec) as client:
            manifest = write_partition(
                iter_http_batches(client, spec, children=children.write if children else None, source="src"),
                lake, "http", "src", spec.name, DAY, run_id="r1")
    except BaseException:
        if children:
            children.abort()
        raise
    return manifest, (children.commit() if children else {})


def published(lake: Path, name: str = "posts") -> bool:
    return (lake / "http" / "src" / name / DAY.isoformat()).exists()


# ------------------------------------------------- a server that caps the page size (H4)


def capped_offset(req: Req) -> Resp:
    """Whatever limit is asked, at most 3 records a page; the total says 10."""
    offset, limit = req.arg("offset", 0), min(req.arg("limit", 100), 3)
    return Resp(body={"total": TOTAL, "data": items(offset + 1, min(offset + limit, TOTAL) + 1)})


def capped_pages(req: Req) -> Resp:
    page = req.arg("page", 1)
    start = (page - 1) * 3 + 1
    return Resp(body={"meta": {"total": TOTAL}, "data": items(start, min(start + 3, TOTAL + 1))})


def test_offset_paging_goes_on_past_a_short_page_while_the_total_says_more_exist() -> None:
    with TestApi({"/posts": capped_offset}) as api:
        spec = table(pagination={"type": "offset", "limit": 5, "total_path": "total"})
        assert ids(api, spec) == list(range(1, TOTAL + 1))
        sent = api.requests_to("/posts")
    assert [r.query["offset"] for r in sent] == ["0", "3", "6", "9"]  # by the records received, not the limit
    assert {r.query["limit"] for r in sent} == {"5"}


def test_page_number_paging_goes_on_past_a_short_page_while_the_total_says_more_exist() -> None:
    with TestApi({"/posts": capped_pages}) as api:
        spec = table(pagination={"type": "page_number", "page_size_param": "per_page", "page_size": 5,
                                 "total_path": "meta.total"})
        assert ids(api, spec) == list(range(1, TOTAL + 1))
        assert len(api.requests_to("/posts")) == 4


def test_an_empty_page_before_the_total_is_an_error_and_publishes_nothing(tmp_path: Path) -> None:
    """An API that stops paging at some depth (or a total of something else) would lose the rest."""
    def stops_early(req: Req) -> Resp:
        offset = req.arg("offset", 0)
        return Resp(body={"total": TOTAL, "data": items(offset + 1, offset + 4) if offset < 6 else []})

    with TestApi({"/posts": stops_early}) as api:
        spec = table(pagination={"type": "offset", "limit": 3, "total_path": "total"},
                     params={"api_token": "s3cr3t-value"})
        with pytest.raises(ExtractError) as info:
            extract(api, spec, tmp_path)
    assert not isinstance(info.value, PermanentError)  # records deleted while paging: a retry reads them all
    message = str(info.value)
    for text in ("src.posts", "page 3", "offset=6", "6 records", f"total of {TOTAL}", "api_token=***"):
        assert text in message, (text, message)
    assert "s3cr3t-value" not in message
    assert not published(tmp_path)


@pytest.mark.parametrize("style", ["next_link", "cursor"])
def test_a_missing_next_page_before_the_total_is_an_error(style: str, tmp_path: Path) -> None:
    """A link or cursor API that stops giving the next page while its total says more exist."""
    def linked(req: Req) -> Resp:
        page = int(req.arg("cursor", 1) if style == "cursor" else req.arg("page", 1))
        following = page + 1 if page < 2 else None
        link = {"next": f"/posts?page={following}" if following else None} if style == "next_link" else \
            {"next_cursor": str(following) if following else None}
        return Resp(body={"total": TOTAL, "data": items(page * 3 - 2, page * 3 + 1), **link})

    pagination = {"type": style, "total_path": "total"}
    with TestApi({"/posts": linked}) as api:
        with pytest.raises(ExtractError) as info:
            extract(api, table(pagination=pagination), tmp_path)
    message = str(info.value)
    for text in ("src.posts", "page 2", "has no next page", "after 6 records", f"total of {TOTAL}"):
        assert text in message, (text, message)
    assert not published(tmp_path)


def test_a_total_that_shrinks_while_paging_ends_at_the_empty_page() -> None:
    """Records deleted while paging: the empty page's own total is what counts."""
    def shrinking(req: Req) -> Resp:
        offset = req.arg("offset", 0)
        if offset == 0:
            return Resp(body={"total": TOTAL, "data": items(1, 4)})
        return Resp(body={"total": 3, "data": []})

    with TestApi({"/posts": shrinking}) as api:
        spec = table(pagination={"type": "offset", "limit": 3, "total_path": "total"})
        assert ids(api, spec) == [1, 2, 3]
        assert len(api.requests_to("/posts")) == 2


# ---------------------------------------------- a page without the records (H5, M4)


def by_page(*bodies: Any) -> Any:
    def route(req: Req) -> Resp:
        page = req.arg("page", 1)
        return Resp(body=bodies[page - 1] if page <= len(bodies) else {"data": []})

    return route


@pytest.mark.parametrize(("body", "records_path", "names"), [
    ({"error": "quota exceeded for key Zq81-k3y"}, "data", ["no 'data'", "'error'"]),
    ({"data": {"error": "quota exceeded for key Zq81-k3y", "code": 7}}, "data.items",
     ["no 'items'", "data", "'error', 'code'"]),
    ({"data": None}, "data.items", ["no 'items'", "data is null"]),
    (b"", "data", ["no 'data'", "empty or JSON null"]),
])
def test_a_page_without_its_records_path_is_an_error_not_the_last_page(
        body: Any, records_path: str, names: list[str], tmp_path: Path) -> None:
    first, last = {"data": items(1, 4)}, {"data": items(7, 10)}
    if records_path == "data.items":
        first, last = {"data": {"items": items(1, 4)}}, {"data": {"items": items(7, 10)}}
    with TestApi({"/posts": by_page(first, body, last)}) as api:
        spec = table(records_path=records_path, pagination={"type": "page_number"})
        with pytest.raises(SourceDataError) as info:
            extract(api, spec, tmp_path)
    message = str(info.value)
    assert isinstance(info.value, PermanentError)
    for text in ("src.posts", "page 2", "/posts?page=2", "records_path", *names):
        assert text in message, (text, message)
    assert "Zq81-k3y" not in message and "quota" not in message  # the body's keys only: values may hold secrets
    assert not published(tmp_path)


@pytest.mark.parametrize("end", [{"data": []}, {"data": None}, {"data": {}}])
def test_an_explicit_empty_list_null_or_empty_object_is_the_last_page(end: dict[str, Any]) -> None:
    with TestApi({"/posts": by_page({"data": items(1, 3)}, end, {"data": items(3, 5)})}) as api:
        spec = table(pagination={"type": "page_number"})
        with requests_client(api.url, spec) as client:
            rows = [r for b in iter_http_batches(client, spec) for r in b.to_pylist()]
        assert len(api.requests_to("/posts")) == 2
    assert [r["id"] for r in rows] == [1, 2]  # no all-NULL row for {}


def test_an_empty_object_as_the_whole_body_is_no_record_and_a_full_one_is_one() -> None:
    with TestApi({"/empty": lambda req: Resp(body={}), "/one": lambda req: Resp(body={"id": 5})}) as api:
        assert ids(api, table(endpoint="/empty", records_path=None)) == []
        assert ids(api, table(endpoint="/one", records_path=None)) == [5]


# ------------------------------------------ item fields named like the link columns (H3)


@pytest.mark.parametrize(("comment", "field", "column"), [
    ({"id": 11, "text": "reply", "parent": {"id": 10}}, "parent__id", "parent__id"),
    ({"id": 20, "text": "x", "parent__index": 7}, "parent__index", "parent__index"),
    ({"id": 21, "text": "y", "Parent__Index": 7}, "Parent__Index", "parent__index"),
])
def test_an_item_field_named_like_a_link_column_is_refused(comment: dict[str, Any], field: str, column: str,
                                                           tmp_path: Path) -> None:
    posts = [{"id": 1, "comments": [{"id": 9, "text": "top", "parent_id": None}]},
             {"id": 2, "comments": [comment]}]
    with TestApi({"/posts": by_page({"data": posts})}) as api:
        spec = table(primary_key=["id"], unnest=["comments"], pagination={"type": "page_number"})
        with pytest.raises(SourceDataError) as info:
            extract(api, spec, tmp_path)
    message = str(info.value)
    for text in ("src.posts__comments", "record 2", "item 0", repr(field), repr(column), "unnest"):
        assert text in message, (text, message)
    assert not published(tmp_path) and not published(tmp_path, "posts__comments")


def test_item_fields_that_only_resemble_a_link_column_are_kept(tmp_path: Path) -> None:
    posts = [{"id": 1, "comments": [{"id": 9, "parent_id": 4, "parentIndex": 3, "parent": "x"}]}]
    with TestApi({"/posts": by_page({"data": posts})}) as api:
        spec = table(primary_key=["id"], unnest=["comments"], pagination={"type": "page_number"})
        _, children = extract(api, spec, tmp_path)
    assert children["posts__comments"].rows == 1
