"""ExtractToParquetOperator and ParquetToDwOperator: each resolves its hooks and calls one core function."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, NoReturn

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowRescheduleException
from sndw.audit import AuditRecord, register_secret
from sndw.config import HttpTable, TableBase, table_spec
from sndw.errors import ConfigError, Paused, PermanentError
from sndw.naming import normalize_identifier, qualified

from sndw_airflow.callbacks import audit_failure, audit_previous_attempt, audit_retry, audit_success
from sndw_airflow.context import attach_lake, attempt, lake_root, partition_date, started_at
from sndw_airflow.lineage import table_asset
from sndw_airflow.masking import mask_registered_secrets

if TYPE_CHECKING:  # the DAG processor imports this module for every parse: no pyarrow or psycopg here
    from sndw.lake import Manifest
    from sndw.pipeline import ExtractRequest, SourceAccess

mask_registered_secrets()  # the core's registered secrets, in every encoding, masked in task logs too


def _add_partition_date(context: Any) -> None:
    """``{{ partition_date }}`` in templates: the run's partition (works without a logical date)."""
    context["partition_date"] = partition_date(context).isoformat()


def _with_audit_callbacks(kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs.setdefault("on_success_callback", audit_success)
    kwargs.setdefault("on_failure_callback", audit_failure)
    kwargs.setdefault("on_retry_callback", audit_retry)
    kwargs.setdefault("on_execute_callback", audit_previous_attempt)
    return kwargs


class _SndwTask:
    """What both operators share: ``{{ partition_date }}`` in templates, and the warehouse."""

    dw_conn_id: str
    dw_location: _Location | None = None

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        _add_partition_date(context)
        super().render_template_fields(context, jinja_env)  # type: ignore[misc]

    def dw_connection(self) -> Any:
        """A psycopg 3 connection to the warehouse, through the provider's PostgresHook."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook

        hook = PostgresHook(postgres_conn_id=self.dw_conn_id)
        connection = hook.get_connection(self.dw_conn_id)
        register_secret(connection.password)
        self.dw_location = _Location(connection)
        return hook.get_conn()


def airflow_connection(conn_id: str, task_id: str) -> Any:
    """The Airflow connection ``conn_id``, its secrets registered for redaction. One that does not
    exist fails the task at once: no retry can create it."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    try:
        connection = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException as exc:
        raise AirflowFailException(
            f"{task_id}: the connection {conn_id!r} is not defined: add it in Admin > Connections "
            f"or as AIRFLOW_CONN_{conn_id.upper()}") from exc
    register_secret(connection.password, login=connection.login)
    return connection


class _ManifestTask(_SndwTask):
    """A task that works on the files of one extract's manifest (the load, the Elasticsearch sink)."""

    manifest: Any
    source: str | None
    kind: str | None
    dag_id: str
    task_id: str

    def _manifest(self) -> Manifest | None:
        from sndw.lake import Manifest

        if isinstance(self.manifest, Manifest):
            return self.manifest
        if isinstance(self.manifest, dict):
            return Manifest.from_dict(self.manifest)
        return None

    def lake_manifest(self) -> Manifest:
        manifest = self._manifest()
        if manifest is None:
            raise AirflowFailException(f"{self.task_id}: manifest is not a lake manifest: {type(self.manifest).__name__}")
        for path in manifest.paths[:1]:  # files on an object store: reached through the lake connection
            attach_lake(path)
        return manifest

    def manifest_audit_fields(self, target_table: str, step: str) -> dict[str, str]:
        manifest = self._manifest()
        return {
            "pipeline_name": self.dag_id,
            "source_name": self.source or (manifest.source if manifest else "unknown"),
            "protocol": self.kind or (manifest.protocol if manifest else "unknown"),
            "target_table": target_table,
            "step": step,
        }


class _Location:
    """Where a connection points (type, host, port, database), without its credentials: what lineage
    and asset events may name."""

    def __init__(self, connection: Any) -> None:
        self.conn_type = connection.conn_type
        self.host = connection.host
        self.port = connection.port
        self.schema = connection.schema


class ExtractToParquetOperator(_SndwTask, BaseOperator):
    """Extract one table or resource of a source into one date partition of the Parquet lake.

    Returns the partition's manifest (lake paths, row count, columns) for the load task. The work
    is ``sndw.pipeline.extract_table``; this operator resolves the Airflow connection into what it
    reads through, and pushes the manifests of unnested child tables as XComs ``manifest__<child>``.

    :param source: the source's name (the lake folder below the protocol)
    :param kind: ``http``, ``sql`` or ``file``
    :param table: the table's options, as in a source config's ``tables`` entry (templated)
    :param conn_id: the Airflow connection of the source (http and sql)
    :param base_path: folder that relative file paths start from (file sources)
    :param lake_root: the lake's root folder; default ``SNDW_LAKE_ROOT`` (templated)
    :param dw_conn_id: the warehouse connection, used for the watermark and the audit row
    :param extract_task_id: the task id that keys the extract's resume folders (default: this task's;
        a parallel table's plan and range tasks give their publication's, ``extract_<table>``)
    """

    template_fields: Sequence[str] = ("table", "lake_root")
    template_fields_renderers = {"table": "json"}
    ui_color = "#d9ecff"
    #: A checkpointed extract asks whether its DAG is paused at most this often (seconds).
    pause_check_seconds: float = 5.0
    #: A paused extract is up for reschedule this long after it stopped (it runs once the DAG is resumed).
    pause_retry_seconds: float = 30.0

    def __init__(self, *, source: str, kind: str, table: dict[str, Any], conn_id: str | None = None,
                 base_path: str | None = None, lake_root: str | None = None, dw_conn_id: str = "dw",
                 extract_task_id: str | None = None, **kwargs: Any) -> None:
        super().__init__(**_with_audit_callbacks(kwargs))
        self.extract_task_id = extract_task_id
        self.source = source
        self.kind = kind
        self.table = table
        self.conn_id = conn_id
        self.base_path = base_path
        self.lake_root = lake_root
        self.dw_conn_id = dw_conn_id
        self.sndw_result: dict[str, Any] | None = None
        self.source_location: _Location | None = None
        self.lineage_manifest: Manifest | None = None

    def audit_fields(self) -> dict[str, str]:
        name = self.table.get("name", self.task_id) if isinstance(self.table, dict) else self.task_id
        return {"pipeline_name": self.dag_id, "source_name": self.source, "protocol": self.kind,
                "target_table": f"lake:{self.kind}/{self.source}/{name}", "step": "extract"}

    def _request(self, context: Any) -> ExtractRequest:
        from sndw.pipeline import ExtractRequest

        try:
            spec = table_spec(self.kind, self.table, where=f"{self.dag_id}.{self.task_id}")
        except ConfigError as exc:
            raise AirflowFailException(str(exc)) from exc
        params = context.get("params") or {}
        return ExtractRequest(
            pipeline=self.dag_id, source=self.source, kind=self.kind, table=spec, partition=partition_date(context),
            lake_root=attach_lake(self.lake_root or lake_root()), run_id=context.get("run_id"),
            # The same for every attempt of one run: a checkpointed table's retry resumes.
            resume_key=f"{self.dag_id}|{self.extract_task_id or self.task_id}|{context.get('run_id')}",
            watermark_from=str(params["watermark_from"]) if params.get("watermark_from") else None,
            reset_watermark=bool(params.get("reset_watermark")))

    def _should_pause(self, context: Any, spec: TableBase) -> Callable[[], bool] | None:
        should_pause = self._pause_check(context["ti"]) if spec.checkpoint else None
        if should_pause is not None and should_pause():
            if context.get("task_reschedule_count"):  # stopped by the pause before: wait for the resume
                self._reschedule("the pipeline is still paused; the extract waits for it to be resumed")
            # Started while paused (`airflow dags test` of a DAG that was never unpaused; the scheduler
            # starts no task of a paused DAG): run, as Airflow does; only a pause after a resume stops it.
            self.log.info("DAG %s is paused but this run started anyway: the extract stops only for a new pause",
                          self.dag_id)
            should_pause = _new_pause(should_pause)
        return should_pause

    def execute(self, context: Any) -> dict[str, Any]:
        from sndw.pipeline import extract_table

        request = self._request(context)
        spec = request.table
        ti = context["ti"]
        should_pause = self._should_pause(context, spec)
        try:
            manifest = extract_table(request, self.source_access(spec), should_pause=should_pause,
                                     on_child=lambda child, m: ti.xcom_push(key=child.xcom_key, value=m.to_dict()))
        except PermanentError as exc:
            raise AirflowFailException(str(exc)) from exc
        except Paused as exc:
            self._reschedule(str(exc))
        return self._extracted(manifest)

    def _extracted(self, manifest: Manifest) -> dict[str, Any]:
        self.sndw_result = {"rows_extracted": manifest.rows, "files": len(manifest.paths),
                            "bytes": manifest.bytes, "paths": manifest.paths}
        self.lineage_manifest = manifest
        return manifest.to_dict()

    def _pause_check(self, ti: Any) -> Callable[[], bool]:
        """Whether this task's DAG is paused, asked of Airflow through the Task SDK (the Execution API's
        ``GET /dags/{dag_id}``) at most every ``pause_check_seconds``; a failed look counts as not paused."""
        last = [0.0, False]

        def paused() -> bool:
            now = time.monotonic()
            if last[0] and now - last[0] < self.pause_check_seconds:
                return bool(last[1])
            last[0] = now
            try:
                last[1] = bool(ti.get_dag(self.dag_id).is_paused)
            except Exception as exc:  # the API answers again at the next batch: never fail an extract over it
                self.log.warning("could not read whether DAG %s is paused: %s", self.dag_id, exc)
                last[1] = False
            return bool(last[1])

        return paused

    def _reschedule(self, why: str) -> NoReturn:
        """Up for reschedule: the scheduler does not start tasks of a paused DAG, so the task runs again
        (same run, same resume key) once the DAG is resumed, and continues from its checkpoint."""
        self.log.info("%s; up for reschedule in %.0fs (or once the DAG is resumed)", why, self.pause_retry_seconds)
        raise AirflowRescheduleException(
            reschedule_date=datetime.now(tz=UTC) + timedelta(seconds=self.pause_retry_seconds))

    def _lineage(self, manifest: Manifest | None) -> Any:
        """The source dataset (connection namespace plus table, query, endpoint or file) -> the lake partition."""
        from sndw_airflow import lineage

        spec = table_spec(self.kind, self.table, where=f"{self.dag_id}.{self.task_id}")
        inputs: list[Any] = []
        job_facets: dict[str, Any] = {}
        if self.kind == "file":
            inputs = [lineage.file_input(self.base_path, str(getattr(spec, "path", "")))]
        elif self.conn_id:
            from airflow.sdk import BaseHook

            location = self.source_location or _Location(BaseHook.get_connection(self.conn_id))
            if self.kind == "sql":
                inputs, job_facets = lineage.sql_inputs(location, getattr(spec, "table", None),
                                                        getattr(spec, "query", None))
            elif isinstance(spec, HttpTable):
                inputs = [lineage.http_input(location, spec.endpoint)]
        outputs: list[Any] = []
        if manifest is not None:
            lake = lineage.lake_dataset(self.lake_root or lake_root(), self.kind, self.source, spec.name,
                                        manifest.partition_date, manifest.columns)
            outputs = [lineage.lake_output(lake, manifest.rows, manifest.bytes)]
        return lineage.operator_lineage(inputs, outputs, job_facets)

    def get_openlineage_facets_on_start(self) -> Any:
        """OpenLineage (START): what the task reads; the lake partition follows on completion."""
        return self._lineage(None)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage (COMPLETE): the source, and the lake partition with its schema, rows and bytes."""
        return self._lineage(self.lineage_manifest)

    def source_access(self, spec: TableBase) -> SourceAccess:
        """The source as the core reads it, from the Airflow connection. A connection that does not
        exist fails the task at once: no retry can create it."""
        from sndw.pipeline import SourceAccess

        if self.kind == "file":
            return SourceAccess(base_path=self.base_path, warehouse=self.dw_connection)
        if not self.conn_id:
            raise AirflowFailException(f"{self.task_id}: a {self.kind} source needs conn_id")
        connection = airflow_connection(self.conn_id, self.task_id)
        self.source_location = _Location(connection)
        if self.kind == "sql":
            if connection.conn_type in ("postgres", "postgresql"):
                from psycopg.conninfo import make_conninfo

                # Arrow-native streaming through ADBC (libpq), from the Airflow connection's fields.
                extra = {k: v for k, v in connection.extra_dejson.items()
                         if k in ("sslmode", "sslrootcert", "sslcert", "sslkey", "options", "connect_timeout")}
                conninfo = make_conninfo(host=connection.host or "localhost", port=connection.port or 5432,
                                         dbname=connection.schema or "", user=connection.login or "",
                                         password=connection.password or "", **extra)
                return SourceAccess(postgres_conninfo=conninfo, warehouse=self.dw_connection)
            return SourceAccess(dbapi_connect=lambda: connection.get_hook().get_conn(), warehouse=self.dw_connection)
        from airflow.providers.http.hooks.http import HttpHook

        from sndw_airflow.http import hook_client

        if not isinstance(spec, HttpTable):
            raise AirflowFailException(f"{self.task_id}: kind {self.kind!r} needs an http table")
        hook = HttpHook(method=spec.method, http_conn_id=self.conn_id)
        return SourceAccess(http_client=lambda table: hook_client(hook, table), warehouse=self.dw_connection)


class PlanRangesOperator(ExtractToParquetOperator):
    """The ranges of a parallel extract (``parallel: N`` on a sql table): ``sndw.pipeline.plan_ranges``.

    Returns them as a list, which the range tasks are mapped over (``ExtractRangeOperator.partial(...)
    .expand(part=plan.output)``): N ranges of the key or the table's blocks, or one range holding
    everything (an incremental table after its first run, an empty table).
    """

    ui_color = "#eef6ff"

    def audit_fields(self) -> dict[str, str]:
        return {**super().audit_fields(), "step": "plan"}

    def execute(self, context: Any) -> list[dict[str, Any]]:  # type: ignore[override]
        from sndw.pipeline import plan_ranges

        request = self._request(context)
        try:
            parts = plan_ranges(request, self.source_access(request.table))
        except PermanentError as exc:
            raise AirflowFailException(str(exc)) from exc
        self.log.info("%d ranges: %s", len(parts), parts)
        return parts


class ExtractRangeOperator(ExtractToParquetOperator):
    """One range of a parallel extract (``part``, one item of ``PlanRangesOperator``'s list; a mapped
    task): ``sndw.pipeline.extract_range`` stages its files, keyed by run and range, so a retry of
    this range alone writes (or, checkpointed, resumes) only its own. Returns the staged manifest."""

    template_fields: Sequence[str] = ("table", "lake_root", "part")
    ui_color = "#cfe6ff"

    def __init__(self, *, part: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.part = part

    def audit_fields(self) -> dict[str, str]:
        fields = super().audit_fields()
        part = self.part if isinstance(self.part, dict) else {}
        return {**fields, "target_table": f"{fields['target_table']} range {part.get('index', 0) + 1}/"
                                          f"{part.get('count', 1)}", "step": "extract_range"}

    def execute(self, context: Any) -> dict[str, Any]:
        import dataclasses

        from sndw.pipeline import extract_range, range_resume_key

        request = self._request(context)
        request = dataclasses.replace(request, part=dict(self.part),
                                      resume_key=range_resume_key(str(request.resume_key), self.part))
        try:
            manifest = extract_range(request, self.source_access(request.table),
                                     should_pause=self._should_pause(context, request.table))
        except PermanentError as exc:
            raise AirflowFailException(str(exc)) from exc
        except Paused as exc:
            self._reschedule(str(exc))
        return self._extracted(manifest)


class PublishRangesOperator(ExtractToParquetOperator):
    """Publish the staged ranges of a parallel extract as the table's lake partition, in one step
    (``sndw.pipeline.publish_ranges``); returns the partition's manifest for the load, as the serial
    extract does. Run again after it succeeded, it returns the same manifest."""

    template_fields: Sequence[str] = ("table", "lake_root", "ranges")

    def __init__(self, *, ranges: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ranges = ranges

    def execute(self, context: Any) -> dict[str, Any]:
        from sndw.pipeline import publish_ranges

        request = self._request(context)
        try:
            # The range tasks' outputs, by index (iterating a lazy XCom sequence reads one past its end).
            manifest = publish_ranges(request, [self.ranges[i] for i in range(len(self.ranges))])
        except PermanentError as exc:
            raise AirflowFailException(str(exc)) from exc
        return self._extracted(manifest)


class ParquetToDwOperator(_ManifestTask, BaseOperator):
    """Load exactly the files of one lake manifest into a warehouse table, in one transaction.

    :param manifest: the extract task's manifest, usually ``extract.output`` (templated)
    :param target_table: the warehouse table (templated)
    :param target_schema: its schema, created if missing (templated)
    :param write_mode: ``replace``, ``append``, ``merge`` or ``partition``
    :param primary_key: key columns, needed by ``merge``
    :param allow_empty: let an extract of 0 rows empty a ``replace`` table or a ``partition`` date
    :param transform: ``package.module:function`` applied to each batch on its way in (sndw.transform)
    :param checks: quality checks, as in a source config's ``checks`` (sndw.checks_config), run on the
        load's rows before it commits; a failing ``block`` check fails the task without retries
    :param deletes: ``hard`` or ``soft``: rows whose key the source no longer has are removed or marked
        in ``_deleted_at`` (sndw.warehouse.deletes); needs ``primary_key``
    :param max_delete_fraction: a load that would delete more than this share of the table fails
        without retries and changes nothing (1.0: no limit)
    :param schema_contract: ``evolve``, ``freeze`` or ``discard_columns`` (sndw.warehouse.contract)
    :param dw_conn_id: the warehouse's Airflow connection

    Unless ``outlets`` is given, the task declares the table's Asset (``sndw_airflow.lineage.table_asset``)
    and emits one event per load, keyed by the run's partition date, with rows, manifest, the checks'
    results and the rows deleted in its extra (no event when a block check fails: the load is rolled back).
    """

    template_fields: Sequence[str] = ("manifest", "target_table", "target_schema")
    ui_color = "#e3f4d7"

    def __init__(self, *, manifest: Any, target_table: str, target_schema: str = "public",
                 write_mode: str = "replace", primary_key: Sequence[str] = (), allow_empty: bool = False,
                 dw_conn_id: str = "dw", source: str | None = None, kind: str | None = None,
                 transform: str | None = None, checks: Sequence[dict[str, Any]] = (), deletes: str | None = None,
                 max_delete_fraction: float = 0.5, schema_contract: str = "evolve", **kwargs: Any) -> None:
        if "outlets" not in kwargs and "{{" not in f"{target_schema}{target_table}":
            kwargs["outlets"] = [table_asset(dw_conn_id, normalize_identifier(target_schema),
                                             normalize_identifier(target_table))]
        super().__init__(**_with_audit_callbacks(kwargs))
        if write_mode not in ("replace", "append", "merge", "partition"):
            raise ValueError(f"write_mode must be replace, append, merge or partition; got {write_mode!r}")
        if write_mode == "merge" and not primary_key:
            raise ValueError("write_mode 'merge' needs primary_key")
        if deletes not in (None, "hard", "soft") or (deletes and not primary_key):
            raise ValueError(f"deletes must be hard or soft, with a primary_key; got {deletes!r}")
        if schema_contract not in ("evolve", "freeze", "discard_columns"):
            raise ValueError(f"schema_contract must be evolve, freeze or discard_columns; got {schema_contract!r}")
        self.manifest = manifest
        self.target_table = target_table
        self.target_schema = target_schema
        self.write_mode = write_mode
        self.primary_key = list(primary_key)
        self.allow_empty = allow_empty
        self.transform = transform
        self.checks = list(checks)
        self.deletes = deletes
        self.max_delete_fraction = max_delete_fraction
        self.schema_contract = schema_contract
        self.dw_conn_id = dw_conn_id
        self.source = source
        self.kind = kind
        self.sndw_result: dict[str, Any] | None = None
        self.table_columns: dict[str, str] | None = None

    def audit_fields(self) -> dict[str, str]:
        return self.manifest_audit_fields(
            qualified(normalize_identifier(self.target_schema), normalize_identifier(self.target_table)), "load")

    def _flush_audit_spool(self, conn: Any) -> None:
        """Rows spooled while the warehouse was down go in before this load's own row (ids keep time
        order: the partition status view takes the last one); a flush problem never fails the load."""
        from sndw.audit import error_text
        from sndw.spool import flush_spool

        try:
            flush_spool(conn, lake_root())
        except Exception as exc:
            self.log.warning("audit: the spool in %s was not flushed: %s", lake_root(), error_text(exc))

    def execute(self, context: Any) -> dict[str, Any]:
        from sndw.pipeline import load_table
        from sndw.warehouse import LoadSpec

        manifest = self.lake_manifest()
        spec = LoadSpec(schema=normalize_identifier(self.target_schema),
                        table=normalize_identifier(self.target_table), write_mode=self.write_mode,
                        primary_key=[normalize_identifier(k) for k in self.primary_key],
                        allow_empty=self.allow_empty, transform=self.transform, checks=self._checks(),
                        deletes=self.deletes, max_delete_fraction=self.max_delete_fraction,
                        schema_contract=self.schema_contract)
        fields = self.audit_fields()
        audit = AuditRecord(
            pipeline_name=fields["pipeline_name"], source_name=fields["source_name"],
            protocol=fields["protocol"], target_table=fields["target_table"], status="success",
            started_at=started_at(context), step="load", partition_date=partition_date(context),
            rows_extracted=manifest.rows, bytes=manifest.bytes, lake_paths=manifest.paths,
            **attempt(context),
        )
        conn = self.dw_connection()
        try:
            self._flush_audit_spool(conn)
            result = load_table(conn, manifest, spec, pipeline=self.dag_id, audit=audit)
            self.table_columns = _committed_columns(conn, spec.schema, spec.table)
        except PermanentError as exc:
            raise AirflowFailException(str(exc)) from exc
        finally:
            conn.close()
        self.sndw_result = {**result.to_dict(), "rows_extracted": manifest.rows, "bytes": manifest.bytes,
                            "paths": manifest.paths}
        self._emit_table_event(context, manifest, spec.schema, spec.table, result.rows_loaded, result.checks,
                               result.rows_deleted)
        return result.to_dict()

    def _checks(self) -> list[Any]:
        from pydantic import ValidationError
        from sndw.checks_config import Check

        try:
            return [Check.model_validate(c) for c in self.checks]
        except ValidationError as exc:
            raise AirflowFailException(f"{self.task_id}: invalid checks: {exc}") from exc

    def _emit_table_event(self, context: Any, manifest: Manifest, schema: str, table: str, rows: int,
                          checks: dict[str, Any] | None = None, rows_deleted: int | None = None) -> None:
        """The table's asset event: the run's partition date as its partition key (consumers on a
        PartitionedAssetTimetable run once per loaded date); rows, manifest and the table's
        OpenLineage location in its extra."""
        from sndw_airflow.lineage import warehouse_location

        asset = table_asset(self.dw_conn_id, schema, table)
        if asset not in self.outlets:
            return
        event = context["outlet_events"][asset]
        event.add_partitions(partition_date(context).isoformat())
        event.extra.update({
            "table": qualified(schema, table), "partition": manifest.partition, "rows": rows,
            "rows_extracted": manifest.rows, "manifest_id": manifest.manifest_id, "write_mode": self.write_mode,
            "source": self.source or manifest.source,
            **({"checks": checks} if checks is not None else {}),
            **({"rows_deleted": rows_deleted} if rows_deleted is not None else {}),
            **({"openlineage": warehouse_location(self.dw_location, schema, table)} if self.dw_location else {}),
        })

    def _lineage(self, complete: bool) -> Any:
        """The lake partition -> the warehouse table (its columns and the rows loaded, once complete)."""
        from sndw_airflow import lineage

        schema, table = normalize_identifier(self.target_schema), normalize_identifier(self.target_table)
        location = self.dw_location
        if location is None:
            from airflow.sdk import BaseHook

            location = _Location(BaseHook.get_connection(self.dw_conn_id))
        manifest = self._manifest()
        inputs = []
        if manifest is not None:
            inputs = [lineage.lake_dataset(lake_root(), manifest.protocol, manifest.source, manifest.table,
                                           manifest.partition_date, manifest.columns)]
        rows = (self.sndw_result or {}).get("rows_loaded") if complete else None
        output = lineage.warehouse_output(location, schema, table, self.table_columns if complete else None, rows)
        return lineage.operator_lineage(inputs, [output])

    def get_openlineage_facets_on_start(self) -> Any:
        """OpenLineage (START): the lake partition it loads and the warehouse table."""
        return self._lineage(complete=False)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """OpenLineage (COMPLETE): plus the table's columns and the rows this load wrote."""
        return self._lineage(complete=True)


def _new_pause(is_paused: Callable[[], bool]) -> Callable[[], bool]:
    """``is_paused`` that answers yes only once it has answered no: a pause made after the start."""
    resumed = False

    def paused() -> bool:
        nonlocal resumed
        now = is_paused()
        resumed = resumed or not now
        return now and resumed

    return paused


def _committed_columns(conn: Any, schema: str, table: str) -> dict[str, str]:
    """The warehouse table's columns and types after the load, for its lineage schema."""
    from sndw.warehouse import table_columns

    with conn.cursor() as cur:
        columns = table_columns(cur, schema, table)
    conn.rollback()  # a read-only look: end its transaction before the connection closes
    return columns
