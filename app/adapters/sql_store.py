"""The canonical SQL resource store: ``ResourceStore`` on SQLite (default) and PostgreSQL, SQLAlchemy Core only.

Layout (created by ``app/migrations``; the Table objects below must match the head revision):
- ``resource``: the current version of every resource (deletions included, ``deleted=true``, no content),
  a surrogate integer ``pk`` that every index row points at, and the compact JSON served as-is.
- ``resource_history``: every version, deletions included, with the interaction that produced it.
- ``idx_string`` .. ``idx_uri``: one table per search parameter type, the columns of the matching
  ``IndexEntry`` dataclass in ``app.fhir.query``; rewritten in the same transaction as the resource.

Search compiles every clause to a semi-join on the resource row -- ``pk IN (SELECT resource_pk ...)``, never a join
that multiplies rows. (IN rather than a correlated EXISTS: PostgreSQL plans both as the same semi-join, but SQLite
runs a correlated EXISTS once per candidate row, while it drives an IN from the index.) It pages by keyset (sort
values + pk in an opaque cursor), and never returns deleted resources.

Dialect differences (transaction start, locks, insert-if-absent, substring search) live in the ``_dialect_*``
functions; everything else is dialect-neutral Core. Text columns use the ``C`` collation on PostgreSQL so both
backends order and compare strings by code point, which also lets prefix searches use plain b-tree ranges.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
import itertools
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, NamedTuple, ParamSpec, TypeVar

import orjson
import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Engine, Row
from sqlalchemy.sql.elements import ColumnElement

from app.adapters.outbox_sql import event_outbox, outbox_row
from app.fhir.errors import BadRequest, Conflict, FhirError, Gone, NotFound, PreconditionFailed, StoreUnavailable
from app.fhir.query import (
    AnyOfClause,
    ChainClause,
    Clause,
    DateIndex,
    HasClause,
    IdClause,
    Include,
    IndexEntry,
    LastUpdatedClause,
    NumberIndex,
    ParamClause,
    QuantityIndex,
    ReferenceIndex,
    SearchQuery,
    SearchValue,
    SortKey,
    StringIndex,
    TokenIndex,
    UriIndex,
)
from app.fhir.store import HistoryPage, Indexer, SearchPage, StoredResource
from app.fhir.values import normalize_string, parse_number_range, to_utc_naive

__all__ = ["SqlStore", "SqlSession", "upgrade_database", "metadata", "MAX_INDEX_CHARS"]

# Index values are clipped to this many characters on write *and* on search, so that b-tree entries stay far
# below PostgreSQL's ~2.7 kB limit. Values longer than this can give false positives on their tail only.
MAX_INDEX_CHARS = 255
# How often a write retries its check-and-set on the version before giving up with 409.
MAX_CAS_RETRIES = 8
# _include/_revinclude :iterate rounds, and the most resources one search will include.
MAX_INCLUDE_DEPTH = 3
MAX_INCLUDED = 2000
# SQLite has no autovacuum/analyze: refresh planner statistics every this many write sessions (see SqlStore.analyze).
SQLITE_ANALYZE_EVERY = 2000
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# The read engine's connections are replaced this often, which also drops PostgreSQL's cached plans.
READ_POOL_RECYCLE_SECONDS = 300


# ---------------------------------------------------------------- schema


def _text(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


PK_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # INTEGER PRIMARY KEY = rowid alias on SQLite
NUMBER_TYPE = sa.Numeric().with_variant(sa.Float(), "sqlite")  # SQLite has no decimal type; avoids lossy warnings
TYPE_LEN = 64
ID_LEN = 64

metadata = sa.MetaData()

resource = sa.Table(
    "resource",
    metadata,
    sa.Column("pk", PK_TYPE, primary_key=True, autoincrement=True),
    sa.Column("resource_type", _text(TYPE_LEN), nullable=False),
    sa.Column("id", _text(ID_LEN), nullable=False),
    sa.Column("version_id", sa.Integer(), nullable=False),
    sa.Column("last_updated", sa.DateTime(), nullable=False),  # naive UTC
    sa.Column("deleted", sa.Boolean(), nullable=False),
    sa.Column("content", sa.LargeBinary(), nullable=True),
    sa.UniqueConstraint("resource_type", "id", name="uq_resource_type_id"),
    sa.Index("ix_resource_type_updated", "resource_type", "last_updated"),
    sa.Index("ix_resource_type_pk", "resource_type", "pk"),  # the default order: first page without a sort
)

resource_history = sa.Table(
    "resource_history",
    metadata,
    sa.Column("pk", PK_TYPE, primary_key=True, autoincrement=True),
    sa.Column("resource_type", _text(TYPE_LEN), nullable=False),
    sa.Column("id", _text(ID_LEN), nullable=False),
    sa.Column("version_id", sa.Integer(), nullable=False),
    sa.Column("last_updated", sa.DateTime(), nullable=False),
    sa.Column("deleted", sa.Boolean(), nullable=False),
    sa.Column("method", sa.String(8), nullable=False),
    sa.Column("content", sa.LargeBinary(), nullable=True),
    sa.UniqueConstraint("resource_type", "id", "version_id", name="uq_history_type_id_version"),
    sa.Index("ix_history_updated", "last_updated"),
    sa.Index("ix_history_type_updated", "resource_type", "last_updated"),
)


def _index_table(name: str, *columns: sa.Column[Any], indexes: Sequence[tuple[str, ...]]) -> sa.Table:
    table = sa.Table(
        name,
        metadata,
        sa.Column("resource_pk", PK_TYPE, sa.ForeignKey("resource.pk", ondelete="CASCADE"), nullable=False),
        sa.Column("resource_type", _text(TYPE_LEN), nullable=False),
        sa.Column("param", _text(64), nullable=False),
        *columns,
    )
    sa.Index(f"ix_{name}_resource", table.c.resource_pk, table.c.param)
    for cols in indexes:
        sa.Index(f"ix_{name}_{'_'.join(c for c in cols if c not in ('resource_type', 'param'))}", *cols, _table=table)
    return table


idx_string = _index_table(
    "idx_string",
    sa.Column("norm", _text(MAX_INDEX_CHARS), nullable=False),
    sa.Column("exact", _text(MAX_INDEX_CHARS), nullable=False),
    indexes=[("resource_type", "param", "norm")],
)
idx_token = _index_table(
    "idx_token",
    sa.Column("system", _text(MAX_INDEX_CHARS), nullable=True),
    sa.Column("code", _text(MAX_INDEX_CHARS), nullable=True),
    sa.Column("text", _text(MAX_INDEX_CHARS), nullable=True),
    indexes=[("resource_type", "param", "code", "system"), ("resource_type", "param", "text")],
)
idx_reference = _index_table(
    "idx_reference",
    sa.Column("target_type", _text(TYPE_LEN), nullable=True),
    sa.Column("target_id", _text(ID_LEN), nullable=True),
    sa.Column("url", _text(MAX_INDEX_CHARS), nullable=True),
    sa.Column("identifier_system", _text(MAX_INDEX_CHARS), nullable=True),
    sa.Column("identifier_value", _text(MAX_INDEX_CHARS), nullable=True),
    # target first: it is selective, and it also serves _has/_revinclude, which start from the target
    indexes=[("target_id", "target_type", "param"), ("url",), ("identifier_value",)],
)
idx_date = _index_table(
    "idx_date",
    sa.Column("low", sa.DateTime(), nullable=True),  # None = open start
    sa.Column("high", sa.DateTime(), nullable=True),  # None = open end
    indexes=[("resource_type", "param", "low"), ("resource_type", "param", "high")],
)
idx_number = _index_table(
    "idx_number",
    sa.Column("value", NUMBER_TYPE, nullable=False),
    sa.Column("low", NUMBER_TYPE, nullable=False),
    sa.Column("high", NUMBER_TYPE, nullable=False),
    indexes=[("resource_type", "param", "value")],
)
idx_quantity = _index_table(
    "idx_quantity",
    sa.Column("value", NUMBER_TYPE, nullable=False),
    sa.Column("low", NUMBER_TYPE, nullable=False),
    sa.Column("high", NUMBER_TYPE, nullable=False),
    sa.Column("system", _text(MAX_INDEX_CHARS), nullable=True),
    sa.Column("code", _text(MAX_INDEX_CHARS), nullable=True),
    sa.Column("unit", _text(MAX_INDEX_CHARS), nullable=True),
    indexes=[("resource_type", "param", "value")],
)
idx_uri = _index_table(
    "idx_uri",
    sa.Column("value", _text(MAX_INDEX_CHARS), nullable=False),
    indexes=[("resource_type", "param", "value")],
)

INDEX_TABLES: dict[str, sa.Table] = {
    "string": idx_string,
    "token": idx_token,
    "reference": idx_reference,
    "date": idx_date,
    "number": idx_number,
    "quantity": idx_quantity,
    "uri": idx_uri,
}
_ENTRY_TABLES: dict[type, sa.Table] = {
    StringIndex: idx_string,
    TokenIndex: idx_token,
    ReferenceIndex: idx_reference,
    DateIndex: idx_date,
    NumberIndex: idx_number,
    QuantityIndex: idx_quantity,
    UriIndex: idx_uri,
}


# ---------------------------------------------------------------- engine and dialect-specific bits


def _engine_url(url: str) -> sa.URL:
    parsed = sa.make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise ValueError("SqlStore needs a file SQLite database (sqlite:///path/to/file.db), not an in-memory one")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        raise ValueError(f"unsupported database backend {parsed.get_backend_name()!r}: use sqlite or postgresql")
    return parsed


def _make_engine(url: str, *, pool_size: int = 10, echo: bool = False) -> Engine:
    parsed = _engine_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(
            parsed,
            echo=echo,
            pool_size=pool_size,
            max_overflow=pool_size,
            connect_args={"timeout": 30.0, "check_same_thread": False},
        )

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            # Take transaction control away from the sqlite3 module so we can BEGIN IMMEDIATE ourselves.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")  # readers never block the (single) writer
            cur.execute("PRAGMA synchronous=NORMAL")  # durable enough with WAL, much faster
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            # Write sessions take the write lock up front: they are serialised across threads *and* processes,
            # which is what makes lock() a no-op on SQLite.
            write = conn.get_execution_options().get("interlace_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    engine = sa.create_engine(parsed, echo=echo, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)
    event.listen(engine, "connect", _pg_connect)
    return engine


def _pg_connect(dbapi_conn: Any, _record: Any) -> None:
    """psycopg prepares statements it sees often, and PostgreSQL may then keep one generic plan per connection for
    good: a plan made while the table was tiny (a seq scan) would survive the table's growth (and loading 100k
    resources turns quadratic) unless statistics are refreshed, which needs autovacuum. Custom plans are made for
    the actual table each time, for a few tens of microseconds of planning."""
    autocommit = dbapi_conn.autocommit
    dbapi_conn.autocommit = True
    dbapi_conn.execute("SET plan_cache_mode = force_custom_plan")
    dbapi_conn.autocommit = autocommit


def _make_read_engine(url: str, *, pool_size: int = 10) -> Engine:
    """The engine of the read path outside sessions (``SqlStore.read``/``vread``/``search``): autocommit, so a lone
    SELECT costs no BEGIN/COMMIT round trips, and no pre-ping (a dead pooled connection is noticed by the statement
    itself, which is then retried once on a fresh connection)."""
    parsed = _engine_url(url)
    if parsed.get_backend_name() == "sqlite":
        engine = sa.create_engine(
            parsed,
            pool_size=pool_size,
            max_overflow=pool_size,
            pool_reset_on_return=None,
            connect_args={"timeout": 30.0, "check_same_thread": False},
        )

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # autocommit: each SELECT sees the latest commit (WAL: never blocked)
            dbapi_conn.execute("PRAGMA busy_timeout=30000")

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN")

        return engine
    # Unlike sessions (see _pg_connect), the hot reads keep PostgreSQL's generic plans: planning a search costs more
    # than running it. A generic plan made while a table was tiny cannot outlive a recycled connection, though.
    return sa.create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=pool_size,
        isolation_level="AUTOCOMMIT",
        pool_reset_on_return=None,
        pool_recycle=READ_POOL_RECYCLE_SECONDS,
    )


_COLUMNS = "pk, resource_type, id, version_id, last_updated, deleted, content"
_FAST_SQL = {
    # the one-statement reads of SqlStore.read/vread, as plain SQL on a pooled DBAPI connection: no statement
    # building, compiling or result processing per call (psycopg prepares them server-side after a few uses)
    (dialect, kind): sql.replace("?", mark)
    for dialect, mark in (("postgresql", "%s"), ("sqlite", "?"))
    for kind, sql in (
        ("read", f"SELECT {_COLUMNS} FROM resource WHERE resource_type = ? AND id = ?"),
        (
            "vread",
            f"SELECT {_COLUMNS}, method FROM resource_history WHERE resource_type = ? AND id = ? AND version_id = ?",
        ),
    )
}


def _dialect_start(conn: Connection, write: bool) -> None:
    """Start the session's transaction with the right mode."""
    conn.execution_options(interlace_write=write)
    conn.begin()
    if conn.dialect.name == "postgresql" and not write:
        # One snapshot for search + count + includes; READ ONLY guards against accidental writes.
        # Write sessions stay READ COMMITTED so a search after lock() sees what the previous holder committed.
        conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")


