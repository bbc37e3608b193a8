"""HTTP/JSON sources: paged, authenticated, rate-limited requests with retries, as record batches.

Layers, each usable on its own:

- ``HttpClient``: one ``requests.Session`` (built by the caller: from an Airflow connection by
  ``sndw_airflow.http``, from a connector file by ``sndw.runner``), plus the resilience rules:
  timeouts, retries with exponential backoff and jitter on 429/5xx/timeouts/resets honouring
  ``Retry-After``, a rate limit, same-origin redirects, and errors without secrets. Calling it is
  a ``Fetch``: ``fetch(endpoint_or_url, params) -> HttpResponse``.
- ``iter_pages``: the records of each page, following the table's pagination.
- ``iter_http_batches``: records flattened into typed batches of ``batch_rows`` (drift rules in
  ``sndw.extract.TypedBatchBuilder``), unnested lists sent to child-table sinks.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import logging
import random
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

import pyarrow as pa
import requests
from requests.auth import AuthBase, HTTPBasicAuth

from sndw.audit import redact, register_secret
from sndw.config import (
    CHILD_INDEX_COLUMN,
    CHILD_PARENT_PREFIX,
    ChildTable,
    CursorPagination,
    HttpTable,
    LinkHeaderPagination,
    NextLinkPagination,
    OffsetPagination,
    PageNumberPagination,
)
from sndw.errors import ExtractError, PermanentError, SourceDataError
from sndw.extract import (
    TypedBatchBuilder,
    exact_float,
    flatten_record,
    get_path,
    to_json_text,
    too_deep_message,
)
from sndw.naming import normalize_identifier

log = logging.getLogger(__name__)

BODY_EXCERPT = 200
MAX_REDIRECTS = 5
RETRY_STATUSES = frozenset({408, 425, 429})  # and every 5xx but these two, which no retry fixes:
NEVER_RETRY_5XX = frozenset({501, 505})  # Not Implemented, HTTP Version Not Supported


def retryable(status: int) -> bool:
    return status in RETRY_STATUSES or (status >= 500 and status not in NEVER_RETRY_5XX)
TRANSIENT_ERRORS = (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError)

# Where the connection's extra names the API key's header or query parameter.
API_KEY_HEADER_EXTRA = "api_key_header"
API_KEY_PARAM_EXTRA = "api_key_param"
AUTH_EXTRA_KEYS = (API_KEY_HEADER_EXTRA, API_KEY_PARAM_EXTRA)
DEFAULT_API_KEY_HEADER = "X-API-Key"
DEFAULT_API_KEY_PARAM = "api_key"

_SECRET_PARAM = re.compile(
    r"(?i)(key|token|secret|passw|pwd|signature|credential|session|(^|[_.-])(auth|sig|code)($|[_.-]))")


# ----------------------------------------------------------------------------- errors


class HttpRequestError(ExtractError):
    """A request failed after its retries (429, 5xx, timeout, reset): transient, the task may retry."""

    def __init__(self, message: str, *, status: int | None = None, url: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.url = url


class HttpStatusError(HttpRequestError, PermanentError):
    """The server refused the request (400, 401, 403, 404, ...): retrying will not help."""


class HttpRefusedError(PermanentError, ExtractError):
    """A request this extractor will not send (credentials to another host, a looping page link), or
    pages it will not load (the same records again: the API ignores the pagination)."""


# --------------------------------------------------------------------------- responses


@dataclass
class HttpResponse:
    """What one fetch returns: the parsed JSON body with the response's status, headers and URL.

    ``url`` is safe to show (no userinfo, secret query values replaced by ``***``).
    """

    body: Any
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    url: str = ""


# fetch(endpoint_or_url, params) -> HttpResponse. Raises on HTTP errors (after retries).
Fetch = Callable[[str, dict[str, Any]], HttpResponse]


def safe_url(url: str, secret_params: Sequence[str] = ()) -> str:
    """``url`` without userinfo, with the values of query parameters named like secrets as ``***``."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    named = {p.lower() for p in secret_params}
    query = [(k, "***" if k.lower() in named or _SECRET_PARAM.search(k) else v)
             for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(query, safe="*"), ""))


def scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` with every known secret value and anything that looks like a credential replaced."""
    for secret in secrets:
        if secret and len(secret) >= 3:
            text = text.replace(secret, "***")
    return redact(text)


def register_header_secrets(headers: Mapping[str, Any]) -> None:
    """Register the values of headers named like credentials (``Authorization``, ``X-API-Key``)."""
    for name, value in headers.items():
        if isinstance(value, str) and (_SECRET_PARAM.search(name) or name.lower() in ("authorization", "cookie")):
            register_secret(value)
            scheme, _, credential = value.partition(" ")
            if credential and scheme.lower() in ("bearer", "basic", "token"):
                register_secret(credential.strip())


def excerpt(text: str, limit: int = BODY_EXCERPT) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# -------------------------------------------------------------------------------- auth


class BearerAuth(AuthBase):
    def __init__(self, token: str) -> None:
        self.token = token

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = f"Bearer {self.token}"
        return request


class ApiKeyHeaderAuth(AuthBase):
    def __init__(self, header: str, key: str) -> None:
        self.header = header
        self.key = key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers[self.header] = self.key
        return request


class ApiKeyQueryAuth(AuthBase):
    def __init__(self, param: str, key: str) -> None:
        self.param = param
        self.key = key

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.prepare_url(request.url or "", {self.param: self.key})
        return request


@dataclass
class AuthPlan:
    """How a table authenticates, resolved from its ``auth`` setting and the connection's fields."""

    scheme: str
    auth: AuthBase | None = None
    secrets: list[str] = field(default_factory=list)  # values never to show
    secret_params: list[str] = field(default_factory=list)  # query parameters never to show


def resolve_auth(scheme: str | None, login: str | None, password: str | None,
                 extra: Mapping[str, Any] | None = None, where: str = "connection") -> AuthPlan:
    """The one auth scheme: the config names it, the connection holds every secret.

    - ``basic``: login and password (the default when the connection has a login)
    - ``bearer``: the password is the token -> ``Authorization: Bearer <password>``
    - ``api_key_header``: the password is the key, sent in the header named by the extra
      ``api_key_header`` (default ``X-API-Key``)
    - ``api_key_query``: the password is the key, sent as the query parameter named by the extra
      ``api_key_param`` (default ``api_key``)
    - ``none``: nothing is sent, even when the connection has a login
    """
    extra = extra or {}
    scheme = scheme or ("basic" if login else "none")
    secrets = [password] if password else []
    register_secret(password, login=login)  # every encoding of it is masked from now on
    register_header_secrets({k: v for k, v in extra.items() if k not in AUTH_EXTRA_KEYS})
    if scheme == "none":
        return AuthPlan("none")
    if scheme == "basic":
        if not login:
            raise PermanentError(f"auth 'basic' needs a login (and password) in {where}")
        token = base64.b64encode(f"{login}:{password or ''}".encode()).decode()
        return AuthPlan("basic", HTTPBasicAuth(login, password or ""), secrets + [token])
    if not password:
        what = "token" if scheme == "bearer" else "API key"
        raise PermanentError(f"auth {scheme!r} needs the {what} in the password of {where}")
    if scheme == "bearer":
        return AuthPlan("bearer", BearerAuth(password), secrets)
    if scheme == "api_key_header":
        header = str(extra.get(API_KEY_HEADER_EXTRA) or DEFAULT_API_KEY_HEADER)
        return AuthPlan(scheme, ApiKeyHeaderAuth(header, password), secrets)
    if scheme == "api_key_query":
        param = str(extra.get(API_KEY_PARAM_EXTRA) or DEFAULT_API_KEY_PARAM)
        return AuthPlan(scheme, ApiKeyQueryAuth(param, password), secrets, [param])
    raise PermanentError(f"unknown auth {scheme!r}: use none, basic, bearer, api_key_header or api_key_query")


# ---------------------------------------------------------------------- the retrying client


def retry_after_seconds(value: str | None, now: datetime | None = None) -> float | None:
    """``Retry-After`` as seconds to wait: delta-seconds or an HTTP date; None if absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class RateLimiter:
    """At most ``per_second`` request starts per second (no burst), for one client."""

    def __init__(self, per_second: float | None, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.interval = 1.0 / per_second if per_second else 0.0
        self.clock = clock
        self.sleep = sleep
        self.next_at = 0.0

    def wait(self) -> None:
        if not self.interval:
            return
        now = self.clock()
        if now < self.next_at:
            self.sleep(self.next_at - now)
            now = self.next_at
        self.next_at = now + self.interval


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, (parts.hostname or "").lower(), port


def join_url(base_url: str, endpoint: str) -> str:
    """The connection's base URL joined with an endpoint (as HttpHook joins them)."""
    if endpoint.startswith(("http://", "https://")):
        return endpoint
    if not base_url or not endpoint:
        return (base_url or "") + (endpoint or "")
    return base_url.rstrip("/") + "/" + endpoint.lstrip("/")


class HttpClient:
    """Requests for one table on one session: the resilience rules live here, once for every caller.

    Retries: ``table.retries`` more attempts on 408/425/429/5xx (not 501/505), timeouts and
    connection errors; the delay before retry *n* (0-based) is ``backoff_seconds * 2**n`` capped at
    ``max_backoff_seconds``, times a random factor in [0.5, 1] (jitter), and never less than the
    server's ``Retry-After``. A ``Retry-After`` above ``max_backoff_seconds`` ends the attempts at
    once (the task's own retry, minutes later, is the better wait). After the last attempt an
    ``HttpRequestError`` (transient: Airflow retries the task) names the status, the URL without
    secrets and a body excerpt; other 4xx raise ``HttpStatusError`` (permanent) at once.
    """

    def __init__(self, session: requests.Session, base_url: str, table: HttpTable, *,
                 plan: AuthPlan | None = None, sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.session = session
        self.base_url = base_url
        self.table = table
        self.plan = plan or AuthPlan("none")
        if plan is not None:
            session.auth = plan.auth
        self.sleep = sleep
        self.clock = clock
        self.limiter = RateLimiter(table.requests_per_second, clock, sleep)
        self.requests = 0
        self.last_url = ""  # the last request's full URL (with its query): for messages, made safe

    # Fetch
    def __call__(self, endpoint: str, params: dict[str, Any]) -> HttpResponse:
        return self.fetch(endpoint, params)

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self.session.close()

    def safe(self, url: str) -> str:
        return safe_url(url, self.plan.secret_params)

    def clean(self, text: str) -> str:
        """``text`` without the credentials of this client's connection."""
        return scrub(text, self.plan.secrets)

    def _check_origin(self, url: str, what: str) -> None:
        if self.plan.scheme == "none" or _origin(url) == _origin(self.base_url):
            return
        raise HttpRefusedError(
            f"{self.table.name}: {what} {self.safe(url)} is on another host than the connection "
            f"({self.safe(self.base_url)}); its credentials are not sent there")

    def fetch(self, endpoint: str, params: dict[str, Any]) -> HttpResponse:
        url = join_url(self.base_url, endpoint)
        if endpoint.startswith(("http://", "https://")):
            self._check_origin(url, "the page link")
        table = self.table
        started = self.clock()
        attempts = table.retries + 1
        problem = ""
        status: int | None = None
        for attempt in range(attempts):
            retry_after: float | None = None
            try:
                response = self.send(url, params)
            except TRANSIENT_ERRORS as exc:
                status = None
                if isinstance(exc, requests.Timeout):
                    problem = f"timed out after {table.timeout_seconds:g}s ({type(exc).__name__})"
                else:
                    problem = f"connection failed ({type(exc).__name__}{self._reason(exc)})"
            else:
                status = response.status_code
                if status < 300:
                    return self._parse(response)
                retry_after = retry_after_seconds(response.headers.get("Retry-After"))
                problem = f"HTTP {status} {response.reason or ''}".rstrip() + self._body(response)
                if not retryable(status):
                    raise HttpStatusError(self._message(response.url, problem, attempt + 1, started,
                                                        self._hint(status)), status=status,
                                          url=self.safe(response.url))
            if attempt + 1 >= attempts:
                break
            delay = min(table.max_backoff_seconds, table.backoff_seconds * 2 ** attempt) * random.uniform(0.5, 1.0)
            if retry_after is not None:
                if retry_after > table.max_backoff_seconds:
                    problem += (f"; the server asks to wait {retry_after:g}s, more than max_backoff_seconds "
                                f"({table.max_backoff_seconds:g}s)")
                    attempts = attempt + 1
                    break
                delay = max(delay, retry_after)
            log.warning("%s: %s %s: %s; retry %d of %d in %.2fs", table.name, table.method, self.safe(self.last_url or url),
                        self.clean(problem), attempt + 1, table.retries, delay)
            self.sleep(delay)
        raise HttpRequestError(self._message(self.last_url or url, problem, attempts, started), status=status,
                               url=self.safe(self.last_url or url))

    def send(self, url: str, params: dict[str, Any]) -> requests.Response:
        """One request (and its same-origin redirects), without checking the status."""
        method = self.table.method
        data: dict[str, Any] | None = None
        query: dict[str, Any] | None = params or None
        if method != "GET":
            data, query = params or None, None
        for _ in range(MAX_REDIRECTS + 1):
            self.limiter.wait()
            request = requests.Request(method, url, params=query, data=data, headers=self.table.headers or None)
            prepared = self.session.prepare_request(request)
            settings = self.session.merge_environment_settings(
                prepared.url or url, self.session.proxies, self.session.stream, self.session.verify, self.session.cert)
            self.requests += 1
            self.last_url = prepared.url or url
            response = self.session.send(prepared, timeout=self.table.timeout_seconds, allow_redirects=False,
                                         **settings)
            location = response.headers.get("Location")
            if response.status_code not in (301, 302, 303, 307, 308) or not location:
                return response
            url = urljoin(response.url, location)
            self._check_origin(url, f"the redirect from {self.safe(response.url)} to")
            query = None
            if response.status_code in (301, 302, 303):
                method, data = "GET", None
        raise HttpRefusedError(f"{self.table.name}: more than {MAX_REDIRECTS} redirects from {self.safe(url)}")

    def _parse(self, response: requests.Response) -> HttpResponse:
        url = self.safe(response.url)
        if not response.content.strip():
            body: Any = None
        else:
            try:
                body = json.loads(self._text(response, url), parse_float=exact_float)  # 0.1000000000000000055 stays exact
            except RecursionError:
                raise SourceDataError(self.clean(too_deep_message(
                    f"{self.table.name}: the {response.status_code} response from {url}"))) from None
            except ValueError as exc:
                kind = response.headers.get("Content-Type", "no content type")
                raise SourceDataError(self.clean(
                    f"{self.table.name}: {response.status_code} from {url} is not JSON ({kind}): "
                    f"{excerpt(self.clean(response.text))!r}")) from exc
        return HttpResponse(body=body, status=response.status_code, headers=response.headers, url=url)

    def _text(self, response: requests.Response, url: str) -> str:
        """The body as text, decoded strictly: the charset the response names, else UTF-8 (JSON's own
        encoding, RFC 8259; UTF-16/32 told by their byte pattern). ``response.json()`` replaced bytes
        it could not decode with U+FFFD, and read a ``text/*`` body without a charset as Latin-1:
        values changed silently."""
        content = response.content
        content_type = response.headers.get("Content-Type", "")
        media = content_type.split(";")[0].strip().lower()
        if "charset" in content_type.lower():
            encoding = requests.utils.get_encoding_from_headers(response.headers) or "utf-8"
        else:  # requests' defaults (ISO-8859-1 for text/*) are not what the server sent
            encoding = requests.utils.guess_json_utf(content) or "utf-8"
        if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
            encoding = "utf-8-sig"  # a byte order mark is not part of the JSON text
        try:
            return content.decode(encoding)
        except (UnicodeDecodeError, LookupError) as exc:
            where = f"byte {exc.start}" if isinstance(exc, UnicodeDecodeError) else "its charset"
            raise SourceDataError(self.clean(
                f"{self.table.name}: the {response.status_code} response from {url} ({media or 'no content type'}) "
                f"is not valid {encoding.removesuffix('-sig')} at {where}: {exc}; nothing was loaded, "
                "so no value is changed")) from None

    def _body(self, response: requests.Response) -> str:
        # scrubbed before it is cut: a secret across the cut would otherwise leave its first part
        text = excerpt(self.clean(response.text)) if response.content else ""
        return f"; body: {text!r}" if text else ""

    @staticmethod
    def _reason(exc: BaseException) -> str:
        text = str(exc)
        for marker in ("reset by peer", "Connection refused", "RemoteDisconnected", "Connection aborted",
                       "IncompleteRead", "Name or service not known"):
            if marker in text:
                return f": {marker}"
        return ""

    @staticmethod
    def _hint(status: int) -> str:
        if status in (401, 403):
            return " (check the connection's credentials and the table's auth setting)"
        if status == 404:
            return " (check the endpoint)"
        return ""

    def _message(self, url: str, problem: str, attempts: int, started: float, hint: str = "") -> str:
        seconds = self.clock() - started
        tries = f"after {attempts} attempts in {seconds:.1f}s" if attempts > 1 else "at once"
        return self.clean(f"{self.table.name}: {self.table.method} {self.safe(url)} failed {tries}: "
                           f"{problem}{hint}")


def requests_client(base_url: str, table: HttpTable, *, login: str | None = None, password: str | None = None,
                    extra: Mapping[str, Any] | None = None, headers: Mapping[str, str] | None = None,
                    where: str = "the connector") -> HttpClient:
    """A client on a plain ``requests`` session (the CLI's path; no Airflow)."""
    plan = resolve_auth(table.auth, login, password, extra, where)
    register_header_secrets({**(headers or {}), **table.headers})
    session = requests.Session()
    if headers:
        session.headers.update(headers)
    return HttpClient(session, base_url, table, plan=plan)


# ---------------------------------------------------------------------------- pagination


def page_records(document: Any, records_path: str | None, where: str) -> list[dict[str, Any]]:
    """The records of one response: the list at ``records_path`` (a single object is one record).

    Only an explicit ``[]``, ``null`` or ``{}`` (PHP's empty list) is no record: a body without
    ``records_path`` (an error answered with status 200) fails, as taking it for the last page
    would lose the pages after it.
    """
    records = _records_at(document, records_path, where) if records_path else document
    if records is None or records == {}:
        return []
    if isinstance(records, dict):
        return [records]
    if not isinstance(records, list):
        raise SourceDataError(f"{where}: expected a list of records at {records_path or 'the top level'}, "
                              f"got {type(records).__name__}")
    bad = next((r for r in records if not isinstance(r, dict)), None)
    if bad is not None:
        return [{"value": r} if not isinstance(r, dict) else r for r in records]
    return records


def _records_at(document: Any, records_path: str, where: str) -> Any:
    """The value at ``records_path``; an error naming where the path breaks and the keys found there
    (not their values: an error body may echo a credential)."""
    node = document
    reached: list[str] = []
    for part in records_path.split("."):
        if isinstance(node, Mapping) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            inside = ".".join(reached) or "the body"
            if document is None:
                found = "the body is empty or JSON null"
            elif node is None:
                found = f"{inside} is null"
            elif isinstance(node, Mapping):
                keys = [repr(str(k)[:40]) for k in list(node)[:10]]
                found = f"{inside} has the keys {', '.join(keys)}{', ...' if len(node) > 10 else ''}" if keys \
                    else f"{inside} is an empty object"
            else:
                found = f"{inside} is a {type(node).__name__}"
            raise SourceDataError(
                f"{where}: the response has no {part!r} (records_path {records_path}): {found}. An API that "
                "answers an error with status 200 (a rate limit, an expired token) sends such a body; the "
                "extract stops rather than take it for the last page and lose the pages after it (nothing "
                "of this extract was published). Check records_path, or run again later")
        reached.append(part)
    return node


_LINK = re.compile(r"<([^>]*)>([^<]*)")
_LINK_PARAM = re.compile(r';\s*([A-Za-z0-9!#$&+.^_`|~-]+)\s*=\s*(?:"([^"]*)"|([^;,\s]+))')


