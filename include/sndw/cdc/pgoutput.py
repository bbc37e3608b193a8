"""Decoding PostgreSQL's ``pgoutput`` logical replication messages (protocol version 1).

The messages come from ``pg_logical_slot_peek_binary_changes(..., 'proto_version', '1', ...)``,
one ``bytea`` per message. Only what change capture needs is decoded: transaction boundaries,
relations (their columns, so an added column is seen), row changes with their tuples, truncates.
Tuple values arrive as text (the source's output functions) or as markers: NULL, and "unchanged
TOASTed value" (an update that did not touch a large value sends no value for it).
Reference: PostgreSQL's "Logical Replication Message Formats".
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sndw.errors import PermanentError

# Microseconds since 2000-01-01 UTC, PostgreSQL's epoch.
PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


class UnchangedToast:
    """The value of a column an update left unchanged and did not send (a TOASTed value)."""

    _instance: UnchangedToast | None = None

    def __new__(cls) -> UnchangedToast:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED = UnchangedToast()

Value = str | None | UnchangedToast


@dataclass(frozen=True)
class Column:
    name: str
    type_oid: int
    typmod: int
    key: bool  # part of the replica identity


@dataclass(frozen=True)
class Relation:
    relid: int
    namespace: str
    name: str
    replica_identity: str  # d default, n nothing, f full, i index
    columns: tuple[Column, ...]


@dataclass(frozen=True)
class Begin:
    final_lsn: int  # the LSN of the transaction's commit record
    commit_time: datetime
    xid: int


@dataclass(frozen=True)
class Commit:
    commit_lsn: int
    end_lsn: int  # the LSN just past the commit record
    commit_time: datetime


@dataclass(frozen=True)
class Insert:
    relid: int
    new: tuple[Value, ...]


@dataclass(frozen=True)
class Update:
    relid: int
    new: tuple[Value, ...]
    old: tuple[Value, ...] | None = None  # 'K' (key columns only) or 'O' (the whole old row)
    old_kind: str | None = None


@dataclass(frozen=True)
class Delete:
    relid: int
    old: tuple[Value, ...]
    old_kind: str  # 'K' or 'O'


@dataclass(frozen=True)
class Truncate:
    relids: tuple[int, ...]
    cascade: bool = False
    restart_identity: bool = False


@dataclass(frozen=True)
class Other:
    """A message change capture does not act on (Origin, Type, logical decoding Message)."""

    kind: str
    detail: dict[str, object] = field(default_factory=dict)


Message = Begin | Commit | Relation | Insert | Update | Delete | Truncate | Other


def lsn_text(lsn: int) -> str:
    """PostgreSQL's spelling of an LSN: ``16/B374D848``."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def parse_lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def _timestamp(micros: int) -> datetime:
    return PG_EPOCH + timedelta(microseconds=micros)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, fmt: str) -> tuple[int, ...]:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise PermanentError(f"pgoutput: message {self.data[:1]!r} ends early at byte {self.pos}")
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return values

    def byte(self) -> str:
        return chr(self.take("!B")[0])

    def int8(self) -> int:
        return self.take("!b")[0]

    def int16(self) -> int:
        return self.take("!h")[0]

    def int32(self) -> int:
        return self.take("!i")[0]

    def uint32(self) -> int:
        return self.take("!I")[0]

    def int64(self) -> int:
        return self.take("!q")[0]

    def uint64(self) -> int:
        return self.take("!Q")[0]

    def string(self) -> str:
        end = self.data.index(b"\x00", self.pos)
        text = self.data[self.pos:end].decode("utf-8")
        self.pos = end + 1
        return text

    def tuple(self) -> tuple[Value, ...]:
        values: list[Value] = []
        for _ in range(self.int16()):
            kind = self.byte()
            if kind == "n":
                values.append(None)
            elif kind == "u":
                values.append(UNCHANGED)
            elif kind == "t":
                length = self.int32()
                values.append(self.data[self.pos:self.pos + length].decode("utf-8"))
                self.pos += length
            else:  # 'b' (binary) only with the binary option, which is never asked for
                raise PermanentError(f"pgoutput: unknown tuple value kind {kind!r}")
        return tuple(values)


def decode(data: bytes) -> Message:
    """One pgoutput message."""
    r = _Reader(bytes(data))
    kind = r.byte()
    if kind == "B":
        final_lsn, ts, xid = r.uint64(), r.int64(), r.uint32()
        return Begin(final_lsn, _timestamp(ts), xid)
    if kind == "C":
        r.int8()  # flags, unused
        commit_lsn, end_lsn, ts = r.uint64(), r.uint64(), r.int64()
        return Commit(commit_lsn, end_lsn, _timestamp(ts))
    if kind == "R":
        relid, namespace, name = r.uint32(), r.string(), r.string()
        identity = r.byte()
        columns = []
        for _ in range(r.int16()):
            flags = r.int8()
            columns.append(Column(r.string(), r.uint32(), r.int32(), bool(flags & 1)))
        return Relation(relid, namespace, name, identity, tuple(columns))
    if kind == "I":
        relid = r.uint32()
        if r.byte() != "N":
            raise PermanentError("pgoutput: an Insert without its new tuple")
        return Insert(relid, r.tuple())
    if kind == "U":
        relid = r.uint32()
        marker = r.byte()
        old: tuple[Value, ...] | None = None
        old_kind = None
        if marker in ("K", "O"):
            old, old_kind = r.tuple(), marker
            marker = r.byte()
        if marker != "N":
            raise PermanentError(f"pgoutput: an Update with {marker!r} where its new tuple belongs")
        return Update(relid, r.tuple(), old, old_kind)
    if kind == "D":
        relid = r.uint32()
        marker = r.byte()
        if marker not in ("K", "O"):
            raise PermanentError(f"pgoutput: a Delete with {marker!r} where its old tuple belongs")
        return Delete(relid, r.tuple(), marker)
    if kind == "T":
        count, options = r.int32(), r.int8()
        return Truncate(tuple(r.uint32() for _ in range(count)), bool(options & 1), bool(options & 2))
    if kind == "O":
        return Other("origin", {"commit_lsn": r.uint64(), "name": r.string()})
    if kind == "Y":
        return Other("type", {"oid": r.uint32(), "namespace": r.string(), "name": r.string()})
    return Other(kind)