@contextmanager
def transaction(
    engine: Engine, *, write: bool = False, what: str = "the database", body_errors_unavailable: bool = False
) -> Iterator[Connection]:
    """One transaction on a pooled connection, shared by every SQL adapter (resources, messages, auth, outbox):
    committed when the block exits, rolled back on any exception. Failing to connect, begin or commit becomes
    StoreUnavailable naming ``what``. Errors raised inside the block pass through (callers tell "no such table"
    from "busy") unless ``body_errors_unavailable``, for callers that treat every operational error as transient."""
    try:
        conn = engine.connect()
    except (exc.OperationalError, exc.InterfaceError, exc.TimeoutError) as e:
        raise StoreUnavailable(f"{what} is unavailable; retry later") from e
    try:
        try:
            _dialect_start(conn, write)
        except (exc.OperationalError, exc.InterfaceError) as e:
            raise StoreUnavailable(f"{what} is unavailable or busy; retry later") from e
        try:
            yield conn
        except BaseException as e:
            try:
                conn.rollback()
            except exc.SQLAlchemyError:
                pass  # the connection is gone; the original error is the one worth reporting
            if body_errors_unavailable and isinstance(e, exc.OperationalError | exc.InterfaceError):
                raise StoreUnavailable(f"{what} is unavailable or busy; retry later") from e
            raise
        try:
            conn.commit()
        except (exc.OperationalError, exc.InterfaceError) as e:
            raise StoreUnavailable(f"{what} could not commit; retry later") from e
    finally:
        conn.close()


