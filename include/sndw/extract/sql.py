"""SQL sources: rows streamed through a DB-API cursor (server-side for PostgreSQL) as Arrow batches."""

from __future__ import annotations

import decimal
import logging
import queue
import re
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from sndw.audit import redact, register_secret
from sndw.errors import ExtractError
from sndw.extract import JSON_TYPE, ScalarColumns, column_array
from sndw.naming import normalize_identifier
from sndw.typeplan import PG_TYPE_KEY

log = logging.getLogger(__name__)

# PostgreSQL type OIDs -> lake types, so a column keeps its type even when a batch is all NULL or
# the result is empty. Types not listed are inferred from the values.
PG_OID_TYPES: dict[int, pa.DataType] = {
    16: pa.bool_(), 17: pa.binary(), 20: pa.int64(), 21: pa.int16(), 23: pa.int32(), 26: pa.int64(),
    25: pa.string(), 1043: pa.string(), 1042: pa.string(), 19: pa.string(), 2950: pa.string(),
    700: pa.float32(), 701: pa.float64(), 1082: pa.date32(), 1114: pa.timestamp("us"),
    1184: pa.timestamp("us", tz="UTC"), 1083: pa.time64("us"), 1186: pa.duration("us"),
    114: JSON_TYPE, 3802: JSON_TYPE,
}
_SIMPLE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")


def table_query(table: str) -> str:
    """``SELECT * FROM`` a table name given as ``name`` or ``schema.name`` (quoted as written)."""
    if not _SIMPLE_NAME.match(table):
        raise ValueError(f"table {table!r} is not a plain [schema.]name: use 'query' instead")
    quoted = ".".join(f'"{part}"' for part in table.split("."))
    return f"SELECT * FROM {quoted}"  # noqa: S608 - identifier checked and quoted above


def default_keys_query(table: str, keys: Sequence[str]) -> str:
    """``SELECT <keys> FROM <table>``: the whole key set of a source table, for deletes. A key name
    that is not a plain lower-case identifier is quoted as written."""
    if not _SIMPLE_NAME.match(table):
        raise ValueError(f"table {table!r} is not a plain [schema.]name: set keys_query")
    quoted = ".".join(f'"{part}"' for part in table.split("."))
    columns = ", ".join(k if re.match(r"^[a-z_][a-z0-9_]*$", k) else _quote_ident(k) for k in keys)
    return f"SELECT {columns} FROM {quoted}"  # noqa: S608 - identifiers checked and quoted


def incremental_query(query: str, cursor: str, low: Any, dialect: str = "postgres") -> str:
    """``query`` restricted to rows whose ``cursor`` is past ``low`` (the watermark minus lookback)."""
    if low is None:
        return query
    if not re.match(r"^[A-Za-z_][A-Za-z0-9_$]*$", cursor):
        raise ValueError(f"incremental cursor {cursor!r} must be a plain column name")
    if dialect == "postgres":
        from psycopg import sql as pgsql

        if hasattr(low, "isoformat"):
            # An untyped literal takes the cursor column's own type: a timestamp its wall-clock as read
            # (stored with +00:00, which timestamp input ignores), a date its day, a timestamptz its
            # instant. A '...'::timestamptz literal was compared in the source's TimeZone: a timestamp
            # cursor under Asia/Tokyo skipped the rows of the 9 hours past the watermark.
            literal = pgsql.Literal(low.isoformat()).as_string(None)
        elif isinstance(low, str):
            # The watermark is the byte-order maximum of the lake's text (MaxTracker): compared in the
            # same order ("C"), not the column's collation ('B2' > 'a1' under en-US, so 'B2' was read
            # on every run). A non-collatable cursor (uuid, enum) ignores it. The cost: an index on a
            # text cursor under another collation does not serve this comparison (one COLLATE "C" does).
            literal = pgsql.Literal(low).as_string(None) + ' COLLATE "C"'
        else:
            literal = pgsql.Literal(low).as_string(None)  # numbers bare
    elif isinstance(low, (int, decimal.Decimal)):
        literal = str(low)
    else:
        text = low.isoformat(sep=" ") if hasattr(low, "isoformat") else str(low)
        literal = "'" + text.replace("'", "''") + "'"
    return f'SELECT * FROM ({query}) AS sndw_src WHERE "{cursor}" > {literal}'  # noqa: S608 - checked above


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _plain_literal(value: Any) -> str:
    """A literal the database types from the column it is compared with (positions are JSON)."""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, (int, decimal.Decimal)):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def keyed_query(query: str, keys: list[str], after: list[Any] | None, dialect: str = "postgres") -> str:
    """``query`` in key order, starting after the key ``after`` (resuming a checkpointed extract)."""
    cols = ", ".join(_quote_ident(k) for k in keys)
    where = ""
    if after is not None:
        if dialect == "postgres" or len(keys) == 1:
            where = f" WHERE ({cols}) > ({', '.join(_plain_literal(v) for v in after)})"
        else:  # row-value comparison spelled out for databases without it
            terms = []
            for i in range(len(keys)):
                equal = [f"{_quote_ident(k)} = {_plain_literal(v)}" for k, v in zip(keys[:i], after[:i], strict=True)]
                terms.append("(" + " AND ".join([*equal, f"{_quote_ident(keys[i])} > {_plain_literal(after[i])}"]) + ")")
            where = " WHERE " + " OR ".join(terms)
    return f"SELECT * FROM ({query}) AS sndw_keyed{where} ORDER BY {cols}"  # noqa: S608 - quoted identifiers


