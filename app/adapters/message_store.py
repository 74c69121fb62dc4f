"""``MessageStore`` on SQL (SQLAlchemy Core; SQLite and PostgreSQL), table ``hl7v2_message`` (migration 0002).

Every method is one short transaction, committed before it returns: ``add`` in particular is durable when it
returns, which is what lets the ingest service acknowledge. Deduplication rides on a unique ``dedupe_key`` (hash
of sender + control id) held by the first delivery only, so two concurrent deliveries of the same message cannot
both become "the original". Processing is claimed with a lease (``claimed_until``) rather than a status, so a
crashed worker's messages are picked up again once the lease runs out.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg_dialect
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.engine import Connection, Row

# The store's engine factory and transaction start: same SQLite pragmas (WAL, BEGIN IMMEDIATE for writers) and
# PostgreSQL settings as the resource store, so both can share one database file.
from app.adapters.sql_store import _make_engine, transaction
from app.fhir.errors import BadRequest
from app.services.ports import MessageHeaderFacts, MessagePage, MessageQuery, MessageRecord

__all__ = ["SqlMessageStore", "hl7v2_message", "dedupe_key"]


def _text(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


metadata = sa.MetaData()

hl7v2_message = sa.Table(
    "hl7v2_message",
    metadata,
    sa.Column("id", _text(36), primary_key=True),
    sa.Column("received_at", sa.DateTime(), nullable=False),
    sa.Column("peer", sa.String(255), nullable=False),
    sa.Column("sending_application", _text(255), nullable=False),
    sa.Column("sending_facility", _text(255), nullable=False),
    sa.Column("control_id", _text(255), nullable=False),
    sa.Column("message_code", _text(16), nullable=False),
    sa.Column("trigger_event", _text(16), nullable=False),
    sa.Column("version", sa.String(16), nullable=False),
    sa.Column("ack_mode", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("ack_code", sa.String(4), nullable=True),
    sa.Column("ack", sa.LargeBinary(), nullable=True),
    sa.Column("raw", sa.LargeBinary(), nullable=False),
    sa.Column("error", sa.Text(), nullable=True),
    sa.Column("resources", sa.Text(), nullable=True),
    sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
    sa.Column("processed_at", sa.DateTime(), nullable=True),
    sa.Column("claimed_until", sa.DateTime(), nullable=True),
    sa.Column("dedupe_key", sa.String(64), nullable=True),
    sa.Column("duplicate_of", _text(36), nullable=True),
    sa.UniqueConstraint("dedupe_key", name="uq_hl7v2_message_dedupe"),
    sa.Index("ix_hl7v2_message_received", "received_at", "id"),
    sa.Index("ix_hl7v2_message_status_received", "status", "received_at"),
    sa.Index("ix_hl7v2_message_type_received", "message_code", "trigger_event", "received_at"),
    sa.Index("ix_hl7v2_message_control_id", "control_id"),
    sa.Index("ix_hl7v2_message_sender_control", "sending_application", "sending_facility", "control_id"),
)

_T = hl7v2_message.c
_INSERT_IF_NEW = {
    name: module.insert(hl7v2_message).on_conflict_do_nothing(index_elements=["dedupe_key"]).returning(_T.id)
    for name, module in (("postgresql", pg_dialect), ("sqlite", sqlite_dialect))
}
_FIELD_LIMIT = 255


def dedupe_key(header: MessageHeaderFacts) -> str | None:
    """MSH-10 is unique per sending application + facility; None when there is no control id to key on."""
    if not header.control_id:
        return None
    text = "\x1f".join((header.sending_application, header.sending_facility, header.control_id))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _aware(dt: datetime | None) -> datetime | None:
    return None if dt is None else dt.replace(tzinfo=UTC)


def _naive(dt: datetime) -> datetime:
    return dt.astimezone(UTC).replace(tzinfo=None) if dt.tzinfo else dt


def _clip(value: str, limit: int = _FIELD_LIMIT) -> str:
    return value[:limit]


def _record(row: Row[Any]) -> MessageRecord:
    m = row._mapping
    return MessageRecord(
        id=m["id"],
        received_at=_aware(m["received_at"]),  # type: ignore[arg-type]
        peer=m["peer"],
        header=MessageHeaderFacts(
            sending_application=m["sending_application"],
            sending_facility=m["sending_facility"],
            control_id=m["control_id"],
            message_code=m["message_code"],
            trigger_event=m["trigger_event"],
            version=m["version"],
        ),
        ack_mode=m["ack_mode"],
        status=m["status"],
        raw=bytes(m["raw"]),
        ack_code=m["ack_code"],
        ack=bytes(m["ack"]) if m["ack"] is not None else None,
        error=orjson.loads(m["error"]) if m["error"] else None,
        resources=orjson.loads(m["resources"]) if m["resources"] else [],
        attempts=m["attempts"],
        processed_at=_aware(m["processed_at"]),
        duplicate_of=m["duplicate_of"],
    )


def _from_values(values: dict[str, Any]) -> MessageRecord:
    """The record just inserted, without reading it back."""
    return MessageRecord(
        id=values["id"],
        received_at=_aware(values["received_at"]),  # type: ignore[arg-type]
        peer=values["peer"],
        header=MessageHeaderFacts(
            sending_application=values["sending_application"],
            sending_facility=values["sending_facility"],
            control_id=values["control_id"],
            message_code=values["message_code"],
            trigger_event=values["trigger_event"],
            version=values["version"],
        ),
        ack_mode=values["ack_mode"],
        status=values["status"],
        raw=values["raw"],
        ack_code=values.get("ack_code"),
        ack=values.get("ack"),
        error=orjson.loads(values["error"]) if values.get("error") else None,
        resources=[],
        attempts=values["attempts"],
        processed_at=_aware(values.get("processed_at")),
        duplicate_of=values.get("duplicate_of"),
    )


def _encode_cursor(received_at: datetime, id: str) -> str:
    return base64.urlsafe_b64encode(orjson.dumps([received_at.isoformat(), id])).decode("ascii").rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, id = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(at), str(id)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise BadRequest("the paging cursor is not valid; start again from the first page") from None


class SqlMessageStore:
    """The message store on the database at ``url`` (schema at head: ``upgrade_database``)."""

    def __init__(self, url: str, *, pool_size: int = 5) -> None:
        self._engine = _make_engine(url, pool_size=pool_size)

    def _tx(self, write: bool = False) -> AbstractContextManager[Connection]:
        return transaction(self._engine, write=write, what="the message store", body_errors_unavailable=True)

    # -- writes ----------------------------------------------------------------------------------------------
    def add(
        self,
        raw: bytes,
        header: MessageHeaderFacts,
        *,
        peer: str,
        ack_mode: str,
        claim_seconds: float | None = None,
        status: str = "received",
        ack_code: str | None = None,
        ack: bytes | None = None,
        error: dict[str, Any] | None = None,
    ) -> tuple[MessageRecord, MessageRecord | None]:
        now = _now()
        key = dedupe_key(header)
        values: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "received_at": now,
            "peer": _clip(peer),
            "sending_application": _clip(header.sending_application),
            "sending_facility": _clip(header.sending_facility),
            "control_id": _clip(header.control_id),
            "message_code": header.message_code[:16],
            "trigger_event": header.trigger_event[:16],
            "version": header.version[:16],
            "ack_mode": ack_mode,
            "status": status,
            "raw": bytes(raw),
            "ack_code": ack_code,
            "ack": ack,
            "error": orjson.dumps(error).decode() if error else None,
            "processed_at": now if status != "received" else None,
            "attempts": 1 if claim_seconds else 0,  # claimed at add: the caller is processing it now
            "claimed_until": now + timedelta(seconds=claim_seconds) if claim_seconds else None,
            "dedupe_key": key,
        }
        with self._tx(write=True) as conn:
            original: MessageRecord | None = None
            if key is not None:
                # One statement in the common case; the unique key settles a race with a concurrent delivery
                # (PostgreSQL waits for the other transaction, then finds its row below).
                if conn.execute(_INSERT_IF_NEW[conn.dialect.name], values).first() is not None:
                    return _from_values(values), None
                row = conn.execute(sa.select(hl7v2_message).where(_T.dedupe_key == key)).first()
                if row is not None:
                    original = _record(row)
                    values.update(
                        dedupe_key=None,
                        duplicate_of=original.id,
                        status="duplicate",
                        claimed_until=None,
                        attempts=0,
                        ack_code=None,
                        ack=None,
                        error=None,
                        processed_at=None,
                    )
            conn.execute(sa.insert(hl7v2_message), values)
            return _from_values(values), original

    def claim(self, id: str, *, seconds: float, statuses: Sequence[str] = ("received",)) -> MessageRecord | None:
        now = _now()
        with self._tx(write=True) as conn:
            done = conn.execute(
                sa.update(hl7v2_message)
                .where(
                    _T.id == id,
                    _T.status.in_(list(statuses)),
                    sa.or_(_T.claimed_until.is_(None), _T.claimed_until < now),
                )
                .values(claimed_until=now + timedelta(seconds=seconds), attempts=_T.attempts + 1)
            )
            if done.rowcount != 1:
                return None
            return self._get(conn, id)

    def claim_pending(self, limit: int, *, seconds: float) -> list[MessageRecord]:
        now = _now()
        free = sa.or_(_T.claimed_until.is_(None), _T.claimed_until < now)
        with self._tx(write=True) as conn:
            ids = (
                conn.execute(
                    sa.select(_T.id)
                    .where(_T.status == "received", free)
                    .order_by(_T.received_at, _T.id)
                    .limit(max(1, limit))
                )
                .scalars()
                .all()
            )
            out = []
            for id in ids:  # compare-and-set each: another worker may have taken it meanwhile (PostgreSQL)
                done = conn.execute(
                    sa.update(hl7v2_message)
                    .where(_T.id == id, _T.status == "received", free)
                    .values(claimed_until=now + timedelta(seconds=seconds), attempts=_T.attempts + 1)
                )
                if done.rowcount == 1:
                    rec = self._get(conn, id)
                    if rec is not None:
                        out.append(rec)
            return out

    def finish(
        self,
        id: str,
        *,
        status: str,
        ack_code: str | None = None,
        ack: bytes | None = None,
        error: dict[str, Any] | None = None,
        resources: Sequence[dict[str, Any]] | None = None,
        keep_ack: bool = False,
    ) -> MessageRecord:
        values: dict[str, Any] = {
            "status": status,
            "error": orjson.dumps(error).decode() if error else None,
            "processed_at": _now(),
            "claimed_until": None,
        }
        if resources is not None:
            values["resources"] = orjson.dumps(list(resources)).decode()
        if not keep_ack:
            values["ack_code"] = ack_code
            values["ack"] = ack
        with self._tx(write=True) as conn:
            row = conn.execute(
                sa.update(hl7v2_message).where(_T.id == id).values(**values).returning(*hl7v2_message.c)
            ).first()
        if row is None:
            raise KeyError(id)
        return _record(row)

    def release(self, id: str) -> None:
        with self._tx(write=True) as conn:
            conn.execute(sa.update(hl7v2_message).where(_T.id == id).values(claimed_until=None))

    def set_ack(self, id: str, *, ack_code: str | None, ack: bytes | None) -> None:
        with self._tx(write=True) as conn:
            conn.execute(sa.update(hl7v2_message).where(_T.id == id).values(ack_code=ack_code, ack=ack))

    # -- reads -----------------------------------------------------------------------------------------------
    @staticmethod
    def _get(conn: Connection, id: str) -> MessageRecord | None:
        row = conn.execute(sa.select(hl7v2_message).where(_T.id == id)).first()
        return _record(row) if row is not None else None

    def get(self, id: str) -> MessageRecord | None:
        if not id or len(id) > 36:
            return None
        with self._tx(write=False) as conn:
            return self._get(conn, id)

    def search(self, query: MessageQuery) -> MessagePage:
        conds: list[Any] = []
        if query.status:
            conds.append(_T.status == query.status)
        if query.message_code:
            conds.append(_T.message_code == query.message_code.upper())
        if query.trigger_event:
            conds.append(_T.trigger_event == query.trigger_event.upper())
        if query.control_id:
            conds.append(_T.control_id == query.control_id)
        if query.received_from:
            conds.append(_T.received_at >= _naive(query.received_from))
        if query.received_to:
            conds.append(_T.received_at < _naive(query.received_to))
        if query.cursor:
            at, last = _decode_cursor(query.cursor)
            conds.append(sa.or_(_T.received_at < at, sa.and_(_T.received_at == at, _T.id < last)))
        count = max(1, query.count)
        stmt = (
            sa.select(hl7v2_message)
            .where(*conds)
            .order_by(_T.received_at.desc(), _T.id.desc())  # newest first
            .limit(count + 1)
        )
        with self._tx(write=False) as conn:
            rows = conn.execute(stmt).all()
        records = [_record(r) for r in rows[:count]]
        cursor = None
        if len(rows) > count:
            last_row = rows[count - 1]._mapping
            cursor = _encode_cursor(last_row["received_at"], last_row["id"])
        return MessagePage(records, cursor)

    def ids_with_status(self, status: str, limit: int) -> list[str]:
        with self._tx(write=False) as conn:
            stmt = sa.select(_T.id).where(_T.status == status).order_by(_T.received_at, _T.id).limit(max(1, limit))
            return list(conn.execute(stmt).scalars().all())

    def close(self) -> None:
        self._engine.dispose()