def link_header(value: str | None, rel: str = "next") -> str | None:
    """The target of relation ``rel`` in an RFC 8288 ``Link`` header (``rel`` may list several), or None."""
    if not value:
        return None
    for link in _LINK.finditer(value):
        for param in _LINK_PARAM.finditer(link.group(2)):
            if param.group(1).lower() != "rel":
                continue
            rels = (param.group(2) if param.group(2) is not None else param.group(3) or "").lower().split()
            if rel.lower() in rels:
                return link.group(1).strip()
    return None


def header(headers: Mapping[str, str], name: str) -> str | None:
    """A response header by case-insensitive name (plain dicts too)."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    return value


def _total(document: Any, path: str | None) -> int | None:
    value = get_path(document, path) if path else None
    if isinstance(value, bool) or value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def first_params(table: HttpTable, watermark: str | None = None) -> dict[str, Any]:
    """The first request's query parameters: the table's, plus the incremental one when it has a value."""
    params = dict(table.params)
    incremental = table.incremental
    if incremental and incremental.param:
        value = watermark if watermark is not None else incremental.initial
        if value is not None:
            params[incremental.param] = str(value)
    return params


@dataclass
class Page:
    """One page's records, with its number (from 1) and its URL (safe to show)."""

    number: int
    url: str
    records: list[dict[str, Any]]


