"""``interlace worker``: the outbox relay and the event consumers in one process, plus the dead-letter and replay
operations the CLI and the admin API share.

Threads: one relay (outbox -> stream) and one per consumer group (today ``erp``). SIGTERM or SIGINT sets ``stop``:
each loop finishes the entry it is on (its outcome recorded, acknowledged) and exits; nothing in flight is lost
either way, since an unacknowledged entry is re-delivered and an unmarked outbox row re-published.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Any

from app.config import Settings
from app.services.event_admin import (
    list_dead_letters,
    replay_dead_letter,
    replay_dead_letters,
    replay_since,
    show_dead_letter,
)
from app.wiring import EventBackbone, build_events, build_services

log = logging.getLogger("interlace.worker")

JOIN_TIMEOUT_S = 30.0


def open_backbone(settings: Settings, *, gateway: Any = None) -> EventBackbone:
    """Services + event backbone for ``settings``; close with ``close_backbone``."""
    services = build_services(settings)
    return build_events(settings, services, gateway=gateway)


def close_backbone(backbone: EventBackbone) -> None:
    backbone.close()
    backbone.services.close()


def run_worker(
    settings: Settings,
    *,
    stop: threading.Event | None = None,
    gateway: Any = None,
    install_signals: bool = True,
    ready: Callable[[EventBackbone], None] | None = None,
) -> int:
    """Run the relay and the consumers until ``stop`` is set (or SIGTERM/SIGINT); returns the exit status."""
    stop = stop or threading.Event()
    backbone = open_backbone(settings, gateway=gateway)
    previous: dict[int, Any] = {}
    if install_signals and threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous[sig] = signal.signal(sig, lambda *_: stop.set())
    try:
        if backbone.erp is None:
            log.warning("worker: INTERLACE_ODOO_URL is not set; relaying events only (no ERP projection)")
        threads = [
            threading.Thread(
                target=backbone.bus.relay(backbone.outbox).run,
                args=(stop,),
                kwargs={"poll_ms": settings.events_relay_poll_ms},
                name="outbox-relay",
            )
        ]
        for handler in backbone.handlers:
            consumer = backbone.bus.consumer(handler)
            threads.append(threading.Thread(target=consumer.run, args=(stop,), name=f"consumer-{handler.name}"))
            log.info("worker: consumer %s in group %s", consumer.name, handler.name)
        for t in threads:
            t.start()
        if ready is not None:
            ready(backbone)
        while not stop.is_set():
            stop.wait(0.5)
            if not all(t.is_alive() for t in threads):
                log.error("worker: a worker thread died; stopping")
                stop.set()
                return 1
        for t in threads:
            t.join(JOIN_TIMEOUT_S)
        log.info("worker: stopped")
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        close_backbone(backbone)


__all__ = [
    "close_backbone",
    "list_dead_letters",
    "open_backbone",
    "replay_dead_letter",
    "replay_dead_letters",
    "replay_since",
    "run_worker",
    "show_dead_letter",
]
