"""Assets and OpenLineage for the two operators: one partitioned Asset per warehouse table, and the
datasets (source, lake partition, warehouse table) each task reports through the OpenLineage provider.

The declared Asset is ``x-sndw://<dw_conn_id>/<schema>.<table>``: stable, and known at parse time
without a connection lookup (the DAG processor may not see the connection, and a host in the
asset's identity would orphan its history and its consumers whenever the warehouse moves). Where the
table really is, in OpenLineage's form for PostgreSQL (``postgres://host:port``, ``db.schema.table``),
is resolved from the connection at run time and travels in each asset event's extra and in the
OpenLineage events. The openlineage imports happen inside the functions: DAG parsing never pays for them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import Asset
from sndw import storage
from sndw.naming import lake_partition_dir

# "x-": Airflow's mark of a scheme no provider normalises. Any other scheme makes the first Asset of a
# DAG-file parse import every provider's asset handlers (the Amazon provider's pulls in boto3): the
# parse of 100 sources took 2.2-2.5 s with "sndw", 1.1-1.25 s with "x-sndw".
ASSET_SCHEME = "x-sndw"
FILE_NAMESPACE = "file"


def table_asset(dw_conn_id: str, schema: str, table: str) -> Asset:
    """The Asset of a warehouse table (normalised names), as load tasks emit it and consumers schedule on it."""
    return Asset(uri=f"{ASSET_SCHEME}://{dw_conn_id}/{schema}.{table}", group="warehouse")


def postgres_namespace(connection: Any) -> tuple[str, str]:
    """OpenLineage namespace ``postgres://host:port`` and database of a PostgreSQL Airflow connection
    (never its login or password)."""
    host = connection.host or "localhost"
    port = connection.port or 5432
    return f"postgres://{host}:{port}", connection.schema or ""


def warehouse_location(connection: Any, schema: str, table: str) -> dict[str, str]:
    """Where a warehouse table is, for the asset event's extra: OpenLineage namespace/name and the
    URI Airflow's postgres provider uses (``postgres://host:port/db/schema/table``)."""
    namespace, database = postgres_namespace(connection)
    return {"namespace": namespace, "name": f"{database}.{schema}.{table}",
            "uri": f"{namespace}/{database}/{schema}/{table}"}


def _dataset(namespace: str, name: str, facets: dict[str, Any] | None = None) -> Any:
    from airflow.providers.common.compat.openlineage.facet import Dataset

    return Dataset(namespace=namespace, name=name, facets=facets or {})


def _schema_facet(columns: list[tuple[str, str]]) -> Any:
    from airflow.providers.common.compat.openlineage.facet import SchemaDatasetFacet, SchemaDatasetFacetFields

    return SchemaDatasetFacet(fields=[SchemaDatasetFacetFields(name=n, type=t) for n, t in columns])


def _output_statistics(rows: int | None, size: int | None = None) -> Any:
    from airflow.providers.common.compat.openlineage.facet import OutputStatisticsOutputDatasetFacet

    return OutputStatisticsOutputDatasetFacet(rowCount=rows, size=size)


def lake_dataset(lake_root: str, kind: str, source: str, table: str, partition: Any,
                 columns: list[dict[str, str]] | None = None) -> Any:
    """The lake partition folder as an OpenLineage dataset: namespace ``file`` and its absolute path, or
    on an object store the bucket's namespace (``s3://bucket``) and the partition's key."""
    facets = {"schema": _schema_facet([(c["name"], c["type"]) for c in columns])} if columns else {}
    if storage.is_url(lake_root):
        day = partition.isoformat() if hasattr(partition, "isoformat") else str(partition)
        bucket, _, key = storage.strip(storage.join(lake_root, kind, source, table, day)).partition("/")
        return _dataset(f"{storage.protocol_of(lake_root)}://{bucket}", key, facets)
    path = Path(lake_partition_dir(lake_root, kind, source, table, partition)).absolute()
    return _dataset(FILE_NAMESPACE, str(path), facets)


def lake_output(dataset: Any, rows: int | None, size: int | None) -> Any:
    """The lake partition as an output, with what the extract wrote."""
    from airflow.providers.common.compat.openlineage.facet import OutputDataset

    return OutputDataset(namespace=dataset.namespace, name=dataset.name, facets=dataset.facets,
                         outputFacets={"outputStatistics": _output_statistics(rows, size)})


def warehouse_output(connection: Any, schema: str, table: str, columns: dict[str, str] | None = None,
                     rows: int | None = None) -> Any:
    """The warehouse table, with its columns and the rows this load wrote when known."""
    from airflow.providers.common.compat.openlineage.facet import OutputDataset

    where = warehouse_location(connection, schema, table)
    facets = {"schema": _schema_facet(list(columns.items()))} if columns else {}
    output_facets = {"outputStatistics": _output_statistics(rows)} if rows is not None else {}
    return OutputDataset(namespace=where["namespace"], name=where["name"], facets=facets,
                         outputFacets=output_facets)


def sql_inputs(connection: Any, table: str | None, query: str | None) -> tuple[list[Any], dict[str, Any]]:
    """A SQL source's datasets (the table, or the tables the query reads) and, for a query, the SQL job facet."""
    if connection.conn_type in ("postgres", "postgresql"):
        namespace, database = postgres_namespace(connection)
        default_schema, dialect = "public", "postgres"
    else:  # sqlite and other DB-API sources: the connection's type and host (a file path for sqlite)
        host = connection.host or ""
        namespace = f"{connection.conn_type}://{host}:{connection.port}" if connection.port else \
            f"{connection.conn_type}://{host}"
        database, default_schema, dialect = "", "", "generic"
    names: list[str] = []
    job_facets: dict[str, Any] = {}
    if table:
        names = [table if "." in table or not default_schema else f"{default_schema}.{table}"]
    elif query:
        from airflow.providers.common.compat.openlineage.facet import SQLJobFacet
        from openlineage_sql import parse

        job_facets["sql"] = SQLJobFacet(query=query)
        try:
            parsed = parse([query], dialect=dialect, default_schema=default_schema or None)
        except Exception:  # lineage is best effort: an unparsable query still reports the job facet
            parsed = None
        for meta in getattr(parsed, "in_tables", None) or []:
            names.append(".".join(p for p in (meta.schema or default_schema, meta.name) if p))
    prefix = f"{database}." if database else ""
    return [_dataset(namespace, prefix + name) for name in names], job_facets


def http_input(connection: Any, endpoint: str) -> Any:
    """An HTTP resource: namespace ``scheme://host[:port]`` of its URL (no user info), name its path."""
    base = connection.host or ""
    if "://" not in base:
        base = f"{connection.schema or 'http'}://{base}"
    url = urlsplit(endpoint if "://" in endpoint else base.rstrip("/") + "/" + endpoint.lstrip("/"))
    authority = url.hostname or ""
    port = url.port or (connection.port if "://" not in endpoint else None)
    namespace = f"{url.scheme}://{authority}" + (f":{port}" if port else "")
    return _dataset(namespace, url.path or "/")


def file_input(base_path: str | None, path: str) -> Any:
    """A file source: namespace ``file``, the absolute path (or glob) it reads."""
    full = Path(path) if Path(path).is_absolute() or not base_path else Path(base_path) / path
    return _dataset(FILE_NAMESPACE, str(full.absolute()))


def operator_lineage(inputs: list[Any], outputs: list[Any], job_facets: dict[str, Any] | None = None) -> Any:
    from airflow.providers.openlineage.extractors import OperatorLineage

    return OperatorLineage(inputs=inputs, outputs=outputs, job_facets=job_facets or {})
