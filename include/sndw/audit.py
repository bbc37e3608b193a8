"""etl_audit_log: one row per task attempt, written in the load's own transaction when there is one."""

from __future__ import annotations

import base64
import html
import html.entities
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, quote_plus

if TYPE_CHECKING:  # psycopg is imported by the functions that talk to the database: the DAG
    import psycopg  # processor imports this module for every parse and never does
    from psycopg import sql

log = logging.getLogger(__name__)

AUDIT_TABLE = "etl_audit_log"
MAX_ERROR_CHARS = 4000

# The seed's columns come first, exactly as it had them, so its example queries work unchanged.
AUDIT_DDL = """
CREATE TABLE IF NOT EXISTS {table} (
    id             BIGSERIAL PRIMARY KEY,
    run_id         TEXT NOT NULL,
    pipeline_name  TEXT NOT NULL,
    source_name    TEXT NOT NULL,
    protocol       TEXT NOT NULL,
    target_table   TEXT NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('success', 'failure')),
    rows_loaded    BIGINT,
    parquet_files  INTEGER,
    error_message  TEXT,
    started_at     TIMESTAMP WITH TIME ZONE NOT NULL,
    finished_at    TIMESTAMP WITH TIME ZONE,
    dag_id         TEXT,
    task_id        TEXT,
    airflow_run_id TEXT,
    try_number     INTEGER,
    step           TEXT,
    partition_date DATE,
    rows_extracted BIGINT,
    bytes          BIGINT,
    lake_paths     JSONB,
    schema_changes JSONB,
    attempt_key    TEXT UNIQUE,
    manifest_id    TEXT,
    rows_rejected  BIGINT,
    rows_deleted   BIGINT
)
"""

# What the health API and the gaps report read: per table and date partition, the latest outcome.
STATUS_VIEW = "etl_partition_status"
STATUS_VIEW_SQL = """
CREATE VIEW {view} AS
SELECT pipeline_name, target_table, partition_date,
       count(*) AS attempts,
       count(*) FILTER (WHERE status = 'failure') AS failures,
       bool_or(status = 'success') AS loaded,
       (array_agg(status ORDER BY id DESC))[1] AS last_status,
       max(finished_at) AS last_attempt_at,
       (array_agg(rows_extracted ORDER BY id DESC) FILTER (WHERE status = 'success'))[1] AS rows_extracted,
       (array_agg(rows_loaded ORDER BY id DESC) FILTER (WHERE status = 'success'))[1] AS rows_loaded,
       (array_agg(error_message ORDER BY id DESC) FILTER (WHERE status = 'failure'))[1] AS last_error
FROM {table}
WHERE step IN ('load', 'replay') AND partition_date IS NOT NULL
GROUP BY pipeline_name, target_table, partition_date
"""

# What the ETL page reads (sndw.stats.overview): a table's latest loads, its latest failure, and its
# attempts by partition date, each found through an index instead of a scan of the whole log.
AUDIT_INDEXES = {
    "etl_audit_log_table_latest": "(pipeline_name, target_table, id)",
    "etl_audit_log_table_failures": "(pipeline_name, target_table, id) WHERE status = 'failure'",
    "etl_audit_log_table_dates": "(pipeline_name, target_table, partition_date)",
}

_SECRET_PATTERNS = [
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}"), r"\1 ***"),
    # scheme://user:password@host -> scheme://user:***@host
    (re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s]+@"), r"\1***@"),
    # password=..., token: ..., api_key="..."; not a reference to an environment variable
    # (``password: ${PW} is not set``, braces only): its name is no secret, and the message needs it
    (re.compile(r"(?i)\b(password|passwd|pwd|secret|token|api[_-]?key|apikey|authorization)(\s*[=:]\s*)"
                r"(?!\$\{[A-Za-z_][A-Za-z0-9_]*\}(?:[\s&,;\"']|$))(\"[^\"]*\"|'[^']*'|[^\s&,;\"]+)"),
     r"\1\2***"),
]


