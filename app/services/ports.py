"""What the services need from outside, as Protocols (no SQL, no Redis here; adapters implement them).

``MessageStore`` keeps every inbound HL7v2 message: the raw bytes first (before any ACK), then the outcome of
processing it (status, the ACK a resend gets, the OperationOutcome of a failure, the resources it produced).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

MessageStatus = Literal["received", "processed", "error", "rejected", "duplicate"]
AckMode = Literal["commit", "receipt"]

STATUSES: tuple[str, ...] = ("received", "processed", "error", "rejected", "duplicate")
ACK_MODES: tuple[str, ...] = ("commit", "receipt")


@dataclass(frozen=True)
class MessageHeaderFacts:
    """The MSH facts stored as columns: enough to list, filter and deduplicate without parsing the raw bytes.

    Empty strings when the message has no readable MSH (it is still stored, as ``rejected``)."""

    sending_application: str = ""
    sending_facility: str = ""
    control_id: str = ""
    message_code: str = ""
    trigger_event: str = ""
    version: str = ""


@dataclass(frozen=True)
class MessageRecord:
    """One stored inbound message (one delivery: a resend is its own record, status ``duplicate``)."""

    id: str
    received_at: datetime  # timezone-aware UTC
    peer: str  # "mllp:host:port" / "http:addr": where it came from (no PHI)
    header: MessageHeaderFacts
    ack_mode: str  # commit | receipt
    status: str  # one of STATUSES
    raw: bytes
    ack_code: str | None = None  # MSA-1 of the ACK sent (AA/AE/AR/CA/CE/CR), None when none was sent
    ack: bytes | None = None  # the ACK a resend of this message gets (unframed ER7)
    error: dict[str, Any] | None = None  # OperationOutcome of the failure (status error/rejected)
    resources: list[dict[str, Any]] = field(default_factory=list)  # [{"reference", "versionId", "outcome"}]
    attempts: int = 0  # processing attempts (translation + commit)
    processed_at: datetime | None = None
    duplicate_of: str | None = None  # for status duplicate: the original delivery's id

    @property
    def reference(self) -> str:
        """How FHIR resources (Provenance.entity) point at this record."""
        return f"hl7v2/messages/{self.id}"


@dataclass(frozen=True)
class MessageQuery:
    """Filters for listing messages; every field is optional. ``type`` is ``ADT`` or ``ADT^A01``."""

    status: str | None = None
    message_code: str | None = None
    trigger_event: str | None = None
    control_id: str | None = None
    received_from: datetime | None = None  # inclusive
    received_to: datetime | None = None  # exclusive
    count: int = 50
    cursor: str | None = None  # opaque, from a previous page


@dataclass(frozen=True)
class MessagePage:
    records: list[MessageRecord]
    next_cursor: str | None = None


class MessageStore(Protocol):
    """Durable message log. Every method is its own transaction (committed before it returns)."""

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
        """Store a delivery durably with ``status`` (and, when already known, its ACK or error).

        When the header names a sender + control id already stored, the delivery is stored as ``duplicate`` of
        it and the original is returned as the second item (else None). ``claim_seconds``: claim the new record
        for this long (attempts = 1), so that workers leave it to the caller."""
        ...

    def get(self, id: str) -> MessageRecord | None: ...

    def claim(self, id: str, *, seconds: float, statuses: Sequence[str] = ("received",)) -> MessageRecord | None:
        """Take a record for processing (attempts + 1) unless another holder's claim is still running or its
        status is not in ``statuses``; None when not taken."""
        ...

    def claim_pending(self, limit: int, *, seconds: float) -> list[MessageRecord]:
        """Claim up to ``limit`` ``received`` records nobody holds, oldest first (for receipt-mode workers)."""
        ...

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
        """Record an outcome and release the claim. ``keep_ack`` leaves the stored ACK as it is (receipt mode:
        the sender already has its ACK). ``error=None`` clears a previous error."""
        ...

    def release(self, id: str) -> None:
        """Give a claim back without an outcome (a transient failure: a worker retries later)."""
        ...

    def set_ack(self, id: str, *, ack_code: str | None, ack: bytes | None) -> None:
        """Record the ACK sent for a still-``received`` record (receipt mode)."""
        ...

    def search(self, query: MessageQuery) -> MessagePage: ...

    def ids_with_status(self, status: str, limit: int) -> list[str]:
        """Ids of records in ``status``, oldest first (bulk reprocess)."""
        ...

    def close(self) -> None: ...
