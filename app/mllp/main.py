"""``run_listener(settings)``: the MLLP listener process (``interlace mllp``).

Builds the services through ``app.wiring`` (store, FHIR router, message store, ingest), serves MLLP with the
settings' limits and TLS, runs the receipt-mode translation workers (``INTERLACE_MLLP_WORKERS`` processes), and
stops gracefully on SIGTERM/SIGINT: no new connections, in-flight messages finish and get their ACK, workers
finish the message in hand.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from app.mllp.ingest_handler import IngestHandler
from app.mllp.server import MllpServer, server_ssl_context

if TYPE_CHECKING:
    from app.config import Settings
    from app.services.ingest import Hl7Ingest

log = logging.getLogger("interlace.mllp")

WORKER_BATCH = 10  # small: a crashed worker strands at most this many until their lease (30 s) runs out
WORKER_IDLE_SECONDS = 0.2  # receipt mode: how long an idle worker waits before looking for stored messages again
RECOVERY_IDLE_SECONDS = 5.0  # commit mode: sweep for messages a crash left unprocessed


class _Stop(Protocol):
    def is_set(self) -> bool: ...

    def wait(self, timeout: float | None = None) -> bool: ...


def worker_loop(
    ingest: Hl7Ingest, stop: _Stop, *, idle: float = WORKER_IDLE_SECONDS, parent: int | None = None
) -> None:
    """Translate stored ``received`` messages until ``stop`` is set (or, with ``parent``, until that process is
    gone); never dies on one bad message or a store outage (it logs, waits and tries again)."""
    while not stop.is_set():
        if parent is not None and os.getppid() != parent:
            log.warning("mllp.worker_orphaned: the listener is gone, stopping")
            return
        try:
            taken = ingest.process_pending(WORKER_BATCH)
        except Exception as exc:  # the store is down: back off
            log.error("mllp.worker_error error=%s", type(exc).__name__)
            taken = 0
        if not taken:
            stop.wait(idle)


def start_worker_threads(
    ingest: Hl7Ingest, count: int, *, idle: float = WORKER_IDLE_SECONDS
) -> tuple[threading.Event, list[threading.Thread]]:
    stop = threading.Event()
    threads = [
        threading.Thread(
            target=worker_loop, args=(ingest, stop), kwargs={"idle": idle}, name=f"hl7v2-worker-{i}", daemon=True
        )
        for i in range(max(1, count))
    ]
    for t in threads:
        t.start()
    return stop, threads


def _worker_process(settings: Settings, stop: _Stop, parent: int) -> None:
    """A receipt-mode translation worker in its own process (own GIL: mapping and committing are CPU-bound and
    would otherwise slow down the event loop that answers ACKs). Stopped by the listener through ``stop``; SIGINT
    from a terminal goes to the listener, which then stops the workers in order."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    local = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: local.set())
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from app.wiring import build_ingest, build_services

    services = build_services(settings)
    ingest = build_ingest(settings, services)

    class Either:
        def is_set(self) -> bool:
            return stop.is_set() or local.is_set()

        def wait(self, timeout: float | None = None) -> bool:
            local.wait(timeout)
            return self.is_set()

    try:
        worker_loop(ingest, Either(), parent=parent)
    finally:
        ingest.messages.close()
        services.close()


def start_worker_processes(settings: Settings, count: int) -> tuple[Any, list[Any]]:
    ctx = multiprocessing.get_context("spawn")  # never fork a process with an event loop and DB pools
    stop = ctx.Event()
    procs = [
        ctx.Process(target=_worker_process, args=(settings, stop, os.getpid()), name=f"hl7v2-worker-{i}", daemon=True)
        for i in range(max(1, count))
    ]
    for p in procs:
        p.start()
    return stop, procs


def _join_processes(procs: list[Any], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():  # stuck (a database that never answers): its claims expire and are retried
            log.warning("mllp.worker_kill pid=%s", p.pid)
            p.terminate()
            p.join(5)


async def serve(settings: Settings, ingest: Hl7Ingest, *, ready: Callable[[MllpServer], None] | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or until the task is cancelled)."""
    ssl_context = (
        server_ssl_context(settings.mllp_tls_cert, settings.mllp_tls_key or None) if settings.mllp_tls_cert else None
    )
    server = MllpServer(
        IngestHandler(ingest, ack_mode=settings.mllp_ack_mode),
        host=settings.mllp_host,
        port=settings.mllp_port,
        ssl_context=ssl_context,
        max_frame_bytes=settings.mllp_max_frame_bytes,
        idle_timeout=float(settings.mllp_idle_timeout),
        read_timeout=float(settings.mllp_read_timeout),
    )
    # Receipt mode translates behind the ACK, in worker processes; commit mode still sweeps now and then (one
    # thread) for messages a crash left stored but unprocessed (the sender's resend would also recover them).
    stop: Any = threading.Event()
    threads: list[threading.Thread] = []
    procs: list[Any] = []
    loop = asyncio.get_running_loop()
    closing: list[asyncio.Task[None]] = []

    def on_signal(signame: str) -> None:
        if not closing:
            log.info("mllp.signal %s: shutting down", signame)
            closing.append(loop.create_task(server.close()))

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal, sig.name)
        except (NotImplementedError, RuntimeError):  # not the main thread (tests) or not supported
            pass
    try:
        if settings.mllp_ack_mode == "receipt":
            stop, procs = start_worker_processes(settings, settings.mllp_workers)
        else:
            stop, threads = start_worker_threads(ingest, 1, idle=RECOVERY_IDLE_SECONDS)
        await server.start()
        log.info(
            "Interlace MLLP listener on %s:%d (ack %s, tls %s)",
            settings.mllp_host,
            server.port,
            settings.mllp_ack_mode,
            "on" if ssl_context else "off",
        )
        if ready is not None:
            ready(server)
        await server.serve_forever()
    finally:
        if not server.closing:
            await server.close()
        stop.set()
        for t in threads:
            await asyncio.to_thread(t.join, 30)
        if procs:
            await asyncio.to_thread(_join_processes, procs, 30.0)
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                loop.remove_signal_handler(sig)
            except (NotImplementedError, RuntimeError):
                pass


def run_listener(settings: Settings, *, ready: Callable[[MllpServer], None] | None = None) -> None:
    """Build everything from ``settings`` and serve MLLP until SIGTERM/SIGINT. The schema must be at head
    (``interlace db upgrade``)."""
    from app.wiring import build_ingest, build_services

    if settings.effective_database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    services = build_services(settings)
    ingest = build_ingest(settings, services)
    try:
        asyncio.run(serve(settings, ingest, ready=ready))
    finally:
        ingest.messages.close()
        services.close()


def main() -> None:
    """``python -m app.mllp.main``: the listener with settings from the environment (what ``interlace mllp`` runs)."""
    from app.config import load_settings

    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run_listener(settings)


if __name__ == "__main__":  # pragma: no cover
    main()
