"""A small JSON API on localhost with nested records and several pagination styles."""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable
from datetime import date, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

CITIES = ["Lisbon", "Porto", "Braga", "Faro", "Coimbra", "Évora"]


def users(count: int = 10) -> list[dict[str, Any]]:
    rng = random.Random(7)
    return [
        {
            "id": i,
            "name": f"User {i}",
            "userName": f"user{i}",
            "email": f"user{i}@example.org",
            "address": {
                "street": f"{rng.randint(1, 300)} Main St",
                "city": rng.choice(CITIES),
                "geo": {"lat": f"{rng.uniform(-90, 90):.4f}", "lng": f"{rng.uniform(-180, 180):.4f}"},
            },
            "company": {"name": f"Company {i % 3}", "catchPhrase": "Synergy, with \"quotes\""},
            "tags": [f"t{j}" for j in range(i % 3)],
            "active": i % 2 == 0,
        }
        for i in range(1, count + 1)
    ]


def todos(count: int = 200) -> list[dict[str, Any]]:
    rng = random.Random(11)
    start = date(2024, 1, 1)
    return [
        {
            "id": i,
            "userId": 1 + i % 10,
            "title": f"todo {i}\nsecond line",
            "completed": rng.random() < 0.45,
            "due": (start + timedelta(days=i % 60)).isoformat(),
            "estimate": round(rng.uniform(0.5, 8), 2),
        }
        for i in range(1, count + 1)
    ]


class _Handler(BaseHTTPRequestHandler):
    routes: dict[str, Callable[[dict[str, list[str]], str], tuple[int, Any]]] = {}

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        parts = urlsplit(self.path)
        route = self.routes.get(parts.path)
        if route is None:
            self._send(404, {"error": "not found"})
            return
        status, body = route(parse_qs(parts.query), f"http://{self.headers.get('Host')}")
        self._send(status, body)

    def _send(self, status: int, body: Any) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return


def _int(query: dict[str, list[str]], key: str, default: int) -> int:
    try:
        return int(query.get(key, [default])[0])
    except ValueError:
        return default


def default_routes() -> dict[str, Callable[[dict[str, list[str]], str], tuple[int, Any]]]:
    all_users = users()
    all_todos = todos()

    def get_users(query: dict[str, list[str]], base: str) -> tuple[int, Any]:
        return 200, all_users

    def get_todos(query: dict[str, list[str]], base: str) -> tuple[int, Any]:
        page, per_page = _int(query, "page", 1), _int(query, "per_page", 50)
        items = all_todos[(page - 1) * per_page: page * per_page]
        return 200, {"data": {"items": items}, "page": page, "total": len(all_todos)}

    def get_todos_offset(query: dict[str, list[str]], base: str) -> tuple[int, Any]:
        offset, limit = _int(query, "offset", 0), _int(query, "limit", 50)
        return 200, all_todos[offset: offset + limit]

    def get_todos_linked(query: dict[str, list[str]], base: str) -> tuple[int, Any]:
        cursor, size = _int(query, "cursor", 0), 64
        items = all_todos[cursor: cursor + size]
        following = cursor + size
        nxt = f"{base}/todos-linked?cursor={following}" if following < len(all_todos) else None
        return 200, {"results": items, "next": nxt}

    return {"/users": get_users, "/todos": get_todos, "/todos-offset": get_todos_offset,
            "/todos-linked": get_todos_linked}


# The checkout that serves the API (its SNDW_ROOT): `make demo` and `make up` reuse a server on
# their port only when it is their own, not another checkout's on the same port.
OWNER_PATH = "/_sndw_owner"


def served_by(url: str, owner: str) -> bool:
    """Whether the demo API at ``url`` is served for ``owner`` (a checkout's SNDW_ROOT)."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}{OWNER_PATH}", timeout=3) as response:
            return json.load(response).get("owner") == owner
    except (OSError, ValueError, AttributeError):
        return False


class DemoApi:
    """A threaded HTTP server on 127.0.0.1; ``port=0`` picks a free port; ``owner`` answers
    ``OWNER_PATH`` (see ``served_by``)."""

    def __init__(self, port: int = 0, routes: dict[str, Any] | None = None, owner: str | None = None) -> None:
        routes = dict(routes or default_routes())
        if owner is not None:
            routes[OWNER_PATH] = lambda query, base: (200, {"owner": owner})
        handler = type("Handler", (_Handler,), {"routes": routes})
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> DemoApi:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> DemoApi:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def main() -> None:
    import argparse
    import os
    import sys

    parser = argparse.ArgumentParser(description="Serve the demo JSON API on 127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--owner", default=os.environ.get("SNDW_ROOT", ""),
                        help="the checkout it serves (default: SNDW_ROOT), answered on " + OWNER_PATH)
    parser.add_argument("--is-ours", action="store_true",
                        help="exit 0 when the API on --port is served for --owner, else 1; serve nothing")
    args = parser.parse_args()
    if args.is_ours:
        sys.exit(0 if served_by(f"http://127.0.0.1:{args.port}", args.owner) else 1)
    api = DemoApi(args.port, owner=args.owner)
    print(api.url, flush=True)
    api.server.serve_forever()


if __name__ == "__main__":
    main()
