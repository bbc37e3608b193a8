"""Quality checks of a table (``checks:`` in a source config): what each check asks, validated.

The names are dbt's (``not_null``, ``unique``, ``accepted_values``, ``relationships``) so a user
meets what they know. The engine that runs them inside the load is ``sndw.quality``.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from sndw.naming import normalize_identifier

# Checks whose failing rows are single rows: the only ones that may move them aside (quarantine).
ROW_KINDS = ("not_null", "accepted_values", "range", "regex", "relationships")
KINDS = (*ROW_KINDS, "unique", "row_count", "row_count_change", "freshness", "source_count", "sql")
# What a `sql` check's query may name: the rows of this load, the whole table, the partition's date.
SQL_PLACEHOLDERS = ("table", "target", "partition_date")
_PLACEHOLDER = re.compile(r"\{\{\s*([^}]*?)\s*\}\}")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}

Scalar = str | int | float | bool
Column = Annotated[str, Field(pattern=r"\S", description="A column of the warehouse table.")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AcceptedValues(_Model):
    column: Column
    values: list[Scalar] = Field(min_length=1, description="The only values the column may hold (NULL passes).")


class RangeCheck(_Model):
    column: Column
    min: Scalar | None = Field(default=None, description="Smallest value allowed (inclusive).")
    max: Scalar | None = Field(default=None, description="Largest value allowed (inclusive).")

    @model_validator(mode="after")
    def _bounds(self) -> RangeCheck:
        if self.min is None and self.max is None:
            raise ValueError("range needs min, max or both")
        if (isinstance(self.min, (int, float)) and isinstance(self.max, (int, float))
                and not isinstance(self.min, bool) and self.min > self.max):
            raise ValueError(f"range: min {self.min} is above max {self.max}")
        return self


class RegexCheck(_Model):
    column: Column
    pattern: str = Field(description="A PostgreSQL regular expression every non-NULL value must match (~).")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str) -> str:
        # Python's syntax is close to PostgreSQL's advanced regular expressions: what Python refuses
        # PostgreSQL refuses too (an unbalanced bracket, a bad repetition); the rest fails at load time.
        try:
            re.compile(value)
        except re.error as exc:
            raise ValueError(f"pattern {value!r} is not a valid regular expression: {exc}") from None
        return value


class Relationship(_Model):
    column: Column
    to: str = Field(description="schema.table.column (or table.column in the source's schema) it must exist in.")

    @field_validator("to")
    @classmethod
    def _to(cls, value: str) -> str:
        parts = value.split(".")
        if len(parts) not in (2, 3) or not all(p.strip() for p in parts):
            raise ValueError(f"to: {value!r} must be schema.table.column or table.column")
        return value

    def target(self, default_schema: str) -> tuple[str, str, str]:
        parts = [normalize_identifier(p) for p in self.to.split(".")]
        return (default_schema, *parts) if len(parts) == 2 else (parts[0], parts[1], parts[2])  # type: ignore[return-value]


class RowCount(_Model):
    min: int | None = Field(default=None, ge=0)
    max: int | None = Field(default=None, ge=0)

    @model_validator(mode="after")
    def _bounds(self) -> RowCount:
        if self.min is None and self.max is None:
            raise ValueError("row_count needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"row_count: min {self.min} is above max {self.max}")
        return self


class RowCountChange(_Model):
    max_drop_pct: float | None = Field(default=None, ge=0, le=100, description="Largest fall allowed, in percent.")
    max_growth_pct: float | None = Field(default=None, ge=0, description="Largest rise allowed, in percent.")
    compare_to: Literal["previous", "same_weekday"] = Field(default="previous", description=(
        "The previous successful load of the table, or the load of the partition seven days before."))

    @model_validator(mode="after")
    def _bounds(self) -> RowCountChange:
        if self.max_drop_pct is None and self.max_growth_pct is None:
            raise ValueError("row_count_change needs max_drop_pct, max_growth_pct or both")
        return self


class Freshness(_Model):
    column: Column
    max_age: str | int | float = Field(description="Seconds, or a number with s, m, h, d or w (36h, 2d).")

    @field_validator("max_age")
    @classmethod
    def _age(cls, value: str | int | float) -> str | int | float:
        duration_seconds(value)
        return value

    @property
    def seconds(self) -> float:
        return duration_seconds(self.max_age)


def duration_seconds(value: str | int | float, what: str = "max_age") -> float:
    """Seconds of a duration written as seconds or a number with s, m, h, d or w (``36h``)."""
    if isinstance(value, bool):
        raise ValueError(f"{what}: {value!r} is not a duration")
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"{what} must be above 0")
        return float(value)
    match = _DURATION.match(value)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{what}: {value!r} is not a duration: use seconds or a number with s, m, h, d or w (36h)")
    return float(match.group(1)) * _SECONDS[match.group(2)]


class Check(_Model):
    """One check: exactly one kind key, with an optional ``name``, ``severity`` and ``on_fail``."""

    name: str | None = Field(default=None, description="How results and errors call it; default: kind(columns).")
    severity: Literal["block", "warn"] = Field(default="block", description=(
        "block: a failure rolls the load back and fails the task; warn: the load commits, the failure is recorded."))
    on_fail: Literal["quarantine"] | None = Field(default=None, description=(
        "quarantine (row-level checks): load the passing rows, move the failing ones to <schema>._rejected_<table>."))
    not_null: list[str] | None = Field(default=None, min_length=1)
    unique: list[str] | None = Field(default=None, min_length=1)
    accepted_values: AcceptedValues | None = None
    range: RangeCheck | None = None
    regex: RegexCheck | None = None
    relationships: Relationship | None = None
    row_count: RowCount | None = None
    row_count_change: RowCountChange | None = None
    freshness: Freshness | None = None
    source_count: Literal[True] | None = Field(default=None, description=(
        "true: the source's own count of the partition's rows (sql: count(*) of the table's query, "
        "counted at extract time; file: the rows read) equals the rows this load wrote. Not for http sources."))
    sql: str | None = Field(default=None, description=(
        "A query returning the failing rows; {{ table }} is this load's rows, {{ target }} the whole "
        "table, {{ partition_date }} the partition's date."))

    @field_validator("not_null", "unique")
    @classmethod
    def _columns(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if any(not c.strip() for c in value):
                raise ValueError("a column name must not be empty")
            if len(set(value)) != len(value):
                raise ValueError("a column is listed twice")
        return value

    @field_validator("sql")
    @classmethod
    def _sql(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("sql: the query is empty")
        unknown = sorted({m.group(1) for m in _PLACEHOLDER.finditer(value)} - set(SQL_PLACEHOLDERS))
        if unknown:
            raise ValueError(f"sql: unknown placeholder {{{{ {unknown[0]} }}}}: use "
                             + ", ".join(f"{{{{ {p} }}}}" for p in SQL_PLACEHOLDERS))
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> Check:
        kinds = [k for k in KINDS if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError(f"a check has exactly one kind of {', '.join(KINDS)}; got "
                             + (", ".join(kinds) if kinds else "none"))
        if self.on_fail == "quarantine" and kinds[0] not in ROW_KINDS:
            raise ValueError(f"on_fail: quarantine moves single failing rows aside: only {', '.join(ROW_KINDS)} "
                             f"checks may set it, not {kinds[0]}")
        if self.name is not None and not self.name.strip():
            raise ValueError("name must not be empty")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in KINDS if getattr(self, k) is not None)

    @property
    def columns(self) -> list[str]:
        """The warehouse columns the check reads (normalised as the load names them)."""
        spec = getattr(self, self.kind)
        if isinstance(spec, list):
            return [normalize_identifier(c) for c in spec]
        column = getattr(spec, "column", None)
        return [normalize_identifier(column)] if column else []

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        columns = self.columns
        return f"{self.kind}({', '.join(columns)})" if columns else self.kind


def validate_checks(checks: list[Check], primary_key: list[str], write_mode: str) -> list[Check]:
    """The rules between the checks of one table: names differ (results are kept per name)."""
    labels = [c.label for c in checks]
    repeated = sorted({n for n in labels if labels.count(n) > 1})
    if repeated:
        raise ValueError(f"two checks are called {repeated[0]!r}: give one a name")
    if write_mode == "merge" and any(c.on_fail == "quarantine" for c in checks):
        # The merge has already replaced the key's old row when the new one fails: moving the new
        # one aside would lose both.
        raise ValueError("on_fail: quarantine is not available on write_mode 'merge' (the row it replaced "
                         "would be lost); use severity: block or warn")
    return checks


_SELECT_LIST = re.compile(r"^\s*select\s+(?:distinct\s+)?(?P<items>.*?)\s+from\s", re.IGNORECASE | re.DOTALL)
_ITEM = re.compile(r'^(?:(?P<expr>.+?)\s+as\s+)?(?P<name>"[^"]+"|[A-Za-z_][\w$]*)$', re.IGNORECASE | re.DOTALL)
_PLAIN = re.compile(r'^(?:(?:"[^"]+"|[A-Za-z_][\w$]*)\.)*(?P<name>"[^"]+"|[A-Za-z_][\w$]*)$')


def select_columns(query: str | None) -> list[str] | None:
    """The columns a plain ``SELECT a, b AS c FROM ...`` returns (normalised), or None when they
    cannot be told from the text (``*``, expressions without a name, subqueries in the list)."""
    match = _SELECT_LIST.match(query or "")
    if not match or "(" in match.group("items") or "*" in match.group("items"):
        return None
    names = []
    for item in match.group("items").split(","):
        item = item.strip()
        named = _ITEM.match(item)
        plain = _PLAIN.match(item)
        if named and named.group("expr"):
            name = named.group("name")
        elif plain:
            name = plain.group("name")
        else:
            return None
        names.append(normalize_identifier(name.strip('"')))
    return names


def check_known_columns(checks: list[Check], columns: list[str] | None, what: str) -> None:
    """Checks that name a column the table will not have, when its columns are known in advance."""
    if columns is None:
        return
    for check in checks:
        missing = [c for c in check.columns if c not in columns]
        if missing:
            raise ValueError(f"check {check.label!r} names column {missing[0]!r}, which {what} does not return "
                             f"(it returns {', '.join(columns)})")
