"""The MLLP listener's handler for the ingest service: one frame in, ``Hl7Ingest.receive`` in a thread, ACK out.

The service is synchronous (SQL, CPU-bound mapping); ``asyncio.to_thread`` keeps the event loop free for the other
connections while one message is stored, translated and committed.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from app.mllp.server import PeerInfo


class Receiver(Protocol):
    def receive(self, raw: bytes, *, peer: str, ack_mode: str = "commit") -> bytes: ...


class IngestHandler:
    """An ``MllpHandler`` (``await handler(message, peer) -> ack``) over a ``Receiver`` (``Hl7Ingest``)."""

    def __init__(self, ingest: Receiver, *, ack_mode: str = "commit") -> None:
        if ack_mode not in ("commit", "receipt"):
            raise ValueError("ack_mode must be 'commit' or 'receipt'")
        self.ingest = ingest
        self.ack_mode = ack_mode

    async def __call__(self, message: bytes, peer: PeerInfo, /) -> bytes:
        where = f"mllp{'s' if peer.tls else ''}:{peer.host}:{peer.port}#{peer.connection_id}"
        return await asyncio.to_thread(self.ingest.receive, message, peer=where, ack_mode=self.ack_mode)
