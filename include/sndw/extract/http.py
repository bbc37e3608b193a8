"""HTTP/JSON sources: paged requests through a fetch function (the operator's HttpHook), as batches."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import pyarrow as pa

from sndw.config import HttpTable, NextLinkPagination, OffsetPagination, PageNumberPagination
from sndw.errors import SourceDataError
from sndw.extract import get_path, records_to_batch

log = logging.getLogger(__name__)

# fetch(endpoint_or_url, params) -> parsed JSON body. Raises on HTTP errors.
Fetch = Callable[[str, dict[str, Any]], Any]


def page_records(document: Any, records_path: str | None, where: str) -> list[dict[str, Any]]:
    """The records of one response: the list at ``records_path`` (a single object is one record)."""
    records = get_path(document, records_path)
    if records is None:
        if records_path and document is not None and not isinstance(document, (dict, list)):
            raise SourceDataError(f"{where}: the response is not a JSON object or list")
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


def iter_pages(fetch: Fetch, table: HttpTable) -> Iterator[list[dict[str, Any]]]:
    """Each page's records, following the table's pagination until a stop condition."""
    pagination = table.pagination
    params = dict(table.params)
    endpoint: str | None = table.endpoint
    page = 0
    page_no = pagination.start_page if isinstance(pagination, PageNumberPagination) else 0
    offset = 0
    while endpoint is not None:
        if page >= table.max_pages:
            log.warning("%s: stopped after max_pages=%d", table.name, table.max_pages)
            return
        if isinstance(pagination, PageNumberPagination):
            params[pagination.page_param] = page_no
            if pagination.page_size_param and pagination.page_size:
                params[pagination.page_size_param] = pagination.page_size
        elif isinstance(pagination, OffsetPagination):
            params[pagination.offset_param] = offset
            params[pagination.limit_param] = pagination.limit
        document = fetch(endpoint, params)
        records = page_records(document, table.records_path, f"{table.name} page {page + 1}")
        page += 1
        yield records
        if isinstance(pagination, PageNumberPagination):
            if not records or (pagination.page_size and len(records) < pagination.page_size):
                return
            page_no += 1
        elif isinstance(pagination, OffsetPagination):
            if len(records) < pagination.limit:
                return
            offset += len(records)
        elif isinstance(pagination, NextLinkPagination):
            link = get_path(document, pagination.next_path)
            if not link or not isinstance(link, str):
                return
            endpoint = link
            params = {}  # a next link carries its own query
        else:
            return


def iter_http_batches(fetch: Fetch, table: HttpTable) -> Iterator[pa.RecordBatch]:
    """Records of every page, flattened, in batches of at most ``table.batch_rows``."""
    buffer: list[Mapping[str, Any]] = []
    total = 0
    for records in iter_pages(fetch, table):
        buffer.extend(records)
        while len(buffer) >= table.batch_rows:
            chunk, buffer = buffer[: table.batch_rows], buffer[table.batch_rows:]
            total += len(chunk)
            yield records_to_batch(chunk)
    if buffer:
        total += len(buffer)
        yield records_to_batch(buffer)
    log.info("%s: %d records", table.name, total)
