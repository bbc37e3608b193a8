"""A scriptable JSON API on 127.0.0.1 for the HTTP tests: routes see the whole request (headers,
query) and answer with any status, headers and body, after a delay, or by resetting the connection.
Every request is logged so tests can assert what the client really sent."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Req:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    base: str
    at: float = 0.0

    def arg(self, name: str, default: int) -> int:
        try:
            return int(self.query.get(name, default))
        except ValueError:
            return default


@dataclass
class Resp:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    reset: bool = False  # close the connection with a TCP reset instead of answering
    content_type: str = "application/json"


Route = Callable[[Req], Resp]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        self._handle()

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        req = Req(self.command, parts.path, {k: v[-1] for k, v in parse_qs(parts.query).items()},
                  {k: v for k, v in self.headers.items()}, f"http://{self.headers.get('Host')}", time.monotonic())
        api = self.server.api
        with api.lock:
            api.log.append(req)
        route = api.routes.get(parts.path)
        resp = route(req) if route else Resp(404, {"error": "not found"})
        if resp.delay:
            time.sleep(resp.delay)
        if resp.reset:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            return
        if isinstance(resp.body, bytes):
            payload = resp.body
        elif isinstance(resp.body, str):
            payload = resp.body.encode()
        else:
            payload = json.dumps(resp.body).encode()
        try:
            self.send_response(resp.status)
            self.send_header("Content-Type", resp.content_type)
            self.send_header("Content-Length", str(len(payload)))
            for name, value in resp.headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout test)
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    api: TestApi


class TestApi:
    """``with TestApi({"/items": route}) as api:`` serves on ``api.url`` until the block ends."""

    __test__ = False  # not a test class

    def __init__(self, routes: dict[str, Route] | None = None) -> None:
        self.routes: dict[str, Route] = dict(routes or {})
        self.log: list[Req] = []
        self.lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.api = self
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                                       daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def requests_to(self, path: str) -> list[Req]:
        with self.lock:
            return [r for r in self.log if r.path == path]

    def __enter__(self) -> TestApi:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------ resources


def item(i: int) -> dict[str, Any]:
    """Record ``i`` of the generated resources: deterministic, a little nested, ~250 bytes of JSON."""
    return {"id": i, "name": f"item {i}", "price": round(i * 1.25, 2), "active": i % 3 != 0,
            "tags": [f"t{i % 5}", f"u{i % 7}"], "owner": {"id": i % 97, "address": {"city": f"c{i % 13}",
                                                                                  "zip": f"{10000 + i % 900}"}},
            "note": f"note for item {i} " + "x" * (i % 40)}


def items(start: int, stop: int) -> list[dict[str, Any]]:
    return [item(i) for i in range(start, stop)]


def sequence(*responses: Resp | Callable[[Req], Resp]) -> Route:
    """A route answering with each response in turn; the last one repeats."""
    state = iter(responses)
    last: list[Resp | Callable[[Req], Resp]] = []

    def route(req: Req) -> Resp:
        try:
            current = next(state)
            last[:] = [current]
        except StopIteration:
            current = last[0]
        return current(req) if callable(current) else current

    return route


def chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(1, total + 1, size):
        yield start, min(start + size, total + 1)


def ignores_paging(records: list[dict[str, Any]]) -> Route:
    """An API that ignores every paging parameter: each request gets the same records."""
    return lambda req: Resp(body={"data": records, "meta": {"page": req.query.get("page")}})


def always_new_next(records: list[dict[str, Any]]) -> Route:
    """An API whose next link (in the body and in a Link header) and cursor are new on every
    request, over the same records: no link repeats, so only the records show it goes nowhere."""
    calls = iter(range(1, 1_000_000))

    def route(req: Req) -> Resp:
        n = next(calls)
        target = f"{req.path}?visit={n}"
        return Resp(body={"data": records, "next": req.base + target, "cursor": f"c{n}"},
                    headers={"Link": f'<{target}>; rel="next"'})

    return route
