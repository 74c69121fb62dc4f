"""The package's entry point: ``translate(raw) -> Translation`` (bytes in; header facts, a FHIR transaction Bundle
and warnings out), and ``receive(raw) -> Receipt`` which never raises and knows which ACK to answer.

Pure: no storage, no sockets. The ingest service stores the raw message, calls ``translate``, commits the Bundle,
and only then answers AA (``receipt.ack()``); on a storage failure it answers ``receipt.ack(error=...)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from app.hl7v2 import ack as ack_mod
from app.hl7v2 import datatypes as dt
from app.hl7v2 import vocab
from app.hl7v2.config import DEFAULT_CONFIG, Hl7Config
from app.hl7v2.context import Context
from app.hl7v2.errors import (
    Hl7Error,
    Hl7Warning,
    InternalError,
    Location,
    RequiredFieldMissing,
    UnsupportedMessageType,
    UnsupportedProcessingId,
    UnsupportedVersion,
)
from app.hl7v2.messages import lookup
from app.hl7v2.parser import Message, parse
from app.hl7v2.segments.evn import event_facts
from app.hl7v2.segments.msh import Header, read_header

__all__ = ["Translation", "Receipt", "translate", "receive"]

V2_EVENT = "http://terminology.hl7.org/CodeSystem/v2-0003"
PARTICIPANT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"


@dataclass
class Translation:
    header: Header
    bundle: dict[str, Any]  # Bundle.type = transaction
    warnings: list[Hl7Warning]
    message: Message

    @property
    def resources(self) -> list[dict[str, Any]]:
        return [e["resource"] for e in self.bundle["entry"]]

    def message_header(self) -> dict[str, Any]:
        """The MessageHeader-equivalent record (focus = the resources produced), for the caller's message log."""
        focus = [e["fullUrl"] for e in self.bundle["entry"] if e["resource"]["resourceType"] != "Provenance"]
        return self.header.message_header(focus)


def check_header(header: Header, config: Hl7Config) -> None:
    if header.message_code == "ACK":
        raise UnsupportedMessageType("an ACK is not processed (and never acknowledged)", location=Location("MSH", 1, 9))
    if not header.control_id:
        raise RequiredFieldMissing("MSH-10 message control id is empty", location=Location("MSH", 1, 10))
    if header.processing_id not in config.processing_ids:
        raise UnsupportedProcessingId(
            f"processing id {header.processing_id!r} is not accepted", location=Location("MSH", 1, 11)
        )
    if header.version not in config.versions:
        raise UnsupportedVersion(f"version {header.version!r} is not supported", location=Location("MSH", 1, 12))


def translate(
    raw: bytes | str | Message,
    *,
    config: Hl7Config | None = None,
    message_ref: str | dict[str, str] | None = None,
    received_at: datetime | None = None,
) -> Translation:
    """Map one de-framed HL7v2 message to a FHIR transaction Bundle. Raises Hl7Error (AE/AR) on failure.

    ``message_ref``: the stored original message, as a reference (relative or absolute URL, e.g. ``Binary/123``)
    or as an Identifier dict; without it the Provenance names the message by its sender-scoped control id.
    ``received_at``: the Provenance's ``recorded`` instant (defaults to now; fixed in tests for reproducible output).
    """
    config = config or DEFAULT_CONFIG
    msg = raw if isinstance(raw, Message) else parse(raw)
    header = read_header(msg)
    check_header(header, config)
    reg = lookup(header.message_code, header.trigger)
    ctx = Context(msg, config, code=header.message_code, trigger=header.trigger, sender=header.sender)
    ctx.owns = set(reg.owns)
    for w in msg.warnings:
        ctx.warn(w)
    try:
        with vocab.bound(config):  # the config's terminology (site overrides) for every code map in the handlers
            reg.handler(msg, ctx)
    except Hl7Error:
        raise
    except Exception as exc:  # a mapping bug must become an AE, never a dropped connection
        raise InternalError(f"mapping failed: {type(exc).__name__}", location=Location()) from exc
    if not ctx.entries():
        ctx.warn("the message produced no resources")
    evn = event_facts(msg.segment("EVN"), ctx)  # may add the operator's Practitioner: before collecting entries
    entries = ctx.entries()
    entries.append(_provenance(ctx, header, entries, message_ref, received_at, evn))
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    stamp = dt.ts(header.timestamp, ctx.zone, "instant")
    if stamp:
        bundle["timestamp"] = stamp
    return Translation(header=header, bundle=bundle, warnings=ctx.warnings, message=msg)


