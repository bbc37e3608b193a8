"""Enough of Elasticsearch's HTTP API on 127.0.0.1 for the official 8.x client's bulk helpers.

It answers ``GET /`` (cluster info) and ``POST [/<index>]/_bulk``, with the product header the client
checks on every response (``X-Elastic-Product: Elasticsearch``). Each ``_bulk`` body is parsed as
NDJSON and checked strictly (an action line with ``_index`` and ``_id`` followed by its document);
a malformed request is answered 400 and recorded in ``problems``. Scripted item answers: ``busy``
gives an id that many 429s before it is indexed, ``refuse`` answers an id with a 400 mapping error.
Indexed documents are kept per index and id, so a re-run shows as an overwrite (``version`` > 1).
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PRODUCT = {"X-Elastic-Product": "Elasticsearch"}
JSON = "application/vnd.elasticsearch+json;compatible-with=8"


@dataclass
class BulkRequest:
    path: str
    headers: dict[str, str]
    actions: list[dict[str, Any]]  # the action lines, as sent
    documents: list[dict[str, Any]]  # the document lines, as sent


@dataclass
class FakeElasticsearch:
    """``with FakeElasticsearch() as es:`` serves on ``es.port`` until the block ends."""

    busy: dict[str, int] = field(default_factory=dict)
    refuse: dict[str, str] = field(default_factory=dict)  # _id -> reason of a mapper_parsing_exception
    bulks: list[BulkRequest] = field(default_factory=list)
    info_requests: int = 0
    problems: list[str] = field(default_factory=list)
    indices: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)
    versions: dict[tuple[str, str], int] = field(default_factory=dict)
    answered_429: list[str] = field(default_factory=list)
    auth: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.es = self
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def __enter__(self) -> FakeElasticsearch:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---------------------------------------------------------------------------------- _bulk

    def bulk(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        lines = body.decode("utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()  # NDJSON ends with a newline
        else:
            return self._problem("the _bulk body does not end with a newline")
        actions: list[dict[str, Any]] = []
        documents: list[dict[str, Any]] = []
        items: list[dict[str, Any]] = []
        default_index = path.split("/_bulk")[0].strip("/") or None
        position = 0
        while position < len(lines):
            try:
                action = json.loads(lines[position])
                document = json.loads(lines[position + 1])
            except (IndexError, json.JSONDecodeError) as exc:
                return self._problem(f"line {position + 1}: not an action and a document: {exc}")
            position += 2
            if not isinstance(action, dict) or list(action) != ["index"]:
                return self._problem(f"action {action!r} is not one 'index' action")
            meta = action["index"]
            index = meta.get("_index") or default_index
            if not index or not isinstance(meta.get("_id"), str) or not meta["_id"]:
                return self._problem(f"action {meta!r} lacks _index or a string _id")
            if not isinstance(document, dict):
                return self._problem(f"document {document!r} is not an object")
            actions.append(action)
            documents.append(document)
            items.append({"index": self._item(index, meta["_id"], document)})
        with self.lock:
            self.bulks.append(BulkRequest(path, headers, actions, documents))
        errors = any(item["index"]["status"] >= 300 for item in items)
        return 200, {"took": 1, "errors": errors, "items": items}

    def _item(self, index: str, doc_id: str, document: dict[str, Any]) -> dict[str, Any]:
        with self.lock:
            if self.busy.get(doc_id, 0) > 0:
                self.busy[doc_id] -= 1
                self.answered_429.append(doc_id)
                return {"_index": index, "_id": doc_id, "status": 429, "error": {
                    "type": "es_rejected_execution_exception", "reason": "rejected execution (queue full)"}}
            if doc_id in self.refuse:
                return {"_index": index, "_id": doc_id, "status": 400, "error": {
                    "type": "document_parsing_exception", "reason": self.refuse[doc_id]}}
            key = (index, doc_id)
            self.versions[key] = self.versions.get(key, 0) + 1
            self.indices.setdefault(index, {})[doc_id] = document
            version = self.versions[key]
        return {"_index": index, "_id": doc_id, "_version": version, "status": 201 if version == 1 else 200,
                "result": "created" if version == 1 else "updated"}

    def _problem(self, message: str) -> tuple[int, dict[str, Any]]:
        with self.lock:
            self.problems.append(message)
        return 400, {"error": {"type": "illegal_argument_exception", "reason": message}, "status": 400}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    es: FakeElasticsearch


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", JSON)
        self.send_header("Content-Length", str(len(payload)))
        for name, value in PRODUCT.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(payload)

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        es = self.server.es
        if self.path.split("?")[0] != "/":
            self._answer(404, {"error": f"no route {self.path}", "status": 404})
            return
        with es.lock:
            es.info_requests += 1
        self._answer(200, {"name": "fake", "cluster_name": "sndw-test", "version": {
            "number": "8.19.3", "build_flavor": "default", "lucene_version": "9.12.0"},
            "tagline": "You Know, for Search"})

    def do_POST(self) -> None:  # noqa: N802
        es = self.server.es
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        with es.lock:
            es.auth.append(self.headers.get("Authorization"))
        if not self.path.split("?")[0].endswith("/_bulk"):
            self._answer(404, {"error": f"no route {self.path}", "status": 404})
            return
        content_type = self.headers.get("Content-Type", "")
        if "x-ndjson" not in content_type:
            status, answer = es._problem(f"_bulk sent with Content-Type {content_type!r}, not NDJSON")
        else:
            status, answer = es.bulk(self.path, dict(self.headers.items()), body)
        self._answer(status, answer)

    do_PUT = do_POST  # noqa: N815 - the 8.x client sends _bulk as PUT

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        return
