"""HTTP edge of the HL7v2 ingest: ``POST /hl7v2`` (same pipeline as MLLP) and the message operations.

- ``POST /hl7v2``: body = one ER7 message or an FHS/BHS batch; answers the ACK (or a batch of ACKs) as
  ``x-application/hl7-v2+er7`` with status 200 whatever the ACK code (the ACK says it); 204 when there is nothing
  to answer (the body was an ACK, or enhanced mode said not to).
- ``GET /hl7v2/messages``: newest first; filters ``status``, ``type`` (``ADT`` or ``ADT^A01``), ``control-id``,
  ``received-from`` / ``received-to`` (ISO date or date-time; from inclusive, to exclusive), ``_count``;
  ``next`` links carry an opaque ``_cursor``.
- ``GET /hl7v2/messages/<id>``: raw text, ACK, error (OperationOutcome), resources produced.
- ``POST /hl7v2/messages/<id>/$reprocess`` and ``POST /hl7v2/messages/$reprocess?status=error``.

Same auth gate as the FHIR API (``app.api.protect``). Errors are OperationOutcomes (``app.api.errors``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from flask import Response, request
from flask_smorest import Blueprint

from app.config import Settings
from app.fhir.errors import BadRequest, NotFound
from app.services.ingest import Hl7Ingest
from app.services.ports import STATUSES, MessageQuery, MessageRecord

PREFIX = "/hl7v2"
ER7 = "x-application/hl7-v2+er7"
JSON = "application/json"
MAX_COUNT = 500
DEFAULT_COUNT = 50


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type=JSON)


def _instant(dt: datetime | None) -> str | None:
    return dt.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z") if dt else None


def _text(data: bytes | None) -> str | None:
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")  # MSH-18 8859/x: shown byte for byte


def summary(rec: MessageRecord) -> dict[str, Any]:
    h = rec.header
    out: dict[str, Any] = {
        "id": rec.id,
        "receivedAt": _instant(rec.received_at),
        "status": rec.status,
        "type": "^".join(p for p in (h.message_code, h.trigger_event) if p),
        "controlId": h.control_id,
        "sendingApplication": h.sending_application,
        "sendingFacility": h.sending_facility,
        "version": h.version,
        "ackMode": rec.ack_mode,
        "ackCode": rec.ack_code,
        "attempts": rec.attempts,
        "processedAt": _instant(rec.processed_at),
    }
    if rec.duplicate_of:
        out["duplicateOf"] = rec.duplicate_of
    return out


def detail(rec: MessageRecord) -> dict[str, Any]:
    return {
        **summary(rec),
        "peer": rec.peer,
        "raw": _text(rec.raw),
        "ack": _text(rec.ack),
        "error": rec.error,
        "resources": rec.resources,
    }


def _parse_instant(name: str, value: str) -> datetime:
    try:
        dt = datetime.fromisoformat(value.strip().replace(" ", "+"))  # a "+" in a query string arrives as a space
    except ValueError:
        raise BadRequest(f"{name}={value!r}: expected an ISO 8601 date or date-time") from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def _query() -> MessageQuery:
    args = request.args
    status = args.get("status")
    if status and status not in STATUSES:
        raise BadRequest(f"status={status!r}: expected one of {', '.join(STATUSES)}")
    code = trigger = None
    if args.get("type"):
        code, _, trigger = args["type"].upper().partition("^")
    try:
        count = min(MAX_COUNT, max(1, int(args.get("_count", DEFAULT_COUNT))))
    except ValueError:
        raise BadRequest("_count must be a whole number") from None
    return MessageQuery(
        status=status or None,
        message_code=code or None,
        trigger_event=trigger or None,
        control_id=args.get("control-id") or args.get("control_id") or None,
        received_from=_parse_instant("received-from", args["received-from"]) if args.get("received-from") else None,
        received_to=_parse_instant("received-to", args["received-to"]) if args.get("received-to") else None,
        count=count,
        cursor=args.get("_cursor") or None,
    )


def _peer() -> str:
    return f"http:{request.remote_addr or '?'}"


def create_blueprint(
    ingest: Hl7Ingest, settings: Settings, *, gate: Callable[[Blueprint, str], None] | None = None
) -> Blueprint:
    """A fresh blueprint per app serving ``ingest`` at ``/hl7v2``. ``gate(blueprint, prefix)`` installs the token
    gate (``app.api.admin_gate``); without it, ``app.api.protect``'s closed/open gate."""
    from app.api import protect

    blp = Blueprint("hl7v2", __name__, url_prefix=PREFIX, description="HL7v2 over HTTP and the message store")

    def post_message() -> Response:
        """One HL7v2 message (ER7) or an FHS/BHS batch in; its ACK (or a batch of ACKs) out."""
        body = request.get_data(cache=False)
        if not body.strip():
            raise BadRequest("the body is empty: send one HL7v2 message (ER7) or an FHS/BHS batch")
        ack = ingest.receive_batch(body, peer=_peer(), ack_mode="commit")
        if not ack:
            return Response(status=204)
        return Response(ack, status=200, content_type=ER7)

    def list_messages() -> Response:
        """Stored messages, newest first (filters: status, type, control-id, received-from/-to; _count)."""
        query = _query()
        page = ingest.messages.search(query)
        out: dict[str, Any] = {"messages": [summary(r) for r in page.records]}
        if page.next_cursor:
            params = {k: v for k, v in request.args.items() if k != "_cursor"}
            params["_cursor"] = page.next_cursor
            out["next"] = f"{request.base_url}?{urlencode(params)}"
        return _json(out)

    def read_message(id: str) -> Response:
        """One stored message: raw text, ACK, error (OperationOutcome) and the resources it produced."""
        rec = ingest.messages.get(id)
        if rec is None:
            raise NotFound(f"no HL7v2 message {id}")
        return _json(detail(rec))

    def reprocess_one(id: str) -> Response:
        """Translate and commit a stored message again (e.g. after a mapping fix)."""
        return _json(detail(ingest.reprocess(id)))

    def reprocess_many() -> Response:
        """Reprocess every message in ``status`` (default error), oldest first."""
        status = request.args.get("status", "error")
        if status not in STATUSES or status == "duplicate":
            raise BadRequest(f"status={status!r}: expected one of received, processed, error, rejected")
        try:
            limit = min(10_000, max(1, int(request.args.get("_count", 1000))))
        except ValueError:
            raise BadRequest("_count must be a whole number") from None
        done = ingest.reprocess_all(status, limit=limit)
        counts: dict[str, int] = {}
        for rec in done:
            counts[rec.status] = counts.get(rec.status, 0) + 1
        return _json({"reprocessed": len(done), "outcomes": counts, "messages": [summary(r) for r in done]})

    blp.add_url_rule("", "post_message", post_message, methods=["POST"], strict_slashes=False)
    blp.add_url_rule("/messages", "list_messages", list_messages, methods=["GET"])
    blp.add_url_rule("/messages/$reprocess", "reprocess_many", reprocess_many, methods=["POST"])
    blp.add_url_rule("/messages/<id>", "read_message", read_message, methods=["GET"])
    blp.add_url_rule("/messages/<id>/$reprocess", "reprocess_one", reprocess_one, methods=["POST"])
    if gate is not None:
        gate(blp, PREFIX)
    else:
        protect.install(blp, settings, prefix=PREFIX)
    return blp
