"""What a load's quality checks can learn from its rows while they are copied, so that a check the
rows pass need not read them back from the table.

The load hands every batch it encodes to ``RowStats.observe`` (``sndw.warehouse.copy``): the values
as the binary COPY writes them, so exactly what the table holds. From them the check engine
(``sndw.quality``) can prove that a check *passes*:

- ``not_null``: no NULL in any of its columns, in any batch of any file;
- ``range``: the smallest and largest value, compared with the bounds by PostgreSQL itself (its
  casts and ordering), and no NaN (which PostgreSQL orders above every number);
- ``accepted_values``, ``regex``: the distinct values (integers or text, up to ``MAX_DISTINCT``),
  each put to the check's own condition by PostgreSQL (text under a deterministic collation, and
  for ``regex`` the database's default one: a pattern's classes follow the collation);
- ``unique``: the keys of the load are all distinct and the table holds no other rows where the
  check looks (see ``alone``), on key types whose equality is byte equality in both Arrow and
  PostgreSQL (integers, decimals, dates, timestamps, text under a deterministic collation).

A proof only ever says "passes". Anything it cannot vouch for (a column staged as text and cast
by the server, a file without the column, NaN, a float key, text with NUL bytes replaced, more
keys than ``MAX_KEY_BYTES``) leaves the check to its SQL, which also counts and samples the
failing rows of a check that fails. The rows a check looks at are always among the rows copied
(quarantine and deletes only remove rows; a merge writes a subset of its files' rows), so a check
all the copied rows pass, they pass too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc

if TYPE_CHECKING:
    from sndw.checks_config import Check
    from sndw.typeplan import ColumnPlan

# The distinct values a load keeps per column for ``accepted_values`` and ``regex`` proofs (a status,
# a country code); a column with more is left to the check's SQL.
MAX_DISTINCT = 1000

# The keys a load keeps for ``unique`` proofs: beyond this the check reads them from the table
# instead (1M bigint keys are 8 MiB; the load's peak memory stays flat with the rows).
MAX_KEY_BYTES = 64 << 20


def _range_type(t: pa.DataType) -> bool:
    """Arrow types whose order is PostgreSQL's order of the column's values."""
    return (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
            or pa.types.is_date(t) or pa.types.is_timestamp(t))


def _key_type(t: pa.DataType) -> bool:
    """Arrow types whose equality is PostgreSQL's equality of the column's values (not floats:
    PostgreSQL holds -0 = 0 and NaN = NaN)."""
    return (pa.types.is_integer(t) or pa.types.is_decimal(t) or pa.types.is_date(t)
            or pa.types.is_timestamp(t) or pa.types.is_string(t) or pa.types.is_large_string(t))


@dataclass
class _Column:
    nulls: int = 0
    low: Any = None
    high: Any = None
    nan: bool = False
    arrow_type: pa.DataType | None = None
    unknown: bool = False  # a batch or file without it natively: nothing can be proved of it
    values: set[Any] | None = None  # its distinct non-NULL values (accepted_values, regex); None: too many


@dataclass
class RowStats:
    """The counts a load gathers for its checks; ``alone``: set by the load when the rows where a
    ``unique`` check looks are only the rows it copied (a replace, a partition, or an append or
    merge into an empty table)."""

    checks: Sequence[Check]
    alone: bool = False
    rows: int = 0
    nul_replaced: int = 0
    columns: dict[str, _Column] = field(default_factory=dict)
    keys: dict[tuple[str, ...], list[pa.Table]] = field(default_factory=dict)
    key_bytes: int = 0
    keys_dropped: bool = False
    # A one-column key whose values rise strictly through every batch (an extract in key order, the
    # usual case) is distinct without keeping or hashing it; its last value so far.
    rising: dict[tuple[str, ...], bool] = field(default_factory=dict)
    last: dict[tuple[str, ...], Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for check in self.checks:
            if check.kind in ("not_null", "range", "unique", "accepted_values", "regex"):
                for name in check.columns:
                    self.columns.setdefault(name, _Column())
            if check.kind == "unique" and check.columns:
                self.keys.setdefault(tuple(check.columns), [])
                self.rising[tuple(check.columns)] = len(check.columns) == 1
        self._ranged = {c.columns[0] for c in self.checks if c.kind == "range" and c.columns}
        self._listed = {c.columns[0] for c in self.checks if c.kind in ("accepted_values", "regex") and c.columns}
        for name in self._listed:
            self.columns[name].values = set()

    @property
    def wanted(self) -> bool:
        return bool(self.columns)

    def observe(self, batch: pa.RecordBatch, plans: Sequence[ColumnPlan]) -> None:
        """One batch as the load encodes it (before the encoder's own casts)."""
        native = {p.name: p for p in plans if p.output == "native"}
        values: dict[str, pa.Array] = {}
        for name, stats in self.columns.items():
            plan = native.get(name)
            if plan is None or name not in batch.schema.names:
                stats.unknown = True
                continue
            column = batch.column(name)
            try:
                if column.type != plan.arrow_type:
                    column = column.cast(plan.arrow_type)  # as the encoder casts it
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                stats.unknown = True
                continue
            values[name] = column
            stats.arrow_type = plan.arrow_type
            stats.nulls += column.null_count
            if name in self._ranged and not stats.unknown:
                self._extend_range(stats, column)
            if name in self._listed and stats.values is not None and not stats.unknown:
                self._collect(stats, column)
        for key in self.keys:
            if not all(k in values for k in key):
                continue
            if self.rising[key]:
                self._still_rising(key, values[key[0]])
            if self.keys_dropped:
                continue
            part = pa.table([values[k] for k in key], names=list(key))
            self.key_bytes += part.nbytes
            if self.key_bytes > MAX_KEY_BYTES:
                self.keys_dropped = True
                self.keys = {k: [] for k in self.keys}
                continue
            self.keys[key].append(part)
        self.rows += batch.num_rows

    def _still_rising(self, key: tuple[str, ...], column: pa.Array) -> None:
        if column.null_count:
            column = column.drop_null()
        if not len(column):
            return
        try:
            rising = pc.all(pc.greater(column.slice(1), column.slice(0, len(column) - 1))).as_py() is not False
            if rising and key in self.last:
                rising = pc.greater(column[0], self.last[key]).as_py() is True
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            rising = False
        self.rising[key] = rising
        self.last[key] = column[len(column) - 1]

    @staticmethod
    def _collect(stats: _Column, column: pa.Array) -> None:
        if not (pa.types.is_integer(column.type) or pa.types.is_string(column.type)
                or pa.types.is_large_string(column.type)):
            stats.values = None
            return
        assert stats.values is not None
        stats.values.update(pc.unique(column.drop_null() if column.null_count else column).to_pylist())
        if len(stats.values) > MAX_DISTINCT:
            stats.values = None

    @staticmethod
    def _extend_range(stats: _Column, column: pa.Array) -> None:
        if not _range_type(column.type):
            stats.unknown = True
            return
        if pa.types.is_floating(column.type) and pc.any(pc.is_nan(column)).as_py():
            stats.nan = True
        try:
            bounds = pc.min_max(column)
            low, high = bounds["min"].as_py(), bounds["max"].as_py()
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError, OverflowError):
            stats.unknown = True  # e.g. a timestamp Python cannot hold
            return
        if low is not None:
            stats.low = low if stats.low is None else min(stats.low, low)
            stats.high = high if stats.high is None else max(stats.high, high)

    # -------------------------------------------------------------------------- what it proves

    def no_nulls(self, columns: Sequence[str]) -> bool:
        return all(c in self.columns and not self.columns[c].unknown and self.columns[c].nulls == 0
                   for c in columns)

    def extremes(self, column: str) -> tuple[Any, Any] | None:
        """The smallest and largest value of ``column`` (both None: no value), or None when they
        cannot stand for every value (unknown, NaN)."""
        stats = self.columns.get(column)
        if stats is None or stats.unknown or stats.nan or column not in self._ranged:
            return None
        return stats.low, stats.high

    def values(self, column: str) -> tuple[list[Any], pa.DataType | None] | None:
        """The distinct non-NULL values of ``column`` and their Arrow type, or None when they are not
        all known (unknown, more than MAX_DISTINCT, a type other than integers and text, text whose
        NUL bytes the load replaced)."""
        stats = self.columns.get(column)
        if stats is None or stats.unknown or stats.values is None:
            return None
        t = stats.arrow_type
        if t is not None and not pa.types.is_integer(t) and self.nul_replaced:
            return None
        return sorted(stats.values), t

    def distinct(self, key: Sequence[str], text_columns: Sequence[str]) -> bool:
        """Whether every row's ``key`` (rows with a NULL in it left out, as ``unique`` does) differs
        from every other's. ``text_columns``: the key's columns whose warehouse type compares
        bytes (text or varchar under a deterministic collation); other string columns prove nothing."""
        parts = self.keys.get(tuple(key))
        if parts is None or not self.alone:
            return False
        for name in key:
            stats = self.columns[name]
            if stats.unknown:
                return False
            t = stats.arrow_type
            if t is None:  # no batch at all: no rows
                continue
            if not _key_type(t):
                return False
            if (pa.types.is_string(t) or pa.types.is_large_string(t)) and (
                    name not in text_columns or self.nul_replaced):
                return False
        if self.rising.get(tuple(key)):
            return True  # every key greater than the one before: none repeats
        if self.keys_dropped:
            return False
        if not parts:
            return True  # no rows
        import polars as pl  # its hash of a million keys takes 0.03 s, pyarrow's count_distinct 0.25 s

        try:
            frame = pl.from_arrow(pa.concat_tables(parts))
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # files typed apart (decimal(10,2), decimal(12,2)): the SQL decides
            return False
        assert isinstance(frame, pl.DataFrame)
        frame = frame.drop_nulls()
        return frame.n_unique() == frame.height