def _provenance(
    ctx: Context,
    header: Header,
    entries: list[dict[str, Any]],
    message_ref: str | dict[str, str] | None,
    received_at: datetime | None,
    evn: dict[str, Any],
) -> dict[str, Any]:
    recorded = (received_at or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")
    sender_system = "urn:id:" + (header.sender or "unknown").replace(" ", "_")
    if isinstance(message_ref, dict):
        what: dict[str, Any] = {"identifier": dict(message_ref)}
    elif message_ref:
        what = {"reference": message_ref}
    else:
        what = {"identifier": {"system": sender_system, "value": header.control_id}}
    what["display"] = f"{header.message_code}^{header.trigger} {header.control_id}"
    res: dict[str, Any] = {
        "resourceType": "Provenance",
        "target": [{"reference": e["fullUrl"]} for e in entries],
        "recorded": recorded,
        "activity": {"coding": [{"system": V2_EVENT, "code": header.trigger}]},
        "agent": [
            {
                "type": {"coding": [{"system": PARTICIPANT, "code": "author"}]},
                "who": {
                    "identifier": {"system": "urn:id:hl7v2-sender", "value": header.sender or "unknown"},
                    "display": header.sender or "unknown",
                },
            }
        ],
        "entity": [{"role": "source", "what": what}],
    }
    if "occurred" in evn:
        res["occurredDateTime"] = evn["occurred"]
    elif "recorded" in evn:
        res["occurredDateTime"] = evn["recorded"]
    if "reason" in evn:
        res["reason"] = [evn["reason"]]
    if "operator" in evn and "reference" in evn["operator"]:
        res["agent"].append({"type": {"coding": [{"system": PARTICIPANT, "code": "enterer"}]}, "who": evn["operator"]})
    full_url = "urn:uuid:" + ctx.uuid_for("Provenance", header.sender, header.control_id)
    return {"fullUrl": full_url, "resource": res, "request": {"method": "POST", "url": "Provenance"}}


@dataclass
class Receipt:
    """The outcome of receiving one message: a Translation or an Hl7Error, and how to acknowledge it."""

    raw: bytes
    translation: Translation | None = None
    error: Hl7Error | None = None
    message: Message | None = None
    header: Header | None = None
    warnings: list[Hl7Warning] = field(default_factory=list)

    @property
    def should_reply(self) -> bool:
        """False for an inbound ACK: never acknowledge an acknowledgement."""
        return not (self.header is not None and self.header.message_code == "ACK") and not ack_mod.is_ack(self.raw)

    def ack(self, error: Hl7Error | None = None, *, accept: bool = False, **kw: Any) -> bytes | None:
        """The ACK to send (after committing, for AA). ``error`` overrides (e.g. the store failed -> AE).

        ``accept=True`` builds the enhanced-mode accept ACK (CA/CE/CR). Returns None when MSH-15/16 say not to
        answer this outcome (enhanced mode NE/ER/SU) or the message is itself an ACK.
        """
        if not self.should_reply:
            return None
        err = error or self.error
        if self.message is None:
            return ack_mod.minimal_ack(self.raw, ack_mod.ack_code(err, accept=accept), err, **kw)
        try:
            if accept:
                return ack_mod.accept_ack(self.message, err, **kw)
            if self.header is None or not self.header.enhanced_mode:
                code = ack_mod.ack_code(err)
                return ack_mod.build_ack(self.message, code, errors=[err] if err else [], **kw)
            return ack_mod.application_ack(self.message, err, **kw)
        except Exception:  # an unreadable MSH must still be answered
            return ack_mod.minimal_ack(self.raw, ack_mod.ack_code(err or InternalError("ack failed"), accept=accept))


def receive(
    raw: bytes,
    *,
    config: Hl7Config | None = None,
    message_ref: str | dict[str, str] | None = None,
    received_at: datetime | None = None,
) -> Receipt:
    """Parse and translate without raising: every outcome is a Receipt that can build its ACK."""
    receipt = Receipt(raw=bytes(raw))
    try:
        receipt.message = parse(receipt.raw)
        receipt.header = read_header(receipt.message)
        receipt.translation = translate(
            receipt.message, config=config, message_ref=message_ref, received_at=received_at
        )
        receipt.warnings = receipt.translation.warnings
    except Hl7Error as exc:
        receipt.error = exc
    except Exception as exc:  # defensive: the listener must always be able to answer
        receipt.error = InternalError(f"unexpected failure: {type(exc).__name__}")
    return receipt
