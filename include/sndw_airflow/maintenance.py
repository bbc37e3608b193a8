"""Maintenance operators: rebuild warehouse tables from the lake (replay); check freshness."""

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


class FreshnessCheckOperator(BaseOperator):
    """Check the freshness of every table that has a ``freshness`` policy (sndw.freshness), per
    warehouse connection; announce each breach and each recovery once on the source's ``notify``.

    The check is green when it ran, whatever the tables' state: the state is in etl_freshness and
    /sndw/health, and the alerts go out. An alert that cannot be sent fails the task with nothing
    recorded, so the next check (or the retry) announces it again.

    :param sources_folder: the folder of source configs
    """

    def __init__(self, *, sources_folder: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.sources_folder = sources_folder

    def execute(self, context: Any) -> dict[str, dict[str, str]]:
        from airflow.providers.postgres.hooks.postgres import PostgresHook
        from sndw import freshness
        from sndw.audit import register_secret

        from sndw_airflow import notify

        sources = [s for _, s in iter_sources(Path(self.sources_folder)) if not isinstance(s, ConfigError)
                   and any(freshness.policy(s, t) for t in s.tables)]
        by_name = {s.name: s for s in sources}
        warehouses: dict[str, list[Any]] = {}
        for source in sources:
            warehouses.setdefault(source.dw_conn_id, []).append(source)
        ti = context.get("ti")

        def announce(changed: list[Any]) -> None:
            failed = []
            for result in changed:
                declared = by_name[result.source].notify
                config = declared.model_dump(mode="json") if declared else None
                self.log.warning("freshness %s: %s", result.alert, result.describe())
                if notify.wanted(config, "freshness"):
                    subject, text = freshness_message(result, getattr(ti, "log_url", None))
                    failed += notify.send(config, subject, text, context)
            if failed:
                raise AirflowFailException(f"freshness alerts not sent ({', '.join(sorted(set(failed)))}): "
                                           "nothing recorded, the next check sends them again")

        summary: dict[str, dict[str, str]] = {}
        for conn_id, group in sorted(warehouses.items()):
            hook = PostgresHook(postgres_conn_id=conn_id)
            register_secret(hook.get_connection(conn_id).password)
            conn: Any = hook.get_conn()
            try:
                for result in freshness.check(conn, group, announce=announce):
                    summary.setdefault(result.source, {})[result.table] = result.status
                    self.log.info("%s", result.describe())
            finally:
                conn.close()
        return summary


def freshness_message(result: Any, log_url: str | None) -> tuple[str, str]:
    """Subject and text of a freshness breach or recovery."""
    from sndw.freshness import format_age

    if result.alert == "recovery":
        subject = f"[sndw] {result.source}: {result.table} is fresh again"
    else:
        limit = result.error_after if result.status == "error" else result.warn_after
        what = "error_after" if result.status == "error" else "warn_after"
        subject = f"[sndw] {result.source}: {result.table} is stale ({result.status}: past {what} {limit})"
    age = format_age(result.age_seconds) if result.age_seconds is not None else "never loaded"
    text = "\n".join([
        f"Source:      {result.source}",
        f"Table:       {result.table}",
        f"Status:      {result.status} (was {result.previous or 'not checked'})",
        f"Age:         {age} ({result.measured_by}: {result.loaded_at.isoformat() if result.loaded_at else 'none'})",
        f"Thresholds:  warn_after {result.warn_after or '-'}, error_after {result.error_after or '-'}",
        f"Log:         {log_url or 'not known'}",
    ])
    return subject, text
