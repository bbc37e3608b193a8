"""The warehouse over HTTP inside Airflow's API server, behind Airflow's own login.

The FastAPI app that plugins/sndw_plugin.py mounts under /sndw: it resolves the user (Airflow's
JWT, as a bearer token or the UI's cookie), keeps to the sources whose DAG the user may read, and
calls sndw.stats / sndw.reconcile, where the SQL lives.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import unquote_to_bytes

import psycopg
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer, OAuth2PasswordBearer
from sndw import stats
from sndw.audit import redact, register_secret
from sndw.config import iter_sources
from sndw.errors import ConfigError
from sndw.naming import dag_id_for, qualified
from sndw.reconcile import reconcile

from sndw_airflow.context import attach_lake, lake_root
from sndw_airflow.etl_page import PAGE_HTML

DW_CONN_ID = os.environ.get("SNDW_API_DW_CONN_ID", "dw")
RESERVED_PARAMS = {"page", "page_size", "search", "order_by", "order"}

app = FastAPI(
    title="sndw warehouse",
    version="1.0",
    description=(
        "Health, run statistics, loaded tables and partition gaps of the warehouse, from `etl_audit_log`. "
        "Authenticate as for Airflow's REST API (`POST /auth/token`, then `Authorization: Bearer <token>`; "
        "the UI's session cookie works too). A user sees only the sources whose DAG they may read."),
    # FastAPI's Swagger UI loads its script from a CDN (blank offline): /docs is a page of our own.
    docs_url=None,
    redoc_url=None,
)


@app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
def api_docs() -> HTMLResponse:
    """The API's endpoints from its OpenAPI document, as a plain page that needs no CDN."""
    from html import escape

    spec = app.openapi()
    rows = []
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            params = ", ".join(f"{p['name']} ({p['in']}{', required' if p.get('required') else ''})"
                               for p in op.get("parameters", []))
            rows.append(f"<tr><td><code>{escape(method.upper())}</code></td><td><code>/sndw{escape(path)}</code></td>"
                        f"<td>{escape(op.get('summary', ''))}<br><small>{escape(op.get('description', ''))}</small></td>"
                        f"<td><small>{escape(params)}</small></td></tr>")
    return HTMLResponse(
        "<!doctype html><html><head><meta charset=utf-8><title>sndw warehouse API</title><style>"
        "body{font-family:sans-serif;margin:2em}td{border-top:1px solid #ccc;padding:.4em;vertical-align:top}"
        "</style></head><body>"
        f"<h1>{escape(spec['info']['title'])} {escape(spec['info']['version'])}</h1>"
        f"<p>{escape(spec['info'].get('description', ''))}</p>"
        "<p>The OpenAPI document: <a href=\"openapi.json\">/sndw/openapi.json</a> (load it into any OpenAPI "
        "viewer).</p><table><tr><th>method</th><th>path</th><th>what</th><th>parameters</th></tr>"
        + "".join(rows) + "</table></body></html>")


_bearer = HTTPBearer(auto_error=False)
# The OpenAPI document's password flow (a viewer's login form); the token arrives as the same
# Authorization header.
_oauth2 = OAuth2PasswordBearer(tokenUrl="/auth/token", auto_error=False)


async def current_user(request: Request, _token: Annotated[str | None, Depends(_oauth2)] = None,
                       credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)] = None) -> Any:
    """Airflow's own ``get_user`` (the bearer token, else the UI's cookie; 401 without either).

    Imported on first use, not with this module: every task process loads the plugins folder (for
    macros), and Airflow's API security module would add seconds to each task's start.
    """
    from airflow.api_fastapi.core_api.security import get_user

    return await get_user(request, None, credentials)


GetUserDep = Annotated[Any, Depends(current_user)]


class WarehouseUnavailable(Exception):
    pass


@app.exception_handler(RequestValidationError)
def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    """A malformed parameter is a 400 whose message names it (FastAPI's default is a 422)."""
    problems = [f"{error['loc'][-1]}: {error['msg']}" for error in exc.errors()]
    return JSONResponse(status_code=400, content={"detail": "; ".join(problems) or "bad request"})