# ------------------------------------------------------------------ the registry of secret values

# Shorter values would mask ordinary words; Airflow's own masker skips them too (below 5 characters).
MIN_SECRET_CHARS = 5
MIN_BASE64_CORE_CHARS = 8


def _pct_lower(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


def _json_inner(text: str, ensure_ascii: bool = True) -> str:
    return json.dumps(text, ensure_ascii=ensure_ascii)[1:-1]


def _json_u(char: str, upper: bool = False) -> str:
    """``char`` as JSON's ``\\uXXXX`` escape (two of them, a surrogate pair, beyond the BMP)."""
    units = char.encode("utf-16-be")
    escaped = "".join(f"\\u{int.from_bytes(units[i:i + 2], 'big'):04x}" for i in range(0, len(units), 2))
    return escaped.upper().replace("\\U", "\\u") if upper else escaped


def _plain(char: str) -> bool:
    return char.isascii() and char.isalnum()


# How a server (or our own messages) may echo a value: URL-encoded (quote, quote_plus, lower-case
# hex), JSON string escapes (ASCII-only, UTF-8, PHP's "\/", Go's "\u003c"), HTML, Python repr.
# These are applied twice (a URL-encoded key inside a JSON body); the regular expression of
# ``_escapes_pattern`` covers any mixture of them per character. The literal forms are what
# Airflow's log masker (literal strings only) receives.
_ENCODERS: tuple[Callable[[str], str], ...] = (
    lambda v: quote(v, safe=""),
    lambda v: quote(v),
    quote_plus,
    lambda v: _pct_lower(quote(v, safe="")),
    lambda v: _pct_lower(quote_plus(v)),
    _json_inner,
    lambda v: _json_inner(v, ensure_ascii=False),
    lambda v: _json_inner(v).replace("/", "\\/"),
    lambda v: _json_inner(v).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"),
    lambda v: html.escape(v, quote=True),
    lambda v: html.escape(v, quote=False),
    lambda v: repr(v)[1:-1],
)
# Applied once, for Airflow's masker: the whole-value escapes other encoders write (.NET's
# System.Text.Json escapes HTML-sensitive characters, "+" and non-ASCII with upper-case hex; every
# character escaped; HTML numeric entities). ``redact`` needs none of them: its pattern covers them.
_ESCAPE_ENCODERS: tuple[Callable[[str], str], ...] = (
    lambda v: "".join(_json_u(c, True) if c in "+&<>'\"`" or not c.isascii() else _json_inner(c) for c in v),
    lambda v: "".join(_json_u(c) for c in v),
    lambda v: "".join(_json_u(c, True) for c in v),
    lambda v: "".join(c if _plain(c) else f"&#{ord(c)};" for c in v),
    lambda v: "".join(c if _plain(c) else f"&#x{ord(c):X};" for c in v),
    lambda v: "".join(c if _plain(c) else f"&#x{ord(c):x};" for c in v),
)

# JSON's and Python's two-character escapes, and the HTML entities with a name.
_SHORT_ESCAPES = {"\b": "b", "\f": "f", "\n": "n", "\r": "r", "\t": "t", "\v": "v", "\0": "0"}
_NAMED_ENTITIES = {"'": ["apos"]}


def _hex_pattern(number: int, digits: int) -> str:
    """``number`` in hexadecimal, either case: 0x2b -> "2[bB]"."""
    return "".join(f"[{d.lower()}{d.upper()}]" if d.isalpha() else d for d in f"{number:0{digits}x}")


def _char_pattern(char: str) -> str:
    """Every way an encoder may write one character: as itself, a JSON or Python escape (``\\u002B``,
    ``\\u002b``, ``\\/``, with the backslash doubled by a repr), an HTML entity (``&#43;``, ``&#x2B;``,
    ``&amp;``, the ";" optional as browsers read it), URL-encoded (``%2B``, ``%2b``, "+" for a space)."""
    point = ord(char)
    backslash = r"\\+"
    options = [re.escape(char)]
    units = char.encode("utf-16-be")
    options.append("".join(backslash + "u" + _hex_pattern(int.from_bytes(units[i:i + 2], "big"), 4)
                           for i in range(0, len(units), 2)))
    if point < 0x100:
        options.append(backslash + "x" + _hex_pattern(point, 2))
    elif point > 0xFFFF:
        options.append(backslash + "U" + _hex_pattern(point, 8))
    if char in "\"'/\\":
        options.append(backslash + re.escape(char))
    if char in _SHORT_ESCAPES:
        options.append(backslash + _SHORT_ESCAPES[char])
    options.append(f"&#0*{point};?")
    options.append("&#[xX]0*" + _hex_pattern(point, 1).lstrip("0") + ";?" if point else "&#[xX]0+;?")
    names = _NAMED_ENTITIES.get(char, []) + ([html.entities.codepoint2name[point]] if point in
                                              html.entities.codepoint2name else [])
    options.extend(f"&{name};" for name in names)
    options.append("".join("%" + _hex_pattern(byte, 2) for byte in char.encode()))
    if char == " ":
        options.append(r"\+")
    return "(?:" + "|".join(options) + ")"


def _escapes_pattern(value: str) -> str:
    """A regular expression for ``value`` with any subset of its characters escaped, each in any of
    the ways of ``_char_pattern``: a .NET, Go or hand-written echo is not one fixed form."""
    return "".join(_char_pattern(c) for c in value)


def _base64_forms(value: str) -> set[str]:
    """Base64 of the value alone, and the part of it that stays the same inside the base64 of any
    longer text (``login:password`` of Basic auth, a JSON document): the value's bytes at each of
    the three alignments, without the boundary characters that depend on their neighbours."""
    raw = value.encode()
    forms = {base64.b64encode(raw).decode(), base64.b64encode(raw).decode().rstrip("=")}
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + raw).decode()
        core = encoded[-(-8 * shift // 6):(8 * (shift + len(raw))) // 6]
        if len(core) >= MIN_BASE64_CORE_CHARS:
            forms.add(core)
    return forms | {f.replace("+", "-").replace("/", "_") for f in forms}


def secret_variants(value: str) -> set[str]:
    """Every form of ``value`` that must never be shown: the value, its encodings and, once more,
    the encodings of those (a URL-encoded key inside a JSON error body, base64 sent URL-encoded,
    the base64 of a JSON document holding the key)."""
    first = {value} | {encode(value) for encode in _ENCODERS}
    forms = set(first)
    for form in first:
        forms.update(encode(form) for encode in _ENCODERS)
        forms.update(_base64_forms(form))
    for form in _base64_forms(value):
        forms.update(encode(form) for encode in _ENCODERS)
    forms.update(encode(value) for encode in _ESCAPE_ENCODERS)
    return {f for f in forms if len(f) >= MIN_SECRET_CHARS}


def secret_patterns(value: str) -> set[str]:
    """The regular expressions of ``_escapes_pattern`` for ``value`` and for the encodings of it whose
    own characters may be escaped once more (a URL-encoded key whose "%" a JSON encoder wrote as
    ``\\u0025``, a JSON escape URL-encoded, an entity's "&" escaped): the other encodings are per
    character, which the pattern of ``value`` covers."""
    bases = {value, quote(value, safe=""), _json_inner(value), html.escape(value, quote=True)}
    return {_escapes_pattern(form) for form in bases}


_secrets_lock = threading.Lock()
_secret_forms: set[str] = set()
_secret_pattern: re.Pattern[str] | None = None
# Per secret, longest secret first: compiled once, not again with every secret registered after it;
# replaced whole (never changed in place) so that ``redact`` needs no lock.
_escape_patterns: tuple[tuple[str, re.Pattern[str]], ...] = ()
_secret_listeners: list[Callable[[list[str]], None]] = []


def register_secret(value: str | None, *, login: str | None = None) -> list[str]:
    """Remember a credential so ``redact`` replaces it in every encoding; returns the new forms.

    With ``login``, the Basic auth token of ``login:value`` is registered as well. Listeners (the
    Airflow layer's log masker) receive the new forms.
    """
    global _secret_pattern, _escape_patterns
    if not value or len(value) < MIN_SECRET_CHARS:
        return []
    forms = secret_variants(value)
    if login:
        token = base64.b64encode(f"{login}:{value}".encode()).decode()
        forms |= {token, quote(token, safe=""), quote_plus(token)}
    with _secrets_lock:
        if value not in dict(_escape_patterns):
            escapes = re.compile("|".join(sorted(secret_patterns(value), key=len, reverse=True)))
            _escape_patterns = tuple(sorted([*_escape_patterns, (value, escapes)], key=lambda p: -len(p[0])))
        new = sorted(forms - _secret_forms, key=len, reverse=True)
        if not new:
            return []
        _secret_forms.update(new)
        # Longest first: a form that contains a shorter one is replaced whole.
        ordered = sorted(_secret_forms, key=len, reverse=True)
        _secret_pattern = re.compile("|".join(re.escape(f) for f in ordered))
        listeners = list(_secret_listeners)
    for listener in listeners:
        listener(new)
    return new


def add_secret_listener(listener: Callable[[list[str]], None]) -> None:
    """Call ``listener`` with the forms of every secret registered, those already known included."""
    with _secrets_lock:
        if listener in _secret_listeners:
            return
        _secret_listeners.append(listener)
        known = sorted(_secret_forms, key=len, reverse=True)
    if known:
        listener(known)


def registered_secrets() -> Iterable[str]:
    with _secrets_lock:
        return sorted(_secret_forms, key=len, reverse=True)


def redact(text: str) -> str:
    """Remove credentials from a message before it reaches a log or an audit row: every registered
    secret in every encoding, then whatever looks like one (``password=...``, userinfo in URLs)."""
    known = _secret_pattern
    if known is not None:
        text = known.sub("***", text)
    # then the mixtures of escapes that no literal form spells out
    for _, escapes in _escape_patterns:
        text = escapes.sub("***", text)
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def error_text(exc: BaseException | str | None) -> str | None:
    if exc is None:
        return None
    text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    text = redact(text)
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


@dataclass
class AuditRecord:
    pipeline_name: str
    source_name: str
    protocol: str
    target_table: str
    status: str
    started_at: datetime
    finished_at: datetime | None = None
    rows_loaded: int | None = None
    parquet_files: int | None = None
    error_message: str | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    dag_id: str | None = None
    task_id: str | None = None
    airflow_run_id: str | None = None
    try_number: int | None = None
    step: str | None = None
    partition_date: date | None = None
    rows_extracted: int | None = None
    bytes: int | None = None
    lake_paths: list[str] | None = None
    schema_changes: list[dict[str, Any]] | None = None
    manifest_id: str | None = None
    # Rows that quality checks with on_fail: quarantine moved to _rejected_<table> (None: no checks).
    rows_rejected: int | None = None
    # Rows a table's deletes removed or marked because the source no longer has their key (None: no deletes).
    rows_deleted: int | None = None
    # The key of an attempt outside Airflow (a CLI run): what makes its row idempotent too.
    attempt_id: str | None = None

    @property
    def attempt_key(self) -> str | None:
        if self.attempt_id:
            return self.attempt_id
        if self.dag_id is None or self.task_id is None or self.airflow_run_id is None:
            return None
        return f"{self.dag_id}|{self.task_id}|{self.airflow_run_id}|{self.try_number or 0}"


def audit_table(schema: str = "public") -> sql.Composed:
    from psycopg import sql

    return sql.SQL(".").join([sql.Identifier(schema), sql.Identifier(AUDIT_TABLE)])


def ensure_audit_table(conn: psycopg.Connection[Any], schema: str = "public") -> None:
    """Create the audit table once; serialised so concurrent first runs do not race on DDL."""
    from psycopg import sql

    from sndw.ddl import create_schema

    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtext('sndw:audit-ddl'))")
        create_schema(cur, schema)
        cur.execute(sql.SQL(AUDIT_DDL).format(table=audit_table(schema)))
        # Tables made by an earlier version get the columns added since (ALTER only when missing:
        # it locks the table).
        for column, pg_type in (("manifest_id", "TEXT"), ("rows_rejected", "BIGINT"), ("rows_deleted", "BIGINT")):
            cur.execute("SELECT 1 FROM information_schema.columns WHERE table_schema = %s AND table_name = %s "
                        "AND column_name = %s", (schema, AUDIT_TABLE, column))
            if cur.fetchone() is None:
                cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                    audit_table(schema), sql.Identifier(column), sql.SQL(pg_type)))
        for index, definition in AUDIT_INDEXES.items():
            # CREATE INDEX (even IF NOT EXISTS) waits for every open load transaction: only when missing.
            cur.execute("SELECT to_regclass(%s)", (sql.Identifier(schema, index).as_string(cur),))
            found = cur.fetchone()
            if found is None or found[0] is None:
                cur.execute(sql.SQL("CREATE INDEX {} ON {} " + definition).format(
                    sql.Identifier(index), audit_table(schema)))
        cur.execute("SELECT to_regclass(%s)", (f'"{schema}"."{STATUS_VIEW}"',))
        row = cur.fetchone()
        if row is None or row[0] is None:
            cur.execute(sql.SQL(STATUS_VIEW_SQL).format(
                view=sql.Identifier(schema, STATUS_VIEW), table=audit_table(schema)))


