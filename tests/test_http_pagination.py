"""Every pagination style and stop condition against a real HTTP server on localhost."""

from __future__ import annotations

import base64
import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from sndw.config import HttpTable, table_spec
from sndw.errors import PermanentError
from sndw.extract.http import (
    HttpRefusedError,
    first_params,
    iter_http_batches,
    link_header,
    requests_client,
)
from sndw.lake import write_partition

from tests.http_api import Req, Resp, TestApi, always_new_next, ignores_paging, items

TOTAL = 230


def table(**spec: Any) -> HttpTable:
    parsed = table_spec("http", {"name": "res", "endpoint": "/items", "backoff_seconds": 0.01, **spec})
    assert isinstance(parsed, HttpTable)
    return parsed


def ids(api: TestApi, spec: HttpTable, **kwargs: Any) -> list[int]:
    with requests_client(api.url, spec) as client:
        return [r["id"] for b in iter_http_batches(client, spec, **kwargs) for r in b.to_pylist()]


def _token(n: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{n}".encode()).decode()


def cursor_route(req: Req) -> Resp:
    start = int(base64.urlsafe_b64decode(req.query["cursor"]).decode().split(":")[1]) if "cursor" in req.query else 0
    size = req.arg("limit", 50)
    stop = min(start + size, TOTAL)
    nxt = _token(stop) if stop < TOTAL else None
    return Resp(body={"data": items(start + 1, stop + 1), "meta": {"next_cursor": nxt, "total": TOTAL}})


def link_route(relative: bool) -> Any:
    def route(req: Req) -> Resp:
        page, size = req.arg("page", 1), req.arg("per_page", 40)
        start = (page - 1) * size + 1
        body = items(start, min(start + size, TOTAL + 1))
        links = []
        if start + size <= TOTAL:
            target = f"/items?page={page + 1}&per_page={size}"
            links.append(f'<{target if relative else req.base + target}>; rel="next"')
        links.append(f'<{req.base}/items?page=1&per_page={size}>; rel="first"')
        return Resp(body=body, headers={"Link": ", ".join(links)})

    return route


def test_cursor_in_the_body_is_sent_back_until_there_is_none() -> None:
    with TestApi({"/items": cursor_route}) as api:
        spec = table(records_path="data", params={"limit": 50},
                     pagination={"type": "cursor", "cursor_path": "meta.next_cursor", "cursor_param": "cursor"})
        assert ids(api, spec) == list(range(1, TOTAL + 1))
        sent = api.requests_to("/items")
    assert len(sent) == 5 and "cursor" not in sent[0].query
    assert sent[1].query["cursor"] == _token(50) and sent[1].query["limit"] == "50"


@pytest.mark.parametrize("relative", [False, True])
def test_rfc8288_link_header_next(relative: bool) -> None:
    with TestApi({"/items": link_route(relative)}) as api:
        spec = table(params={"per_page": 40}, pagination={"type": "link_header"}, batch_rows=100)
        assert ids(api, spec) == list(range(1, TOTAL + 1))
        assert len(api.requests_to("/items")) == 6


def test_link_header_parser() -> None:
    value = ('<https://api.example.org/x?page=3&a=1,2>; rel="next last"; title="p, 3", '
             '<https://api.example.org/x?page=1>; rel=prev')
    assert link_header(value) == "https://api.example.org/x?page=3&a=1,2"
    assert link_header(value, "last") == "https://api.example.org/x?page=3&a=1,2"
    assert link_header(value, "prev") == "https://api.example.org/x?page=1"
    assert link_header(value, "first") is None and link_header(None) is None


def test_total_count_stops_an_api_that_never_sends_an_empty_page() -> None:
    def wrapping(req: Req) -> Resp:  # past the end it starts again: only the total tells where to stop
        page = req.arg("page", 1)
        start = ((page - 1) * 50) % TOTAL + 1
        return Resp(body={"rows": items(start, min(start + 50, TOTAL + 1)), "meta": {"total": TOTAL}})

    with TestApi({"/items": wrapping}) as api:
        spec = table(records_path="rows", pagination={"type": "page_number", "total_path": "meta.total"})
        assert ids(api, spec) == list(range(1, TOTAL + 1))
        without_total = table(records_path="rows", pagination={"type": "page_number"}, max_pages=7)
        assert len(ids(api, without_total)) == 7 * 50 - 20  # only max_pages stops it: duplicates


def test_an_empty_page_stops_even_with_a_next_cursor() -> None:
    def route(req: Req) -> Resp:
        page = int(req.query.get("cursor", "1"))
        body = items(page * 10 - 9, page * 10 + 1) if page <= 2 else []
        return Resp(body={"data": body, "next": str(page + 1)})

    with TestApi({"/items": route}) as api:
        spec = table(records_path="data", pagination={"type": "cursor", "cursor_path": "next"})
        assert ids(api, spec) == list(range(1, 21))
        assert len(api.requests_to("/items")) == 3


def test_a_repeating_cursor_is_an_error_not_an_endless_loop() -> None:
    with TestApi({"/items": lambda req: Resp(body={"data": items(1, 11), "next": "same"})}) as api:
        spec = table(records_path="data", pagination={"type": "cursor", "cursor_path": "next"})
        with pytest.raises(HttpRefusedError, match="ignores the pagination") as info:
            ids(api, spec)
        assert isinstance(info.value, PermanentError)
        assert len(api.requests_to("/items")) == 2


def test_max_pages_is_a_safety_net_for_every_style() -> None:
    with TestApi({"/items": cursor_route}) as api:
        spec = table(records_path="data", params={"limit": 10}, max_pages=3,
                     pagination={"type": "cursor", "cursor_path": "meta.next_cursor"})
        assert ids(api, spec) == list(range(1, 31))


def test_incremental_parameter_from_the_watermark_or_the_initial_value() -> None:
    spec = table(params={"limit": 5}, incremental={"cursor": "updated_at", "param": "since", "initial": "2024-01-01"})
    assert first_params(spec, "2024-03-01T00:00:00+00:00")["since"] == "2024-03-01T00:00:00+00:00"
    assert first_params(spec, None)["since"] == "2024-01-01"
    assert "since" not in first_params(table(incremental={"cursor": "u", "param": "since"}), None)
    assert "since" not in first_params(table(incremental={"cursor": "u"}), "5")
    with TestApi({"/items": cursor_route}) as api:
        ids(api, table(records_path="data", params={"limit": 100}, pagination={"type": "cursor",
                       "cursor_path": "meta.next_cursor"}, incremental={"cursor": "id", "param": "since_id"}),
            watermark="42")
        sent = api.requests_to("/items")
    assert [r.query.get("since_id") for r in sent] == ["42", "42", "42"]  # kept on every page


# ------------------------------------------- an API that ignores the paging (issue 21 item 3)

DAY = dt.date(2024, 1, 2)
THREE = items(1, 4)


def extract_to_lake(api: TestApi, spec: HttpTable, lake: Path, source: str = "shop") -> Any:
    with requests_client(api.url, spec) as client:
        return write_partition(iter_http_batches(client, spec, source=source), lake, "http", source, spec.name,
                               DAY, run_id="r1")


def refused(api: TestApi, spec: HttpTable, lake: Path) -> str:
    """The error of an extract that must stop, after checking the lake kept its earlier partition."""
    partition = lake / "http" / "shop" / spec.name / DAY.isoformat()
    before = sorted(p.read_bytes() for p in partition.rglob("*.parquet"))
    assert before  # a partition of an earlier run, which the failed extract must leave as it was
    with pytest.raises(HttpRefusedError) as info:
        extract_to_lake(api, spec, lake)
    assert isinstance(info.value, PermanentError)  # no task retry: the same pages would come again
    assert sorted(p.read_bytes() for p in partition.rglob("*.parquet")) == before
    return str(info.value)


@pytest.mark.parametrize("pagination", [
    {"type": "page_number"},
    {"type": "page_number", "page_size_param": "per_page", "page_size": 3},
    {"type": "offset", "limit": 3},
])
def test_an_api_that_ignores_the_paging_parameters_is_an_error_not_duplicates(
        pagination: dict[str, Any], tmp_path: Path) -> None:
    """It answered every page with the same 3 records: 600 rows with max_pages 200, 30,000 by default."""
    with TestApi({"/items": lambda req: Resp(body={"data": items(7, 9)})}) as earlier:
        extract_to_lake(earlier, table(records_path="data"), tmp_path)
    with TestApi({"/items": ignores_paging(THREE)}) as api:
        message = refused(api, table(records_path="data", pagination=pagination, max_pages=200,
                                     params={"token_hint": "x"}), tmp_path)
        assert len(api.requests_to("/items")) == 2  # stopped at the first repeat
    assert "shop.res" in message and "page 2" in message and "same records as page 1" in message, message
    assert "/items?" in message and "token_hint=***" in message  # the page's URL, secrets never shown


@pytest.mark.parametrize("pagination", [
    {"type": "next_link", "next_path": "next"},
    {"type": "link_header"},
    {"type": "cursor", "cursor_path": "cursor"},
])
def test_links_that_are_always_new_but_bring_the_same_records_are_an_error(
        pagination: dict[str, Any], tmp_path: Path) -> None:
    with TestApi({"/items": lambda req: Resp(body={"data": items(7, 9)})}) as earlier:
        extract_to_lake(earlier, table(records_path="data"), tmp_path)
    with TestApi({"/items": always_new_next(THREE)}) as api:
        message = refused(api, table(records_path="data", pagination=pagination, max_pages=50), tmp_path)
        sent = api.requests_to("/items")
    assert len(sent) == 2
    assert "shop.res" in message and "page 2" in message and "same records as page 1" in message, message
    assert "visit=" not in message  # a server's link may carry anything in its query: its path only


def wrapping(req: Req) -> Resp:
    """Past the end it starts again, never on the same page boundaries (no page equals another)."""
    page = req.arg("page", 1)
    start = ((page - 1) * 50) % TOTAL + 1
    return Resp(body={"rows": items(start, min(start + 50, TOTAL + 1))})


def test_a_page_of_primary_keys_all_read_before_is_an_error(tmp_path: Path) -> None:
    with TestApi({"/items": lambda req: Resp(body={"rows": items(7, 9)})}) as earlier:
        extract_to_lake(earlier, table(records_path="rows"), tmp_path)
    with TestApi({"/items": wrapping}) as api:
        spec = table(records_path="rows", pagination={"type": "page_number"}, primary_key=["id"], max_pages=50)
        message = refused(api, spec, tmp_path)
        assert len(api.requests_to("/items")) == 6  # page 6 starts again at id 21
    assert "shop.res" in message and "page 6" in message and "primary key" in message, message
    assert "page=6" in message


def test_a_key_read_twice_where_pages_shift_is_loaded_for_the_merge_to_keep_the_last() -> None:
    """Offset paging over live data: a record inserted at the front pushes the last record of a page
    onto the next one. One repeated key is legitimate (a merge keeps the last row of a key); only a
    page with nothing new stops the extract."""
    def shifting(req: Req) -> Resp:
        offset = req.arg("offset", 0)
        start = offset + 1 if offset == 0 else offset  # the second page starts one record early
        return Resp(body={"data": items(start, min(start + 10, 26))})

    with TestApi({"/items": shifting}) as api:
        spec = table(records_path="data", pagination={"type": "offset", "limit": 10}, primary_key=["id"])
        got = ids(api, spec)
    assert got == list(range(1, 11)) + list(range(10, 20)) + list(range(20, 26))  # 10 twice