def table_label(table: HttpTable, source: str = "") -> str:
    """How errors name a table: ``source.table`` when the source is known."""
    return f"{source}.{table.name}" if source else table.name


def page_url(pagination: Any, url: str) -> str:
    """A page's URL for an error: a server's link (next_link, link_header, cursor) by its path only,
    as its query may carry credentials under any name; a URL built from the config, made safe."""
    if isinstance(pagination, (NextLinkPagination, LinkHeaderPagination, CursorPagination)):
        return urlsplit(url).path
    return redact(url)


def page_digest(records: list[dict[str, Any]]) -> bytes:
    """A digest of a page's records, to tell a page that repeats the previous one."""
    try:
        text = json.dumps(records, default=str, separators=(",", ":"))  # ASCII: a lone surrogate is escaped
    except RecursionError:
        return b""  # nested deeper than Python reads: the batch builder names the record
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def iter_pages(fetch: Fetch, table: HttpTable, watermark: str | None = None, *,
               source: str = "") -> Iterator[Page]:
    """Each page, following the table's pagination until a stop condition.

    Every style stops at an empty page, once ``total_path``'s count is read, and after
    ``max_pages`` (a warning); page_number/offset without a total also stop at a short page (with
    a total, a short page is a server's own page size cap: paging goes on), next_link, cursor and
    link_header when there is no next. An empty page before the total is reached is an error (the
    rest would be lost), as are a next link or cursor that repeats, or a page with the same
    records as the page before (the API ignores the pagination: going on would load the same
    records page after page, up to ``max_pages``).
    """
    pagination = table.pagination
    label = table_label(table, source)
    params = first_params(table, watermark)
    endpoint: str = table.endpoint
    page = 0
    seen = 0
    page_no = pagination.start_page if isinstance(pagination, PageNumberPagination) else 0
    offset = 0
    total: int | None = None
    total_path = getattr(pagination, "total_path", None)
    previous: set[str] = set()
    last_digest = b""
    while True:
        if page >= table.max_pages:
            log.warning("%s: stopped after max_pages=%d (%d records)", label, table.max_pages, seen)
            return
        if isinstance(pagination, PageNumberPagination):
            params[pagination.page_param] = page_no
            if pagination.page_size_param and pagination.page_size:
                params[pagination.page_size_param] = pagination.page_size
        elif isinstance(pagination, OffsetPagination):
            params[pagination.offset_param] = offset
            params[pagination.limit_param] = pagination.limit
        response = fetch(endpoint, params)
        document = response.body
        shown = page_url(pagination, response.url)
        records = page_records(document, table.records_path, f"{label} page {page + 1} ({shown})")
        page += 1
        seen += len(records)
        paged = getattr(pagination, "type", "none") != "none"
        if paged and total_path:  # each page's own total: a live API's shrinks when records are deleted
            current = _total(document, total_path)
            total = total if current is None else current
        if paged and not records and total is not None and seen < total:
            raise _short_of_total(f"{label}: page {page} ({shown}) is empty", seen, total, total_path)
        if paged and records:
            digest = page_digest(records)
            if digest and digest == last_digest:
                raise HttpRefusedError(
                    f"{label}: page {page} ({shown}) has the same records as page "
                    f"{page - 1}: the API ignores the pagination settings; stopped so the same records are not "
                    "loaded again (nothing of this extract was published)")
            last_digest = digest
        yield Page(page, response.url, records)
        if not records or not paged:
            return
        if total is not None and seen >= total:
            return
        if isinstance(pagination, PageNumberPagination):
            if total is None and pagination.page_size and len(records) < pagination.page_size:
                return
            page_no += 1
        elif isinstance(pagination, OffsetPagination):
            if total is None and len(records) < pagination.limit:
                return
            offset += len(records)
        else:
            following = _following(pagination, response)
            if following is None:
                if total is not None and seen < total:
                    raise _short_of_total(f"{label}: page {page} ({shown}) has no next page", seen, total, total_path)
                return
            if following in previous:
                # a link's query may carry credentials under any name: show its path only
                shown = following[:80] if isinstance(pagination, CursorPagination) else urlsplit(following).path
                raise HttpRefusedError(
                    f"{label}: page {page} points to a page already read ({shown!r}): the API "
                    "ignores the pagination settings; stopped so the same records are not loaded again")
            previous.add(following)
            if isinstance(pagination, CursorPagination):
                params[pagination.cursor_param] = following
            else:
                endpoint, params = following, {}  # a next link carries its own query