# ------------------------------------------------------------------ ranges of a parallel extract
#
# A range is a JSON-ready dict (it travels through XCom to a mapped task): ``index`` and ``count``,
# ``manifest_id`` (the whole extract's), ``kind`` ("all": no split; "key": ``column`` from ``low``
# inclusive to ``high`` exclusive; "block": the table's blocks from ``low`` to ``high``), bounds None
# where open. The first range is open below and the last above, so rows the plan did not see (a key
# past the maximum, a block past the end) still fall in exactly one range; the first key range also
# holds the key's NULLs.


def split_integers(low: int, high: int, count: int) -> list[int]:
    """The ``count - 1`` inner bounds splitting ``[low, high]`` into equal integer ranges (fewer when
    the span is smaller than ``count``)."""
    span = high - low + 1
    count = max(1, min(count, span))
    return [low + span * i // count for i in range(1, count)]


def ranges_from_bounds(kind: str, bounds: list[Any], manifest_id: str, column: str | None = None) -> list[dict[str, Any]]:
    """The ranges between consecutive ``bounds`` (sorted, distinct), open at both ends."""
    # Bounds are read back as literals of the key's own type: ISO text for dates and times as they are.
    safe = [v if isinstance(v, (int, str)) else v.isoformat() if hasattr(v, "isoformat") else str(v) for v in bounds]
    edges: list[Any] = [None, *safe, None]
    count = len(edges) - 1
    if count == 1:
        return [{"index": 0, "count": 1, "kind": "all", "manifest_id": manifest_id}]
    return [{"index": i, "count": count, "kind": kind, "column": column, "low": edges[i], "high": edges[i + 1],
             "manifest_id": manifest_id} for i in range(count)]


def key_extent_query(query: str, column: str) -> str:
    """The smallest and largest value of ``column`` in ``query``'s rows."""
    quoted = _quote_ident(column)
    return f"SELECT min({quoted}), max({quoted}) FROM ({query}) AS sndw_extent"  # noqa: S608 - quoted identifier


def key_percentiles_query(query: str, column: str, count: int) -> str:
    """PostgreSQL: the values of ``column`` splitting ``query``'s rows into ``count`` equal parts
    (one sort of the key column)."""
    fractions = ", ".join(str(i / count) for i in range(1, count))
    quoted = _quote_ident(column)
    return (f"SELECT percentile_disc(ARRAY[{fractions}]::float8[]) WITHIN GROUP (ORDER BY {quoted}) "  # noqa: S608
            f"FROM ({query}) AS sndw_extent WHERE {quoted} IS NOT NULL")


TABLE_BLOCKS_QUERY = "SELECT pg_relation_size(%s::regclass) / current_setting('block_size')::bigint"


def quoted_table(table: str) -> str:
    """A plain ``[schema.]name`` quoted as written (``table_query``'s rule)."""
    return table_query(table).removeprefix("SELECT * FROM ")


def range_query(query: str, part: Mapping[str, Any] | None, table: str | None = None) -> str:
    """``query`` restricted to one range of a parallel extract (``ranges_from_bounds``). Block
    ranges read ``table`` itself by ``ctid`` (PostgreSQL's TID range scan reads only those blocks)."""
    if part is None or part["kind"] == "all":
        return query
    low, high = part.get("low"), part.get("high")
    if part["kind"] == "block":
        if not table:
            raise ValueError("block ranges read a 'table'")
        terms = ([f"ctid >= '({int(low)},0)'::tid"] if low is not None else []) + \
                ([f"ctid < '({int(high)},0)'::tid"] if high is not None else [])
        return f"{table_query(table)} WHERE {' AND '.join(terms)}"  # noqa: S608 - checked name, integers
    column = _quote_ident(part["column"])
    terms = ([f"{column} >= {_plain_literal(low)}"] if low is not None else []) + \
            ([f"{column} < {_plain_literal(high)}"] if high is not None else [])
    where = " AND ".join(terms)
    if part["index"] == 0:
        where = f"{where} OR {column} IS NULL"
    return f"SELECT * FROM ({query}) AS sndw_range WHERE {where}"  # noqa: S608 - quoted identifier, literals


def with_key_positions(batches: Iterator[pa.RecordBatch], keys: list[str]) -> Iterator[tuple[pa.RecordBatch, list[Any]]]:
    """Each batch with its last row's key, as JSON-safe values (exact: timestamps as ISO text)."""
    from sndw.state import format_value

    for batch in batches:
        if batch.num_rows == 0:
            continue
        last = [batch.column(k)[batch.num_rows - 1].as_py() for k in keys]
        yield batch, [v if isinstance(v, (int, str, bool)) or v is None else format_value(v) for v in last]


def _column_type(description: Any) -> pa.DataType | None:
    type_code = description[1]
    if isinstance(type_code, int) and type_code in PG_OID_TYPES:
        return PG_OID_TYPES[type_code]
    if type_code == 1700:  # numeric: exact decimal when precision and scale are declared
        precision, scale = description[4], description[5]
        if precision and 0 < precision <= 38 and scale is not None and scale >= 0:
            return pa.decimal128(precision, scale)
    return None


def iter_query_batches(conn: Any, query: str, batch_rows: int = 100_000, *, server_side: bool = True,
                       table: str = "query", column_types: Mapping[str, str] | None = None) -> Iterator[pa.RecordBatch]:
    """Stream ``query``'s rows in batches of ``batch_rows``; memory stays bounded by one batch.

    With a psycopg connection the rows come through a named (server-side) cursor; other DB-API
    drivers use ``fetchmany``. The first batch fixes the column types unless the driver reports them.
    ``column_types`` fixes a column's kind (text, bigint, double, numeric, boolean, json); a value
    that does not convert exactly fails the extract naming table, column and value.
    """
    declared = {normalize_identifier(k): v for k, v in (column_types or {}).items()}
    cursor = _open_cursor(conn, server_side)
    try:
        cursor.execute(query)
        description = cursor.description or []
        names = [d[0] for d in description]
        unknown = sorted(set(declared) - {normalize_identifier(n) for n in names})
        if unknown:
            raise ExtractError(f"{table}: column_types names columns the query does not return: "
                               f"{', '.join(unknown)} (columns: {', '.join(names)})")
        kinds = [declared.get(normalize_identifier(n)) for n in names]
        hints: list[pa.DataType | None] = [_column_type(d) for d in description]
        scalars = ScalarColumns(table, names, [h is None and k is None for h, k in zip(hints, kinds, strict=True)])
        total = 0
        first = True
        while True:
            rows = cursor.fetchmany(batch_rows)
            if not rows and not first:
                break
            columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
            typed = scalars.arrays(columns)  # untyped columns of SQLite & co: batch_rows changes nothing
            arrays = [typed[i] if i in typed else _declared_array(table, name, kind, list(values)) if kind
                      else column_array(list(values), hint)
                      for i, (name, kind, values, hint) in enumerate(zip(names, kinds, columns, hints, strict=True))]
            if rows:
                # Later batches keep the types the first one found.
                hints = [h or a.type for h, a in zip(hints, arrays, strict=True)]
            else:
                arrays = [pa.array([], type=h or pa.null()) for h in hints]
            total += len(rows)
            yield pa.RecordBatch.from_arrays(arrays, names=names)
            first = False
            if len(rows) < batch_rows:
                break
        log.info("extracted %d rows", total)
    finally:
        cursor.close()


def _declared_array(table: str, column: str, kind: str, values: list[Any]) -> pa.Array:
    """A column of ``column_types`` kind ``kind``: every value converted exactly, or an error."""
    from sndw.extract import _MISFIT, convert, kind_array

    converted = [convert(kind, v) for v in values]
    bad = next((v for v, c in zip(values, converted, strict=True) if c is _MISFIT), _MISFIT)
    array = None if bad is not _MISFIT else kind_array(kind, converted)
    if array is None:
        shown = bad if bad is not _MISFIT else next(v for v in values if v is not None)
        raise ExtractError(f"{table}: column {column!r} is declared {kind} in column_types, but holds {shown!r}, "
                           "which does not convert to it exactly")
    return array


def _open_cursor(conn: Any, server_side: bool) -> Any:
    module = type(conn).__module__
    if server_side and module.startswith("psycopg."):
        return conn.cursor(name="sndw_extract")
    if server_side and module.startswith("psycopg2"):
        return conn.cursor(name="sndw_extract")
    return conn.cursor()


# ------------------------------------------------------------------------ PostgreSQL via ADBC


def register_connection_password(conninfo: str) -> None:
    """Mask the password of a libpq URI or ``key=value`` string in every message from now on."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        password = conninfo_to_dict(conninfo).get("password")
    except Exception:  # not parseable: the driver says so, and its message goes through redact()
        return
    register_secret(str(password) if password else None)


# The text form of the values read as text (arrays, ranges, intervals, timetz, composites), whatever
# the source database's or role's own settings: under `ALTER DATABASE ... SET datestyle = 'SQL, DMY'`
# a date[] {2024-01-02} printed as {02/01/2024} loaded as {2024-02-01}, extra_float_digits = 0 rounded
# 0.30000000000000004 to 0.3, intervalstyle = sql_standard turned '-1 day -02:00:00' into '-1 days
# +02:00:00', bytea_output = escape put escaped bytes into a composite's text. TimeZone stays the
# source's: a query may rely on it (created_at::date = current_date), and under DateStyle ISO a
# timestamptz prints its exact offset in any zone ('IST' of DateStyle SQL was read as Israel's).
# DateStyle ISO keeps the session's input order (DMY, MDY): the query's own literals read as before.
SOURCE_SESSION_SETTINGS = {"DateStyle": "ISO", "IntervalStyle": "postgres", "extra_float_digits": "3",
                           "bytea_output": "hex"}
# One round trip, after connecting: a pooler such as PgBouncer refuses libpq's `options` parameter.
SOURCE_SESSION_SQL = "SELECT " + ", ".join(f"set_config('{name}', '{value}', false)"
                                           for name, value in SOURCE_SESSION_SETTINGS.items())


def connect_source(uri: str, encoding: str = "UTF8") -> Any:
    """A psycopg connection (autocommit) to a PostgreSQL source, in the session every extract reads in
    (``make_client_conninfo``, ``SOURCE_SESSION_SETTINGS``): its queries see what the extract sees."""
    import psycopg

    conn = psycopg.connect(make_client_conninfo(uri, encoding), autocommit=True)
    try:
        conn.execute(SOURCE_SESSION_SQL)
    except BaseException:
        conn.close()
        raise
    return conn


def make_client_conninfo(conninfo: str, encoding: str = "UTF8") -> str:
    """``conninfo`` with ``client_encoding``: UTF8 makes a database of another encoding (LATIN1,
    WIN1252) send its text converted to UTF-8 by the server, exactly, and a SQL_ASCII one send only
    valid UTF-8; the lake and the warehouse are UTF-8."""
    from psycopg.conninfo import make_conninfo

    try:
        return make_conninfo(conninfo, client_encoding=encoding)
    except Exception as exc:  # a malformed string: its message may quote it, so it goes through redact()
        raise ExtractError(f"cannot read the PostgreSQL connection string: {redact(str(exc))}") from None


def postgres_batch_bytes(batch_rows: int) -> int:
    """ADBC batches by bytes: aim near ``batch_rows`` (~128 B a row) so a checkpointed extract's
    parts stay near ``batch_rows`` rows; 64 KiB to 16 MiB."""
    return max(1 << 16, min(16 << 20, batch_rows * 128))


def iter_postgres_batches(uri: str, query: str, batch_bytes: int = 16 << 20,
                          max_rows: int | None = None, *, table: str = "query",
                          column_types: Mapping[str, str] | None = None,
                          snapshot: str | None = None) -> Iterator[pa.RecordBatch]:
    """Stream a PostgreSQL query as Arrow record batches through ADBC's libpq driver.

    Arrow-native end to end (0.91x of ``psql``'s own COPY TO here, flat memory), against 0.15-0.18x
    for a Python cursor. Batches are about ``batch_bytes`` big and at most ``max_rows`` rows
    (zero-copy slices). The query is described first (see ``describe_postgres``): types Arrow holds
    exactly pass through, the others are read as their text form, and every lake field names its
    warehouse type in its metadata (``PG_TYPE_KEY``). ``table`` names the source in errors;
    ``column_types`` casts columns in the query (``{col: text}`` carries any type).
    ``snapshot``: read in that exported snapshot (``pg_export_snapshot``, or the one a change
    capture slot exports at its creation), in a repeatable-read transaction.
    """
    # The low-level ADBC API: the DB-API module imports pandas and polars, 0.25 s on every call.
    import adbc_driver_manager
    import adbc_driver_postgresql

    register_connection_password(uri)
    columns = describe_postgres(uri, query, table, column_types)
    query = typed_query(query, columns)
    try:
        database = adbc_driver_postgresql.connect(make_client_conninfo(uri))
        conn = adbc_driver_manager.AdbcConnection(database)
    except adbc_driver_manager.Error as exc:  # libpq may echo the connection string: never pass it on
        raise ExtractError(f"cannot connect to the PostgreSQL source: {redact(str(exc))}") from None
    total = 0
    statement = adbc_driver_manager.AdbcStatement(conn)
    try:
        statement.set_sql_query(SOURCE_SESSION_SQL)  # before the snapshot's transaction begins
        statement.execute_update()
        if snapshot is not None:
            _use_snapshot(conn, statement, snapshot)
        statement.set_options(**{"adbc.postgresql.batch_size_hint_bytes": str(batch_bytes)})
        statement.set_sql_query(query)
        stream, _ = statement.execute_query()
        reader = pa.RecordBatchReader._import_from_c(stream.address)
        # The driver fetches and decodes the next batches in a thread of its own while the caller
        # writes Parquet (both release the GIL): the two overlap instead of taking turns.
        for batch in _prefetched(reader):
            total += batch.num_rows
            step = max_rows or batch.num_rows or 1
            for offset in range(0, batch.num_rows, step):
                yield normalize_adbc_batch(batch.slice(offset, step), columns, table)
        if total == 0:
            yield normalize_adbc_batch(pa.RecordBatch.from_pylist([], schema=reader.schema), columns, table)
    except (adbc_driver_manager.Error, pa.ArrowException, OSError) as exc:
        if _ENCODING_ERROR.search(str(exc)):
            raise ExtractError(_encoding_problem(uri, query, columns, table, str(exc))) from None
        scaled = [c for c in columns if c.decimal is not None]
        if not scaled or "cannot convert NaN to bigint" not in str(exc):
            # the query's own failure (a terminated backend, a lost connection, a statement timeout):
            # named by its table, as the driver's message names none (a retry may succeed)
            raise ExtractError(f"{table}: reading the PostgreSQL source failed after {total} rows: "
                               f"{redact(str(exc))}") from None
        raise ExtractError(
            f"{table}: " + " or ".join(f"column {c.name!r} ({c.warehouse})" for c in scaled) + " holds NaN, which an "
            f"exact decimal cannot carry: set column_types: {{{scaled[0].name}: numeric}} (unconstrained numeric, "
            "NaN kept) or {..: text}") from None
    finally:
        statement.close()
        conn.close()
        database.close()
    log.info("extracted %d rows", total)


# The server's refusal of text that has no UTF-8 form: a SQL_ASCII database's bytes that are not
# UTF-8, or a character of another encoding that UTF-8 lacks.
_ENCODING_ERROR = re.compile(r'invalid byte sequence for encoding "UTF8"|has no equivalent in encoding "UTF8"')


def _encoding_problem(uri: str, query: str, columns: list[PgColumn], table: str, message: str) -> str:
    """What to say when the server could not send text as UTF-8: the column and value when found.

    A SQL_ASCII database declares no encoding: its text reaches the lake only when it is UTF-8. The
    column is found by reading the rows again as bytes (only on this failure), up to the first bad one.
    """
    import psycopg

    server_message = redact(message.split("ERROR:", 1)[-1].strip().splitlines()[0])
    found: tuple[str, Any] | None = None
    encoding = "unknown"
    try:
        with connect_source(uri, "SQL_ASCII") as conn:
            encoding = conn.info.parameter_status("server_encoding") or encoding
            if encoding == "SQL_ASCII":
                items = ", ".join(f"convert_to(c{i}::text, 'SQL_ASCII')" for i in range(1, len(columns) + 1))
                aliases = ", ".join(f"c{i}" for i in range(1, len(columns) + 1))
                with conn.transaction(), conn.cursor(name="sndw_encoding") as cur:
                    cur.execute(f"SELECT {items} FROM ({query}) AS sndw_raw({aliases})")  # noqa: S608 - the query read
                    for row in cur:
                        found = next(((c.name, v) for c, v in zip(columns, row, strict=True)
                                      if v is not None and not _is_utf8(bytes(v))), None)
                        if found:
                            break
    except psycopg.Error:  # the source is gone: the server's own message says enough
        pass
    if found is None:
        return (f"{table}: the source database (encoding {encoding}) holds text that has no UTF-8 form: "
                f"{server_message}. Convert or exclude it in a 'query'")
    name, value = found
    value = bytes(value)
    shown = value if len(value) <= 40 else value[:40] + b"..."
    return (f"{table}: column {name!r} holds {shown!r}, which is not UTF-8: the source database's encoding is "
            "SQL_ASCII, whose text has no declared encoding, so only UTF-8 text is carried. Convert it in a 'query' "
            f"from the encoding it was written in, e.g. convert_from(convert(convert_to({name}, 'SQL_ASCII'), "
            f"'LATIN1', 'UTF8'), 'UTF8') AS {name}; or keep its bytes: convert_to({name}, 'SQL_ASCII') AS {name} "
            "(bytea)")


def _is_utf8(value: bytes) -> bool:
    try:
        value.decode()
    except UnicodeDecodeError:
        return False
    return True


def _use_snapshot(conn: Any, statement: Any, snapshot: str) -> None:
    """Begin a repeatable-read transaction on ``snapshot``: the statement's queries see the
    source exactly as that snapshot does."""
    from psycopg import sql as pgsql

    conn.set_autocommit(False)  # the driver begins a transaction
    for text in ("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                 pgsql.SQL("SET TRANSACTION SNAPSHOT {}").format(pgsql.Literal(snapshot)).as_string(None)):
        statement.set_sql_query(text)
        statement.execute_update()


_DONE = object()


def _prefetched(reader: Any, depth: int = 2) -> Iterator[pa.RecordBatch]:
    """Iterate ``reader`` from a background thread, ``depth`` batches ahead (bounded memory)."""
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for batch in reader:
                while not stop.is_set():
                    try:
                        slots.put(batch, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            slots.put(exc)

    worker = threading.Thread(target=produce, name="sndw-adbc-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue, then let it end
            try:
                slots.get_nowait()
            except queue.Empty:
                pass
            worker.join(timeout=0.1)


def _numeric_type(typmod: int) -> pa.DataType | None:
    if typmod < 4:
        return None
    precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
    if 0 < precision <= 38 and scale <= precision:
        return pa.decimal128(precision, scale)
    if 0 < precision <= 76 and scale <= precision:
        return pa.decimal256(precision, scale)
    return None


def _interval(value: Any) -> timedelta | None:
    if value is None:
        return None
    months, days, nanos = value.months, value.days, value.nanoseconds
    if months:
        raise ValueError("interval with months: read it as text")
    return timedelta(days=days, microseconds=nanos // 1000)


# ---------------------------------------------------------- PostgreSQL types, described first

# Types ADBC hands over as Arrow types that hold every value exactly (numeric(p,s) p<=38 too).
_NATIVE_OIDS = {16, 17, 20, 21, 23, 25, 114, 700, 701, 1042, 1043, 1082, 1083, 1114, 1184, 3802}
_NUMERIC_OID = 1700
_SCALED_MAX_PRECISION = 18  # numeric(p,s) with p <= 18: every value * 10^s fits a bigint
_MONEY_OID = 790
# regclass, regtype, regproc...: OIDs that name objects of the source database, which the warehouse
# may not have (casting 'app.orders' to regclass there fails): carried as text, their names.
_REG_OIDS = {24, 2202, 2203, 2204, 2205, 2206, 3734, 3769, 4089, 4096, 4191}
# column_types: the cast in the source query and the warehouse type it gives.
_OVERRIDES = {"text": ("{}::text", "text"), "bigint": ("{}::bigint", "bigint"),
              "double": ("{}::double precision", "double precision"), "numeric": ("{}::numeric::text", "numeric"),
              "boolean": ("{}::boolean", "boolean"), "json": ("to_jsonb({})", "jsonb")}
# ADBC adds the 1970 epoch offset to PostgreSQL's infinity sentinels, which wraps around: these are
# what 'infinity' and '-infinity' arrive as (no real date or timestamp is anywhere near them).
_DAY_OFFSET, _MICROS_OFFSET = 10_957, 946_684_800_000_000
_INT32, _INT64 = 1 << 31, 1 << 63
_DATE_WRAPPED = {(_INT32 - 1 + _DAY_OFFSET) - (1 << 32): _INT32 - 1, -_INT32 + _DAY_OFFSET: -_INT32}
_TS_WRAPPED = {(_INT64 - 1 + _MICROS_OFFSET) - (1 << 64): _INT64 - 1, -_INT64 + _MICROS_OFFSET: -_INT64}
_TS_MIN = -210_866_803_200_000_000  # 4714-11-24 00:00 BC, PostgreSQL's earliest timestamp


@dataclass(frozen=True)
class PgColumn:
    """One result column of a PostgreSQL query: how it is read and the warehouse type it gets."""

    name: str
    warehouse: str  # format_type() spelling: what the warehouse column is created as
    select: str | None  # the expression it is read through ({} is the quoted column), None: as is
    decimal: pa.Decimal128Type | None = None  # read as its unscaled bigint, made this decimal again


def describe_postgres(uri: str, query: str, table: str = "query",
                      column_types: Mapping[str, str] | None = None) -> list[PgColumn]:
    """Each column of ``query`` with its type, read from the server (``LIMIT 0``) and pg_type.

    Raises ExtractError, naming table, column and type, for a type the warehouse cannot be given
    (an extension's or user-defined base type, a range over one): before anything is read.
    """
    import psycopg

    from sndw.warehouse import column_limit_error

    overrides = {normalize_identifier(k): v for k, v in (column_types or {}).items()}
    try:
        conn = connect_source(uri)
    except psycopg.Error as exc:  # libpq may echo the connection string: never pass it on
        raise ExtractError(f"cannot connect to the PostgreSQL source: {redact(str(exc))}") from None
    try:
        with conn.cursor() as cur:
            try:
                cur.execute(f"SELECT * FROM ({query}) AS sndw_described LIMIT 0")  # noqa: S608 - the configured query
                result = cur.pgresult
                assert result is not None
                names = [d.name for d in cur.description or []]
            except psycopg.Error as exc:
                raise ExtractError(f"{table}: the source query failed: {exc}") from None
            too_many = column_limit_error(table, len(names))
            if too_many:
                raise ExtractError(f"{too_many}; nothing was extracted")
            types = [(result.ftype(i), result.fmod(i)) for i in range(len(names))]
            rows = _type_rows(cur, types)  # one round trip for every column
            columns = [_pg_column(cur, table, name, oid, typmod, overrides.pop(normalize_identifier(name), None), row)
                       for name, (oid, typmod), row in zip(names, types, rows, strict=True)]
    finally:
        conn.close()
    if overrides:
        raise ExtractError(f"{table}: column_types names columns the query does not return: "
                           f"{', '.join(sorted(overrides))} (columns: {', '.join(names)})")
    return columns


def _type_rows(cur: Any, types: list[tuple[int, int]]) -> list[tuple[Any, ...] | None]:
    """pg_type's facts of each (oid, typmod), in order: None for an oid it does not know."""
    cur.execute(
        """
        SELECT q.i, format_type(t.oid, q.mod), t.typtype, n.nspname, t.typcategory = 'A' AND t.typelem <> 0,
               e.typtype, en.nspname, t.typbasetype, t.typtypmod, t.typelem
        FROM unnest(%s::oid[], %s::int4[]) WITH ORDINALITY AS q(oid, mod, i)
        JOIN pg_type t ON t.oid = q.oid JOIN pg_namespace n ON n.oid = t.typnamespace
        LEFT JOIN pg_type e ON e.oid = t.typelem
        LEFT JOIN pg_namespace en ON en.oid = e.typnamespace
        """, ([oid for oid, _ in types], [mod for _, mod in types]))
    found = {row[0]: row[1:] for row in cur.fetchall()}
    return [found.get(i) for i in range(1, len(types) + 1)]


def _pg_column(cur: Any, table: str, name: str, oid: int, typmod: int, override: str | None,
               row: tuple[Any, ...] | None) -> PgColumn:
    if override is not None:
        select, warehouse = _OVERRIDES[override]
        return PgColumn(name, warehouse, select)
    if row is None:
        raise ExtractError(f"{table}: column {name!r}: unknown type oid {oid}")
    pg_type, kind, schema, is_array, elem_kind, elem_schema, base, base_mod, elem = row
    if kind == "d":  # the server sends a domain's base type; a domain here is resolved the same way
        return _pg_column(cur, table, name, base, base_mod, None, _type_rows(cur, [(base, base_mod)])[0])
    if kind in ("e", "c", "p") or oid in _REG_OIDS:  # enums, composites, records and reg* names: their text
        return PgColumn(name, "text", "{}::text")
    if is_array:
        if elem_kind in ("e", "c") or elem in _REG_OIDS:
            return PgColumn(name, "text[]", "{}::text")
        if elem_kind == "d":  # an array of a domain: an array of what the domain resolves to
            element = _pg_column(cur, table, name, elem, typmod, None, _type_rows(cur, [(elem, typmod)])[0])
            return PgColumn(name, element.warehouse.removesuffix("[]") + "[]", "{}::text")
        if elem_schema != "pg_catalog":
            _uncarriable(table, name, pg_type)
        return PgColumn(name, pg_type, "{}::text")
    if schema != "pg_catalog":
        _uncarriable(table, name, pg_type)
    if oid == _NUMERIC_OID:
        target = _numeric_type(typmod)
        if isinstance(target, pa.Decimal128Type) and target.precision <= _SCALED_MAX_PRECISION:
            # Read as the unscaled integer (value * 10^scale, exact: the value has that scale) and
            # viewed as the decimal again: ADBC's numeric decoding cost 0.6 s of client CPU per
            # million rows of one numeric(12,2) column, this costs the server a multiplication.
            unscaled = "{}::bigint" if target.scale == 0 else "({} * 1" + "0" * target.scale + ")::bigint"
            return PgColumn(name, pg_type, unscaled, target)
        exact = isinstance(target, pa.Decimal128Type)  # else text: exact, display scale too
        return PgColumn(name, pg_type, None if exact else "{}::text")
    if oid == _MONEY_OID:  # its text depends on lc_monetary: the numeric value is exact
        return PgColumn(name, pg_type, "{}::numeric::text")
    return PgColumn(name, pg_type, None if oid in _NATIVE_OIDS else "{}::text")


def _uncarriable(table: str, column: str, pg_type: str) -> None:
    raise ExtractError(
        f"{table}: column {column!r} has type {pg_type}, which is not a PostgreSQL built-in type (an extension's "
        f"or a user-defined one) and cannot be created in the warehouse: set column_types: "
        f"{{{column}: text}} on the table to load its text form")


def typed_query(query: str, columns: list[PgColumn]) -> str:
    """``query`` with the columns that need it read through their cast (as is when none does)."""
    if all(c.select is None for c in columns):
        return query
    # Positional names (sndw_typed(c1, c2, ...)): a query may return two columns of one name.
    items = [f"{c.select or '{}'}".format(f"c{i}") + f" AS {_quote_ident(c.name)}" for i, c in enumerate(columns, 1)]
    aliases = ", ".join(f"c{i}" for i in range(1, len(columns) + 1))
    return f"SELECT {', '.join(items)} FROM ({query}) AS sndw_typed({aliases})"  # noqa: S608 - quoted identifiers


def _fix_infinities(column: pa.Array, wrapped: dict[int, int], storage: pa.DataType) -> pa.Array:
    """ADBC's wrapped-around infinities as the type's max/min value (the lake's infinity)."""
    raw = column.view(storage)
    low = pc.min(raw).as_py()
    if low is None or low > max(wrapped):
        return column
    for bad, good in wrapped.items():
        raw = pc.if_else(pc.equal(raw, bad), pa.scalar(good, storage), raw)
    return raw.view(column.type)


def normalize_adbc_batch(batch: pa.RecordBatch, columns: list[PgColumn] | None = None,
                         table: str = "query") -> pa.RecordBatch:
    """ADBC's batch as lake types, each field naming its warehouse type (``PG_TYPE_KEY``)."""
    arrays, fields = [], []
    for i, (fld, column) in enumerate(zip(batch.schema, batch.columns, strict=True)):
        meta = fld.metadata or {}
        pg_type = meta.get(b"POSTGRESQL:type", b"").decode()
        decimal = columns[i].decimal if columns else None
        if decimal is not None:  # the unscaled bigint: its 128-bit form read with the decimal's scale
            column = column.cast(pa.decimal128(19, 0)).view(decimal)
        elif pg_type == "numeric":
            storage = column.storage if isinstance(column.type, pa.BaseExtensionType) else column
            target = _numeric_type(int(meta.get(b"POSTGRESQL:typmod", b"-1")))
            if target is None or not pa.types.is_decimal128(target):
                column = storage.cast(pa.string())
            else:
                try:
                    column = storage.cast(target)
                except pa.ArrowInvalid:
                    raise ExtractError(
                        f"{table}: column {fld.name!r} ({columns[i].warehouse if columns else 'numeric'}) holds NaN, "
                        f"which an exact decimal cannot carry: set column_types: {{{fld.name}: numeric}} "
                        "(unconstrained numeric, NaN kept) or {..: text}") from None
        elif isinstance(column.type, pa.BaseExtensionType) and column.type.extension_name == "arrow.uuid":
            column = pa.array([str(uuid.UUID(bytes=v)) if v is not None else None
                               for v in column.storage.to_pylist()], pa.string())
        elif isinstance(column.type, pa.BaseExtensionType) and column.type.extension_name == "arrow.opaque":
            if not pa.types.is_string(column.storage.type):  # binary wire forms are never text
                raise ExtractError(f"{table}: column {fld.name!r}: type {pg_type} arrived in a binary form that cannot "
                                   f"be read: set column_types: {{{fld.name}: text}}")
            column = column.storage
        elif pa.types.is_date32(column.type):
            column = _fix_infinities(column, _DATE_WRAPPED, pa.int32())
        elif pa.types.is_timestamp(column.type):
            # int64's maximum is the lake's 'infinity' (which ADBC delivers wrapped around): the same
            # value arriving unwrapped is a real timestamp, 294247-01-10 04:00:54.775807, refused below
            at_max = pc.max(column.view(pa.int64())).as_py() == _INT64 - 1
            column = _fix_infinities(column, _TS_WRAPPED, pa.int64())
            raw = column.view(pa.int64())
            low = pc.min(raw).as_py()
            if at_max or low is not None and low < _TS_MIN and \
                    (pc.min(raw.filter(pc.not_equal(raw, -_INT64))).as_py() or 0) < _TS_MIN:
                raise ExtractError(f"{table}: column {fld.name!r}: a timestamp after 294246 AD overflows Arrow's "
                                   f"microseconds: set column_types: {{{fld.name}: text}}")
        elif column.type == pa.month_day_nano_interval():
            column = pa.array([_interval(v) for v in column.to_pylist()], pa.duration("us"))
        metadata = {PG_TYPE_KEY: columns[i].warehouse.encode()} if columns else None
        arrays.append(column)
        fields.append(pa.field(fld.name, column.type, metadata=metadata))
    return pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields))
