"""Maintenance operators: rebuild warehouse tables from the lake (replay)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException
from sndw.config import iter_sources
from sndw.errors import ConfigError, SndwError

from sndw_airflow.context import attach_lake, lake_root


class ReplayFromLakeOperator(BaseOperator):
    """Reload one source's tables (or one table, or a date range) from the Parquet lake.

    :param sources_folder: the folder of source configs
    :param source: the source's name (templated)
    :param table: one table, or empty for all of the source's tables (templated)
    :param date_from: first partition date, YYYY-MM-DD or empty (templated)
    :param date_to: last partition date, YYYY-MM-DD or empty (templated)
    :param dw_conn_id: the warehouse's Airflow connection
    """

    template_fields: Sequence[str] = ("source", "table", "date_from", "date_to")

    def __init__(self, *, sources_folder: str, source: str, table: str | None = None, date_from: str | None = None,
                 date_to: str | None = None, dw_conn_id: str = "dw", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sources_folder = sources_folder
        self.source = source
        self.table = table
        self.date_from = date_from
        self.date_to = date_to
        self.dw_conn_id = dw_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        from airflow.providers.postgres.hooks.postgres import PostgresHook
        from sndw.replay import find_table, replay_table

        found = {s.name: s for _, s in iter_sources(Path(self.sources_folder)) if not isinstance(s, ConfigError)}
        source = found.get(str(self.source))
        if source is None:
            raise AirflowFailException(f"no valid source config named {self.source!r}: {', '.join(sorted(found))}")
        try:
            tables = [find_table(source, str(self.table))] if self.table else list(source.tables)
            first = date.fromisoformat(self.date_from) if self.date_from else None
            last = date.fromisoformat(self.date_to) if self.date_to else None
        except (SndwError, ValueError) as exc:
            raise AirflowFailException(str(exc)) from exc
        conn: Any = PostgresHook(postgres_conn_id=self.dw_conn_id).get_conn()
        summary: dict[str, Any] = {}
        try:
            for table in tables:
                try:
                    results = replay_table(conn, source, table, attach_lake(lake_root()), first, last,
                                           run_label=f"replay:{context.get('run_id')}")
                except SndwError as exc:
                    raise AirflowFailException(str(exc)) from exc
                summary[table.name] = {"partitions": len(results), "rows": sum(r.rows_loaded for r in results)}
                self.log.info("Replayed %s.%s: %s", source.name, table.name, summary[table.name])
        finally:
            conn.close()
        return summary