def query_parameters(request: Request) -> list[tuple[str, str]]:
    """The query string's parameters, refused (400, naming the parameter) when one is not UTF-8 once
    decoded or holds a NUL: Starlette would turn bad bytes into U+FFFD, silently another value."""
    pairs: list[tuple[str, str]] = []
    for part in request.scope.get("query_string", b"").split(b"&"):
        if not part:
            continue
        raw_key, _, raw_value = part.partition(b"=")
        key_bytes = unquote_to_bytes(raw_key.replace(b"+", b" "))
        key = key_bytes.decode("utf-8", "replace")
        for what, raw in (("name", key_bytes), ("value", unquote_to_bytes(raw_value.replace(b"+", b" ")))):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise HTTPException(400, f"{key}: the parameter's {what} is not UTF-8 text") from None
            if "\x00" in text:
                raise HTTPException(400, f"{key}: the parameter's {what} holds a NUL character (\\x00)")
            if what == "value":
                pairs.append((key, text))
    return pairs


@app.exception_handler(WarehouseUnavailable)
def _unavailable(request: Request, exc: WarehouseUnavailable) -> JSONResponse:
    return JSONResponse(status_code=503, content={"status": "unhealthy", "detail": str(exc),
                                                  "warehouse": {"reachable": False, "error": str(exc)}})


def sources_folder() -> Path:
    configured = os.environ.get("SNDW_SOURCES_DIR")
    if configured:
        return Path(configured)
    from airflow.configuration import conf

    return Path(conf.get("core", "dags_folder")) / "sources"


def all_sources() -> list[Any]:
    return [s for _, s in iter_sources(sources_folder()) if not isinstance(s, ConfigError)]


