"""Resource-change events and what a consumer of them needs (no Redis, no SQL here; adapters implement these).

An ``Event`` says "resource X reached version N by operation op" and nothing more: consumers always read the
*current* resource from the store, so a late, repeated or out-of-order event converges on the latest state.
Every event comes from one row of the transactional outbox (``outbox_id``), written in the same database
transaction as the resource; replays carry ``force`` so that a consumer re-projects even what it already did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from app.billing.ports import ErpError, ErpNotReady
from app.fhir.errors import FhirError, StoreUnavailable

OPERATIONS = ("create", "update", "delete")
STATUSES = ("pending", "projected", "skipped", "failed", "dead")


@dataclass(frozen=True)
class Event:
    outbox_id: int
    resource_type: str
    resource_id: str
    version_id: int
    operation: str  # create | update | delete
    occurred_at: str  # ISO 8601 UTC, from the outbox row
    event_id: str = ""  # uuid of the outbox row (stable across relays and replays)
    attempt: int = 0  # failed attempts so far
    force: bool = False  # a replay: project even when nothing changed since the last projection

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"


@dataclass(frozen=True)
class OutboxRow:
    id: int
    event_id: str
    resource_type: str
    resource_id: str
    version_id: int
    operation: str
    created_at: datetime  # timezone-aware UTC
    published_at: datetime | None = None

    def event(self, *, force: bool = False) -> Event:
        return Event(
            outbox_id=self.id,
            resource_type=self.resource_type,
            resource_id=self.resource_id,
            version_id=self.version_id,
            operation=self.operation,
            occurred_at=self.created_at.isoformat(),
            event_id=self.event_id,
            force=force,
        )


class Outbox(Protocol):
    """The durable side of the backbone (the SQL outbox table)."""

    def unpublished(self, limit: int) -> list[OutboxRow]: ...

    def mark_published(self, ids: Sequence[int]) -> None: ...

    def since(self, since: datetime, *, resource_types: Sequence[str] | None = None) -> list[OutboxRow]:
        """The newest row per resource changed at or after ``since`` (for replay), oldest first."""
        ...


@dataclass
class ProjectionState:
    """Where one resource stands with one consumer (``erp``)."""

    consumer: str
    resource_type: str
    resource_id: str
    status: str  # one of STATUSES
    attempts: int = 0
    version_id: int | None = None  # the version last handled
    content_hash: str | None = None  # hash of the business content last projected (loop and resend guard)
    error_class: str | None = None
    error_message: str | None = None
    erp_refs: dict[str, Any] = field(default_factory=dict)  # {"account.move": 42, "number": "INV/2026/00001", ...}
    payment_state: str | None = None
    updated_at: datetime | None = None

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"

    def as_json(self) -> dict[str, Any]:
        return {
            "consumer": self.consumer,
            "resource": self.reference,
            "status": self.status,
            "attempts": self.attempts,
            "versionId": self.version_id,
            "errorClass": self.error_class,
            "errorMessage": self.error_message,
            "erp": self.erp_refs,
            "paymentState": self.payment_state,
            "updatedAt": self.updated_at.isoformat() if self.updated_at else None,
        }


class ProjectionStates(Protocol):
    def get(self, consumer: str, resource_type: str, resource_id: str) -> ProjectionState | None: ...

    def save(self, state: ProjectionState) -> None:
        """Insert or replace (``updated_at`` is set by the store)."""
        ...

    def list(
        self,
        consumer: str,
        *,
        status: str | None = None,
        resource_type: str | None = None,
        resource_id: str | None = None,
        limit: int = 100,
    ) -> list[ProjectionState]: ...


class EventHandler(Protocol):
    """A consumer of events. ``handle`` raises to fail; the bus retries transient errors with backoff and
    dead-letters the rest (or after its attempt budget), telling the handler through ``failed``."""

    name: str
    resource_types: frozenset[str] | None  # None: every type

    def handle(self, event: Event) -> None: ...

    def failed(self, event: Event, error: BaseException, *, attempts: int, dead: bool) -> None: ...


# ---------------------------------------------------------------------------------------------------------------
# error classification (shared by the bus and the admin surfaces)
# ---------------------------------------------------------------------------------------------------------------
def is_transient(error: BaseException) -> bool:
    """Whether a retry can help. Unknown errors count as transient: a bug then reaches the dead letters after
    the attempt budget, with its class, instead of being dropped on first sight."""
    if isinstance(error, ErpError):
        return error.transient
    if isinstance(error, StoreUnavailable):
        return True
    if isinstance(error, FhirError):  # mapping errors (422) and the like: the data will not change by waiting
        return False
    return True


def is_waiting(error: BaseException) -> bool:
    """Waiting on another record (a payment before its invoice): has its own, longer attempt budget."""
    return isinstance(error, ErpNotReady)


def describe_error(error: BaseException) -> tuple[str, str]:
    """(class, message) for dead letters and the projection state. For an ERP error the ERP's own class name
    (``odoo.exceptions.UserError``) comes first; never the request data."""
    name = type(error).__name__
    erp_name = getattr(error, "odoo_name", "") or ""
    erp_message = getattr(error, "odoo_message", None)
    cls = f"{name} ({erp_name})" if erp_name else name
    message = str(erp_message if erp_message is not None else error)
    if isinstance(error, FhirError):
        message = getattr(error, "diagnostics", None) or message
    return cls[:200], message[:2000]


def event_fields(event: Event) -> dict[str, str]:
    """The flat string map an event travels as (Redis stream entry)."""
    return {
        "oid": str(event.outbox_id),
        "eid": event.event_id,
        "type": event.resource_type,
        "id": event.resource_id,
        "version": str(event.version_id),
        "op": event.operation,
        "ts": event.occurred_at,
        "attempt": str(event.attempt),
        "force": "1" if event.force else "0",
    }


def event_from_fields(fields: Mapping[str, str]) -> Event:
    return Event(
        outbox_id=int(fields.get("oid") or 0),
        event_id=fields.get("eid", ""),
        resource_type=fields["type"],
        resource_id=fields["id"],
        version_id=int(fields.get("version") or 0),
        operation=fields.get("op", "update"),
        occurred_at=fields.get("ts", ""),
        attempt=int(fields.get("attempt") or 0),
        force=fields.get("force") == "1",
    )
