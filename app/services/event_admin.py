"""Dead letters and replay, shared by the CLI (``interlace events ...``) and the admin API (``/erp/...``).

``backbone`` is an ``app.wiring.EventBackbone`` (``.bus``, ``.states``, ``.outbox``, ``.handlers``); nothing here
builds adapters.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

EventBackbone = Any


def list_dead_letters(
    backbone: EventBackbone, consumer: str = "erp", *, count: int = 100, after: str | None = None
) -> list[dict[str, Any]]:
    return [d.as_json() for d in backbone.bus.dead_letters(consumer, count=count, after=after)]


def show_dead_letter(backbone: EventBackbone, id: str, consumer: str = "erp") -> dict[str, Any] | None:
    letter = backbone.bus.dead_letter(consumer, id)
    if letter is None:
        return None
    out = letter.as_json()
    state = backbone.states.get(consumer, letter.event.resource_type, letter.event.resource_id)
    out["projection"] = state.as_json() if state else None
    return out


def replay_dead_letter(backbone: EventBackbone, id: str, consumer: str = "erp") -> bool:
    return bool(backbone.bus.replay_dead(consumer, id))


def replay_dead_letters(backbone: EventBackbone, consumer: str = "erp") -> int:
    return int(backbone.bus.replay_all_dead(consumer))


def replay_since(
    backbone: EventBackbone, since: datetime, consumer: str = "erp", *, resource_types: Sequence[str] | None = None
) -> int:
    """Re-project every resource changed since ``since`` (newest outbox row per resource; forced)."""
    if resource_types is None:
        handler = next((h for h in backbone.handlers if h.name == consumer), None)
        types = getattr(handler, "resource_types", None)
        resource_types = sorted(types) if types else None
    return int(backbone.bus.replay_since(consumer, backbone.outbox, since, resource_types=resource_types))