def readable_sources(user: Any) -> list[Any]:
    """The sources whose DAG the user may read, as the auth manager decides (roles, teams, FAB)."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.models.dag import DagModel

    sources = all_sources()
    teams = DagModel.get_dag_id_to_team_name_mapping([dag_id_for(s.name) for s in sources])
    manager = get_auth_manager()
    return [s for s in sources if manager.is_authorized_dag(
        method="GET", user=user, details=DagDetails(id=dag_id_for(s.name), team_name=teams.get(dag_id_for(s.name))))]


@contextmanager
def warehouse(conn_id: str = DW_CONN_ID) -> Iterator[psycopg.Connection[Any]]:
    """A read-only connection to a warehouse's Airflow connection (``dw``, or the ``dw_conn_id`` a
    source names); 503 when unreachable."""
    from airflow.models.connection import Connection

    try:
        conn_info = Connection.get_connection_from_secrets(conn_id)
    except Exception as exc:  # AirflowNotFoundException: the connection is not defined
        raise WarehouseUnavailable(f"the warehouse connection {conn_id!r} is not defined") from exc
    register_secret(conn_info.password)
    try:
        conn = psycopg.connect(
            host=conn_info.host or "localhost", port=conn_info.port or 5432, user=conn_info.login or None,
            password=conn_info.password or None, dbname=conn_info.schema or None, connect_timeout=5,
            autocommit=True, application_name="sndw-api",
            options="-c default_transaction_read_only=on -c statement_timeout=30000")
    except psycopg.OperationalError as exc:
        raise WarehouseUnavailable(redact(f"the warehouse is unreachable: {exc}".strip())) from exc
    try:
        yield conn
    except psycopg.OperationalError as exc:
        raise WarehouseUnavailable(redact(f"the warehouse connection failed: {exc}".strip())) from exc
    finally:
        conn.close()


def may_read_table(user: Any, schema: str, table: str, loaders: dict[str, set[str | None]]) -> None:
    """403 unless the user may read every DAG that loads ``schema.table``.

    A table of a source config: that source's DAG. A table no source config owns (operators composed
    by hand in a DAG, as ``example_manual_pipeline``): the DAGs whose loads wrote it, as the audit log
    records them. A table loaded outside Airflow (``etl.cli run``): only a user who may read every DAG
    (an admin) may read it, as no DAG's permissions describe it.
    """
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.models.dag import DagModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    configured = {s.name for s in all_sources()}
    readable = {s.name for s in readable_sources(user)} if set(loaders) & configured else set()
    manager = get_auth_manager()
    dag_ids = {d for name, ids in loaders.items() if name not in configured for d in ids if d is not None}
    teams = DagModel.get_dag_id_to_team_name_mapping(sorted(dag_ids)) if dag_ids else {}
    for name, ids in sorted(loaders.items()):
        if name in configured:
            if name not in readable:
                raise HTTPException(403, f"you may not read the DAG {dag_id_for(name)!r} of source {name!r}, "
                                         f"which loads {schema}.{table}")
            continue
        for dag_id in sorted(d for d in ids if d is not None):
            if not manager.is_authorized_dag(method="GET", user=user,
                                             details=DagDetails(id=dag_id, team_name=teams.get(dag_id))):
                raise HTTPException(403, f"you may not read the DAG {dag_id!r}, which loads {schema}.{table}")
        if None in ids:
            with create_session() as session:
                every = set(session.scalars(select(DagModel.dag_id)))
            allowed = manager.get_authorized_dag_ids(user=user, method="GET")
            if not manager.is_authorized_dag(method="GET", user=user) or not every <= allowed:
                raise HTTPException(403, f"{schema}.{table} was loaded outside Airflow (pipeline {name!r}, by the "
                                         "command line): only a user who may read every DAG may read it")


def by_warehouse(sources: list[Any]) -> dict[str, list[Any]]:
    """The sources grouped by the warehouse connection they load into (``dw_conn_id``), ``dw`` first."""
    groups: dict[str, list[Any]] = {DW_CONN_ID: []}
    for source in sources:
        groups.setdefault(source.dw_conn_id, []).append(source)
    return groups


def _source(user: Any, name: str) -> Any:
    found = {s.name: s for s in all_sources()}
    if name not in found:
        raise HTTPException(404, f"no source named {name!r}")
    if name not in {s.name for s in readable_sources(user)}:
        raise HTTPException(403, f"you may not read the DAG {dag_id_for(name)!r} of source {name!r}")
    return found[name]


def source_conninfo(source: Any) -> str:
    """A CDC source's connection string, from its Airflow connection (as its cdc_sync task reads it)."""
    from airflow.models.connection import Connection

    from sndw_airflow.cdc import postgres_conninfo

    connection = Connection.get_connection_from_secrets(source.conn_id)
    register_secret(connection.password, login=connection.login)
    return postgres_conninfo(connection)


def add_cdc_slots(conn: psycopg.Connection[Any], sources: list[Any], per_source: dict[str, Any]) -> list[str]:
    """Each CDC source's slot (``stats.cdc_slots``) as ``cdc_slot`` of its entry in ``per_source``; returns
    the sources whose slot is lagging, missing, lost or cannot be read."""
    slots = stats.cdc_slots(conn, sources, source_conninfo)
    for name, slot in slots.items():
        per_source.setdefault(name, {})["cdc_slot"] = slot
    return [name for name, slot in slots.items() if slot["status"] not in ("ok", "not_started")]


@app.get("/health", summary="Warehouse reachable, and per source its last run and freshness",
         responses={503: {"description": "The warehouse is unreachable"}})