def _short_of_total(what: str, seen: int, total: int, total_path: str | None) -> ExtractError:
    return ExtractError(
        f"{what} after {seen} records, but the API's total of {total} (total_path {total_path}) says more "
        "exist: the API stopped paging early (some cap how deep paging goes) or the total counts something "
        "else; stopped so the missing records are not lost under a successful run (nothing of this extract "
        "was published). Narrow each run (params, incremental) below the API's paging limit, or point "
        "total_path at the record count")


def _following(pagination: Any, response: HttpResponse) -> str | None:
    if isinstance(pagination, NextLinkPagination):
        link = get_path(response.body, pagination.next_path)
        return link if isinstance(link, str) and link else None
    if isinstance(pagination, CursorPagination):
        cursor = get_path(response.body, pagination.cursor_path)
        if cursor is None or cursor is False or cursor == "" or isinstance(cursor, (dict, list)):
            return None
        return str(cursor)
    if isinstance(pagination, LinkHeaderPagination):
        target = link_header(header(response.headers, "Link"), pagination.rel)
        if target and not target.startswith(("http://", "https://")) and response.url:
            target = urljoin(response.url, target)  # a relative reference, resolved against the page's URL
        return target
    return None


# ------------------------------------------------------------------------ records -> batches


ChildSink = Callable[[ChildTable, pa.RecordBatch], None]


