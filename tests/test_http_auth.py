"""Auth styles against a server that checks them (401 otherwise), through the core's requests client
(the CLI's path) and through HttpHook with a real Airflow connection (the DAGs' path)."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest
from sndw.config import HttpTable, table_spec
from sndw.errors import PermanentError
from sndw.extract.http import (
    HttpClient,
    HttpRefusedError,
    HttpStatusError,
    iter_http_batches,
    requests_client,
    safe_url,
)

from tests.http_api import Req, Resp, TestApi, items

LOGIN, PASSWORD = "robot", "s3cret-Pa55word"
TOKEN = "tok-9f8e7d6c5b4a"
KEY = "key-0123456789abcdef"


def expected(scheme: str) -> Callable[[Req], bool]:
    basic = "Basic " + base64.b64encode(f"{LOGIN}:{PASSWORD}".encode()).decode()
    return {
        "basic": lambda r: r.headers.get("Authorization") == basic,
        "bearer": lambda r: r.headers.get("Authorization") == f"Bearer {TOKEN}",
        "api_key_header": lambda r: r.headers.get("X-Api-Token") == KEY,
        "api_key_query": lambda r: r.query.get("apikey") == KEY,
    }[scheme]


def guarded(scheme: str) -> Callable[[Req], Resp]:
    check = expected(scheme)

    def route(req: Req) -> Resp:
        if not check(req):
            return Resp(401, {"error": "unauthorized", "you_sent": dict(req.query)},
                        headers={"WWW-Authenticate": "Bearer"})
        page = req.arg("page", 1)
        return Resp(body={"data": items(page * 20 - 19, page * 20 + 1) if page <= 3 else []})

    return route


# Connection fields per scheme: the secret is always the password; the extra names header/param.
CONNECTIONS: dict[str, dict[str, Any]] = {
    "basic": {"login": LOGIN, "password": PASSWORD},
    "bearer": {"password": TOKEN},
    "api_key_header": {"password": KEY, "extra": {"api_key_header": "X-Api-Token"}},
    "api_key_query": {"password": KEY, "extra": {"api_key_param": "apikey"}},
}


def spec(auth: str | None, **more: Any) -> HttpTable:
    table = table_spec("http", {"name": "secure", "endpoint": "/secure", "records_path": "data", "auth": auth,
                                "pagination": {"type": "page_number"}, "backoff_seconds": 0.01, **more})
    assert isinstance(table, HttpTable)
    return table


def hook_client(api: TestApi, monkeypatch: pytest.MonkeyPatch, table: HttpTable, fields: dict[str, Any]) -> HttpClient:
    from airflow.providers.http.hooks.http import HttpHook
    from sndw_airflow.http import hook_client as build

    connection = {"conn_type": "http", "host": "127.0.0.1", "port": api.port, "schema": "http", **fields}
    monkeypatch.setenv("AIRFLOW_CONN_T_SECURE", json.dumps(connection))
    return build(HttpHook(method="GET", http_conn_id="t_secure"), table)


def core_client(api: TestApi, monkeypatch: pytest.MonkeyPatch, table: HttpTable, fields: dict[str, Any]) -> HttpClient:
    return requests_client(api.url, table, login=fields.get("login"), password=fields.get("password"),
                           extra=fields.get("extra"))


CLIENTS = {"core": core_client, "airflow": hook_client}


@pytest.mark.parametrize("path", CLIENTS)
@pytest.mark.parametrize("scheme", list(CONNECTIONS))
def test_each_auth_style_is_accepted(scheme: str, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    with TestApi({"/secure": guarded(scheme)}) as api:
        with CLIENTS[path](api, monkeypatch, spec(scheme), CONNECTIONS[scheme]) as client:
            rows = [r for b in iter_http_batches(client, spec(scheme)) for r in b.to_pylist()]
        sent = api.requests_to("/secure")
    assert len(rows) == 60 and len(sent) == 4
    assert all(expected(scheme)(r) for r in sent)
    for req in sent:  # the extra's names are settings, never headers; no stray credentials
        assert "api_key_header" not in {k.lower() for k in req.headers}
        assert "api_key_param" not in {k.lower() for k in req.headers}
        if scheme != "basic":
            assert LOGIN not in json.dumps(req.headers)


def test_httphook_does_basic_auth_from_the_login_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    with TestApi({"/secure": guarded("basic")}) as api:
        with hook_client(api, monkeypatch, spec(None), CONNECTIONS["basic"]) as client:
            assert client.plan.scheme == "basic"
            assert sum(b.num_rows for b in iter_http_batches(client, spec(None))) == 60


def test_auth_none_sends_nothing_even_with_a_login(monkeypatch: pytest.MonkeyPatch) -> None:
    with TestApi({"/secure": guarded("basic")}) as api:
        with hook_client(api, monkeypatch, spec("none"), CONNECTIONS["basic"]) as client, \
                pytest.raises(HttpStatusError, match="401"):
            list(iter_http_batches(client, spec("none")))
        assert "Authorization" not in api.requests_to("/secure")[0].headers


@pytest.mark.parametrize("path", CLIENTS)
@pytest.mark.parametrize("scheme", ["bearer", "api_key_query"])
def test_wrong_credentials_fail_at_once_without_showing_them(scheme: str, path: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = {**CONNECTIONS[scheme], "password": "wrong-secret-value-777"}
    with TestApi({"/secure": guarded(scheme)}) as api:
        with CLIENTS[path](api, monkeypatch, spec(scheme), wrong) as client, \
                pytest.raises(HttpStatusError) as info:
            list(iter_http_batches(client, spec(scheme)))
        assert len(api.requests_to("/secure")) == 1  # a 401 is not retried
    message = str(info.value)
    assert isinstance(info.value, PermanentError)
    assert "401" in message and "credentials" in message and "/secure" in message
    assert "wrong-secret-value-777" not in message  # not in the URL, not in the echoed body
    if scheme == "api_key_query":
        assert "apikey=%2A%2A%2A" in message or "apikey=***" in message


@pytest.mark.parametrize("scheme", ["bearer", "api_key_header", "api_key_query"])
def test_a_missing_secret_is_a_clear_config_error(scheme: str) -> None:
    with pytest.raises(PermanentError, match=f"auth '{scheme}' needs the .* in the password of the connector"):
        requests_client("http://127.0.0.1:9", spec(scheme), login="someone")


def test_credentials_never_go_to_another_host() -> None:
    with TestApi({"/secure": guarded("bearer")}) as other:
        def route(req: Req) -> Resp:
            return Resp(body={"data": items(1, 3), "next": f"{other.url}/secure?page=2"})

        with TestApi({"/first": route}) as api:
            table = table_spec("http", {"name": "t", "endpoint": "/first", "records_path": "data", "auth": "bearer",
                                        "pagination": {"type": "next_link"}})
            assert isinstance(table, HttpTable)
            with requests_client(api.url, table, password=TOKEN) as client, \
                    pytest.raises(HttpRefusedError, match="another host"):
                list(iter_http_batches(client, table))
            # a redirect to another host is refused the same way
            api.routes["/moved"] = lambda req: Resp(302, b"", headers={"Location": f"{other.url}/secure"})
            moved = table.model_copy(update={"endpoint": "/moved", "pagination": table_spec(
                "http", {"name": "x", "endpoint": "/"}).pagination})  # type: ignore[attr-defined]
            with requests_client(api.url, moved, password=TOKEN) as client, \
                    pytest.raises(HttpRefusedError, match="redirect"):
                list(iter_http_batches(client, moved))
        assert other.requests_to("/secure") == []


def test_same_host_redirects_are_followed_with_credentials() -> None:
    with TestApi({"/secure": guarded("bearer")}) as api:
        api.routes["/old"] = lambda req: Resp(301, b"", headers={"Location": "/secure"})
        table = spec("bearer", endpoint="/old", pagination={"type": "none"})
        with requests_client(api.url, table, password=TOKEN) as client:
            assert sum(b.num_rows for b in iter_http_batches(client, table)) == 20


def test_safe_url_strips_userinfo_and_secret_parameters() -> None:
    url = "https://bob:pw123@api.example.org:8443/v1/x?page=2&api_key=K1&access_token=T2&sig=S3&author=ann&k=K4"
    cleaned = safe_url(url, ["k"])
    for secret in ("pw123", "bob", "K1", "T2", "S3", "K4"):
        assert secret not in cleaned
    assert cleaned.startswith("https://api.example.org:8443/v1/x?page=2") and "author=ann" in cleaned


def test_a_repeating_next_link_that_echoes_the_key_does_not_show_it() -> None:
    def route(req: Req) -> Resp:  # the server echoes every query parameter into its (broken) next link
        return Resp(body={"data": items(1, 3), "next": f"{req.base}/secure?appid={req.query['appid']}&page=2"})

    with TestApi({"/secure": route}) as api:
        table = table_spec("http", {"name": "t", "endpoint": "/secure", "records_path": "data",
                                    "auth": "api_key_query", "pagination": {"type": "next_link"}})
        assert isinstance(table, HttpTable)
        with requests_client(api.url, table, password=KEY, extra={"api_key_param": "appid"}) as client, \
                pytest.raises(HttpRefusedError, match="ignores the pagination") as info:
            list(iter_http_batches(client, table))
    assert KEY not in str(info.value) and "/secure" in str(info.value)
