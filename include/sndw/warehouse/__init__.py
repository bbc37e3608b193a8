"""Loading lake partitions into PostgreSQL, one concern a module:

- ``spec``: what a load is asked to do and what it did (``LoadSpec``, ``LoadResult``);
- ``tables``: table DDL and evolution (``table_columns``, ``evolve_table``, the column limit);
- ``encode``: lake batches encoded for binary COPY (``BatchEncoder``);
- ``copy``: one lake file COPYed into a table (``copy_file``);
- ``lineage``: ``etl_lake_files``, the lake file of every loaded row;
- ``modes``: the write modes (append, replace, partition, merge);
- ``load``: one load in one transaction (``load_files``, ``load_manifest``).

Type planning (which warehouse type a lake column gets) lives below, in ``sndw.typeplan``.
"""

from sndw.typeplan import pg_type_for, plan_column, warehouse_type
from sndw.warehouse.copy import copy_file
from sndw.warehouse.lineage import ensure_lake_files_table, file_constants, lake_files_table, register_file
from sndw.warehouse.load import before_commit, load_files, load_manifest
from sndw.warehouse.spec import LoadResult, LoadSpec
from sndw.warehouse.tables import column_limit_error, evolve_table, table_columns

__all__ = [
    "LoadResult", "LoadSpec", "before_commit", "column_limit_error", "copy_file", "ensure_lake_files_table",
    "evolve_table", "file_constants", "lake_files_table", "load_files", "load_manifest", "pg_type_for",
    "plan_column", "register_file", "table_columns", "warehouse_type",
]