def health(user: GetUserDep) -> JSONResponse:
    report: dict[str, Any] = {"sources": {}}
    lagging: list[str] = []
    groups = by_warehouse(readable_sources(user))
    for conn_id, group in groups.items():
        if not group and len(groups) > 1:
            continue
        with warehouse(conn_id) as conn:
            found = stats.health(conn, group)
            lagging += add_cdc_slots(conn, group, found["sources"])
        report["sources"].update(found.pop("sources"))
        report.setdefault("warehouses", {})[conn_id] = found["warehouse"]
        report.setdefault("warehouse", found["warehouse"])
    stale = [n for n, s in report["sources"].items() if s["freshness"]["status"] in ("stale", "never")
             or any(t["status"] == "error" for t in s["table_freshness"].values())]  # past error_after
    failed = [n for n, s in report["sources"].items() if (s["last_run"] or {}).get("status") == "failure"]
    status = "healthy" if not stale and not failed and not lagging else "degraded"
    return JSONResponse({"status": status, **report, "stale_sources": stale, "failed_sources": failed,
                         "lagging_slots": lagging})


@app.get("/stats", summary="Records, duration, last success and failure, runs: overall, per source and table")
def get_stats(user: GetUserDep) -> dict[str, Any]:
    groups = by_warehouse(readable_sources(user))
    parts = []
    for conn_id, group in groups.items():
        if group or len(groups) == 1:
            with warehouse(conn_id) as conn:
                part = stats.stats(conn, [s.name for s in group])
                add_cdc_slots(conn, group, part["sources"])
                parts.append(part)
    return stats.merge_stats(parts)


@app.get("/sources/{source}", summary="One source: its tables, rows per partition date and recent failures")
def get_source(user: GetUserDep, source: str) -> dict[str, Any]:
    found = _source(user, source)
    with warehouse(found.dw_conn_id) as conn:
        chart = stats.partition_chart(conn, found.name)
        failures = stats.recent_failures(conn, found.name)
    tables = [{"name": t.name, "target": qualified(found.target_schema, t.target), "write_mode": t.write_mode,
               "lake": f"lake:{found.kind}/{found.name}/{t.name}"} for t in found.tables]
    return {"source": found.name, "dag_id": dag_id_for(found.name), "kind": found.kind,
            "schedule": found.schedule, "tables": tables, "rows_per_partition": chart, "failures": failures}


@app.get("/overview", summary="What the ETL page shows: per source and table its last loads, last error, "
         "freshness, gaps, quality checks and state; failing sources first")
def get_overview(user: GetUserDep) -> dict[str, Any]:
    sources = readable_sources(user)
    with warehouse() as conn:
        latency = stats.ping(conn)
        return {**stats.overview(conn, sources), "warehouse": {"reachable": True, "latency_ms": latency}}


