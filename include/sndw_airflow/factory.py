"""The DAG factory: one DAG per source config; a broken config never hides the other sources."""

from __future__ import annotations

import logging
import os
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, BaseOperator, Param, XComArg
from airflow.sdk.exceptions import AirflowFailException
from sndw.config import CRON_PRESETS, FileSource, HttpSource, SqlSource, iter_sources
from sndw.errors import ConfigError
from sndw.naming import INVALID_CONFIG_PREFIX as INVALID_CONFIG_PREFIX
from sndw.naming import dag_id_for, extract_task_id, invalid_config_dag_id, load_task_id

from sndw_airflow import notify
from sndw_airflow.docs import dag_doc, document_tasks
from sndw_airflow.operators import ExtractToParquetOperator, ParquetToDwOperator
from sndw_airflow.timetables import PresetCronTriggerTimetable

log = logging.getLogger(__name__)


class ConfigErrorWarning(UserWarning):
    """Raised as a warning at parse time so DagBag and the DAG processor log show it."""


def _utc(day: Any) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def schedule_for(schedule: str | None) -> Any:
    """A cron preset (``@daily``) as a timetable whose summary the UI shows as written; anything
    else as Airflow takes it. The runs are those of ``schedule="@daily"`` (CronTriggerTimetable)."""
    if schedule in CRON_PRESETS:
        return PresetCronTriggerTimetable(schedule, timezone="UTC")
    return schedule


def build_dag(source: HttpSource | SqlSource | FileSource, config_path: str | os.PathLike[str] | None = None) -> DAG:
    """The DAG of one source: per table, extract to the lake, then load into the warehouse."""
    base_path = source.folder(config_path) if isinstance(source, FileSource) else None
    default_args = {
        "owner": source.owner,
        "retries": source.retries,
        "retry_delay": timedelta(seconds=source.retry_delay_seconds),
        "retry_exponential_backoff": source.retry_exponential_backoff,
        "max_retry_delay": timedelta(seconds=source.max_retry_delay_seconds),
    }
    params: dict[str, Param] = {}
    if any(t.incremental for t in source.tables):
        params = {
            "reset_watermark": Param(False, type="boolean",
                                     description="Read incremental tables from the start (a re-sync)."),
            "watermark_from": Param(None, type=["null", "string"],
                                    description="Read incremental tables from this cursor value instead."),
        }
    doc = dag_doc(source, config_path)  # the tables and the YAML itself, for the UI's DAG docs
    with DAG(
        dag_id=dag_id_for(source.name),
        description=source.description,
        doc_md=doc,
        schedule=schedule_for(source.schedule),
        start_date=_utc(source.start_date),
        end_date=_utc(source.end_date) if source.end_date else None,
        catchup=source.catchup,
        max_active_runs=source.max_active_runs,
        tags=sorted({"sndw", source.kind, *source.tags}),
        default_args=default_args,
        params=params,
    ) as dag:
        loads: list[BaseOperator] = []
        if isinstance(source, SqlSource) and source.cdc is not None:  # every table in one run: sndw.cdc
            from sndw_airflow.cdc import CdcSyncOperator

            loads.append(CdcSyncOperator(task_id="cdc_sync", source=source.model_dump(mode="json"),
                                         conn_id=source.conn_id, dw_conn_id=source.dw_conn_id))
        for table in [] if loads else source.tables:
            extract_args: dict[str, Any] = {
                "source": source.name,
                "kind": source.kind,
                "table": _extract_table(table),
                "conn_id": getattr(source, "conn_id", None),
                "base_path": base_path,
                "dw_conn_id": source.dw_conn_id,
            }
            extract: BaseOperator
            if getattr(table, "parallel", 1) > 1:
                extract = _parallel_extract(table, extract_args)
            else:
                extract = ExtractToParquetOperator(task_id=extract_task_id(table.name), **extract_args)
            load = _load_task(source, table, extract.output)
            extract >> load
            loads.append(load)
            if table.elasticsearch:  # the same manifest the load read, indexed once it is in the warehouse
                load >> _index_task(source, table, extract.output)
            # http tables that unnest lists: one more load per child table, after the parent's load,
            # of the child partition the same extract wrote (its manifest is the XCom child.xcom_key).
            for child in getattr(table, "child_tables", []):
                child_load = _load_task(source, child, XComArg(extract, key=child.xcom_key))
                load >> child_load
                loads.append(child_load)
        # A table's load after the loads of the tables its relationships checks relate to.
        if not isinstance(source, SqlSource) or source.cdc is None:
            load_of = {load.task_id: load for load in loads}
            for name, parents in source.load_dependencies().items():
                for parent in parents:
                    load_of[load_task_id(parent)] >> load_of[load_task_id(name)]
        # SQL steps: after every load, one after another (a step may read what the one before built).
        previous: list[BaseOperator] = loads
        for step in source.sql_steps:
            from sndw_airflow.sql_steps import SqlStepOperator

            task = SqlStepOperator(task_id=f"sql_{step.name}", source=source.name, kind=source.kind,
                                   step=step.name, sql=step.text(Path(config_path).parent if config_path else Path.cwd()),
                                   target=step.target, dw_conn_id=source.dw_conn_id)
            previous >> task
            previous = [task]
    document_tasks(dag, source)
    notify.attach(dag, source.notify.model_dump(mode="json") if source.notify else None)
    return dag


