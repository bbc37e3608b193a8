"""The task of a change capture source: one run of ``sndw.cdc.run.sync_cdc`` (every table at once)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException
from sndw.errors import PermanentError

from sndw_airflow.context import attach_lake, lake_root, partition_date
from sndw_airflow.operators import airflow_connection


def postgres_conninfo(connection: Any) -> str:
    """The libpq connection string of an Airflow postgres connection."""
    from psycopg.conninfo import make_conninfo

    extra = {k: v for k, v in connection.extra_dejson.items()
             if k in ("sslmode", "sslrootcert", "sslcert", "sslkey", "options", "connect_timeout")}
    return make_conninfo(host=connection.host or "localhost", port=connection.port or 5432,
                         dbname=connection.schema or "", user=connection.login or "",
                         password=connection.password or "", **extra)


class CdcSyncOperator(BaseOperator):
    """Follow a PostgreSQL source by logical replication: its first snapshot, then each run's changes,
    applied to the warehouse in one transaction before the slot is confirmed.

    :param source: the source config, as a mapping (a ``sql`` source with ``cdc``)
    :param conn_id: the Airflow connection of the source
    :param dw_conn_id: the warehouse connection
    :param lake_root: the lake's root folder; default ``SNDW_LAKE_ROOT`` (templated)
    """

    template_fields: Sequence[str] = ("lake_root",)
    ui_color = "#d9f2e6"

    def __init__(self, *, source: dict[str, Any], conn_id: str, dw_conn_id: str = "dw",
                 lake_root: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.source = source
        self.conn_id = conn_id
        self.dw_conn_id = dw_conn_id
        self.lake_root = lake_root

    def execute(self, context: Any) -> list[dict[str, Any]]:
        from sndw.cdc.run import sync_cdc
        from sndw.config import SqlSource
        from sndw.pipeline import SourceAccess

        source = SqlSource.model_validate(self.source)
        access = SourceAccess(postgres_conninfo=postgres_conninfo(airflow_connection(self.conn_id, self.task_id)))
        url = postgres_conninfo(airflow_connection(self.dw_conn_id, self.task_id))
        try:
            results = sync_cdc(source, access, url=url, lake=attach_lake(self.lake_root or lake_root()),
                               partition=partition_date(context))
        except PermanentError as exc:  # a table refused, a lost slot: no retry helps
            raise AirflowFailException(str(exc)) from exc
        for result in results:
            self.log.info("%s: %s, %s rows, %s deleted (%s)", result["target_table"], result["status"],
                          result["rows_loaded"], result.get("rows_deleted", 0), result["write_mode"])
        failed = [r for r in results if r["status"] != "success"]
        if failed:  # audited by the core; a retry re-reads the same changes
            raise AirflowException(f"{failed[0]['target_table']}: {failed[0]['error']}")
        return [{k: r.get(k) for k in ("target_table", "write_mode", "rows_loaded", "rows_deleted", "changes")}
                for r in results]
