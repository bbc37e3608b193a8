"""Retries, backoff, Retry-After, timeouts, resets, rate limits and bad bodies on a real server.

Waits are kept tiny (Retry-After: 1, backoff base 0.01-0.05 s) and every test bounds its time."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from sndw.config import HttpTable, table_spec
from sndw.errors import PermanentError, SourceDataError
from sndw.extract.http import (
    HttpRequestError,
    HttpStatusError,
    RateLimiter,
    iter_http_batches,
    requests_client,
    retry_after_seconds,
)

from tests.http_api import Req, Resp, TestApi, items, sequence

OK = Resp(body=items(1, 11))
HTML = "<html><head><title>502 Bad Gateway</title></head><body><h1>Bad Gateway</h1> upstream down</body></html>"


def table(**spec: Any) -> HttpTable:
    parsed = table_spec("http", {"name": "flaky", "endpoint": "/flaky", "backoff_seconds": 0.05, **spec})
    assert isinstance(parsed, HttpTable)
    return parsed


def rows(api: TestApi, spec: HttpTable, **client: Any) -> int:
    with requests_client(api.url, spec, **client) as http:
        return sum(b.num_rows for b in iter_http_batches(http, spec))


def gaps(api: TestApi) -> list[float]:
    times = [r.at for r in api.requests_to("/flaky")]
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def test_429_with_retry_after_seconds_is_honoured() -> None:
    with TestApi({"/flaky": sequence(Resp(429, {"error": "slow down"}, headers={"Retry-After": "1"}), OK)}) as api:
        started = time.monotonic()
        assert rows(api, table()) == 10
        elapsed = time.monotonic() - started
        waits = gaps(api)
    assert len(waits) == 1 and waits[0] >= 0.95  # the server's 1 s, not the 0.05 s backoff
    assert elapsed < 3


def test_429_with_retry_after_as_an_http_date() -> None:
    def limited(req: Req) -> Resp:
        when = datetime.now(UTC) + timedelta(seconds=2)
        return Resp(429, {"error": "quota"}, headers={"Retry-After": format_datetime(when, usegmt=True)})

    with TestApi({"/flaky": sequence(limited, OK)}) as api:
        started = time.monotonic()
        assert rows(api, table()) == 10
        assert gaps(api)[0] >= 0.95  # an HTTP date has whole seconds: 1 to 2 s from now
        assert time.monotonic() - started < 4


def test_retry_after_parsing() -> None:
    now = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds("Wed, 01 May 2024 12:00:30 GMT", now) == 30.0
    assert retry_after_seconds("Wed, 01 May 2024 11:00:00 GMT", now) == 0.0  # in the past: at once
    assert retry_after_seconds("soon") is None and retry_after_seconds(None) is None


def test_5xx_then_recovery() -> None:
    route = sequence(Resp(500, {"e": 1}), Resp(502, HTML, content_type="text/html"), Resp(503, b""), OK)
    with TestApi({"/flaky": route}) as api:
        started = time.monotonic()
        assert rows(api, table(backoff_seconds=0.01)) == 10
        assert len(api.requests_to("/flaky")) == 4
        assert time.monotonic() - started < 2


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    delays: list[float] = []
    spec = table(retries=5, backoff_seconds=1.0, max_backoff_seconds=4.0)
    with TestApi({"/flaky": lambda req: Resp(503, {"e": "down"})}) as api:
        with requests_client(api.url, spec) as http:
            http.sleep = delays.append  # record the schedule instead of waiting it out
            with pytest.raises(HttpRequestError):
                list(iter_http_batches(http, spec))
    bounds = [(0.5, 1), (1, 2), (2, 4), (2, 4), (2, 4)]
    assert len(delays) == 5 and all(lo <= d <= hi for d, (lo, hi) in zip(delays, bounds, strict=True))
    assert len(set(delays)) > 1  # jitter


def test_after_the_last_retry_a_clear_transient_error() -> None:
    route = lambda req: Resp(502, HTML, content_type="text/html")  # noqa: E731
    with TestApi({"/flaky": route}) as api:
        spec = table(retries=2, backoff_seconds=0.01, params={"api_key": "K-SECRET-1", "page": 3},
                     auth="api_key_query")
        with pytest.raises(HttpRequestError) as info:
            rows(api, spec, password="K-SECRET-2", extra={"api_key_param": "token"})
        assert len(api.requests_to("/flaky")) == 3
    error = info.value
    message = str(error)
    assert not isinstance(error, PermanentError)  # Airflow retries the task
    assert error.status == 502 and "HTTP 502 Bad Gateway" in message and "after 3 attempts" in message
    assert f"{api.url}/flaky?" in message and "page=3" in message and "upstream down" in message
    assert "K-SECRET" not in message


def test_a_retry_after_longer_than_the_cap_gives_up_at_once() -> None:
    with TestApi({"/flaky": lambda req: Resp(503, {"e": "maintenance"}, headers={"Retry-After": "3600"})}) as api:
        started = time.monotonic()
        with pytest.raises(HttpRequestError, match="asks to wait 3600s, more than max_backoff_seconds"):
            rows(api, table(max_backoff_seconds=2))
        assert len(api.requests_to("/flaky")) == 1 and time.monotonic() - started < 1


def test_timeout_then_recovery_and_timeout_to_the_end() -> None:
    slow = Resp(body=items(1, 3), delay=1.5)
    with TestApi({"/flaky": sequence(slow, OK)}) as api:
        started = time.monotonic()
        assert rows(api, table(timeout_seconds=0.3, backoff_seconds=0.01)) == 10
        assert time.monotonic() - started < 1.2
    with TestApi({"/flaky": lambda req: slow}) as api:
        started = time.monotonic()
        with pytest.raises(HttpRequestError, match=r"timed out after 0.3s \(ReadTimeout\)") as info:
            rows(api, table(timeout_seconds=0.3, retries=1, backoff_seconds=0.01))
        assert time.monotonic() - started < 1.5
        assert "after 2 attempts" in str(info.value)


def test_connection_reset_then_recovery() -> None:
    with TestApi({"/flaky": sequence(Resp(reset=True), Resp(reset=True), OK)}) as api:
        assert rows(api, table(backoff_seconds=0.01)) == 10
        assert len(api.requests_to("/flaky")) == 3
    with TestApi({"/flaky": lambda req: Resp(reset=True)}) as api:
        with pytest.raises(HttpRequestError, match="connection failed"):
            rows(api, table(retries=1, backoff_seconds=0.01))


def test_connection_refused_is_retried_then_reported() -> None:
    spec = table(retries=1, backoff_seconds=0.01)
    with requests_client("http://127.0.0.1:9", spec) as http, \
            pytest.raises(HttpRequestError, match="connection failed .*after 2 attempts|after 2 attempts.*connection"):
        list(iter_http_batches(http, spec))


def test_malformed_json_is_a_permanent_error_with_an_excerpt() -> None:
    with TestApi({"/flaky": lambda req: Resp(body=b'[{"id": 1}, {"id": 2,, ]')}) as api:
        with pytest.raises(SourceDataError, match=r"is not JSON \(application/json\): '\[\{\"id\": 1\}"):
            rows(api, table())
        assert len(api.requests_to("/flaky")) == 1


def test_an_html_page_with_200_is_not_json() -> None:
    page = "<html><body><h1>Maintenance</h1><p>back soon</p></body></html>"
    with TestApi({"/flaky": lambda req: Resp(body=page, content_type="text/html")}) as api:
        with pytest.raises(SourceDataError, match=r"200 from http://127.0.0.1:\d+/flaky is not JSON \(text/html\).*Maintenance"):
            rows(api, table())


def test_client_errors_are_not_retried() -> None:
    with TestApi({"/flaky": lambda req: Resp(404, {"error": "no such resource"})}) as api:
        with pytest.raises(HttpStatusError, match="HTTP 404 Not Found.*no such resource.*check the endpoint") as info:
            rows(api, table())
        assert len(api.requests_to("/flaky")) == 1 and isinstance(info.value, PermanentError)


def test_requests_per_second_spaces_the_requests() -> None:
    def paged(req: Req) -> Resp:
        page = req.arg("page", 1)
        return Resp(body=items(page, page + 1) if page <= 6 else [])

    with TestApi({"/flaky": paged}) as api:
        assert rows(api, table(requests_per_second=20, pagination={"type": "page_number"})) == 6
        waits = gaps(api)
    assert len(waits) == 6 and min(waits) >= 0.045 and sum(waits) < 1.5


def test_rate_limiter_counts_from_the_previous_start() -> None:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = RateLimiter(4, clock=lambda: now[0], sleep=sleep)
    limiter.wait()
    limiter.wait()
    now[0] += 1.0  # a slow request: no extra wait after it
    limiter.wait()
    limiter.wait()
    assert slept == [0.25, 0.25]


@pytest.mark.parametrize(("status", "tries"), [(501, 1), (505, 1), (599, 3), (408, 3), (425, 3)])
def test_which_statuses_are_retried(status: int, tries: int) -> None:
    with TestApi({"/flaky": lambda req: Resp(status, {"e": status})}) as api:
        with pytest.raises(HttpRequestError, match=f"HTTP {status}") as info:
            rows(api, table(retries=2, backoff_seconds=0.01))
        assert len(api.requests_to("/flaky")) == tries
    assert isinstance(info.value, PermanentError) == (tries == 1)