def _pop_path(record: dict[str, Any], path: str) -> tuple[dict[str, Any], Any]:
    """A copy of ``record`` without the value at dot ``path``, and that value (None if absent)."""
    head, _, rest = path.partition(".")
    if head not in record:
        return record, None
    out = dict(record)
    if not rest:
        return out, out.pop(head)
    inner = out[head]
    if not isinstance(inner, dict):
        return record, None
    out[head], value = _pop_path(inner, rest)
    return out, value


class _Buffer:
    def __init__(self, name: str, table: HttpTable, source: str) -> None:
        self.rows: list[dict[str, Any]] = []
        self.builder = TypedBatchBuilder(name, on_type_change=table.on_type_change,
                                         column_types=table.column_types, source=source)


class _KeysSeen:
    """The primary keys read so far in one extract, as hashes (some 70 bytes per record).

    One key read twice is no error: offset paging over live data shifts a record onto the next
    page, and a merge keeps the last row of a key. A page whose every key was read before brings
    nothing new: the API went back to records already read (it wraps around, or ignores the paging).
    """

    def __init__(self, keys: list[str], label: str, pagination: Any) -> None:
        self.keys = keys
        self.label = label
        self.pagination = pagination
        self.hashes: set[int] = set()

    def check(self, page: Page, rows: Sequence[Mapping[str, Any]]) -> None:
        new = False
        for row in rows:
            if all(k in row for k in self.keys):
                key = tuple(row[k] for k in self.keys)
            else:  # the record's own spelling (userId for user_id)
                by_name = {normalize_identifier(k): v for k, v in row.items()}
                key = tuple(by_name.get(k) for k in self.keys)
            if any(v is None for v in key):
                new = True  # no key to compare (a load with NULL keys fails on its own)
                continue
            try:
                digest = hash(key)
            except TypeError:  # a list or object in a key column: by its JSON text
                digest = hash(tuple(to_json_text(v) for v in key))
            if digest not in self.hashes:
                self.hashes.add(digest)
                new = True
        if rows and not new:
            raise HttpRefusedError(
                f"{self.label}: page {page.number} ({page_url(self.pagination, page.url)}) has only records whose "
                f"primary key ({', '.join(self.keys)}) was read on earlier pages: the API went back to records "
                "already read (it ignores or wraps the pagination); stopped so they are not loaded again "
                "(nothing of this extract was published)")