def _extract_table(table: Any) -> dict[str, Any]:
    """The table as its extract task gets it: the checks run in the load (their {{ table }} is the
    load's, not an Airflow template), but for source_count, which the extract counts."""
    out: dict[str, Any] = table.model_dump(mode="json", exclude={"checks"})
    counted = [c.model_dump(mode="json", exclude_none=True) for c in table.checks if c.kind == "source_count"]
    if counted:
        out["checks"] = counted
    return out


def _parallel_extract(table: Any, extract_args: dict[str, Any]) -> BaseOperator:
    """``parallel: N``: plan_<table> lists the ranges, ranges_<table> is mapped over them (one
    task instance per range, each retried alone), and extract_<table> publishes them as one partition
    (its output is the manifest the load reads, as a serial extract's)."""
    from sndw_airflow.callbacks import audit_failure, audit_retry, audit_success
    from sndw_airflow.operators import ExtractRangeOperator, PlanRangesOperator, PublishRangesOperator

    task_id = extract_task_id(table.name)
    plan = PlanRangesOperator(task_id=f"plan_{table.name}", extract_task_id=task_id, **extract_args)
    # partial() does not run the operator's __init__ before the tasks are mapped: the audit callbacks by name.
    ranges = ExtractRangeOperator.partial(task_id=f"ranges_{table.name}", extract_task_id=task_id,
                                          on_success_callback=audit_success, on_failure_callback=audit_failure,
                                          on_retry_callback=audit_retry, **extract_args).expand(part=plan.output)
    publish = PublishRangesOperator(task_id=task_id, ranges=ranges.output, **extract_args)
    plan >> ranges >> publish
    return publish


def _load_task(source: HttpSource | SqlSource | FileSource, table: Any, manifest: Any) -> ParquetToDwOperator:
    return ParquetToDwOperator(
        task_id=load_task_id(table.name),
        manifest=manifest,
        target_table=table.target,
        target_schema=source.target_schema,
        write_mode=table.write_mode,
        primary_key=table.key_columns,
        # A child table (unnested lists) may be empty: its parent's load, which runs first, already
        # refused an empty extract unless allowed.
        allow_empty=getattr(table, "allow_empty", True),
        transform=getattr(table, "transform", None),
        checks=[c.model_dump(mode="json", exclude_none=True) for c in getattr(table, "checks", [])],
        deletes=getattr(table, "deletes", None),
        max_delete_fraction=getattr(table, "max_delete_fraction", 0.5),
        schema_contract=getattr(table, "schema_contract", "evolve"),
        dw_conn_id=source.dw_conn_id,
        source=source.name,
        kind=source.kind,
    )


def _index_task(source: HttpSource | SqlSource | FileSource, table: Any, manifest: Any) -> BaseOperator:
    from sndw.naming import normalize_identifier

    from sndw_airflow.es_sink import ParquetToElasticsearchOperator

    sink = table.elasticsearch
    return ParquetToElasticsearchOperator(
        task_id=f"index_{table.name}",
        manifest=manifest,
        conn_id=sink.conn_id,
        index=sink.index,
        id_columns=[normalize_identifier(c) for c in sink.id_columns] or table.key_columns,
        chunk_size=sink.chunk_size,
        max_retries=sink.max_retries,
        initial_backoff=sink.initial_backoff_seconds,
        dw_conn_id=source.dw_conn_id,
        source=source.name,
        kind=source.kind,
    )


class ConfigErrorOperator(BaseOperator):
    """Fails with the config error, so a triggered run of a broken source says what to fix."""

    def __init__(self, *, message: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.message = message

    def execute(self, context: Any) -> None:
        raise AirflowFailException(self.message)


def config_error_dag(path: Path, error: ConfigError) -> DAG:
    """A placeholder DAG in place of an invalid config: visible in the UI with the error as its doc."""
    with DAG(
        dag_id=invalid_config_dag_id(path),
        description=f"INVALID CONFIG: {error}"[:500],
        doc_md=f"## Invalid source config\n\n```\n{error}\n```\n\nFix the file; this DAG disappears when it parses.",
        schedule=None,
        start_date=datetime(2024, 1, 1, tzinfo=UTC),
        catchup=False,
        tags=["sndw", "config-error"],
        default_args={"owner": "sndw", "retries": 0},
    ) as dag:
        ConfigErrorOperator(task_id="config_error", message=str(error))
    return dag


def build_dags(folder: str | os.PathLike[str]) -> dict[str, DAG]:
    """Every source config in ``folder`` as a DAG; no database or network call happens here."""
    dags: dict[str, DAG] = {}
    for path, parsed in iter_sources(folder):
        if not isinstance(parsed, ConfigError):
            try:
                dag = build_dag(parsed, path)
                dag.validate()  # what DagBag checks next (the timetable): it would fail the whole file
            except ConfigError as exc:  # a config fault found while building (an unset variable in base_path)
                parsed = exc
            except Exception as exc:  # one source that cannot be built must not hide the others
                log.exception("source config %s: the DAG cannot be built", path)
                parsed = ConfigError(str(path), "", f"the DAG cannot be built: {type(exc).__name__}: {exc}")
        if isinstance(parsed, ConfigError):
            log.error("invalid source config: %s", parsed)
            warnings.warn(str(parsed), ConfigErrorWarning, stacklevel=2)
            dag = config_error_dag(path, parsed)
        dags[dag.dag_id] = dag
    return dags
