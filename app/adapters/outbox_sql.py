"""The transactional outbox and the projection state, in the resource store's database (SQLAlchemy Core).

- ``event_outbox``: one row per resource change, inserted by ``record_change`` on the *same connection and
  transaction* as the resource write (``SqlSession``), so the change and its event commit or roll back together.
  ``id`` is monotonic in insert order; the relay publishes rows with ``published_at IS NULL`` in id order. A row
  whose transaction commits late (a lower id visible after a higher one) is still unpublished, so gaps are
  picked up on the next pass, never skipped.
- ``event_projection``: per resource and consumer, where its projection stands (``app.services.events``).

Both are created by migration 0004 (tests/events/test_outbox.py checks that the two agree). Sessions come from
``SqlStore`` (its engine, its SQLite write lock and PostgreSQL isolation), through ``SqlSession.connection``.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection

from app.services.events import OutboxRow, ProjectionState

PK_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _text(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


metadata = sa.MetaData()

event_outbox = sa.Table(
    "event_outbox",
    metadata,
    sa.Column("id", PK_TYPE, primary_key=True, autoincrement=True),
    sa.Column("event_id", _text(36), nullable=False),
    sa.Column("resource_type", _text(64), nullable=False),
    sa.Column("resource_id", _text(64), nullable=False),
    sa.Column("version_id", sa.Integer(), nullable=False),
    sa.Column("operation", sa.String(8), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),  # naive UTC
    sa.Column("published_at", sa.DateTime(), nullable=True),
    sa.UniqueConstraint("event_id", name="uq_event_outbox_event_id"),
    sa.Index("ix_event_outbox_created", "created_at"),
    # the relay's scan: only the (few) unpublished rows are in this index
    sa.Index(
        "ix_event_outbox_unpublished",
        "id",
        postgresql_where=sa.text("published_at IS NULL"),
        sqlite_where=sa.text("published_at IS NULL"),
    ),
)

event_projection = sa.Table(
    "event_projection",
    metadata,
    sa.Column("consumer", _text(32), primary_key=True),
    sa.Column("resource_type", _text(64), primary_key=True),
    sa.Column("resource_id", _text(64), primary_key=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("version_id", sa.Integer(), nullable=True),
    sa.Column("content_hash", sa.String(64), nullable=True),
    sa.Column("error_class", sa.String(200), nullable=True),
    sa.Column("error_message", sa.Text(), nullable=True),
    sa.Column("erp_refs", sa.Text(), nullable=True),  # JSON
    sa.Column("payment_state", sa.String(32), nullable=True),
    sa.Column("updated_at", sa.DateTime(), nullable=False),
    sa.Index("ix_event_projection_status", "consumer", "status", "updated_at"),
)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _aware(dt: datetime | None) -> datetime | None:
    return dt.replace(tzinfo=UTC) if dt is not None and dt.tzinfo is None else dt


def outbox_row(resource_type: str, resource_id: str, version_id: int, operation: str) -> dict[str, Any]:
    """The values of one outbox row (for a caller that batches its inserts: ``conn.execute(event_outbox.insert(),
    rows)`` before commit)."""
    return {
        "event_id": str(uuid.uuid4()),
        "resource_type": resource_type,
        "resource_id": resource_id,
        "version_id": version_id,
        "operation": operation,
        "created_at": _now(),
        "published_at": None,
    }


def record_change(conn: Connection, resource_type: str, resource_id: str, version_id: int, operation: str) -> None:
    """Insert the outbox row of one resource change, on the connection (and in the transaction) of the write."""
    conn.execute(event_outbox.insert(), outbox_row(resource_type, resource_id, version_id, operation))


def _row(r: Any) -> OutboxRow:
    return OutboxRow(
        id=int(r.id),
        event_id=r.event_id,
        resource_type=r.resource_type,
        resource_id=r.resource_id,
        version_id=int(r.version_id),
        operation=r.operation,
        created_at=_aware(r.created_at) or datetime.now(UTC),
        published_at=_aware(r.published_at),
    )


class SqlOutbox:
    """``app.services.events.Outbox`` on the store's database. ``store`` is a ``SqlStore``."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def unpublished(self, limit: int) -> list[OutboxRow]:
        o = event_outbox
        stmt = sa.select(o).where(o.c.published_at.is_(None)).order_by(o.c.id).limit(limit)
        with self._store.session() as s:
            return [_row(r) for r in s.connection.execute(stmt)]

    def mark_published(self, ids: Sequence[int]) -> None:
        if not ids:
            return
        o = event_outbox
        with self._store.session(write=True) as s:
            s.connection.execute(
                o.update().where(o.c.id.in_(list(ids)), o.c.published_at.is_(None)).values(published_at=_now())
            )

    def since(self, since: datetime, *, resource_types: Sequence[str] | None = None) -> list[OutboxRow]:
        o = event_outbox
        start = since.astimezone(UTC).replace(tzinfo=None) if since.tzinfo else since
        newest = sa.select(sa.func.max(o.c.id).label("id")).where(o.c.created_at >= start)
        if resource_types:
            newest = newest.where(o.c.resource_type.in_(list(resource_types)))
        newest = newest.group_by(o.c.resource_type, o.c.resource_id).subquery()
        stmt = sa.select(o).where(o.c.id.in_(sa.select(newest.c.id))).order_by(o.c.id)
        with self._store.session() as s:
            return [_row(r) for r in s.connection.execute(stmt)]

    def get(self, outbox_id: int) -> OutboxRow | None:
        with self._store.session() as s:
            r = s.connection.execute(sa.select(event_outbox).where(event_outbox.c.id == outbox_id)).first()
        return _row(r) if r is not None else None

    def count(self, *, unpublished: bool = False) -> int:
        stmt = sa.select(sa.func.count()).select_from(event_outbox)
        if unpublished:
            stmt = stmt.where(event_outbox.c.published_at.is_(None))
        with self._store.session() as s:
            return int(s.connection.execute(stmt).scalar_one())

    def purge_published(self, before: datetime) -> int:
        """Delete rows published before ``before`` (housekeeping; replay reaches back only as far as this)."""
        o = event_outbox
        cut = before.astimezone(UTC).replace(tzinfo=None) if before.tzinfo else before
        with self._store.session(write=True) as s:
            return s.connection.execute(
                o.delete().where(o.c.published_at.is_not(None), o.c.published_at < cut)
            ).rowcount