def iter_http_batches(fetch: Fetch, table: HttpTable, *, watermark: str | None = None,
                      children: ChildSink | None = None, source: str = "") -> Iterator[pa.RecordBatch]:
    """Records of every page, flattened to ``table.max_depth``, in typed batches of ``table.batch_rows``.

    ``watermark``: the incremental table's last loaded cursor value (sent as ``incremental.param``).
    ``children``: receives the batches of each ``unnest`` child table (rows linked to their parent
    by ``parent__<key>`` and ``parent__index``; an item field named like one is an error, as its value
    would replace the link); needed when the table unnests lists.
    ``source``: the source's name, for errors.
    """
    child_tables = table.child_tables
    if child_tables and children is None:
        raise PermanentError(f"{table.name}: unnest needs a writer for the child tables")
    parent = _Buffer(table.name, table, source)
    kids = {c.name: _Buffer(c.name, table, source) for c in child_tables}
    keys = [normalize_identifier(k) for k in table.primary_key]
    seen_keys = _KeysSeen(keys, table_label(table, source), table.pagination) if keys else None
    link_names = {f"{CHILD_PARENT_PREFIX}{k}" for k in keys} | {CHILD_INDEX_COLUMN}
    link_name = functools.lru_cache(maxsize=4096)(lambda name: normalize_identifier(name) in link_names)
    total = 0
    for page in iter_pages(fetch, table, watermark, source=source):
        first = len(parent.rows)
        for record in page.records:
            lists: list[tuple[ChildTable, Any]] = []
            for child in child_tables:
                record, items = _pop_path(record, child.path)
                if items is not None:
                    lists.append((child, items))
            label = f"{f'{source}.' if source else ''}{table.name}"
            flat = flatten_record(record, table.max_depth,
                                  where=f"{label}: page {page.number} record {len(parent.rows) - first + 1}")
            parent.rows.append(flat)
            if not lists:
                continue
            position = total + len(parent.rows)
            link = _parent_link(flat, keys, table, position)
            for child, items in lists:
                buffer = kids[child.name]
                for index, item in enumerate(items if isinstance(items, list) else [items]):
                    row = flatten_record(item if isinstance(item, dict) else {"value": item}, table.max_depth,
                                         where=f"{f'{source}.' if source else ''}{child.name}: record {position} item {index}")
                    clash = next((name for name in row if link_name(name)), None)
                    if clash is not None:
                        raise SourceDataError(
                            f"{f'{source}.' if source else ''}{child.name}: record {position} item {index} "
                            f"(unnest {child.path!r}) has a field {clash!r}, named like the link column "
                            f"{normalize_identifier(clash)!r}: its value would replace the link to the parent "
                            f"row; leave {child.path!r} out of unnest to keep the list whole as jsonb (nothing "
                            "of this extract was published)")
                    buffer.rows.append({**link, CHILD_INDEX_COLUMN: index, **row})
                if len(buffer.rows) >= table.batch_rows:
                    assert children is not None
                    children(child, buffer.builder.build(buffer.rows))
                    buffer.rows = []
        if seen_keys is not None:
            seen_keys.check(page, parent.rows[first:])
        while len(parent.rows) >= table.batch_rows:
            chunk, parent.rows = parent.rows[: table.batch_rows], parent.rows[table.batch_rows:]
            total += len(chunk)
            yield parent.builder.build(chunk)
    if parent.rows:
        total += len(parent.rows)
        yield parent.builder.build(parent.rows)
        parent.rows = []
    for child in child_tables:
        buffer = kids[child.name]
        if buffer.rows:
            assert children is not None
            children(child, buffer.builder.build(buffer.rows))
            buffer.rows = []
    changes = [c for b in (parent, *kids.values()) for c in b.builder.changes]
    for change in changes:
        log.warning("%s: type change handled: %s", table.name, change)
    log.info("%s: %d records%s", table.name, total,
             "".join(f", {c.name}: {kids[c.name].builder.records} rows" for c in child_tables))