def insert_audit_row(cur: psycopg.Cursor[Any], record: AuditRecord, schema: str = "public") -> bool:
    """Insert the row; an attempt that already has one (written inside its load) is left as it is.

    Returns whether a row was inserted.
    """
    from psycopg import sql

    finished = record.finished_at or datetime.now(UTC)
    values = {
        "run_id": record.run_id,
        "pipeline_name": record.pipeline_name,
        "source_name": record.source_name,
        "protocol": record.protocol,
        "target_table": record.target_table,
        "status": record.status,
        "rows_loaded": record.rows_loaded,
        "parquet_files": record.parquet_files,
        "error_message": error_text(record.error_message),
        "started_at": record.started_at,
        "finished_at": finished,
        "dag_id": record.dag_id,
        "task_id": record.task_id,
        "airflow_run_id": record.airflow_run_id,
        "try_number": record.try_number,
        "step": record.step,
        "partition_date": record.partition_date,
        "rows_extracted": record.rows_extracted,
        "bytes": record.bytes,
        "lake_paths": json.dumps(record.lake_paths) if record.lake_paths is not None else None,
        "schema_changes": json.dumps(record.schema_changes) if record.schema_changes is not None else None,
        "attempt_key": record.attempt_key,
        "manifest_id": record.manifest_id,
        "rows_rejected": record.rows_rejected,
        "rows_deleted": record.rows_deleted,
    }
    query = sql.SQL("INSERT INTO {table} ({cols}) VALUES ({vals}) ON CONFLICT (attempt_key) DO NOTHING").format(
        table=audit_table(schema),
        cols=sql.SQL(", ").join(sql.Identifier(c) for c in values),
        vals=sql.SQL(", ").join(sql.Placeholder(c) for c in values),
    )
    cur.execute(query, values)
    return cur.rowcount == 1


def write_audit_record(conn: psycopg.Connection[Any], record: AuditRecord, schema: str = "public") -> bool:
    """Write one row in its own transaction (used by callbacks and the CLI)."""
    ensure_audit_table(conn, schema)
    with conn.transaction(), conn.cursor() as cur:
        return insert_audit_row(cur, record, schema)