_UPSERT_COLUMNS = (
    "status",
    "attempts",
    "version_id",
    "content_hash",
    "error_class",
    "error_message",
    "erp_refs",
    "payment_state",
    "updated_at",
)


def _state(r: Any) -> ProjectionState:
    return ProjectionState(
        consumer=r.consumer,
        resource_type=r.resource_type,
        resource_id=r.resource_id,
        status=r.status,
        attempts=int(r.attempts),
        version_id=r.version_id,
        content_hash=r.content_hash,
        error_class=r.error_class,
        error_message=r.error_message,
        erp_refs=orjson.loads(r.erp_refs) if r.erp_refs else {},
        payment_state=r.payment_state,
        updated_at=_aware(r.updated_at),
    )


class SqlProjectionStates:
    """``app.services.events.ProjectionStates`` on the store's database."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def get(self, consumer: str, resource_type: str, resource_id: str) -> ProjectionState | None:
        p = event_projection
        stmt = sa.select(p).where(
            p.c.consumer == consumer, p.c.resource_type == resource_type, p.c.resource_id == resource_id
        )
        with self._store.session() as s:
            r = s.connection.execute(stmt).first()
        return _state(r) if r is not None else None

    def save(self, state: ProjectionState) -> None:
        values = {
            "consumer": state.consumer,
            "resource_type": state.resource_type,
            "resource_id": state.resource_id,
            "status": state.status,
            "attempts": state.attempts,
            "version_id": state.version_id,
            "content_hash": state.content_hash,
            "error_class": state.error_class,
            "error_message": state.error_message,
            "erp_refs": orjson.dumps(state.erp_refs).decode() if state.erp_refs else None,
            "payment_state": state.payment_state,
            "updated_at": _now(),
        }
        with self._store.session(write=True) as s:
            conn = s.connection
            module = pg_dialect if conn.dialect.name == "postgresql" else sqlite_dialect
            stmt = module.insert(event_projection).values(values)
            stmt = stmt.on_conflict_do_update(
                index_elements=["consumer", "resource_type", "resource_id"],
                set_={c: stmt.excluded[c] for c in _UPSERT_COLUMNS},
            )
            conn.execute(stmt)

    def list(
        self,
        consumer: str,
        *,
        status: str | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        limit: int = 100,
    ) -> list[ProjectionState]:
        p = event_projection
        stmt = sa.select(p).where(p.c.consumer == consumer)
        if status:
            stmt = stmt.where(p.c.status == status)
        if resource_type:
            stmt = stmt.where(p.c.resource_type == resource_type)
        if resource_id:
            stmt = stmt.where(p.c.resource_id == resource_id)
        stmt = stmt.order_by(p.c.updated_at.desc(), p.c.resource_type, p.c.resource_id).limit(limit)
        with self._store.session() as s:
            return [_state(r) for r in s.connection.execute(stmt)]