def _lock_id(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big", signed=True)


def _dialect_lock(conn: Connection, key: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(CAST(:k AS BIGINT))"), {"k": _lock_id(key)})
    # SQLite: write sessions already hold the database write lock (BEGIN IMMEDIATE).


_INSERT_IF_ABSENT = {
    name: module.insert(resource)
    .on_conflict_do_nothing(index_elements=["resource_type", "id"])
    .returning(resource.c.pk)
    for name, module in (("postgresql", pg_dialect), ("sqlite", sqlite_dialect))
}


def _dialect_insert_if_absent(conn: Connection, values: dict[str, Any]) -> int | None:
    """Insert a resource row unless (type, id) exists (maybe concurrently); the new pk, or None."""
    return conn.execute(_INSERT_IF_ABSENT[conn.dialect.name], values).scalar_one_or_none()


def _dialect_not_in(
    dialect: str, key: ColumnElement[Any], rows: sa.Select[Any], row_key: ColumnElement[Any]
) -> ColumnElement[bool]:
    """``key`` not among ``rows``. PostgreSQL plans NOT EXISTS as an anti-join (NOT IN over a big set degrades to a
    per-row scan); SQLite runs a correlated NOT EXISTS per row but builds NOT IN's set once."""
    if dialect == "postgresql":
        return sa.not_(sa.exists(rows.where(row_key == key)))
    return key.not_in(rows)


def _dialect_contains(conn_dialect: str, col: ColumnElement[str], value: str) -> ColumnElement[bool]:
    """Substring test without LIKE, so no wildcard escaping and the same case sensitivity on both backends."""
    if conn_dialect == "postgresql":
        return sa.func.strpos(col, value) > 0
    return sa.func.instr(col, value) > 0


# ---------------------------------------------------------------- small helpers


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _aware(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def _naive(dt: datetime | None) -> datetime | None:
    return None if dt is None else to_utc_naive(dt)


def _instant(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f") + "Z"


def _clip(value: str | None, limit: int = MAX_INDEX_CHARS) -> str | None:
    return None if value is None else value[:limit]


def _stored_tuple(row: Sequence[Any]) -> StoredResource:
    """A StoredResource from a raw DBAPI row of ``_FAST_SQL`` (SQLite hands back text timestamps and 0/1)."""
    _, rtype, rid, version, ts, deleted, content, *method = row
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts)
    return StoredResource(
        resource_type=rtype,
        id=rid,
        version_id=version,
        last_updated=ts.replace(tzinfo=UTC),
        deleted=bool(deleted),
        content=bytes(content) if content is not None else None,
        method=method[0] if method else "PUT",
    )


def _stored(row: Row[Any], method: str = "PUT") -> StoredResource:
    content = row.content
    return StoredResource(
        resource_type=row.resource_type,
        id=row.id,
        version_id=row.version_id,
        last_updated=_aware(row.last_updated),
        deleted=bool(row.deleted),
        content=bytes(content) if content is not None else None,
        method=getattr(row, "method", method),
    )


def _startswith(col: ColumnElement[str], prefix: str) -> ColumnElement[bool]:
    """Prefix test as a b-tree range [prefix, prefix with its last code point + 1): binary collation on both."""
    if not prefix:
        return col.is_not(None)
    nxt = ord(prefix[-1]) + 1
    if 0xD800 <= nxt <= 0xDFFF:  # skip the surrogate block, which has no UTF-8 form
        nxt = 0xE000
    if nxt > 0x10FFFF:
        return sa.func.substr(col, 1, len(prefix)) == prefix
    return sa.and_(col >= prefix, col < prefix[:-1] + chr(nxt))


def _index_row(entry: IndexEntry, pk: int, resource_type: str) -> tuple[sa.Table, dict[str, Any]]:
    table = _ENTRY_TABLES[type(entry)]
    row: dict[str, Any] = {"resource_pk": pk, "resource_type": resource_type}
    for f in dataclasses.fields(entry):
        value = getattr(entry, f.name)
        if isinstance(value, str):
            value = _clip(value, ID_LEN if f.name in ("target_id", "target_type") else MAX_INDEX_CHARS)
        elif isinstance(value, datetime):
            value = to_utc_naive(value)
        row[f.name] = value
    return table, row


_P = ParamSpec("_P")
_T = TypeVar("_T")


def _translate_errors(fn: Callable[_P, _T]) -> Callable[_P, _T]:
    """Database exceptions become app.fhir.errors types (no SQL or values in the message: they may hold PHI)."""

    @functools.wraps(fn)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
        try:
            return fn(*args, **kwargs)
        except exc.SQLAlchemyError as e:
            raise _as_fhir_error(e) from e

    return wrapper


def _as_fhir_error(e: exc.SQLAlchemyError) -> FhirError:
    if isinstance(e, exc.IntegrityError):
        return Conflict("the write conflicts with a concurrent change; retry")
    if isinstance(e, exc.OperationalError | exc.InterfaceError | exc.TimeoutError):
        return StoreUnavailable("the database is unavailable or busy; retry later")
    return FhirError("database error")


# ---------------------------------------------------------------- cursors


def _encode_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"dt": value.isoformat()}
    if isinstance(value, Decimal | float):
        return {"n": str(value) if isinstance(value, Decimal) else repr(value)}
    return value


def _decode_value(value: Any) -> Any:
    if isinstance(value, dict):
        if "dt" in value:
            return datetime.fromisoformat(value["dt"])
        if "n" in value:
            return Decimal(value["n"])
        raise ValueError("bad cursor value")
    return value


def _encode_cursor(kind: str, direction: str, values: Sequence[Any]) -> str:
    raw = orjson.dumps({"k": kind, "d": direction, "v": [_encode_value(v) for v in values]})
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str, kind: str, arity: int) -> tuple[str, list[Any]]:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        values = [_decode_value(v) for v in data["v"]]
        direction = data["d"]
        if data["k"] != kind or len(values) != arity or direction not in ("n", "p"):
            raise ValueError("cursor does not belong to this query")
    except (ValueError, KeyError, TypeError, binascii.Error, InvalidOperation, orjson.JSONDecodeError) as e:
        raise BadRequest("invalid or expired paging cursor; restart the search", details_code="bad-cursor") from e
    return direction, values


def _keyset(cols: Sequence[tuple[ColumnElement[Any], bool]], values: Sequence[Any]) -> ColumnElement[bool]:
    """Rows strictly after ``values`` in the order given by (column, descending) pairs."""
    alternatives = []
    for i, (col, desc) in enumerate(cols):
        prefix = [c == v for (c, _), v in zip(cols[:i], values[:i], strict=True)]
        alternatives.append(sa.and_(*prefix, col < values[i] if desc else col > values[i]))
    return sa.or_(*alternatives)


# ---------------------------------------------------------------- search compilation

_STR_MIN, _STR_MAX = "", chr(0x10FFFF)
_DT_MIN, _DT_MAX = datetime(1, 1, 1), datetime(9999, 12, 31, 23, 59, 59)
_NUM_MIN, _NUM_MAX = Decimal("-1e300"), Decimal("1e300")
_MODIFIERS: dict[str, frozenset[str | None]] = {
    "string": frozenset({None, "exact", "contains", "missing", "not"}),
    "token": frozenset({None, "text", "missing", "not"}),
    "reference": frozenset({None, "identifier", "missing", "not"}),
    "date": frozenset({None, "missing", "not"}),
    "number": frozenset({None, "missing", "not"}),
    "quantity": frozenset({None, "missing", "not"}),
    "uri": frozenset({None, "above", "below", "contains", "missing", "not"}),
}


def _is_type_modifier(modifier: str | None) -> bool:
    return bool(modifier) and modifier[0].isupper()  # type: ignore[index]


def _range_condition(
    prefix: str, rlow: ColumnElement[Any], rhigh: ColumnElement[Any], slow: Any, shigh: Any, delta: Any
) -> ColumnElement[bool]:
    """FHIR prefix semantics on ranges: the resource's [rlow, rhigh) (NULL = open end) against the search
    value's [slow, shigh) (http://hl7.org/fhir/R4/search.html#prefix)."""

    def low_ge(x: Any) -> ColumnElement[bool]:
        return sa.and_(rlow.is_not(None), rlow >= x)

    def low_lt(x: Any) -> ColumnElement[bool]:
        return sa.or_(rlow.is_(None), rlow < x)

    def high_gt(x: Any) -> ColumnElement[bool]:
        return sa.or_(rhigh.is_(None), rhigh > x)

    def high_le(x: Any) -> ColumnElement[bool]:
        return sa.and_(rhigh.is_not(None), rhigh <= x)

    # rlow <= shigh is implied (rlow < rhigh <= shigh) but bounds the b-tree range on (param, low)
    contained = sa.and_(low_ge(slow), rlow <= shigh, high_le(shigh))
    if prefix == "eq":
        return contained
    if prefix == "ne":
        return sa.or_(low_lt(slow), high_gt(shigh))
    if prefix == "gt":
        return high_gt(shigh)
    if prefix == "lt":
        return low_lt(slow)
    if prefix == "ge":
        return sa.or_(high_gt(shigh), contained)
    if prefix == "le":
        return sa.or_(low_lt(slow), contained)
    if prefix == "sa":
        return low_ge(shigh)
    if prefix == "eb":
        return high_le(slow)
    if prefix == "ap":
        return sa.and_(low_lt(shigh + delta), high_gt(slow - delta))
    raise BadRequest(f"unknown prefix {prefix!r}")


def _point_condition(prefix: str, col: ColumnElement[Any], slow: Any, shigh: Any, delta: Any) -> ColumnElement[bool]:
    """Prefix semantics for a single instant/value (``_lastUpdated``) against the search range [slow, shigh)."""
    conditions: dict[str, Callable[[], ColumnElement[bool]]] = {
        "eq": lambda: sa.and_(col >= slow, col < shigh),
        "ne": lambda: sa.or_(col < slow, col >= shigh),
        "gt": lambda: col >= shigh,
        "sa": lambda: col >= shigh,
        "lt": lambda: col < slow,
        "eb": lambda: col < slow,
        "ge": lambda: col >= slow,
        "le": lambda: col < shigh,
        "ap": lambda: sa.and_(col >= slow - delta, col < shigh + delta),
    }
    if prefix not in conditions:
        raise BadRequest(f"unknown prefix {prefix!r}")
    return conditions[prefix]()


def _date_range(value: SearchValue) -> tuple[datetime, datetime, timedelta]:
    if not isinstance(value.low, datetime) or not isinstance(value.high, datetime):
        raise BadRequest(f"{value.raw!r} is not a date search value")
    low, high = to_utc_naive(value.low), to_utc_naive(value.high)
    # "ap": 10% of the distance between now and the value (FHIR's recommendation), at least the value's own width
    delta = max(abs(_now() - low) / 10, high - low)
    return low, high, delta


def _number_range(value: SearchValue) -> tuple[Decimal, Decimal, Decimal]:
    number, low, high = value.number, value.low, value.high
    if number is None or not isinstance(low, Decimal) or not isinstance(high, Decimal):
        raw = value.raw.lstrip("abcdefghijklmnopqrstuvwxyz").split("|")[0]
        try:
            number, low, high = parse_number_range(raw)
        except ValueError as e:
            raise BadRequest(f"{value.raw!r} is not a number search value") from e
    return number, low, high


# Aliases are costly to build (every column is proxied), and search builds statements on every request: the
# resource alias and the index table aliases of a statement come from these pools (statements may share them).
_R = resource.alias("r")
_ALIASES: dict[str, list[sa.FromClause]] = {}


class _Compiler:
    """Turns query clauses into boolean SQL expressions over a (possibly aliased) ``resource`` table."""

    def __init__(self, dialect: str) -> None:
        self.dialect = dialect
        self._used: dict[str, int] = {}

    def begin(self) -> None:
        """A new statement: index table aliases start over."""
        self._used = {}

    def _alias(self, table: sa.Table) -> sa.FromClause:
        """The next alias of ``table`` not yet used in the current statement."""
        n = self._used.get(table.name, 0)
        self._used[table.name] = n + 1
        pool = _ALIASES.setdefault(table.name, [])
        while len(pool) <= n:  # a race only builds a spare alias
            pool.append(table.alias(f"{table.name}_{len(pool) + 1}"))
        return pool[n]

    def clause(self, clause: Clause, r: sa.FromClause, types: Sequence[str]) -> ColumnElement[bool]:
        if isinstance(clause, ParamClause):
            return self.param(clause, r, types)
        if isinstance(clause, ChainClause):
            return self.chain(clause, r, types)
        if isinstance(clause, HasClause):
            return self.has(clause, r, types)
        if isinstance(clause, IdClause):
            cond = r.c.id.in_([_clip(i, ID_LEN) for i in clause.ids])
            return sa.not_(cond) if clause.negate else cond
        if isinstance(clause, LastUpdatedClause):
            alternatives = []
            for value in clause.values:
                low, high, delta = _date_range(value)
                alternatives.append(_point_condition(value.prefix, r.c.last_updated, low, high, delta))
            return sa.or_(*alternatives)
        if isinstance(clause, AnyOfClause):  # access narrowing: OR of AND-groups, each over its own types
            groups = []
            for group in clause.groups:
                gtypes = group.resource_types or types
                conds = _Compiler._type_filter(r.c.resource_type, group.resource_types) if group.resource_types else []
                groups.append(sa.and_(sa.true(), *conds, *(self.clause(c, r, gtypes) for c in group.clauses)))
            return sa.or_(sa.false(), *groups)
        raise BadRequest(f"unsupported search clause {type(clause).__name__}")

    @staticmethod
    def _type_filter(col: ColumnElement[str], types: Sequence[str]) -> list[ColumnElement[bool]]:
        if not types:
            return []
        return [col == types[0]] if len(types) == 1 else [col.in_(list(types))]

    def param(self, clause: ParamClause, r: sa.FromClause, types: Sequence[str]) -> ColumnElement[bool]:
        p = clause.param
        table = INDEX_TABLES.get(p.type)
        if table is None:
            raise BadRequest(f"search parameter {p.code!r} of type {p.type} cannot be searched here")
        modifier = clause.modifier
        if modifier not in _MODIFIERS[p.type] and not (p.type == "reference" and _is_type_modifier(modifier)):
            raise BadRequest(f"modifier :{modifier} is not supported for {p.type} parameter {p.code!r}")
        i = self._alias(table)
        rows = sa.select(i.c.resource_pk).where(i.c.param == p.code, *self._type_filter(i.c.resource_type, types))
        if modifier == "missing":
            if len(clause.values) != 1 or clause.values[0].raw.strip().lower() not in ("true", "false"):
                raise BadRequest(f"{p.code}:missing takes true or false")
            if clause.values[0].raw.strip().lower() == "true":
                return _dialect_not_in(self.dialect, r.c.pk, rows, i.c.resource_pk)
            return r.c.pk.in_(rows)
        if not clause.values:
            raise BadRequest(f"search parameter {p.code!r} has no value")
        rows = rows.where(sa.or_(*[self.value(p.type, modifier, v, i) for v in clause.values]))
        if modifier == "not":
            return _dialect_not_in(self.dialect, r.c.pk, rows, i.c.resource_pk)
        return r.c.pk.in_(rows)

    def value(self, ptype: str, modifier: str | None, v: SearchValue, i: sa.FromClause) -> ColumnElement[bool]:
        if ptype == "string":
            text = v.text if v.text is not None else v.raw
            norm = _clip(v.norm if v.norm is not None else normalize_string(text)) or ""
            if modifier == "exact":
                # the norm equality narrows through the b-tree; the exact column decides
                return sa.and_(i.c.norm == _clip(normalize_string(text)), i.c.exact == _clip(text))
            if modifier == "contains":
                return _dialect_contains(self.dialect, i.c.norm, norm)
            return _startswith(i.c.norm, norm)
        if ptype == "token":
            if modifier == "text":
                text = v.text if v.text is not None else v.raw
                return _startswith(i.c.text, _clip(normalize_string(text)) or "")
            return self._token(i.c.system, i.c.code, v.system, v.code)
        if ptype == "reference":
            if modifier == "identifier":
                return self._token(i.c.identifier_system, i.c.identifier_value, v.system, v.code)
            if v.url:
                return i.c.url == _clip(v.url)
            if not v.target_id:
                raise BadRequest(f"{v.raw!r} is not a reference search value")
            cond = i.c.target_id == _clip(v.target_id, ID_LEN)
            target_type = modifier if _is_type_modifier(modifier) else v.target_type
            if target_type:
                if v.target_type and v.target_type != target_type:
                    return sa.false()
                cond = sa.and_(cond, i.c.target_type == target_type)
            return cond
        if ptype == "date":
            low, high, delta = _date_range(v)
            return _range_condition(v.prefix, i.c.low, i.c.high, low, high, delta)
        if ptype in ("number", "quantity"):
            number, low, high = _number_range(v)
            cond = self._number(v.prefix, i, number, low, high)
            if ptype == "quantity":
                system, code = _clip(v.system), _clip(v.code)
                if system and code:
                    cond = sa.and_(cond, i.c.system == system, i.c.code == code)
                elif code:
                    cond = sa.and_(cond, sa.or_(i.c.code == code, i.c.unit == code))
                elif system:
                    cond = sa.and_(cond, i.c.system == system)
            return cond
        if ptype == "uri":
            text = _clip(v.text if v.text is not None else v.raw) or ""
            if modifier == "below":
                return _startswith(i.c.value, text)
            if modifier == "above":
                return i.c.value.in_(_uri_ancestors(text))
            if modifier == "contains":
                return _dialect_contains(self.dialect, i.c.value, text)
            return i.c.value == text
        raise BadRequest(f"unsupported parameter type {ptype}")

    @staticmethod
    def _token(
        system_col: ColumnElement[Any], code_col: ColumnElement[Any], system: str | None, code: str | None
    ) -> ColumnElement[bool]:
        conds = []
        if system == "":
            conds.append(sa.or_(system_col.is_(None), system_col == ""))
        elif system is not None:
            conds.append(system_col == _clip(system))
        if code is not None and code != "":
            conds.append(code_col == _clip(code))
        elif system is None:
            return sa.false()  # neither system nor code: matches nothing
        return sa.and_(*conds)

    @staticmethod
    def _number(prefix: str, i: sa.FromClause, number: Decimal, low: Decimal, high: Decimal) -> ColumnElement[bool]:
        value = i.c.value
        if prefix == "eq":
            return sa.and_(value >= low, value < high)
        if prefix == "ne":
            return sa.or_(value < low, value >= high)
        if prefix == "gt":
            return value > number
        if prefix == "lt":
            return value < number
        if prefix == "ge":
            return value >= number
        if prefix == "le":
            return value <= number
        if prefix == "sa":
            return i.c.low >= high
        if prefix == "eb":
            return i.c.high <= low
        if prefix == "ap":
            delta = max(abs(number) / 10, (high - low) / 2)
            return sa.and_(value >= number - delta, value <= number + delta)
        raise BadRequest(f"unknown prefix {prefix!r}")

    def chain(self, clause: ChainClause, r: sa.FromClause, types: Sequence[str]) -> ColumnElement[bool]:
        x = idx_reference.alias()
        t = resource.alias()
        targets = clause.target_types or clause.param.targets
        sources = sa.select(x.c.resource_pk).where(
            x.c.param == clause.param.code,
            *self._type_filter(x.c.resource_type, types),
            t.c.resource_type == x.c.target_type,
            t.c.id == x.c.target_id,
            t.c.deleted == sa.false(),
            *self._type_filter(t.c.resource_type, targets),
            self.clause(clause.inner, t, targets),
        )
        return r.c.pk.in_(sources)

    def has(self, clause: HasClause, r: sa.FromClause, types: Sequence[str]) -> ColumnElement[bool]:
        x = idx_reference.alias()
        s = resource.alias()
        conds = [
            x.c.param == clause.ref_param.code,
            x.c.resource_type == clause.source_type,
            s.c.pk == x.c.resource_pk,
            s.c.deleted == sa.false(),
            self.clause(clause.inner, s, (clause.source_type,)),
        ]
        if len(types) == 1:
            return r.c.id.in_(sa.select(x.c.target_id).where(x.c.target_type == types[0], *conds))
        return sa.tuple_(r.c.resource_type, r.c.id).in_(sa.select(x.c.target_type, x.c.target_id).where(*conds))

    def sort_expr(self, key: SortKey, r: sa.FromClause) -> ColumnElement[Any]:
        if key.param == "_id":
            return r.c.id
        if key.param == "_lastUpdated":
            return r.c.last_updated
        p = key.param_def
        if p is None or p.type not in INDEX_TABLES:
            raise BadRequest(f"cannot sort by {key.param!r}")
        i = INDEX_TABLES[p.type].alias()
        agg = sa.func.max if key.descending else sa.func.min
        if p.type == "string":
            col, lo, hi = i.c.norm, _STR_MIN, _STR_MAX
        elif p.type == "token":
            col, lo, hi = i.c.code, _STR_MIN, _STR_MAX
        elif p.type == "uri":
            col, lo, hi = i.c.value, _STR_MIN, _STR_MAX
        elif p.type == "reference":
            col, lo, hi = sa.func.coalesce(i.c.url, i.c.target_type + "/" + i.c.target_id), _STR_MIN, _STR_MAX
        elif p.type == "date":
            # ascending by the earliest start, descending by the latest end (FHIR 3.1.1.6.4)
            col, lo, hi = (i.c.high if key.descending else i.c.low), _DT_MIN, _DT_MAX
        else:
            col, lo, hi = i.c.value, _NUM_MIN, _NUM_MAX
        sub = sa.select(agg(col)).where(i.c.resource_pk == r.c.pk, i.c.param == p.code).scalar_subquery()
        # resources without a value sort last in either direction; a sentinel keeps keyset comparisons NULL-free
        sentinel = lo if key.descending else hi
        return sa.func.coalesce(sub, sa.literal(sentinel, type_=col.type))


def _uri_ancestors(uri: str) -> list[str]:
    """``http://a.org/fhir/ValueSet/1`` -> itself, ``http://a.org/fhir/ValueSet``, ``http://a.org/fhir``,
    ``http://a.org`` (the uri:above semantics of FHIR 3.1.1.5.7)."""
    out = [uri]
    start = uri.find("://")
    start = start + 3 if start >= 0 else 0
    cut = uri.rstrip("/")
    while True:
        pos = cut.rfind("/")
        if pos < start or pos <= 0:
            break
        cut = cut[:pos]
        out.append(cut)
    return out


# ---------------------------------------------------------------- sessions


# The write path runs these for every resource: built once, executed with parameter dicts.
_SELECT_CURRENT = sa.select(resource.c.pk, resource.c.version_id, resource.c.last_updated, resource.c.deleted).where(
    resource.c.resource_type == sa.bindparam("b_type"), resource.c.id == sa.bindparam("b_id")
)
_CAS_UPDATE = sa.update(resource).where(
    resource.c.pk == sa.bindparam("b_pk"), resource.c.version_id == sa.bindparam("b_version")
)
_INSERT_HISTORY = sa.insert(resource_history)
_DELETE_INDEX = {name: sa.delete(t).where(t.c.resource_pk == sa.bindparam("b_pk")) for name, t in INDEX_TABLES.items()}
_INSERT_INDEX = {t.name: sa.insert(t) for t in INDEX_TABLES.values()}
_INSERT_OUTBOX = sa.insert(event_outbox)
# ``flush``: the queued creates in one multi-row insert; a row that already exists comes back without its pk
_INSERT_MANY_IF_ABSENT = {
    name: module.insert(resource)
    .on_conflict_do_nothing(index_elements=["resource_type", "id"])
    .returning(resource.c.resource_type, resource.c.id, resource.c.pk)
    for name, module in (("postgresql", pg_dialect), ("sqlite", sqlite_dialect))
}
# PostgreSQL: the index rows of several resources out of every index table in ONE statement (data-modifying CTEs)
_DROP_INDEX_PG = sa.text(
    "WITH "
    + ", ".join(
        f"d_{t.name} AS (DELETE FROM {t.name} WHERE resource_pk = ANY(CAST(:pks AS BIGINT[])))"
        for t in INDEX_TABLES.values()
    )
    + " SELECT 1"
)
# ``search_many``: the current resources behind several (type, token param, system, code) keys in one statement.
_TOKEN_KEY = (idx_token.c.resource_type, idx_token.c.param, idx_token.c.system, idx_token.c.code)
_TOKEN_SELECT = (
    sa.select(
        *(c.label(f"k_{c.key}") for c in _TOKEN_KEY),
        *(resource.c[c] for c in ("pk", "resource_type", "id", "version_id", "last_updated", "deleted", "content")),
    )
    .join_from(idx_token, resource, resource.c.pk == idx_token.c.resource_pk)
    .where(resource.c.deleted == sa.false())
)
# PostgreSQL turns the row IN list into a BitmapOr of (type, param, code, system) index scans; SQLite would scan
# every resource for it, so it gets the same condition spelled as an OR of ANDs (one index search per key).
_TOKEN_LOOKUP = _TOKEN_SELECT.where(sa.tuple_(*_TOKEN_KEY).in_(sa.bindparam("b_keys", expanding=True)))


def _token_lookup(dialect: str, keys: list[tuple[str, str, str, str]]) -> tuple[sa.Select[Any], dict[str, Any]]:
    if dialect == "postgresql":
        return _TOKEN_LOOKUP, {"b_keys": keys}
    t = idx_token.c
    ors = [sa.and_(t.resource_type == a, t.param == b, t.code == d, t.system == c) for a, b, c, d in keys]
    return _TOKEN_SELECT.where(sa.or_(*ors)), {}


# ``lock_many``: unnest yields the sorted ids in order, and each row takes its lock before the next one is read.
_LOCK_MANY = sa.text("SELECT count(pg_advisory_xact_lock(k)) FROM unnest(CAST(:k AS BIGINT[])) AS u(k)")


class _Current(NamedTuple):
    """The version columns of a resource row, as ``_SELECT_CURRENT`` returns them."""

    pk: int
    version_id: int
    last_updated: datetime
    deleted: bool


def _token_lookup_key(query: SearchQuery) -> tuple[str, str, str, str] | None:
    """``(type, param, system, code)`` when ``query`` is one ``param=system|code`` on a token parameter of one type
    (how conditional interactions name a resource by identifier), else None. The lookup then means exactly what the
    search compiler makes of it: an index row with that system and code, on a resource that is not deleted."""
    if len(query.resource_types) != 1 or len(query.clauses) != 1 or query.count <= 0 or query.summary == "count":
        return None
    clause = query.clauses[0]
    if not isinstance(clause, ParamClause) or clause.modifier is not None or clause.param.type != "token":
        return None
    if len(clause.values) != 1 or query.sort or query.includes or query.cursor:
        return None
    value = clause.values[0]
    if not value.system or not value.code:
        return None
    return (query.resource_types[0], clause.param.code, value.system[:MAX_INDEX_CHARS], value.code[:MAX_INDEX_CHARS])


class SqlSession:
    """One database transaction; implements ``app.fhir.store.StoreSession``."""

    def __init__(self, conn: Connection, indexer: Indexer, *, write: bool) -> None:
        self._conn = conn
        self._indexer = indexer
        self._write = write
        self._compiler = _Compiler(conn.dialect.name)
        # History and index rows are queued and written in bulk (one executemany per table) by ``flush``, which
        # runs before anything that could read them and at commit: a 500-entry transaction then costs a few round
        # trips per resource instead of ~7 (and an update's 7 index DELETEs become 7 batched ones).
        self._pending_history: list[dict[str, Any]] = []
        self._pending_index: dict[str, list[dict[str, Any]]] = {}
        self._pending_drop: list[int] = []
        self._pending_outbox: list[dict[str, Any]] = []  # event_outbox rows, in change order
        # resource rows of creates, inserted together by ``flush``; their index rows meanwhile carry a placeholder
        # pk (-1 for the first, -2 ...) that ``flush`` replaces with the real one
        self._pending_create: list[dict[str, Any]] = []
        # (type, id) -> version columns a search of this session just read: the first guess of a check-and-set
        self._known: dict[tuple[str, str], _Current] = {}

    @property
    def connection(self) -> Connection:
        """The session's connection, for other adapters that must write in the same transaction (the outbox)."""
        self.flush()
        return self._conn

    @_translate_errors
    def flush(self) -> None:
        """Write the queued creates, history, index and outbox rows."""
        if self._pending_create:
            self._flush_creates()
        if self._pending_drop:
            pks, self._pending_drop = self._pending_drop, []
            if self._conn.dialect.name == "postgresql":  # every index table in one statement (one round trip)
                self._conn.execute(_DROP_INDEX_PG, {"pks": pks})
            else:
                drops = [{"b_pk": pk} for pk in pks]
                for stmt in _DELETE_INDEX.values():
                    self._conn.execute(stmt, drops)
        if self._pending_history:
            rows, self._pending_history = self._pending_history, []
            self._conn.execute(_INSERT_HISTORY, rows)
        if self._pending_index:
            pending, self._pending_index = self._pending_index, {}
            for name, rows in pending.items():
                if rows:
                    self._conn.execute(_INSERT_INDEX[name], rows)
        if self._pending_outbox:
            rows, self._pending_outbox = self._pending_outbox, []
            self._conn.execute(_INSERT_OUTBOX, rows)

    def _flush_creates(self) -> None:
        rows, self._pending_create = self._pending_create, []
        stmt = _INSERT_MANY_IF_ABSENT[self._conn.dialect.name]
        pks = {(r.resource_type, r.id): r.pk for r in self._conn.execute(stmt, rows)}
        real: dict[int, int] = {}
        for n, row in enumerate(rows):
            pk = pks.get((row["resource_type"], row["id"]))
            if pk is None:  # a client-chosen id that exists (or two creates of one id): nothing of it is kept
                raise Conflict(f"{row['resource_type']}/{row['id']} already exists")
            real[-1 - n] = pk
        for index_rows in self._pending_index.values():
            for index_row in index_rows:
                if index_row["resource_pk"] < 0:
                    index_row["resource_pk"] = real[index_row["resource_pk"]]

    # -------------------------------------------------- reads

    @_translate_errors
    def read(self, resource_type: str, id: str) -> StoredResource:
        self.flush()
        row = self._conn.execute(
            sa.select(resource).where(resource.c.resource_type == resource_type, resource.c.id == id)
        ).first()
        if row is None:
            raise NotFound(f"{resource_type}/{id} is not known")
        if row.deleted:
            raise Gone(f"{resource_type}/{id} was deleted", headers={"ETag": f'W/"{row.version_id}"'})
        return _stored(row)

    @_translate_errors
    def vread(self, resource_type: str, id: str, version_id: int) -> StoredResource:
        self.flush()
        h = resource_history
        row = self._conn.execute(
            sa.select(h).where(h.c.resource_type == resource_type, h.c.id == id, h.c.version_id == version_id)
        ).first()
        if row is None:
            raise NotFound(f"{resource_type}/{id}/_history/{version_id} is not known")
        return _stored(row)

    # -------------------------------------------------- writes

    def _require_write(self, what: str) -> None:
        if not self._write:
            raise FhirError(f"{what} needs a write session (store.session(write=True))")

    @_translate_errors
    def create(self, resource: dict[str, Any], *, id: str | None = None) -> StoredResource:
        self._require_write("create")
        stored, _ = self._put(resource, id or str(uuid.uuid4()), method="POST", if_match=None, create_only=True)
        return stored

    @_translate_errors
    def update(
        self, resource: dict[str, Any], *, if_match: int | None = None, method: str = "PUT"
    ) -> tuple[StoredResource, bool]:
        self._require_write("update")
        rid = resource.get("id")
        if not isinstance(rid, str) or not rid:
            raise BadRequest("an update needs the resource id")
        return self._put(resource, rid, method=method, if_match=if_match, create_only=False)

    def _current(self, resource_type: str, id: str) -> Row[Any] | None:
        if any(r["id"] == id and r["resource_type"] == resource_type for r in self._pending_create):
            self.flush()  # created earlier in this session: its row must be there to be read and updated
        return self._conn.execute(_SELECT_CURRENT, {"b_type": resource_type, "b_id": id}).first()

    def _put(
        self, body: dict[str, Any], rid: str, *, method: str, if_match: int | None, create_only: bool
    ) -> tuple[StoredResource, bool]:
        rtype = body.get("resourceType")
        if not isinstance(rtype, str) or not rtype:
            raise BadRequest("the resource has no resourceType")
        if len(rid) > ID_LEN or len(rtype) > TYPE_LEN:
            raise BadRequest(f"resource id longer than {ID_LEN} characters")
        for attempt in range(MAX_CAS_RETRIES):
            cur: Row[Any] | _Current | None
            if attempt == 0 and create_only:
                cur = None  # a new id: no read (flush reports a clash as Conflict)
            elif attempt == 0 and if_match is None and (rtype, rid) in self._known:
                cur = self._known.pop((rtype, rid))  # just read by search_many; a stale guess only fails the CAS
            else:
                cur = self._current(rtype, rid)
            now = _now()
            if cur is None:
                if if_match is not None:
                    raise PreconditionFailed(f'If-Match W/"{if_match}" given, but {rtype}/{rid} does not exist')
                version, ts = 1, now
                doc = _with_meta(body, rtype, rid, version, ts)
                content = orjson.dumps(doc)
                row = dict(resource_type=rtype, id=rid, version_id=1, last_updated=ts, deleted=False, content=content)
                if attempt == 0 and create_only:
                    # a new id: queued, and inserted with the session's other creates in one statement by flush
                    pk = -1 - len(self._pending_create)
                    self._pending_create.append(row)
                else:
                    pk = _dialect_insert_if_absent(self._conn, row)
                    if pk is None:  # created concurrently since we looked: go round as an update
                        continue
                created = True
            else:
                if create_only and not cur.deleted:
                    raise Conflict(f"{rtype}/{rid} already exists")
                if if_match is not None and if_match != cur.version_id:
                    raise PreconditionFailed(
                        f'If-Match W/"{if_match}" does not match the current version W/"{cur.version_id}" '
                        f"of {rtype}/{rid}"
                    )
                version = cur.version_id + 1
                ts = max(now, cur.last_updated + timedelta(microseconds=1))  # monotonic per resource
                doc = _with_meta(body, rtype, rid, version, ts)
                content = orjson.dumps(doc)
                if not self._cas(cur, version=version, last_updated=ts, deleted=False, content=content):
                    if if_match is not None:
                        raise PreconditionFailed(f'{rtype}/{rid} was changed concurrently (If-Match W/"{if_match}")')
                    continue
                pk = cur.pk
                created = bool(cur.deleted)
                self._drop_index(pk)
            self._history(rtype, rid, version, ts, deleted=False, method=method, content=content)
            self._write_index(pk, rtype, self._indexer.index(doc))
            # the change's event, in this same transaction (transactional outbox, app/adapters/outbox_sql.py)
            self._pending_outbox.append(outbox_row(rtype, rid, version, "create" if created else "update"))
            stored = StoredResource(rtype, rid, version, _aware(ts), False, content, method)
            return stored, created
        raise Conflict(f"{rtype}/{rid} is being changed concurrently; retry")

    def _cas(self, cur: Row[Any] | _Current, **values: Any) -> bool:
        """Check-and-set: write the new version only if nobody moved past the one we read."""
        values["version_id"] = values.pop("version")
        result = self._conn.execute(_CAS_UPDATE, {**values, "b_pk": cur.pk, "b_version": cur.version_id})
        return result.rowcount == 1

    def _history(
        self, rtype: str, rid: str, version: int, ts: datetime, *, deleted: bool, method: str, content: bytes | None
    ) -> None:
        self._pending_history.append(
            {
                "resource_type": rtype,
                "id": rid,
                "version_id": version,
                "last_updated": ts,
                "deleted": deleted,
                "method": method,
                "content": content,
            }
        )

    def _drop_index(self, pk: int) -> None:
        # rows of ``pk`` still queued are simply forgotten; the ones already written are deleted at the next flush
        for name, rows in self._pending_index.items():
            if any(row["resource_pk"] == pk for row in rows):
                self._pending_index[name] = [row for row in rows if row["resource_pk"] != pk]
        self._pending_drop.append(pk)

    def _write_index(self, pk: int, rtype: str, entries: Sequence[IndexEntry]) -> None:
        grouped: dict[str, tuple[sa.Table, list[dict[str, Any]]]] = {}
        seen: set[IndexEntry] = set()
        for entry in entries:
            if entry in seen:
                continue
            seen.add(entry)
            table, row = _index_row(entry, pk, rtype)
            grouped.setdefault(table.name, (table, []))[1].append(row)
        for table, rows in grouped.values():
            self._pending_index.setdefault(table.name, []).extend(rows)

    @_translate_errors
    def delete(self, resource_type: str, id: str, *, if_match: int | None = None) -> StoredResource | None:
        self._require_write("delete")
        for _ in range(MAX_CAS_RETRIES):
            cur = self._current(resource_type, id)
            if cur is None or cur.deleted:
                return None
            if if_match is not None and if_match != cur.version_id:
                raise PreconditionFailed(
                    f'If-Match W/"{if_match}" does not match the current version W/"{cur.version_id}" '
                    f"of {resource_type}/{id}"
                )
            version = cur.version_id + 1
            ts = max(_now(), cur.last_updated + timedelta(microseconds=1))
            if not self._cas(cur, version=version, last_updated=ts, deleted=True, content=None):
                continue
            self._drop_index(cur.pk)
            self._history(resource_type, id, version, ts, deleted=True, method="DELETE", content=None)
            self._pending_outbox.append(outbox_row(resource_type, id, version, "delete"))
            return StoredResource(resource_type, id, version, _aware(ts), True, None, "DELETE")
        raise Conflict(f"{resource_type}/{id} is being changed concurrently; retry")

    @_translate_errors
    def lock(self, key: str) -> None:
        self._require_write("lock")
        _dialect_lock(self._conn, key)

    @_translate_errors
    def lock_many(self, keys: Sequence[str]) -> None:
        """``lock`` for several keys in one round trip, taken in ascending lock id order, so that sessions locking
        overlapping sets this way cannot deadlock on them."""
        self._require_write("lock")
        if self._conn.dialect.name == "postgresql" and keys:
            self._conn.execute(_LOCK_MANY, {"k": sorted({_lock_id(k) for k in keys})})
        # SQLite: write sessions already hold the database write lock (BEGIN IMMEDIATE).

    @_translate_errors
    def search_many(self, queries: Sequence[SearchQuery]) -> list[list[StoredResource]]:
        """The matches of each query (its first ``count``, in the default order), for the conditional entries of
        a transaction. Identifier lookups (``_token_lookup_key``) run together as ONE statement; any other query
        on its own. In a write session the version columns of what was found are remembered, so that updating it
        next (``_put``) can go straight to the check-and-set."""
        out: list[list[StoredResource]] = [[] for _ in queries]
        keyed: dict[tuple[str, str, str, str], list[int]] = {}
        for n, query in enumerate(queries):
            key = _token_lookup_key(query)
            if key is None:
                out[n] = self.search(query).matches
            else:
                keyed.setdefault(key, []).append(n)
        if not keyed:
            return out
        self.flush()
        found: dict[tuple[str, str, str, str], dict[int, StoredResource]] = {}
        for row in self._conn.execute(*_token_lookup(self._conn.dialect.name, list(keyed))):
            key = (row.k_resource_type, row.k_param, row.k_system, row.k_code)
            found.setdefault(key, {})[row.pk] = _stored(row)  # one resource may have several rows for the key
            if self._write:
                self._known[(row.resource_type, row.id)] = _Current(
                    row.pk, row.version_id, row.last_updated, bool(row.deleted)
                )
        for key, positions in keyed.items():
            by_pk = found.get(key, {})
            matches = [by_pk[pk] for pk in sorted(by_pk)]  # the search's default order: pk
            for n in positions:
                out[n] = matches[: queries[n].count]
        return out

    # -------------------------------------------------- history

    @_translate_errors
    def history(
        self,
        *,
        resource_type: str | None = None,
        id: str | None = None,
        since: datetime | None = None,
        at: datetime | None = None,
        count: int = 20,
        cursor: str | None = None,
    ) -> HistoryPage:
        self.flush()
        h = resource_history
        conds: list[ColumnElement[bool]] = []
        if resource_type is not None:
            conds.append(h.c.resource_type == resource_type)
        if id is not None:
            if resource_type is None:
                raise BadRequest("instance history needs the resource type")
            conds.append(h.c.id == id)
        if since is not None:
            conds.append(h.c.last_updated >= _naive(since))  # _since: "at or after the given instant"
        if at is not None:
            # _at: the versions that were current at that instant
            later = resource_history.alias()
            moment = _naive(at)
            conds.append(h.c.last_updated <= moment)
            conds.append(
                sa.not_(
                    sa.exists().where(
                        later.c.resource_type == h.c.resource_type,
                        later.c.id == h.c.id,
                        later.c.version_id > h.c.version_id,
                        later.c.last_updated <= moment,
                    )
                )
            )
        total = self._conn.execute(sa.select(sa.func.count()).select_from(h).where(*conds)).scalar_one()
        if id is not None and total == 0 and since is None and at is None:
            if self._current(resource_type or "", id) is None:
                raise NotFound(f"{resource_type}/{id} is not known")
        order = [(h.c.last_updated, True), (h.c.pk, True)]
        entries, next_c, prev_c = self._page(sa.select(h).where(*conds), order, count, cursor, "history")
        return HistoryPage(
            entries=[_stored(row) for row in entries], total=total, next_cursor=next_c, prev_cursor=prev_c
        )

    def _page(
        self,
        stmt: sa.Select[Any],
        order: list[tuple[ColumnElement[Any], bool]],
        count: int,
        cursor: str | None,
        kind: str,
    ) -> tuple[list[Row[Any]], str | None, str | None]:
        """Keyset paging over ``stmt`` ordered by ``order`` (whose last column is unique)."""
        direction = "n"
        if cursor:
            direction, values = _decode_cursor(cursor, kind, len(order))
            if direction == "p":
                reverse = [(c, not desc) for c, desc in order]
                stmt = stmt.where(_keyset(reverse, values))
            else:
                stmt = stmt.where(_keyset(order, values))
        effective = order if direction == "n" else [(c, not desc) for c, desc in order]
        stmt = stmt.order_by(*[c.desc() if desc else c.asc() for c, desc in effective]).limit(count + 1)
        rows = list(self._conn.execute(stmt))
        more = len(rows) > count
        rows = rows[:count]
        if direction == "p":
            rows.reverse()

        def key(row: Row[Any]) -> list[Any]:
            return [row._mapping[c.key] for c, _ in order]

        if not rows:
            return rows, None, None
        if direction == "n":
            next_c = _encode_cursor(kind, "n", key(rows[-1])) if more else None
            prev_c = _encode_cursor(kind, "p", key(rows[0])) if cursor else None
        else:
            next_c = _encode_cursor(kind, "n", key(rows[-1]))
            prev_c = _encode_cursor(kind, "p", key(rows[0])) if more else None
        return rows, next_c, prev_c

    # -------------------------------------------------- search

    @_translate_errors
    def search(self, query: SearchQuery) -> SearchPage:
        self.flush()
        r = _R
        self._compiler.begin()
        types = list(query.resource_types)
        where: list[ColumnElement[bool]] = [
            r.c.deleted == sa.false(),
            *_Compiler._type_filter(r.c.resource_type, types),
        ]
        where += [self._compiler.clause(c, r, types) for c in query.clauses]

        total: int | None = None
        want_total = query.total != "none" or query.summary == "count"
        count_stmt = sa.select(sa.func.count()).select_from(r).where(*where)
        if query.summary == "count" or query.count <= 0:
            if want_total:
                total = self._conn.execute(count_stmt).scalar_one()
            return SearchPage(matches=[], total=total)

        if query.sort:
            keys = [self._compiler.sort_expr(k, r).label(f"k{n}") for n, k in enumerate(query.sort)]
            inner = sa.select(r, *keys).where(*where).subquery("m")
            order = [(inner.c[f"k{n}"], k.descending) for n, k in enumerate(query.sort)] + [(inner.c.pk, False)]
            stmt = sa.select(inner)
        else:  # the default order needs no subquery
            order = [(r.c.pk, False)]
            stmt = sa.select(r).where(*where)
        if want_total:
            # the total rides along as an uncorrelated scalar subquery (evaluated once): one statement, one snapshot
            stmt = stmt.add_columns(count_stmt.correlate(None).scalar_subquery().label("total_"))
        signature = "search:" + ",".join(f"{k.param}{'-' if k.descending else '+'}" for k in query.sort)
        rows, next_c, prev_c = self._page(stmt, order, query.count, query.cursor, signature)
        if want_total:
            if rows:
                total = rows[0].total_
            elif not query.cursor:
                total = 0
            else:
                total = self._conn.execute(count_stmt).scalar_one()
        matches = [_stored(row) for row in rows]
        included = self._includes(query.includes, [(row.pk, row.resource_type) for row in rows]) if rows else []
        return SearchPage(matches=matches, included=included, total=total, next_cursor=next_c, prev_cursor=prev_c)

    def _includes(self, includes: Sequence[Include], matches: list[tuple[int, str]]) -> list[StoredResource]:
        if not includes:
            return []
        seen = {pk for pk, _ in matches}
        out: list[StoredResource] = []
        frontier = [pk for pk, _ in matches]
        for depth in range(MAX_INCLUDE_DEPTH + 1):
            # the first round applies every include to the matches; later rounds only the :iterate ones
            active = [inc for inc in includes if depth == 0 or inc.iterate]
            if not active or not frontier:
                break
            fresh: list[int] = []
            for inc in active:
                budget = MAX_INCLUDED - len(out)
                if budget <= 0:
                    return out
                for row in self._conn.execute(self._include_stmt(inc, frontier).limit(budget + len(seen))):
                    if row.pk in seen:
                        continue
                    seen.add(row.pk)
                    fresh.append(row.pk)
                    out.append(_stored(row))
                    if len(out) >= MAX_INCLUDED:
                        return out
            frontier = fresh
        return out

    @staticmethod
    def _include_stmt(inc: Include, pks: list[int]) -> sa.Select[Any]:
        x = idx_reference.alias()
        if not inc.reverse:
            # _include: the targets of the frontier's references
            t = resource.alias()
            refs = sa.select(x.c.target_type, x.c.target_id).where(x.c.resource_pk.in_(pks))
            if inc.source_type != "*":
                refs = refs.where(x.c.resource_type == inc.source_type)
            if inc.param is not None:
                refs = refs.where(x.c.param == inc.param.code)
            if inc.target_type:
                refs = refs.where(x.c.target_type == inc.target_type)
            where = [t.c.deleted == sa.false(), sa.tuple_(t.c.resource_type, t.c.id).in_(refs)]
            return sa.select(t).where(*where).order_by(t.c.pk)
        # _revinclude: resources whose references point at the frontier
        src = resource.alias()
        tgt = resource.alias()
        referrers = sa.select(x.c.resource_pk).where(
            x.c.target_type == tgt.c.resource_type, x.c.target_id == tgt.c.id, tgt.c.pk.in_(pks)
        )
        if inc.param is not None:
            referrers = referrers.where(x.c.param == inc.param.code)
        if inc.target_type:
            referrers = referrers.where(tgt.c.resource_type == inc.target_type)
        if inc.source_type != "*":
            referrers = referrers.where(x.c.resource_type == inc.source_type)
        where = [src.c.deleted == sa.false(), src.c.pk.in_(referrers)]
        if inc.source_type != "*":
            where.append(src.c.resource_type == inc.source_type)
        return sa.select(src).where(*where).order_by(src.c.pk)


def _with_meta(body: dict[str, Any], rtype: str, rid: str, version: int, ts: datetime) -> dict[str, Any]:
    """The stored document: client meta (tag, profile, security, source ...) kept, versionId/lastUpdated ours."""
    rest = {k: v for k, v in body.items() if k not in ("resourceType", "id", "meta")}
    client_meta = body.get("meta") or {}
    meta = {"versionId": str(version), "lastUpdated": _instant(ts)}
    meta.update({k: v for k, v in client_meta.items() if k not in ("versionId", "lastUpdated")})
    return {"resourceType": rtype, "id": rid, "meta": meta, **rest}


# ---------------------------------------------------------------- the store


class SqlStore:
    """``ResourceStore`` on SQLAlchemy Core. ``url``: ``sqlite:///path`` or ``postgresql[+psycopg]://...``.
    The schema must be at head (``upgrade_database``)."""

    def __init__(self, url: str, indexer: Indexer, *, pool_size: int = 10, echo: bool = False) -> None:
        self._engine = _make_engine(url, pool_size=pool_size, echo=echo)
        self._indexer = indexer
        self._writes = itertools.count(1)
        self._reader = _make_read_engine(url, pool_size=pool_size)
        self._dbapi_error: type[Exception] = self._reader.dialect.dbapi.Error  # type: ignore[union-attr]

    @property
    def dialect(self) -> str:
        return self._engine.dialect.name

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[SqlSession]:
        # session methods translate their own errors; raw SQL run on ``session.connection`` (the outbox) passes
        # through, so "no such table" stays distinguishable from "busy"
        with transaction(self._engine, write=write) as conn:
            session = SqlSession(conn, self._indexer, write=write)
            yield session
            _translate_errors(session.flush)()
        if write and self.dialect == "sqlite" and next(self._writes) % SQLITE_ANALYZE_EVERY == 0:
            self.analyze()

    @_translate_errors
    def analyze(self) -> None:
        """Refresh the query planner's statistics. Without them SQLite guesses that ``resource_type = ?`` is
        selective and scans a whole type instead of starting from the index rows that match; PostgreSQL's
        autovacuum does this by itself."""
        with self._engine.connect() as conn:
            conn.execution_options(interlace_write=True)  # SQLite: take the write lock up front (BEGIN IMMEDIATE)
            if conn.dialect.name == "sqlite":
                conn.exec_driver_sql("PRAGMA analysis_limit=1000")  # sampled: fast on big tables
            conn.exec_driver_sql("ANALYZE")
            conn.commit()

    # -------------------------------------------------- the read path outside sessions
    # read/vread/search without a session are the hot path of a FHIR server: they run on the autocommit read engine,
    # without the session's pre-ping, BEGIN, SET TRANSACTION and COMMIT round trips.

    def _fetch_one(self, kind: str, params: tuple[Any, ...]) -> Sequence[Any] | None:
        sql = _FAST_SQL[(self._reader.dialect.name, kind)]
        for attempt in (1, 2):
            try:
                conn = self._reader.raw_connection()
            except (exc.OperationalError, exc.InterfaceError, exc.TimeoutError) as e:
                raise StoreUnavailable("the database is unavailable; retry later") from e
            try:
                cur = conn.cursor()
                try:
                    cur.execute(sql, params)
                    return cur.fetchone()
                finally:
                    cur.close()
            except self._dbapi_error as e:
                conn.invalidate()  # maybe a connection the server dropped: never hand it out again
                if attempt == 2:
                    raise StoreUnavailable("the database is unavailable or busy; retry later") from e
            finally:
                conn.close()
        return None  # not reached

    def read(self, resource_type: str, id: str) -> StoredResource:
        """``SqlSession.read`` as one autocommit statement (NotFound / Gone alike)."""
        row = self._fetch_one("read", (resource_type, id))
        if row is None:
            raise NotFound(f"{resource_type}/{id} is not known")
        stored = _stored_tuple(row)
        if stored.deleted:
            raise Gone(f"{resource_type}/{id} was deleted", headers={"ETag": stored.etag})
        return stored

    def vread(self, resource_type: str, id: str, version_id: int) -> StoredResource:
        """``SqlSession.vread`` as one autocommit statement."""
        row = self._fetch_one("vread", (resource_type, id, version_id))
        if row is None:
            raise NotFound(f"{resource_type}/{id}/_history/{version_id} is not known")
        return _stored_tuple(row)

    @_translate_errors
    def search(self, query: SearchQuery) -> SearchPage:
        """``SqlSession.search`` on an autocommit connection (the page and its total are one statement). Queries with
        _include/_revinclude take a one-snapshot read session instead."""
        if query.includes:
            with self.session() as s:
                return s.search(query)
        with self._reader.connect() as conn:
            return SqlSession(conn, self._indexer, write=False).search(query)

    def close(self) -> None:
        self._reader.dispose()
        self._engine.dispose()


# ---------------------------------------------------------------- migrations


def upgrade_database(url: str) -> None:
    """Run the Alembic migrations in ``app/migrations`` to head, in one transaction, safe to call from several
    processes at once (they serialise on a lock and the later ones find nothing to do)."""
    from alembic import command
    from alembic.config import Config

    engine = _make_engine(url, pool_size=1)
    try:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
        with engine.connect() as conn:
            _dialect_start(conn, write=True)
            _dialect_lock(conn, "interlace:migrations")
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
            conn.commit()
    finally:
        engine.dispose()
