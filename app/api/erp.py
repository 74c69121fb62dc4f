"""Admin HTTP surface of the ERP projection and its event backbone (JSON, errors as OperationOutcome).

- ``GET /erp/projections?status=failed|dead|pending|projected|skipped&resource=Invoice/123&resource-type=Invoice``
- ``GET /erp/dead-letters?consumer=erp&_count=100&after=<id>``, ``GET /erp/dead-letters/<id>``
- ``POST /erp/dead-letters/<id>/$replay``, ``POST /erp/dead-letters/$replay`` (all of the consumer's)
- ``POST /erp/$replay?since=2026-12-01T00:00:00Z``: re-project every resource changed since then (from the outbox)

Same auth gate as the FHIR API (``app.api.protect``). The blueprint gets the event backbone from the app factory
(``app.wiring.build_events``); it never builds adapters itself.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from flask import Response, request
from flask_smorest import Blueprint

from app.config import Settings
from app.fhir.errors import BadRequest, NotFound
from app.services.event_admin import (
    list_dead_letters,
    replay_dead_letter,
    replay_dead_letters,
    replay_since,
    show_dead_letter,
)
from app.services.events import STATUSES

PREFIX = "/erp"
MAX_COUNT = 1000


def _json(body: Any, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, content_type="application/json")


def _count(default: int = 100) -> int:
    try:
        return min(MAX_COUNT, max(1, int(request.args.get("_count", default))))
    except ValueError:
        raise BadRequest("_count must be a whole number") from None


def _consumer() -> str:
    consumer = request.args.get("consumer", "erp")
    if not consumer.replace("-", "").replace("_", "").isalnum():
        raise BadRequest("consumer: letters, digits, - and _ only")
    return consumer


def parse_since(value: str | None) -> datetime:
    if not value:
        raise BadRequest("since is required: an ISO 8601 date or date-time, e.g. since=2026-12-01T00:00:00Z")
    try:
        dt = datetime.fromisoformat(value.strip().replace(" ", "+").replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"since={value!r}: expected an ISO 8601 date or date-time") from None
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt


def create_blueprint(
    backbone: Any, settings: Settings, *, gate: Callable[[Blueprint, str], None] | None = None
) -> Blueprint:
    """``backbone``: an ``app.wiring.EventBackbone``; ``gate(blueprint, prefix)`` as for ``app.api.hl7v2``."""
    from app.api import protect

    blp = Blueprint("erp", __name__, url_prefix=PREFIX, description="ERP projection state, dead letters and replay")

    def projections() -> Response:
        status = request.args.get("status")
        if status and status not in STATUSES:
            raise BadRequest(f"status={status!r}: expected one of {', '.join(STATUSES)}")
        rtype = request.args.get("resource-type") or None
        rid = None
        if request.args.get("resource"):
            rtype, _, rid = request.args["resource"].partition("/")
            if not rtype or not rid:
                raise BadRequest("resource: expected Type/id, e.g. resource=Invoice/123")
        states = backbone.states.list(_consumer(), status=status, resource_type=rtype, resource_id=rid, limit=_count())
        return _json({"projections": [s.as_json() for s in states]})

    def dead_letters() -> Response:
        consumer = _consumer()
        letters = list_dead_letters(backbone, consumer, count=_count(), after=request.args.get("after") or None)
        return _json({"consumer": consumer, "total": backbone.bus.count_dead(consumer), "deadLetters": letters})

    def dead_letter(id: str) -> Response:
        letter = show_dead_letter(backbone, id, _consumer())
        if letter is None:
            raise NotFound(f"no dead letter {id}")
        return _json(letter)

    def replay_one(id: str) -> Response:
        if not replay_dead_letter(backbone, id, _consumer()):
            raise NotFound(f"no dead letter {id}")
        return _json({"replayed": 1})

    def replay_all() -> Response:
        return _json({"replayed": replay_dead_letters(backbone, _consumer())})

    def replay_from() -> Response:
        since = parse_since(request.args.get("since"))
        return _json({"replayed": replay_since(backbone, since, _consumer()), "since": since.isoformat()})

    blp.add_url_rule("/projections", "projections", projections, methods=["GET"])
    blp.add_url_rule("/dead-letters", "dead_letters", dead_letters, methods=["GET"])
    blp.add_url_rule("/dead-letters/$replay", "replay_all", replay_all, methods=["POST"])
    blp.add_url_rule("/dead-letters/<id>", "dead_letter", dead_letter, methods=["GET"])
    blp.add_url_rule("/dead-letters/<id>/$replay", "replay_one", replay_one, methods=["POST"])
    blp.add_url_rule("/$replay", "replay_since", replay_from, methods=["POST"])
    if gate is not None:
        gate(blp, PREFIX)
    else:
        protect.install(blp, settings, prefix=PREFIX)
    return blp