def set_paused(user: Any, source: str, paused: bool) -> dict[str, Any]:
    """Pause or resume the source's DAG in Airflow's metadata database, as the REST API's
    ``PATCH /api/v2/dags/{dag_id}`` does: the user must be allowed to edit (PUT) that DAG. The change
    is written to Airflow's audit log (Browse > Audit Log) under the user's name."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.models.dag import DagModel
    from airflow.models.log import Log
    from airflow.utils.session import create_session

    found = _source(user, source)
    dag_id = dag_id_for(found.name)
    team = DagModel.get_dag_id_to_team_name_mapping([dag_id]).get(dag_id)
    if not get_auth_manager().is_authorized_dag(method="PUT", user=user, details=DagDetails(id=dag_id, team_name=team)):
        raise HTTPException(403, f"you may not pause or resume the DAG {dag_id!r} of source {source!r}")
    with create_session() as session:
        dag = session.get(DagModel, dag_id)
        if dag is None:
            raise HTTPException(404, f"the DAG {dag_id!r} of source {source!r} is not in Airflow yet (not parsed)")
        dag.is_paused = paused
        session.add(Log(event="sndw_pause" if paused else "sndw_resume", dag_id=dag_id,
                        owner=user.get_name(), extra=json.dumps({"source": found.name})))
    return {"source": found.name, "dag_id": dag_id, "is_paused": paused}


@app.post("/sources/{source}/pause",
          summary="Pause the source's DAG: running checkpointed extracts stop at their next batch boundary",
          description=("Sets the DAG's `is_paused` (as the Airflow UI's toggle does). An extract of a table with "
                       "`checkpoint: true` notices within a few seconds, stops after the batch it is writing with "
                       "its progress saved, and waits up for reschedule; `/resume` continues it from there."),
          responses={403: {"description": "The user may not edit the DAG"}, 404: {"description": "No such source"}})
def pause(user: GetUserDep, source: str) -> dict[str, Any]:
    return set_paused(user, source, True)


@app.post("/sources/{source}/resume", summary="Resume (unpause) the source's DAG: paused extracts continue",
          responses={403: {"description": "The user may not edit the DAG"}, 404: {"description": "No such source"}})
def resume(user: GetUserDep, source: str) -> dict[str, Any]:
    return set_paused(user, source, False)


@app.get("/partitions/{source}", summary="The gap report: per table and date, expected, loaded, failed or missing")
def partitions(user: GetUserDep, source: str, date_from: date | None = None, date_to: date | None = None
               ) -> dict[str, Any]:
    found = _source(user, source)
    with warehouse(found.dw_conn_id) as conn:
        report = reconcile(conn, found, attach_lake(lake_root()), date_from, date_to)
    summary: dict[str, int] = {}
    for item in report:
        summary[item.status] = summary.get(item.status, 0) + 1
    return {"source": found.name, "summary": summary, "partitions": [r.to_dict() for r in report]}


@app.get("/data/{schema}/{table}", summary="Rows of a table the product loaded, paged, filtered and searched",
         description=("Any query parameter besides page, page_size, search, order_by and order is an equality "
                      "filter on the column of that name (compared as text), e.g. `?status=shipped`. A malformed "
                      "parameter (unknown or unorderable column, out of range, not UTF-8, a NUL, given twice) is "
                      "400 with a detail that starts with its name; tables the product did not load are 404; "
                      "tables whose loading DAGs the user may not read are 403 (docs/guides/web-api.md). A value "
                      "longer than `value_chars` is cut, ends with \u2026 and is listed in `truncated`."),
         responses={400: {"description": "A malformed parameter, named in the detail"},
                    403: {"description": "The user may not read a DAG that loads the table"},
                    404: {"description": "Not a loaded table"}})
def data(
    request: Request,
    user: GetUserDep,
    schema: Annotated[str, PathParam()],
    table: Annotated[str, PathParam()],
    page: Annotated[int, Query(ge=1, le=stats.MAX_PAGE)] = 1,
    page_size: Annotated[int, Query(ge=1, le=stats.MAX_PAGE_SIZE)] = 10,
    search: Annotated[str | None, Query(description="Case-insensitive substring over the text columns")] = None,
    order_by: Annotated[str | None, Query(description="A column; default: the first")] = None,
    order: Annotated[str, Query(pattern="^(asc|desc)$")] = "asc",
) -> dict[str, Any]:
    filters: dict[str, str] = {}
    given = [key for key, _ in query_parameters(request)]
    for key in dict.fromkeys(given):
        if given.count(key) != 1:
            raise HTTPException(400, f"{key}: the parameter is given {given.count(key)} times; give one value")
        if key not in RESERVED_PARAMS:
            filters[key] = request.query_params[key]
    conn_ids = list(by_warehouse(all_sources()))
    for index, conn_id in enumerate(conn_ids):  # the first warehouse that loaded the table serves it
        with warehouse(conn_id) as conn:
            try:
                may_read_table(user, schema, table, stats.table_loaders(conn, schema, table))
                return stats.query_table(conn, schema, table, page=page, page_size=page_size, filters=filters,
                                         search=search, order_by=order_by, descending=order == "desc")
            except stats.NotFound as exc:
                if index == len(conn_ids) - 1:
                    raise HTTPException(404, str(exc)) from exc
            except stats.BadRequest as exc:
                raise HTTPException(400, str(exc)) from exc
    raise HTTPException(404, f"{schema}.{table} is not a table a warehouse loaded")


@app.get("/ui", response_class=HTMLResponse, summary="The ETL page (shown in Airflow's UI as a plugin view)")
def page(user: GetUserDep) -> HTMLResponse:
    return HTMLResponse(PAGE_HTML)
