"""ParquetToElasticsearchOperator: index the lake manifest a load read into Elasticsearch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException
from sndw.audit import register_secret

from sndw_airflow.operators import _ManifestTask, _with_audit_callbacks, airflow_connection


def client_from_connection(conn_id: str, task_id: str) -> Any:
    """An ``elasticsearch.Elasticsearch`` client from an Airflow connection's fields: host, port,
    scheme (extra ``scheme``, else ``https`` only when the connection's schema says so), login and
    password (basic auth) or extra ``api_key``; extra ``verify_certs``, ``ca_certs`` and
    ``request_timeout`` pass through. Its secrets are registered for redaction first."""
    from elasticsearch import Elasticsearch

    connection = airflow_connection(conn_id, task_id)
    extra = connection.extra_dejson
    register_secret(extra.get("api_key"))
    if not connection.host:
        raise AirflowFailException(f"{task_id}: the connection {conn_id!r} has no host")
    scheme = extra.get("scheme") or ("https" if connection.schema == "https" else "http")
    node = {"scheme": scheme, "host": connection.host, "port": int(connection.port or 9200)}
    options: dict[str, Any] = {key: extra[key] for key in ("verify_certs", "ca_certs", "request_timeout")
                               if key in extra}
    if extra.get("api_key"):
        options["api_key"] = extra["api_key"]
    elif connection.login:
        options["basic_auth"] = (connection.login, connection.password or "")
    return Elasticsearch(hosts=[node], **options)


class ParquetToElasticsearchOperator(_ManifestTask, BaseOperator):
    """Index exactly the files of one lake manifest (the one its table's load read) into an index.

    The work is ``sndw.sinks.elasticsearch.index_manifest`` (``streaming_bulk``, 429s retried with
    backoff, memory bounded by one batch and one bulk chunk). Audited like a load: one
    ``etl_audit_log`` row per attempt, step ``index``, target ``elasticsearch:<index>``.

    :param manifest: the extract task's manifest, usually ``extract.output`` (templated)
    :param conn_id: the Elasticsearch cluster's Airflow connection
    :param index: the index (templated)
    :param id_columns: lake columns that make the document ``_id`` (normalized names)
    :param dw_conn_id: the warehouse connection, for the audit rows
    """

    template_fields: Sequence[str] = ("manifest", "index")
    ui_color = "#fef3bd"

    def __init__(self, *, manifest: Any, conn_id: str, index: str, id_columns: Sequence[str],
                 chunk_size: int = 500, max_retries: int = 5, initial_backoff: float = 1.0,
                 dw_conn_id: str = "dw", source: str | None = None, kind: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**_with_audit_callbacks(kwargs))
        if not id_columns:
            raise ValueError("id_columns is needed: documents without an id are duplicated by re-runs")
        self.manifest = manifest
        self.conn_id = conn_id
        self.index = index
        self.id_columns = list(id_columns)
        self.chunk_size = chunk_size
        self.max_retries = max_retries
        self.initial_backoff = initial_backoff
        self.dw_conn_id = dw_conn_id
        self.source = source
        self.kind = kind
        self.sndw_result: dict[str, Any] | None = None

    def audit_fields(self) -> dict[str, str]:
        return self.manifest_audit_fields(f"elasticsearch:{self.index}", "index")

    def execute(self, context: Any) -> dict[str, Any]:
        from sndw.sinks.elasticsearch import IndexingError, IndexSpec, index_manifest

        manifest = self.lake_manifest()
        spec = IndexSpec(index=self.index, id_columns=self.id_columns, chunk_size=self.chunk_size,
                         max_retries=self.max_retries, initial_backoff=self.initial_backoff)
        client = client_from_connection(self.conn_id, self.task_id)
        try:
            result = index_manifest(client, manifest, spec, where=f"{self.dag_id}.{self.task_id}")
        except IndexingError as exc:
            raise AirflowFailException(str(exc)) from exc
        finally:
            client.close()
        self.sndw_result = {**result.to_dict(), "rows_extracted": manifest.rows, "bytes": manifest.bytes,
                            "paths": manifest.paths}
        return {"index": self.index, "documents": result.documents, "manifest_id": manifest.manifest_id}
