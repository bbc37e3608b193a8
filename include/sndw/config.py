"""Source configs: one YAML file per data source, validated into one pydantic model."""

from __future__ import annotations

import difflib
import functools
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sndw.checks_config import Check, check_known_columns, duration_seconds, select_columns, validate_checks
from sndw.errors import ConfigError
from sndw.naming import (
    normalize_identifier,
    reserved_dag_id,
    validate_source_name,
    validate_transform_reference,
)

WriteMode = Literal["replace", "append", "merge", "partition"]
SourceKind = Literal["http", "sql", "file"]
FileFormat = Literal["csv", "json", "ndjson", "parquet"]

DEFAULT_BATCH_ROWS = 100_000
MAX_PARALLEL = 64


ColumnType = Literal["text", "bigint", "double", "numeric", "boolean", "json"]
DeleteMode = Literal["hard", "soft"]
SchemaContract = Literal["evolve", "freeze", "discard_columns"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------- tables


class Incremental(_Model):
    """Incremental by watermark: only rows whose cursor is past the last loaded value are read.

    The watermark lives in the warehouse table ``etl_state`` and advances in the same transaction
    that loads the rows and writes the audit row.
    """

    cursor: str = Field(description="Column (sql) or record field (http) that only grows: a timestamp or an id.")
    initial: str | int | None = Field(default=None, description="Start value when there is no watermark yet.")
    lookback: float = Field(default=0, ge=0, description=(
        "Re-read this much before the watermark, for late rows: seconds for a timestamp cursor, "
        "units for a numeric one. Re-read rows are deduplicated on the primary key (merge)."))
    param: str | None = Field(default=None, description="http: query parameter that carries the watermark.")


class ElasticsearchSink(_Model):
    """Also index the table into Elasticsearch, as a task ``index_<table>`` after its load."""

    conn_id: str = Field(description="Airflow connection of the cluster (host, port, scheme, login, password).")
    index: str = Field(description="The index the documents go to.")
    id_columns: list[str] = Field(default_factory=list, description=(
        "Columns that make the document _id; default: the table's primary_key, so re-runs overwrite."))
    chunk_size: int = Field(default=500, ge=1, description="Documents per _bulk request.")
    max_retries: int = Field(default=5, ge=0, description="Retries of documents answered 429 (with backoff).")
    initial_backoff_seconds: float = Field(default=1.0, ge=0, description="First 429 retry delay; doubles per retry.")

    @field_validator("index")
    @classmethod
    def _index(cls, value: str) -> str:
        # Elasticsearch's own rules for index names, checked before a run meets them.
        if (not value or value != value.lower() or value.startswith(("-", "_", "+")) or value in (".", "..")
                or any(c in value for c in '\\/*?"<>| ,#:') or len(value.encode()) > 255):
            raise ValueError(f"{value!r} is not an Elasticsearch index name: lowercase, no \\ / * ? \" < > | , # : "
                             "or space, not starting with - _ +")
        return value


class Freshness(_Model):
    """How old a table's data may get, as dbt's source freshness reads: ``warn_after`` and
    ``error_after`` since the last successful load (or the newest value of ``column``)."""

    warn_after: str | int | float | None = Field(default=None, description=(
        "Warn when the data is older: seconds, or a number with s, m, h, d or w (26h)."))
    error_after: str | int | float | None = Field(default=None, description="An error when the data is older (48h).")
    column: str | None = Field(default=None, description=(
        "Measure the newest value of this column (a date or timestamp) instead of the last successful load."))

    @model_validator(mode="after")
    def _bounds(self) -> Freshness:
        if self.warn_after is None and self.error_after is None:
            raise ValueError("freshness needs warn_after, error_after or both")
        warn = duration_seconds(self.warn_after, "warn_after") if self.warn_after is not None else None
        error = duration_seconds(self.error_after, "error_after") if self.error_after is not None else None
        if warn is not None and error is not None and warn >= error:
            raise ValueError(f"warn_after ({self.warn_after}) must be shorter than error_after ({self.error_after})")
        return self

    @property
    def warn_seconds(self) -> float | None:
        return duration_seconds(self.warn_after, "warn_after") if self.warn_after is not None else None

    @property
    def error_seconds(self) -> float | None:
        return duration_seconds(self.error_after, "error_after") if self.error_after is not None else None


NotifyEvent = Literal["failure", "retry_exhausted", "freshness"]


class SmtpChannel(_Model):
    """Mail through the smtp provider's SmtpNotifier and its Airflow connection."""

    conn_id: str = Field(default="smtp_default", description="Airflow connection of type smtp (host, port, login).")
    to: list[str] | str = Field(description="Recipient address, or a list of them.")
    from_email: str | None = Field(default=None, description="Sender; default: the connection's from_email extra.")


class AppriseChannel(_Model):
    """Slack, Teams or any webhook through the apprise provider's AppriseNotifier."""

    conn_id: str = Field(default="apprise_default", description=(
        "Airflow connection of type apprise; its config holds the service URLs (slack://, msteams://, json://)."))
    tag: str | None = Field(default=None, description="Only the URLs of the connection's config with this tag.")


class Notify(_Model):
    """Who hears about failures and stale data, through Airflow's own notifiers."""

    on: list[NotifyEvent] = Field(default=["failure", "retry_exhausted", "freshness"], min_length=1, description=(
        "failure: every failed attempt (a retry may follow); retry_exhausted: the attempt after which no retry "
        "follows; freshness: a table's freshness breached (warn or error) and recovered."))
    smtp: SmtpChannel | None = None
    apprise: AppriseChannel | None = None

    @model_validator(mode="before")
    @classmethod
    def _on_key(cls, data: Any) -> Any:
        # YAML 1.1 (PyYAML) reads a bare `on:` key as the boolean true: it is the `on` list.
        if isinstance(data, dict) and True in data and "on" not in data:
            data = {("on" if key is True else key): value for key, value in data.items()}
        return data

    @model_validator(mode="after")
    def _channel(self) -> Notify:
        if self.smtp is None and self.apprise is None:
            raise ValueError("notify needs a channel: smtp, apprise or both")
        return self


class TableBase(_Model):
    name: str = Field(description="Table name in the lake and in task ids.")
    target_table: str | None = Field(default=None, description="Warehouse table; default: name.")
    write_mode: WriteMode = "replace"
    primary_key: list[str] = Field(default_factory=list)
    batch_rows: int = Field(default=DEFAULT_BATCH_ROWS, ge=1)
    incremental: Incremental | None = None
    checkpoint: bool = Field(default=False, description=(
        "Write the extract in checkpointed parts (one per batch), so a retry of the same run resumes "
        "after the last complete batch: SQL tables with a primary_key are read in key order and "
        "resume at the next key; other tables are read again and skip the batches already written."))
    parallel: int = Field(default=1, ge=1, le=MAX_PARALLEL, description=(
        "sql tables: split a full extract (and an incremental table's first one) into this many ranges "
        "of the primary key (or of the table's blocks on PostgreSQL), extracted side by side and "
        "published as one partition (docs/scale-out.md, A big table across workers)."))
    allow_empty: bool = Field(default=False, description=(
        "Let an extract of 0 rows (a header-only CSV, an empty API page) empty the table (replace) or "
        "its date (partition) when they hold rows. Off by default: such a load fails, audited, with the "
        "table unchanged. Into an empty table or date (a quiet day) 0 rows load either way."))
    column_types: dict[str, ColumnType] = Field(default_factory=dict, description=(
        "Fixed warehouse types of (flattened) columns, e.g. {zip: text}, instead of the inferred ones. "
        "A value that does not fit its declared type is an error naming the column and the value "
        "(http: a type change, see on_type_change)."))
    transform: str | None = Field(default=None, description=(
        "package.module:function applied to each batch between the lake and the warehouse (the lake "
        "keeps the data as extracted); it takes and returns a pyarrow.RecordBatch or a polars.DataFrame. "
        "Imported at run time, from the transforms/ package beside the DAGs or include/."))
    elasticsearch: ElasticsearchSink | None = Field(default=None, description=(
        "Also index the table into Elasticsearch after its load (the lake's rows, as extracted)."))
    checks: list[Check] = Field(default_factory=list, description=(
        "Quality checks run on the rows of each load, in its transaction, before it commits "
        "(sndw.checks_config; docs/guides/sources.md, Quality checks)."))
    deletes: DeleteMode | None = Field(default=None, description=(
        "Rows whose key the source no longer has: removed (hard) or marked in _deleted_at (soft) by "
        "each load, in its transaction. Needs primary_key; incremental tables read the source's keys "
        "too (sql: keys_query). docs/guides/sources.md, Deleted rows."))
    max_delete_fraction: float = Field(default=0.5, ge=0, le=1, description=(
        "A load that would delete more than this share of the table's rows (of the date's, for a "
        "partition table), or every row, fails and changes nothing. 1.0: no limit."))
    schema_contract: SchemaContract = Field(default="evolve", description=(
        "What a new or changed column does to an existing table: evolve (added, or widened in place), "
        "freeze (the load fails, naming it) or discard_columns (new columns are not loaded; recorded "
        "in the audit's schema_changes)."))
    freshness: Freshness | None = Field(default=None, description=(
        "How old this table's data may get (the source's freshness, if any, for the tables without one)."))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_source_name(value)

    @field_validator("transform")
    @classmethod
    def _transform(cls, value: str | None) -> str | None:
        return None if value is None else validate_transform_reference(value)

    @model_validator(mode="after")
    def _keys(self) -> TableBase:
        if self.write_mode == "merge" and not self.primary_key:
            raise ValueError("write_mode 'merge' needs primary_key: the columns that identify a row")
        if self.incremental and self.write_mode == "partition":
            raise ValueError("incremental with write_mode 'partition': a load replaces its date's rows with the "
                             "extract, and an incremental extract holds only the rows past the watermark, so a "
                             "second run of a date would leave only its new rows. Use merge (or append), or "
                             "select the date's rows in the query ({{ partition_date }}) without incremental")
        if self.incremental and self.incremental.lookback and self.write_mode != "merge":
            raise ValueError("incremental.lookback re-reads rows: it needs write_mode 'merge' to deduplicate them")
        if self.elasticsearch and not (self.elasticsearch.id_columns or self.primary_key):
            raise ValueError("elasticsearch needs id_columns or a primary_key: documents without an id would be "
                             "duplicated by every re-run")
        validate_checks(self.checks, self.primary_key, self.write_mode)
        if self.deletes and not self.primary_key:
            raise ValueError(f"deletes: {self.deletes} finds rows the source no longer has by their key: it needs "
                             "primary_key")
        if self.deletes and self.write_mode == "replace":
            raise ValueError("deletes: a replace load already holds only the source's rows; use write_mode merge "
                             "(or append, partition) with deletes")
        if self.parallel > 1 and not isinstance(self, SqlTable):
            raise ValueError(f"parallel: {self.parallel}: only sql tables are split into ranges (by their key or "
                             "their blocks); remove parallel")
        return self

    @property
    def target(self) -> str:
        return normalize_identifier(self.target_table or self.name)

    @property
    def key_columns(self) -> list[str]:
        return [normalize_identifier(k) for k in self.primary_key]


class SqlTable(TableBase):
    table: str | None = Field(default=None, description="Source table, optionally schema-qualified.")
    query: str | None = Field(default=None, description="SQL query (templated with Airflow macros).")
    keys_query: str | None = Field(default=None, description=(
        "deletes on an incremental table: the query that returns the source's whole key set (the "
        "primary_key columns); default SELECT <primary_key> FROM <table>. Templated like query."))

    @model_validator(mode="after")
    def _one_of(self) -> SqlTable:
        if bool(self.table) == bool(self.query):
            raise ValueError("set exactly one of 'table' or 'query'")
        if self.keys_query is not None and not (self.deletes and self.incremental):
            raise ValueError("keys_query is read only by incremental tables with deletes (a full extract's rows "
                             "are its key set): set deletes and incremental, or remove it")
        if self.deletes and self.incremental and self.query and not self.keys_query:
            raise ValueError("deletes on an incremental table given by 'query' need keys_query: the query that "
                             "returns every key the source has (the incremental read sees only new rows)")
        check_known_columns(self.checks, select_columns(self.query), "the query")
        if self.parallel > 1 and any(c.kind == "source_count" for c in self.checks):
            raise ValueError(f"checks: source_count compares one count of the source with the rows loaded; the "
                             f"{self.parallel} ranges of parallel: {self.parallel} read at different moments, so "
                             "remove one of them")
        if self.parallel > 1 and self.query and not self.primary_key:
            raise ValueError(f"parallel: {self.parallel} on a 'query' needs a primary_key to split on (block ranges "
                             "need a 'table'); set primary_key, or use 'table'")
        return self


class NoPagination(_Model):
    type: Literal["none"] = "none"


class _Paged(_Model):
    total_path: str | None = Field(default=None, description=(
        "Dot path of the total record count in the body (e.g. meta.total): stop once that many "
        "records have been read."))


class PageNumberPagination(_Paged):
    type: Literal["page_number"]
    page_param: str = "page"
    start_page: int = 1
    page_size_param: str | None = None
    page_size: int | None = Field(default=None, ge=1)


class OffsetPagination(_Paged):
    type: Literal["offset"]
    offset_param: str = "offset"
    limit_param: str = "limit"
    limit: int = Field(default=100, ge=1)


class NextLinkPagination(_Paged):
    type: Literal["next_link"]
    next_path: str = Field(default="next", description="Dot path of the next page's URL in the body.")


class CursorPagination(_Paged):
    type: Literal["cursor"]
    cursor_path: str = Field(default="next_cursor", description="Dot path of the next page's cursor in the body.")
    cursor_param: str = Field(default="cursor", description="Query parameter that sends the cursor back.")


class LinkHeaderPagination(_Paged):
    type: Literal["link_header"]
    rel: str = Field(default="next", description="Relation of the next page in the RFC 8288 Link header.")


PAGINATION_TYPES = ("none", "page_number", "offset", "next_link", "cursor", "link_header")

Pagination = Annotated[
    NoPagination | PageNumberPagination | OffsetPagination | NextLinkPagination | CursorPagination
    | LinkHeaderPagination,
    Field(discriminator="type"),
]

HttpAuth = Literal["none", "basic", "bearer", "api_key_header", "api_key_query"]
# Link columns of an unnested child table (they normalise to themselves: no leading underscore).
CHILD_PARENT_PREFIX = "parent__"
CHILD_INDEX_COLUMN = "parent__index"


@dataclass(frozen=True)
class ChildTable:
    """A list field of an http table unnested into a table of its own, linked to the parent row."""

    path: str  # dot path of the list in the parent record
    name: str  # lake table and task name: <parent>__<path>
    target: str  # warehouse table: <parent target>__<path>
    write_mode: WriteMode
    key_columns: list[str]  # merge key: the parent's key columns (parent__<key>) and parent__index
    parent_key: list[str]  # the parent's primary_key, as configured

    @property
    def xcom_key(self) -> str:
        return f"manifest__{self.name}"


class HttpTable(TableBase):
    endpoint: str = Field(description="Path relative to the connection's host, or a full URL.")
    method: Literal["GET", "POST"] = "GET"
    params: dict[str, Any] = Field(default_factory=dict)
    headers: dict[str, str] = Field(default_factory=dict)
    records_path: str | None = Field(default=None, description="Dot path to the records, e.g. data.items")
    pagination: Pagination = Field(default_factory=NoPagination)
    max_pages: int = Field(default=10_000, ge=1)
    timeout_seconds: float = Field(default=60.0, gt=0)
    auth: HttpAuth | None = Field(default=None, description=(
        "How the connection's credentials are sent; default: basic when the connection has a login, else none."))
    retries: int = Field(default=5, ge=0, description="Retries of one request (429, 5xx, timeouts, resets).")
    backoff_seconds: float = Field(default=1.0, ge=0, description="First retry delay; doubles per retry, with jitter.")
    max_backoff_seconds: float = Field(default=60.0, ge=0, description="Cap of one retry delay (and of Retry-After).")
    requests_per_second: float | None = Field(default=None, gt=0, description="Rate limit of this table's requests.")
    max_depth: int = Field(default=10, ge=1, description=(
        "Most levels in a flattened column name; deeper objects are kept whole as JSON. 1: no flattening."))
    unnest: list[str] = Field(default_factory=list, description="Dot paths of lists that become child tables.")
    on_type_change: Literal["fail", "variant"] = Field(default="fail", description=(
        "A field whose values stop fitting its column's type on a later page: fail the extract, or put "
        "those values into a variant column <field>__v_<type>."))

    @model_validator(mode="after")
    def _http_keys(self) -> HttpTable:
        if any(c.kind == "source_count" for c in self.checks):
            raise ValueError("checks: source_count is not available for an http table: an API gives no count of "
                             "its own to compare the rows with; use row_count or row_count_change")
        if self.unnest and not self.primary_key:
            raise ValueError("unnest links child rows to their parent row: it needs primary_key")
        if self.unnest and f"{CHILD_PARENT_PREFIX}index" in {f"{CHILD_PARENT_PREFIX}{k}" for k in self.key_columns}:
            # The key's link column would be the item's position column: one would replace the other.
            raise ValueError(f"unnest: a primary_key column named 'index' links child rows as {CHILD_INDEX_COLUMN!r}, "
                             "the column of each item's position; rename it in a query or leave the lists out of unnest")
        names = [c.name for c in self.child_tables]
        if len(set(names)) != len(names):
            raise ValueError("unnest names the same list twice")
        for child in self.child_tables:
            if len(child.name) > 63 or len(child.target.encode()) > 63:
                raise ValueError(f"unnest {child.path!r}: the child table name {child.name!r} is longer than 63")
        return self

    @property
    def child_tables(self) -> list[ChildTable]:
        children = []
        for path in self.unnest:
            suffix = normalize_identifier(path.replace(".", "__"))
            keys = [f"{CHILD_PARENT_PREFIX}{k}" for k in self.key_columns] + [CHILD_INDEX_COLUMN]
            children.append(ChildTable(
                path=path, name=f"{self.name}__{suffix}", target=f"{self.target}__{suffix}",
                write_mode=self.write_mode, key_columns=keys if self.write_mode == "merge" else [],
                parent_key=list(self.primary_key)))
        return children


class CsvOptions(_Model):
    delimiter: str = ","
    quote_char: str | None = '"'
    has_header: bool = True
    encoding: str = "utf-8"
    null_values: list[str] = Field(default_factory=lambda: [""])
    skip_rows: int = Field(default=0, ge=0)

    @field_validator("delimiter")
    @classmethod
    def _one_char(cls, value: str) -> str:
        if len(value) != 1:
            raise ValueError("must be exactly one character")
        return value

    @field_validator("encoding")
    @classmethod
    def _encoding(cls, value: str) -> str:
        try:
            "".encode(value)  # refuses unknown names and codecs that are not text encodings (base64)
        except LookupError:
            raise ValueError(f"unknown text encoding {value!r} (e.g. utf-8, latin-1, cp1252, utf-16)") from None
        return value


FILE_EXTENSIONS: dict[str, FileFormat] = {
    "csv": "csv", "tsv": "csv", "txt": "csv", "json": "json",
    "ndjson": "ndjson", "jsonl": "ndjson", "parquet": "parquet", "pq": "parquet",
}


class FileTable(TableBase):
    path: str = Field(description="File path or glob; relative paths start at the config's base_path.")
    format: FileFormat | None = Field(default=None, validate_default=True,
                                      description="Default: from the file extension.")
    records_path: str | None = Field(default=None, description="JSON files: dot path to the records.")
    csv: CsvOptions = Field(default_factory=CsvOptions)
    on_type_change: Literal["fail", "variant"] = Field(default="fail", description=(
        "JSON and NDJSON files: a field whose values stop fitting its column's type in a later record "
        "or file: fail the extract, or put those values into a variant column <field>__v_<type>."))

    @field_validator("format")
    @classmethod
    def _format(cls, value: FileFormat | None, info: ValidationInfo) -> FileFormat | None:
        path = info.data.get("path")
        if value is None and isinstance(path, str) and _extension_format(path) is None:
            raise ValueError(f"cannot tell the format of {path!r} from its extension: set format "
                             f"({', '.join(sorted(set(FILE_EXTENSIONS.values())))})")
        return value

    @field_validator("incremental")
    @classmethod
    def _not_incremental(cls, value: Incremental | None) -> Incremental | None:
        if value is not None:
            raise ValueError("file tables are read whole on every run (no cursor filters them): remove "
                             "incremental (write_mode merge with a primary_key updates the rows read again)")
        return value

    @property
    def file_format(self) -> FileFormat:
        found = self.format or _extension_format(self.path)
        if found is None:
            raise ValueError(f"cannot tell the format of {self.path!r}: set 'format'")
        return found


def _extension_format(path: str) -> FileFormat | None:
    return FILE_EXTENSIONS.get(Path(path).suffix.lower().lstrip("."))


TABLE_MODELS: dict[str, type[TableBase]] = {"http": HttpTable, "sql": SqlTable, "file": FileTable}


# -------------------------------------------------------------------------------------- sources

# Airflow's schedule presets; the cron ones as Airflow expands them (airflow.sdk ... _cron.py).
CRON_PRESETS = {
    "@hourly": "0 * * * *", "@daily": "0 0 * * *", "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *", "@quarterly": "0 0 1 */3 *", "@yearly": "0 0 1 1 *",
}
SCHEDULE_PRESETS = ("@once", "@continuous", *CRON_PRESETS)


def validate_schedule(value: str | None) -> str | None:
    """Check a schedule as Airflow will, without importing it: a bad one fails at parse time with
    ``AirflowTimetableInvalid`` and takes the whole DAG file down. Timedelta-like strings (``1h``)
    are not schedules; a cron expression says the same (``0 * * * *``)."""
    problem = None if value is None or value in ("@once", "@continuous") else _cron_problem(value)
    if problem:
        close = difflib.get_close_matches(value or "", SCHEDULE_PRESETS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(
            f"{value!r} is not a schedule ({problem}); {hint}use null (manual runs only), a preset "
            f"({', '.join(SCHEDULE_PRESETS)}) or a cron expression such as '0 3 * * *'")
    return value


@functools.lru_cache(maxsize=256)
def _cron_problem(expression: str) -> str | None:
    """Why croniter refuses ``expression`` (or finds no time it fires), or None. Cached: many
    configs share a schedule, and finding the next time costs a millisecond."""
    try:
        croniter(CRON_PRESETS.get(expression, expression)).get_next()
    except (ValueError, TypeError, KeyError) as exc:
        return str(exc)
    return None


class SqlStep(_Model):
    """SQL run in the warehouse after the source's loads, as a task ``sql_<name>`` of its DAG."""

    name: str = Field(description="Task id sql_<name>; steps run one after another, in the listed order.")
    sql: str | None = Field(default=None, description="The SQL, inline (templated: {{ partition_date }}).")
    file: str | None = Field(default=None, description="A .sql file, relative to the config's folder (templated).")
    target: str | None = Field(default=None, description="The table the step builds (schema.table), for the audit log.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        return validate_source_name(value)

    @model_validator(mode="after")
    def _one_of(self) -> SqlStep:
        if bool(self.sql) == bool(self.file):
            raise ValueError("set exactly one of 'sql' or 'file'")
        return self

    def text(self, config_dir: str | os.PathLike[str]) -> str:
        """The step's SQL: inline, or read from its file (checked to exist when the config is parsed)."""
        return self.sql if self.sql else (Path(config_dir) / str(self.file)).read_text(encoding="utf-8")


class SourceBase(_Model):
    name: str
    description: str | None = None
    owner: str = "data-eng"
    tags: list[Annotated[str, Field(max_length=100)]] = Field(
        default_factory=list, description="DAG tags; Airflow allows at most 100 characters each.")
    schedule: str | None = "@daily"
    start_date: date
    end_date: date | None = None
    catchup: bool = False
    max_active_runs: int = Field(default=1, ge=1)
    retries: int = Field(default=2, ge=0)
    retry_delay_seconds: int = Field(default=60, ge=0)
    retry_exponential_backoff: float = Field(
        default=2.0, ge=0, description="Multiplier of the retry delay per attempt; 0 or false turns it off.")
    max_retry_delay_seconds: int = Field(default=3600, ge=0)
    target_schema: str = "public"
    dw_conn_id: str = "dw"
    notify: Notify | None = Field(default=None, description=(
        "Alerts on failure, retry exhausted and freshness breach, by mail (smtp) and/or apprise."))
    freshness: Freshness | None = Field(default=None, description=(
        "How old every table's data may get; a table's own freshness wins (the sndw_freshness DAG checks it)."))
    sql_steps: list[SqlStep] = Field(default_factory=list, description=(
        "SQL run in the warehouse after every load of the source, one task each, in order."))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        reserved = reserved_dag_id(validate_source_name(value))
        if reserved:
            raise ValueError(f"{reserved} (a source's DAG would take its place): choose another name")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        return validate_schedule(value)

    @field_validator("end_date")
    @classmethod
    def _end_date(cls, value: date | None, info: ValidationInfo) -> date | None:
        start = info.data.get("start_date")
        if value is not None and start is not None and value < start:
            raise ValueError(f"{value} is before start_date {start}: the DAG would never run")
        return value

    @field_validator("max_active_runs")
    @classmethod
    def _continuous(cls, value: int, info: ValidationInfo) -> int:
        if info.data.get("schedule") == "@continuous" and value > 1:
            raise ValueError("schedule '@continuous' runs one DAG run at a time: set max_active_runs to 1")
        return value

    @field_validator("retry_exponential_backoff", mode="before")
    @classmethod
    def _backoff(cls, value: Any) -> Any:
        if isinstance(value, bool):
            return 2.0 if value else 0.0
        return value

    @model_validator(mode="after")
    def _related_loads(self) -> SourceBase:
        self.load_order()  # a cycle of relationships checks between tables: no order to load them in
        return self

    def load_dependencies(self) -> dict[str, list[str]]:
        """Per table name, the tables of this source whose loads come first: those its
        ``relationships`` checks relate to (the check reads them, so their rows must be loaded)."""
        tables = list(getattr(self, "tables", []))
        by_target = {t.target: t.name for t in tables}
        out: dict[str, list[str]] = {}
        for table in tables:
            parents: list[str] = []
            for check in table.checks:
                if check.relationships is None:
                    continue
                schema, target, _ = check.relationships.target(self.target_schema)
                parent = by_target.get(target) if schema == self.target_schema else None
                if parent is not None and parent != table.name and parent not in parents:
                    parents.append(parent)
            out[table.name] = parents
        return out

    def load_order(self) -> list[Any]:
        """The tables in their listed order, but each after the tables its relationships checks relate to."""
        tables = {t.name: t for t in getattr(self, "tables", [])}
        needs = self.load_dependencies()
        done: list[str] = []
        while len(done) < len(tables):
            ready = [n for n in tables if n not in done and all(p in done for p in needs[n])]
            if not ready:
                stuck = [n for n in tables if n not in done]
                raise ValueError(f"tables {', '.join(stuck)}: their relationships checks relate to each other in a "
                                 "circle, so no table can load first: drop one of those checks or use a sql check")
            done.append(ready[0])
        return [tables[n] for n in done]

    @field_validator("target_schema")
    @classmethod
    def _schema(cls, value: str) -> str:
        return normalize_identifier(value)

    @field_validator("sql_steps")
    @classmethod
    def _unique_steps(cls, steps: list[SqlStep]) -> list[SqlStep]:
        names = [s.name for s in steps]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"step names must differ (they are task ids): {', '.join(repeated)} repeated")
        return steps

    @field_validator("tables", check_fields=False)
    @classmethod
    def _unique_tables(cls, tables: list[TableBase]) -> list[TableBase]:
        """Table names are task ids and lake folders: a repeated one (an unnested child table's
        ``<parent>__<path>`` included) would make two tasks of one id and fail the whole DAG file."""
        seen: dict[str, str] = {}
        for index, table in enumerate(tables):
            for name, what in [(table.name, f"tables[{index}]"),
                               *((c.name, f"tables[{index}].unnest {c.path!r}") for c in getattr(table, "child_tables", []))]:
                if name in seen:
                    raise ValueError(f"table name {name!r} of {what} is already used by {seen[name]}")
                seen[name] = what
        return tables

    @field_validator("tables", check_fields=False)
    @classmethod
    def _unique_targets(cls, tables: list[TableBase], info: ValidationInfo) -> list[TableBase]:
        """Two tables (an unnested child table included) loading into one warehouse table would
        overwrite each other's rows, while each reports its own as loaded."""
        schema = info.data.get("target_schema", "public")
        seen: dict[str, str] = {}
        for index, table in enumerate(tables):
            for target, what in [(table.target, f"tables[{index}] ({table.name})"),
                                 *((c.target, f"tables[{index}].unnest {c.path!r}") for c in getattr(table, "child_tables", []))]:
                if target in seen:
                    raise ValueError(f"{what} loads into {schema}.{target}, as {seen[target]} does: their loads "
                                     "would overwrite each other; give each its own target_table")
                seen[target] = what
        return tables


# Keys an http source may set for all its tables (a table's own value wins).
HTTP_SOURCE_DEFAULTS = ("auth", "requests_per_second")


class HttpSource(SourceBase):
    kind: Literal["http"]
    conn_id: str
    auth: HttpAuth | None = Field(default=None, description="Default auth of the tables.")
    requests_per_second: float | None = Field(default=None, gt=0, description=(
        "Rate limit of the whole source: shared out evenly among the tables without a limit of "
        "their own, whose extract tasks may run at the same time."))
    tables: list[HttpTable] = Field(min_length=1)

    @model_validator(mode="before")
    @classmethod
    def _inherit(cls, data: Any) -> Any:
        """Tables inherit the source's auth, and their share of its rate limit: the tasks of one
        run extract in parallel, so together they never exceed the source's requests per second."""
        if not isinstance(data, dict) or not isinstance(data.get("tables"), list):
            return data
        defaults = {k: data[k] for k in HTTP_SOURCE_DEFAULTS if data.get(k) is not None}
        tables = data["tables"]
        rate = defaults.pop("requests_per_second", None)
        sharing = [t for t in tables if isinstance(t, dict) and t.get("requests_per_second") is None]
        if isinstance(rate, (int, float)) and not isinstance(rate, bool) and rate > 0 and sharing:
            share = rate / len(sharing)
            tables = [{**t, "requests_per_second": share} if any(t is u for u in sharing) else t for t in tables]
        if defaults:
            tables = [{**defaults, **t} if isinstance(t, dict) else t for t in tables]
        return {**data, "tables": tables}


# Sizes as PostgreSQL writes them (max_slot_wal_keep_size): kB, MB, GB, TB are multiples of 1024.
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|mb|gb|tb|kib|mib|gib|tib)\s*$", re.IGNORECASE)
_SIZE_UNITS = {"b": 1, "kb": 1 << 10, "mb": 1 << 20, "gb": 1 << 30, "tb": 1 << 40}


def size_bytes(value: str | int, what: str) -> int:
    """``1GB``, ``512 MiB`` or a number of bytes."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"{what}: {value!r} is not a size")
    if isinstance(value, int):
        number = float(value)
    else:
        match = _SIZE.match(value)
        if not match:
            raise ValueError(f"{what}: {value!r} is not a size: use bytes or a number with B, kB, MB, GB or TB (1GB)")
        number = float(match.group(1)) * _SIZE_UNITS[match.group(2).lower().replace("ib", "b")]
    if number <= 0:
        raise ValueError(f"{what} must be above 0")
    return int(number)


class SlotLag(_Model):
    """How far a CDC slot may fall behind before ``/sndw/health`` says ``degraded``."""

    wal: str | int | None = Field(default=None, description=(
        "WAL the slot may retain on the source (pg_current_wal_lsn() - restart_lsn): bytes or a size (1GB)."))
    age: str | int | float | None = Field(default=None, description=(
        "Time since the warehouse last confirmed a position: seconds or a duration (6h)."))

    @field_validator("wal")
    @classmethod
    def _wal(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            size_bytes(value, "max_slot_lag.wal")
        return value

    @field_validator("age")
    @classmethod
    def _age(cls, value: str | int | float | None) -> str | int | float | None:
        if value is not None:
            from sndw.checks_config import duration_seconds

            duration_seconds(value, "max_slot_lag.age")
        return value

    @model_validator(mode="after")
    def _one(self) -> SlotLag:
        if self.wal is None and self.age is None:
            raise ValueError("max_slot_lag needs wal, age or both")
        return self

    @property
    def wal_bytes(self) -> int | None:
        return None if self.wal is None else size_bytes(self.wal, "max_slot_lag.wal")

    @property
    def age_seconds(self) -> float | None:
        from sndw.checks_config import duration_seconds

        return None if self.age is None else duration_seconds(self.age, "max_slot_lag.age")


class Cdc(_Model):
    """Change data capture by PostgreSQL logical replication (``pgoutput``): ``sndw.cdc``."""

    slot: str | None = Field(default=None, description="Replication slot on the source; default sndw_<source>.")
    publication: str | None = Field(default=None, description="Publication of the tables; default sndw_<source>.")
    max_slot_lag: SlotLag | None = Field(default=None, description=(
        "/sndw/health turns degraded when the slot retains more WAL or was last confirmed longer ago: a size "
        "(1GB), a duration (6h), or {wal: 1GB, age: 6h}."))

    @field_validator("max_slot_lag", mode="before")
    @classmethod
    def _lag(cls, value: Any) -> Any:
        """A single size or duration, told apart by its unit (a bare number is bytes)."""
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            return value
        if isinstance(value, int) or _SIZE.match(value):
            return {"wal": value}
        from sndw.checks_config import _DURATION

        if _DURATION.match(value):
            return {"age": value}
        raise ValueError(f"max_slot_lag: {value!r} is neither a size (1GB) nor a duration (6h)")

    @field_validator("slot", "publication")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        # PostgreSQL's own rule for slot names; publications are held to it too (no quoting anywhere).
        if value is not None and not (value and len(value) <= 63 and all(c in _SLOT_CHARS for c in value)):
            raise ValueError(f"{value!r}: use lower-case letters, digits and underscores (at most 63)")
        return value


_SLOT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


class SqlSource(SourceBase):
    kind: Literal["sql"]
    conn_id: str
    tables: list[SqlTable] = Field(min_length=1)
    cdc: Cdc | None = Field(default=None, description=(
        "Follow the tables' changes through a logical replication slot instead of reading them whole "
        "(PostgreSQL sources; docs/guides/sources.md, Change data capture)."))

    @model_validator(mode="after")
    def _cdc_tables(self) -> SqlSource:
        if self.cdc is None:
            return self
        for index, table in enumerate(self.tables):
            refused = [(key, why) for key, why in (
                ("query", "a publication carries tables, not queries: set 'table'"),
                ("incremental", "every change arrives through the slot"),
                ("checkpoint", "the first copy is read in one snapshot"),
                ("parallel", "the first copy is read in one snapshot"),
                ("transform", "changes are applied as the source has them"),
            ) if (table.parallel > 1 if key == "parallel" else getattr(table, key))]
            if refused:
                key, why = refused[0]
                raise ValueError(f"tables[{index}] ({table.name}): '{key}' is not available with cdc ({why})")
        return self


# $NAME or ${NAME}, as os.path.expandvars finds them (it leaves an unset one in the path as it is).
_VARIABLE = re.compile(r"\$(\w+|\{[^}]*\})")


class FileSource(SourceBase):
    kind: Literal["file"]
    base_path: str | None = Field(default=None, description=(
        "Folder that relative paths start from; $VAR and ${VAR} are taken from the environment where the "
        "DAG files are parsed (or sync runs). Default: the config's folder."))
    tables: list[FileTable] = Field(min_length=1)

    def unset_variables(self) -> list[str]:
        """The environment variables that base_path names and this process does not have."""
        found = (m.strip("{}") for m in _VARIABLE.findall(self.base_path or ""))
        return [name for name in dict.fromkeys(found) if name not in os.environ]

    def folder(self, config_path: str | os.PathLike[str] | None) -> str:
        """The folder relative file paths start from: base_path with its variables expanded,
        relative to the config's folder. An unset variable is a ConfigError that names it."""
        here = Path(os.path.abspath(config_path)).parent if config_path else Path.cwd()
        unset = self.unset_variables()
        if unset:
            names = ", ".join(f"${{{name}}}" for name in unset)
            raise ConfigError(str(config_path or self.name), "base_path", f"{names} is not set in the environment")
        return str(here / os.path.expandvars(self.base_path)) if self.base_path else str(here)


SourceConfig = Annotated[HttpSource | SqlSource | FileSource, Field(discriminator="kind")]
_SOURCE_ADAPTER: TypeAdapter[HttpSource | SqlSource | FileSource] = TypeAdapter(SourceConfig)


# -------------------------------------------------------------------------------------- loading


def _field_path(loc: tuple[Any, ...], data: Any) -> str:
    """Turn pydantic's location into ``tables[1].write_mode``, skipping union-member tags."""
    parts: list[str] = []
    node = data
    previous: Any = None
    for position, item in enumerate(loc):
        tag = (position == 0 and item in ("http", "sql", "file")) or (previous == "pagination" and item in PAGINATION_TYPES)
        previous = item
        if tag:
            continue  # the discriminator's branch name, not a field of the file
        if isinstance(item, int):
            parts.append(f"[{item}]")
            node = node[item] if isinstance(node, list) and item < len(node) else None
            continue
        if isinstance(node, dict) and item in node:
            parts.append(f".{item}" if parts else str(item))
            node = node[item]
        elif "[" in str(item):
            continue  # a union member's tag, not a field of the file
        else:
            parts.append(f".{item}" if parts else str(item))
            node = None
    return "".join(parts)


def parse_source(data: Any, path: str) -> HttpSource | SqlSource | FileSource:
    """Validate one source's raw mapping; errors name ``path`` and the field."""
    if not isinstance(data, dict):
        raise ConfigError(path, "", "the file must hold a mapping of keys (name, kind, tables, ...)")
    named = "name" in data
    data = dict(data)
    data.setdefault("name", Path(path).stem)
    try:
        source = _SOURCE_ADAPTER.validate_python(data)
    except ValidationError as exc:
        problems = _problems(exc, data)
        if not named:
            problems = [(f, f"{m} (the name comes from the file name: set 'name' or rename the file)")
                        if f == "name" else (f, m) for f, m in problems]
        raise ConfigError(path, *problems[0], more=problems[1:]) from None
    folder = Path(path).parent
    found: list[tuple[str, str]] = []
    for index, table in enumerate(data["tables"]):
        found += _template_problems(table, f"tables[{index}]")  # Airflow renders every string of a table
    for index, step in enumerate(source.sql_steps):
        if step.file and not (folder / step.file).is_file():
            found.append((f"sql_steps[{index}].file", f"no file {folder / step.file} (paths start at the config's folder)"))
        elif step.file:
            found += _template_problems(step.text(folder), f"sql_steps[{index}].file", f" ({folder / step.file})")
        else:
            found += _template_problems(data["sql_steps"][index].get("sql"), f"sql_steps[{index}].sql")
    if found:
        raise ConfigError(path, *found[0], more=found[1:])
    return source


def _template_problems(value: Any, field: str, where: str = "") -> list[tuple[str, str]]:
    """(field, message) of each string under ``value`` that Jinja cannot parse. Parsed, not rendered:
    the names it uses (macros, params) are the run's."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _template_problems(v, f"{field}.{k}", where)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _template_problems(v, f"{field}[{i}]", where)]
    if not isinstance(value, str) or not any(mark in value for mark in ("{{", "{%", "{#")):
        return []
    import jinja2

    try:
        jinja2.Environment(extensions=["jinja2.ext.do"]).parse(value)  # noqa: S701 - parsed only, never rendered
    except jinja2.TemplateSyntaxError as exc:
        line = f" at line {exc.lineno}" if "\n" in value.strip() else ""
        return [(field, f"not a valid template (Jinja){line}{where}: {exc.message}")]
    return []


def _problems(exc: ValidationError, data: Any) -> list[tuple[str, str]]:
    """Every error of a validation as (field path, message), once each: fields in the order of the
    model, then unknown keys (a user fixes them all in one go, not one per run)."""
    problems: list[tuple[str, str]] = []
    for err in exc.errors():
        field = _field_path(tuple(err["loc"]), data)
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key (check its spelling in docs/guides/sources.md)"
        elif err["type"] == "union_tag_invalid" and field.endswith("pagination"):
            message = f"type must be one of {', '.join(PAGINATION_TYPES)}; got {(err.get('input') or {}).get('type') if isinstance(err.get('input'), dict) else err.get('input')!r}"
        elif err["type"] == "union_tag_invalid":
            message = f"must be one of http, sql, file; got {data.get('kind')!r}"
            field = field or "kind"
        elif err["type"] == "union_tag_not_found":
            message = "missing key 'kind' (http, sql or file)" if not field else "missing key 'type'"
            field = field or "kind"
        if (field, message) not in problems:
            problems.append((field, message))
    return problems


class _DuplicateKeys(yaml.constructor.SafeConstructor):
    """Mixed into a SafeLoader: records each mapping key given twice, at any depth: plain YAML keeps the
    last value silently, so a config would run with a setting its author did not mean."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)  # type: ignore[call-arg]  # the loader class after this mixin takes it
        self.duplicates: list[tuple[str, str]] = []

    def construct_document(self, node: yaml.Node) -> Any:
        found = sorted(self._duplicate_keys(node, "", set()))
        self.duplicates = [(field, message) for _, field, message in found]
        return super().construct_document(node)

    def _duplicate_keys(self, node: yaml.Node, where: str, seen: set[int]) -> list[tuple[int, str, str]]:
        """(line, field path, message) of each key given twice in ``node`` and below."""
        if id(node) in seen:  # an alias of a node already checked (or a recursive one)
            return []
        seen.add(id(node))
        found: list[tuple[int, str, str]] = []
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                found += self._duplicate_keys(item, f"{where}[{index}]", seen)
        elif isinstance(node, yaml.MappingNode):
            lines: dict[Any, tuple[int, int]] = {}
            for key_node, value_node in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # keys given next to `<<: *base` override it
                    found += self._duplicate_keys(value_node, where, seen)
                    continue
                if not isinstance(key_node, yaml.ScalarNode):  # constructing the document reports it
                    continue
                child = f"{where}.{key_node.value}" if where else str(key_node.value)
                key = self.construct_object(key_node)  # so `yes` and `true`, `1` and `1.0` match
                line, column = key_node.start_mark.line + 1, key_node.start_mark.column + 1
                if key in lines:
                    first_line, first_column = lines[key]
                    at = f"line {line}" if line != first_line else f"line {line}, column {column}"
                    first = f"line {first_line}" if line != first_line else f"column {first_column}"
                    found.append((line, child, f"duplicate key at {at} (first at {first}): "
                                               "YAML would keep only the last value; remove one"))
                else:
                    lines[key] = (line, column)
                found += self._duplicate_keys(value_node, child, seen)
        return found


    def construct_yaml_timestamp(self, node: yaml.ScalarNode) -> Any:
        """A date-like scalar that is no date (``2024-13-01``) stays the text it is, so the field's
        validation names the field, instead of the reader failing with a bare ``month must be in 1..12``."""
        try:
            return super().construct_yaml_timestamp(node)
        except ValueError:
            return self.construct_scalar(node)


_DuplicateKeys.add_constructor(  # type: ignore[type-var]  # a mixin: the loaders below are the _L it takes
    "tag:yaml.org,2002:timestamp", _DuplicateKeys.construct_yaml_timestamp)


class _UniqueKeyLoader(_DuplicateKeys, yaml.SafeLoader):
    """The pure-Python loader: its errors name the line, column and character exactly."""


# libyaml's parser, when PyYAML was built with it: 3-4x faster on valid files (DAG-folder parse
# reads every config). Its error marks differ, so a file it refuses is read again by the
# pure-Python loader for the message.
_FastUniqueKeyLoader: type[Any] | None = (
    type("_FastUniqueKeyLoader", (_DuplicateKeys, yaml.CSafeLoader), {}) if getattr(yaml, "__with_libyaml__", False)
    else None)


def _load_yaml(text: str, fast: bool = True) -> tuple[Any, list[tuple[str, str]]]:
    """The document and its duplicate keys (field, message)."""
    loader = (_FastUniqueKeyLoader if fast and _FastUniqueKeyLoader else _UniqueKeyLoader)(text)
    try:
        return loader.get_single_data(), loader.duplicates
    finally:
        loader.dispose()


def load_source_file(path: str | os.PathLike[str]) -> HttpSource | SqlSource | FileSource:
    """Read and validate one YAML (or JSON) source config."""
    path = str(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
    except IsADirectoryError:
        raise ConfigError(path, "", "a folder, not a config file: rename it (names ending in .yaml or .yml are "
                                    "read as source configs)") from None
    except OSError as exc:
        raise ConfigError(path, "", f"cannot read the file: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(path, f"line {line}", f"not UTF-8 text (byte {exc.start}: {exc.reason}); save the file "
                                                "as UTF-8") from None
    try:
        try:
            data, duplicates = _load_yaml(text)
        except (yaml.YAMLError, RecursionError):  # read again for the exact message (it refuses control characters)
            data, duplicates = _load_yaml(text, fast=False)
    except yaml.reader.ReaderError as exc:
        line = text[:exc.position].count("\n") + 1
        message = f"not valid YAML: control character U+{exc.character:04X} is not allowed"
        raise ConfigError(path, f"line {line}", f"{message} (write it as an escape in a double-quoted string)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, where, f"not valid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(path, "", "not valid YAML: nested too deeply") from None
    if not duplicates:
        return parse_source(data, path)
    problems = list(duplicates)
    try:
        parse_source(data, path)
    except ConfigError as exc:
        problems += [p for p in exc.problems if p not in problems]
    raise ConfigError(path, *problems[0], more=problems[1:])


def config_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The source configs in ``folder``, in sorted order (hidden files and ``_`` files skipped).
    A folder or a broken link named like a config is listed too: reading it fails with a ConfigError
    that says why, where skipping it would hide a source silently."""
    root = Path(folder)
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir()
        if p.suffix in (".yaml", ".yml") and not p.name.startswith((".", "_"))
    )


def iter_sources(folder: str | os.PathLike[str]) -> Iterator[tuple[Path, HttpSource | SqlSource | FileSource | ConfigError]]:
    """Each config file with its parsed source, or the ConfigError that explains why it is invalid."""
    names: dict[str, Path] = {}
    for path in config_files(folder):
        try:
            source = load_source_file(path)
        except ConfigError as exc:
            yield path, exc
            continue
        except Exception as exc:  # a fault of ours must not hide the other configs either
            yield path, ConfigError(str(path), "", f"cannot be validated: {type(exc).__name__}: {exc}")
            continue
        if source.name in names:
            yield path, ConfigError(str(path), "name", f"source name {source.name!r} is already used by {names[source.name].name}")
            continue
        names[source.name] = path
        yield path, source


def table_spec(kind: str, spec: dict[str, Any], where: str = "table") -> TableBase:
    """Validate one table's options for a source kind (used by operators composed by hand)."""
    model = TABLE_MODELS.get(kind)
    if model is None:
        raise ConfigError(where, "kind", f"kind must be one of {', '.join(TABLE_MODELS)}; got {kind!r}")
    try:
        return model.model_validate(spec)
    except ValidationError as exc:
        problems = _problems(exc, spec)
        raise ConfigError(where, *problems[0], more=problems[1:]) from None
