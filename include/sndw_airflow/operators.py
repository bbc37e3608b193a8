"""ExtractToParquetOperator and ParquetToDwOperator: each resolves its hooks and calls one core function."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException
from sndw.audit import AuditRecord
from sndw.config import FileTable, HttpTable, SqlTable, TableBase, table_spec
from sndw.errors import ConfigError, PermanentError
from sndw.lake import Manifest
from sndw.naming import normalize_identifier, qualified

from sndw_airflow.callbacks import audit_failure, audit_success
from sndw_airflow.context import attempt, lake_root, partition_date, started_at
from sndw_airflow.masking import mask_registered_secrets

mask_registered_secrets()  # the core's registered secrets, in every encoding, masked in task logs too


def _add_partition_date(context: Any) -> None:
    """``{{ partition_date }}`` in templates: the run's partition (works without a logical date)."""
    context["partition_date"] = partition_date(context).isoformat()


def _guess_value_type(text: str) -> str:
    from sndw.state import parse_value

    for value_type in ("number", "timestamp"):
        try:
            parse_value(text, value_type)
            return value_type
        except (ValueError, ArithmeticError):
            continue
    return "text"


def _sql_label(source: str, spec: SqlTable) -> str:
    """How errors name a SQL table: the source and table names, and the source table when set."""
    return f"{source}.{spec.name}" + (f" (source table {spec.table})" if spec.table else "")


