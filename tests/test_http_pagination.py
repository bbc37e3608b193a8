"""Every pagination style and stop condition against a real HTTP server on localhost."""

from __future__ import annotations

import base64
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

from tests.http_api import Req, Resp, TestApi, items

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
