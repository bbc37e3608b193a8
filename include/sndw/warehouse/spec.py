"""What a load is asked to do (``LoadSpec``) and what it did (``LoadResult``)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql

from sndw.checks_config import Check
from sndw.checkstats import RowStats
from sndw.naming import qualified
from sndw.transform import BatchTransform


@dataclass
class LoadSpec:
    schema: str
    table: str
    write_mode: str = "replace"
    primary_key: Sequence[str] = ()
    # replace/partition: an extract of 0 rows that would empty a table (or a date) holding rows is
    # refused unless set; into an empty table or date it loads 0 rows.
    allow_empty: bool = False
    # A table's ``transform`` (``package.module:function``), resolved by load_files; see sndw.transform.
    transform: str | BatchTransform | None = None
    # Quality checks (``sndw.checks_config.Check``) run on this load's rows before it commits: sndw.quality.
    checks: Sequence[Check] = ()
    # Rows whose key the source no longer has: "hard" (deleted) or "soft" (_deleted_at); sndw.warehouse.deletes.
    deletes: str | None = None
    max_delete_fraction: float = 0.5
    # evolve, freeze or discard_columns: sndw.warehouse.contract.
    schema_contract: str = "evolve"
    # Columns of the data the load leaves out (discard_columns), set by load_files.
    drop_columns: frozenset[str] = frozenset()

    @property
    def qualified(self) -> str:
        return qualified(self.schema, self.table)

    def ident(self, table: str | None = None) -> sql.Composed:
        return sql.SQL(".").join([sql.Identifier(self.schema), sql.Identifier(table or self.table)])


@dataclass
class LoadResult:
    table: str
    write_mode: str
    rows_loaded: int
    files: int
    schema_changes: list[dict[str, Any]] = field(default_factory=list)
    nul_replaced: int = 0
    seconds: float = 0.0
    skipped: bool = False
    # The quality checks' results (sndw.quality.summary) and the rows they moved to _rejected_<table>.
    checks: dict[str, Any] | None = None
    rows_rejected: int = 0
    checks_seconds: float = 0.0  # the checks' part of ``seconds``
    # Rows removed or marked deleted because the source no longer has their key (None: no deletes).
    rows_deleted: int | None = None
    # The ``_file_id`` of each file this load wrote: its rows in the table, for the checks.
    file_ids: list[int] = field(default_factory=list, repr=False)
    # What the checks learn from the rows as they are copied (set by load_files when it has checks).
    observed: RowStats | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "table": self.table, "write_mode": self.write_mode, "rows_loaded": self.rows_loaded,
            "files": self.files, "schema_changes": self.schema_changes, "nul_replaced": self.nul_replaced,
            "seconds": round(self.seconds, 3), "skipped": self.skipped,
        }
        if self.checks is not None:
            out.update(checks=self.checks, rows_rejected=self.rows_rejected, checks_seconds=round(self.checks_seconds, 3))
        if self.rows_deleted is not None:
            out["rows_deleted"] = self.rows_deleted
        return out