def _parent_link(flat: Mapping[str, Any], keys: list[str], table: HttpTable, position: int) -> dict[str, Any]:
    by_name = {normalize_identifier(k): v for k, v in flat.items()}
    link: dict[str, Any] = {}
    for key in keys:
        value = by_name.get(key)
        if value is None:
            raise SourceDataError(f"{table.name}: record {position} has no {key!r} (primary_key): its "
                                  "unnested rows could not be linked to it")
        link[f"{CHILD_PARENT_PREFIX}{key}"] = value
    return link


class ChildPartitions:
    """Lake partitions of a table's unnested child tables, written beside the parent's partition."""

    def __init__(self, lake_root: str | Path, source: str, table: HttpTable, partition: date,
                 run_id: str | None = None) -> None:
        from sndw.lake import open_partition

        self.writers = {c.name: open_partition(lake_root, "http", source, c.name, partition, run_id=run_id)
                        for c in table.child_tables}
        for writer in self.writers.values():
            writer.__enter__()

    def write(self, child: ChildTable, batch: pa.RecordBatch) -> None:
        self.writers[child.name].write(batch)

    def commit(self) -> dict[str, Any]:
        """Swap every child partition in (an empty one too), once all of them have validated."""
        for writer in self.writers.values():
            writer.validate()
        return {name: writer.commit() for name, writer in self.writers.items()}

    def abort(self) -> None:
        for writer in self.writers.values():
            writer.abort()