def _with_audit_callbacks(kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs.setdefault("on_success_callback", audit_success)
    kwargs.setdefault("on_failure_callback", audit_failure)
    kwargs.setdefault("on_retry_callback", audit_failure)
    return kwargs


class _SndwTask:
    """What both operators share: ``{{ partition_date }}`` in templates, and the warehouse."""

    dw_conn_id: str

    def render_template_fields(self, context: Any, jinja_env: Any = None) -> None:
        _add_partition_date(context)
        super().render_template_fields(context, jinja_env)  # type: ignore[misc]

    def dw_connection(self) -> Any:
        """A psycopg 3 connection to the warehouse, through the provider's PostgresHook."""
        from airflow.providers.postgres.hooks.postgres import PostgresHook
        from sndw.audit import register_secret

        hook = PostgresHook(postgres_conn_id=self.dw_conn_id)
        register_secret(hook.get_connection(self.dw_conn_id).password)
        return hook.get_conn()


class ExtractToParquetOperator(_SndwTask, BaseOperator):
    """Extract one table or resource of a source into one date partition of the Parquet lake.

    Returns the partition's manifest (lake paths, row count, columns) for the load task.

    :param source: the source's name (the lake folder below the protocol)
    :param kind: ``http``, ``sql`` or ``file``
    :param table: the table's options, as in a source config's ``tables`` entry (templated)
    :param conn_id: the Airflow connection of the source (http and sql)
    :param base_path: folder that relative file paths start from (file sources)
    :param lake_root: the lake's root folder; default ``SNDW_LAKE_ROOT`` (templated)
    :param dw_conn_id: the warehouse connection, used for the audit row
    """

    template_fields: Sequence[str] = ("table", "lake_root")
    template_fields_renderers = {"table": "json"}
    ui_color = "#d9ecff"

    def __init__(self, *, source: str, kind: str, table: dict[str, Any], conn_id: str | None = None,
                 base_path: str | None = None, lake_root: str | None = None, dw_conn_id: str = "dw",
                 **kwargs: Any) -> None:
        super().__init__(**_with_audit_callbacks(kwargs))
        self.source = source
        self.kind = kind
        self.table = table
        self.conn_id = conn_id
        self.base_path = base_path
        self.lake_root = lake_root
        self.dw_conn_id = dw_conn_id
        self.sndw_result: dict[str, Any] | None = None

    def audit_fields(self) -> dict[str, str]:
        name = self.table.get("name", self.task_id) if isinstance(self.table, dict) else self.task_id
        return {"pipeline_name": self.dag_id, "source_name": self.source, "protocol": self.kind,
                "target_table": f"lake:{self.kind}/{self.source}/{name}", "step": "extract"}

    def execute(self, context: Any) -> dict[str, Any]:
        from sndw.lake import PartitionWriter

        try:
            spec = table_spec(self.kind, self.table, where=f"{self.dag_id}.{self.task_id}")
        except ConfigError as exc:
            raise AirflowFailException(str(exc)) from exc
        partition = partition_date(context)
        root = self.lake_root or lake_root()
        self.log.info("Extracting %s.%s (%s) into partition %s of %s", self.source, spec.name, self.kind,
                      partition, root)
        previous, low, tracker = self._incremental_start(spec, context)
        # Checkpointed tables keep their parts across the attempts of one run: a retry resumes.
        resume_key = f"{self.dag_id}|{self.task_id}|{context.get('run_id')}" if spec.checkpoint else None
        try:
            with PartitionWriter(root, self.kind, self.source, spec.name, partition, run_id=context.get("run_id"),
                                 on_batch=tracker.update if tracker else None, resume_key=resume_key) as writer:
                position = writer.resumed["position"] if writer.resumed else None
                if writer.resumed and tracker is not None:
                    for batch in writer.resumed_batches([tracker.cursor]):
                        tracker.update(batch)
                if position is not None:
                    self.log.info("Resuming after %d rows already in the lake (position %s)",
                                  writer.manifest.rows, position)
                for batch, new_position in self._positioned_batches(spec, low, position):
                    writer.write(batch)
                    if resume_key:
                        writer.checkpoint(new_position)
                manifest = writer.commit()
        except PermanentError as exc:
            raise AirflowFailException(str(exc)) from exc
        if tracker is not None:
            new = tracker.watermark(previous)
            manifest.previous_watermark = previous.to_dict() if previous else None
            manifest.watermark = new.to_dict() if new else None
            self.log.info("Watermark of %s: %s -> %s", spec.name, previous.value if previous else None,
                          new.value if new else None)
        self.log.info("Wrote %d rows in %d files (%d bytes)", manifest.rows, len(manifest.paths), manifest.bytes)
        self.sndw_result = {"rows_extracted": manifest.rows, "files": len(manifest.paths),
                            "bytes": manifest.bytes, "paths": manifest.paths}
        return manifest.to_dict()

    def _incremental_start(self, spec: TableBase, context: Any) -> tuple[Any, Any, Any]:
        """The watermark to start from (state, or the run's params), the lower bound, a max tracker."""
        from sndw.naming import normalize_identifier
        from sndw.state import MaxTracker, Watermark, get_watermark, lower_bound

        inc = spec.incremental
        if inc is None:
            return None, None, None
        params = context.get("params") or {}
        cursor = normalize_identifier(inc.cursor)
        previous: Watermark | None = None
        if params.get("watermark_from"):
            text = str(params["watermark_from"])
            previous = Watermark(cursor, text, _guess_value_type(text))
            self.log.info("Starting %s from watermark_from=%s (run param)", spec.name, text)
        elif params.get("reset_watermark"):
            self.log.info("reset_watermark: %s is read from the start", spec.name)
        else:
            conn = self.dw_connection()
            try:
                previous = get_watermark(conn, self.dag_id, spec.name)
            finally:
                conn.close()
        if previous is None and inc.initial is not None:
            start = Watermark(cursor, str(inc.initial), _guess_value_type(str(inc.initial)))
            return None, lower_bound(start, 0), MaxTracker(cursor)
        return previous, lower_bound(previous, inc.lookback), MaxTracker(cursor)

    def _positioned_batches(self, spec: TableBase, low: Any, position: Any) -> Iterator[tuple[Any, Any]]:
        """Batches with the position to resume after each: the last key read (SQL tables with a
        primary key, read in key order), else the number of batches (a retry skips them)."""
        if isinstance(spec, SqlTable) and spec.checkpoint and spec.primary_key:
            yield from self._sql_batches(spec, low, after=position, positioned=True)
            return
        skip = int(position or 0)
        for number, batch in enumerate(self._batches(spec, low), 1):
            if number > skip:
                yield batch, number

    def _batches(self, spec: TableBase, low: Any = None) -> Iterator[Any]:
        if isinstance(spec, SqlTable):
            yield from self._sql_batches(spec, low)
        elif isinstance(spec, HttpTable):
            yield from self._http_batches(spec, low)
        elif isinstance(spec, FileTable):
            from sndw.extract.files import iter_file_batches

            yield from iter_file_batches(spec, self.base_path)

    def _sql_batches(self, spec: SqlTable, low: Any = None, after: Any = None,
                     positioned: bool = False) -> Iterator[Any]:
        from airflow.sdk import BaseHook
        from sndw.audit import register_secret
        from sndw.extract.sql import incremental_query, keyed_query, table_query, with_key_positions

        if not self.conn_id:
            raise AirflowFailException(f"{self.task_id}: a sql source needs conn_id")
        connection = BaseHook.get_connection(self.conn_id)
        register_secret(connection.password)
        query = spec.query or table_query(spec.table or "")
        postgres = connection.conn_type in ("postgres", "postgresql")
        dialect = "postgres" if postgres else "other"
        if spec.incremental is not None:
            query = incremental_query(query, spec.incremental.cursor, low, dialect)
        if positioned:
            query = keyed_query(query, spec.primary_key, after, dialect)
        batches = self._sql_stream(connection, query, spec, postgres)
        yield from with_key_positions(batches, spec.primary_key) if positioned else batches

    def _sql_stream(self, connection: Any, query: str, spec: SqlTable, postgres: bool) -> Iterator[Any]:
        from sndw.extract.sql import iter_postgres_batches, iter_query_batches

        if postgres:
            from psycopg.conninfo import make_conninfo

            # Arrow-native streaming through ADBC (libpq), from the Airflow connection's fields.
            extra = {k: v for k, v in connection.extra_dejson.items()
                     if k in ("sslmode", "sslrootcert", "sslcert", "sslkey", "options", "connect_timeout")}
            conninfo = make_conninfo(host=connection.host or "localhost", port=connection.port or 5432,
                                     dbname=connection.schema or "", user=connection.login or "",
                                     password=connection.password or "", **extra)
            # ADBC batches by bytes: aim near batch_rows (~128 B a row) so checkpoints stay frequent.
            batch_bytes = max(1 << 16, min(16 << 20, spec.batch_rows * 128))
            yield from iter_postgres_batches(conninfo, query, batch_bytes=batch_bytes, max_rows=spec.batch_rows,
                                             table=_sql_label(self.source, spec), column_types=spec.column_types)
            return
        conn = connection.get_hook().get_conn()
        try:
            yield from iter_query_batches(conn, query, spec.batch_rows)
        finally:
            conn.close()

    def _http_batches(self, spec: HttpTable, low: Any = None) -> Iterator[Any]:
        """Pages through the HttpHook's connection; unnested lists go to child partitions whose
        manifests are pushed as XComs ``manifest__<child>`` for the factory's child load tasks."""
        from airflow.providers.http.hooks.http import HttpHook
        from airflow.sdk import get_current_context
        from sndw.extract.http import ChildPartitions, iter_http_batches
        from sndw.state import format_value

        from sndw_airflow.http import hook_client

        if not self.conn_id:
            raise AirflowFailException(f"{self.task_id}: an http source needs conn_id")
        hook = HttpHook(method=spec.method, http_conn_id=self.conn_id)
        children = None
        if spec.child_tables:
            context = get_current_context()
            children = ChildPartitions(self.lake_root or lake_root(), self.source, spec, partition_date(context),
                                       run_id=context.get("run_id"))
        try:
            with hook_client(hook, spec) as client:
                yield from iter_http_batches(client, spec, watermark=format_value(low),
                                             children=children.write if children else None)
            if children is not None:
                for child, manifest in zip(spec.child_tables, children.commit().values(), strict=True):
                    self.log.info("Child table %s: %d rows", child.name, manifest.rows)
                    context["ti"].xcom_push(key=child.xcom_key, value=manifest.to_dict())
        except BaseException:
            if children is not None:
                children.abort()
            raise


class ParquetToDwOperator(_SndwTask, BaseOperator):
    """Load exactly the files of one lake manifest into a warehouse table, in one transaction.

    :param manifest: the extract task's manifest, usually ``extract.output`` (templated)
    :param target_table: the warehouse table (templated)
    :param target_schema: its schema, created if missing (templated)
    :param write_mode: ``replace``, ``append``, ``merge`` or ``partition``
    :param primary_key: key columns, needed by ``merge``
    :param allow_empty: let an extract of 0 rows empty a ``replace`` table or a ``partition`` date
    :param dw_conn_id: the warehouse's Airflow connection
    """

    template_fields: Sequence[str] = ("manifest", "target_table", "target_schema")
    ui_color = "#e3f4d7"

    def __init__(self, *, manifest: Any, target_table: str, target_schema: str = "public",
                 write_mode: str = "replace", primary_key: Sequence[str] = (), allow_empty: bool = False,
                 dw_conn_id: str = "dw", source: str | None = None, kind: str | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**_with_audit_callbacks(kwargs))
        if write_mode not in ("replace", "append", "merge", "partition"):
            raise ValueError(f"write_mode must be replace, append, merge or partition; got {write_mode!r}")
        if write_mode == "merge" and not primary_key:
            raise ValueError("write_mode 'merge' needs primary_key")
        self.manifest = manifest
        self.target_table = target_table
        self.target_schema = target_schema
        self.write_mode = write_mode
        self.primary_key = list(primary_key)
        self.allow_empty = allow_empty
        self.dw_conn_id = dw_conn_id
        self.source = source
        self.kind = kind
        self.sndw_result: dict[str, Any] | None = None

    def _manifest(self) -> Manifest | None:
        if isinstance(self.manifest, Manifest):
            return self.manifest
        if isinstance(self.manifest, dict):
            return Manifest.from_dict(self.manifest)
        return None

    def audit_fields(self) -> dict[str, str]:
        manifest = self._manifest()
        return {
            "pipeline_name": self.dag_id,
            "source_name": self.source or (manifest.source if manifest else "unknown"),
            "protocol": self.kind or (manifest.protocol if manifest else "unknown"),
            "target_table": qualified(normalize_identifier(self.target_schema),
                                      normalize_identifier(self.target_table)),
            "step": "load",
        }

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
        from sndw.warehouse import LoadSpec, load_manifest

        manifest = self._manifest()
        if manifest is None:
            raise AirflowFailException(f"{self.task_id}: manifest is not a lake manifest: {type(self.manifest).__name__}")
        spec = LoadSpec(schema=normalize_identifier(self.target_schema),
                        table=normalize_identifier(self.target_table), write_mode=self.write_mode,
                        primary_key=[normalize_identifier(k) for k in self.primary_key],
                        allow_empty=self.allow_empty)
        fields = self.audit_fields()
        audit = AuditRecord(
            pipeline_name=fields["pipeline_name"], source_name=fields["source_name"],
            protocol=fields["protocol"], target_table=fields["target_table"], status="success",
            started_at=started_at(context), step="load", partition_date=partition_date(context),
            rows_extracted=manifest.rows, bytes=manifest.bytes, lake_paths=manifest.paths,
            **attempt(context),
        )
        self.log.info("Loading %d files (%d rows) of partition %s into %s (%s)", len(manifest.paths),
                      manifest.rows, manifest.partition, spec.qualified, spec.write_mode)
        conn = self.dw_connection()
        try:
            self._flush_audit_spool(conn)
            state_key = (self.dag_id, manifest.table) if manifest.watermark else None
            result = load_manifest(conn, manifest, spec, audit=audit, state_key=state_key)
        except PermanentError as exc:
            raise AirflowFailException(str(exc)) from exc
        finally:
            conn.close()
        self.sndw_result = {**result.to_dict(), "rows_extracted": manifest.rows, "bytes": manifest.bytes,
                            "paths": manifest.paths}
        return result.to_dict()
