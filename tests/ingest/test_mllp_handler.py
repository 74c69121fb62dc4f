"""The MLLP listener in-process with the real ingest handler, on every backend: frames in, stored + committed,
ACKs out; concurrent connections; a receipt-mode handler; graceful shutdown via ``serve``."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.config import Settings
from app.mllp.client import MllpClient
from app.mllp.ingest_handler import IngestHandler
from app.mllp.main import serve
from app.mllp.server import MllpServer, PeerInfo
from app.services.ingest import Hl7Ingest
from app.services.ports import MessageQuery
from app.services.rest import FhirRouter

from . import samples
from .conftest import msa, search


def test_handler_runs_the_service_and_names_the_peer(ingest: Hl7Ingest) -> None:
    handler = IngestHandler(ingest, ack_mode="commit")
    ack = asyncio.run(handler(samples.adt_a01(), PeerInfo("10.0.0.7", 5000, 3, tls=True)))

    assert msa(ack) == ("AA", "CTRL0001")
    [rec] = ingest.messages.search(MessageQuery()).records
    assert rec.peer == "mllps:10.0.0.7:5000#3"


def test_concurrent_connections_each_get_their_own_acks(ingest: Hl7Ingest, router: FhirRouter) -> None:
    async def scenario() -> list[list[tuple[str, str]]]:
        async with MllpServer(IngestHandler(ingest), host="127.0.0.1", port=0) as server:

            async def one_sender(n: int) -> list[tuple[str, str]]:
                async with MllpClient("127.0.0.1", server.port) as client:
                    out = []
                    for i in range(3):
                        raw = samples.adt_a01(f"C{n}-{i}", mrn=f"CM{n}{i}", visit=f"CV{n}{i}")
                        out.append(msa(await client.send(raw)))
                    return out

            return await asyncio.gather(*(one_sender(n) for n in range(4)))

    results = asyncio.run(scenario())

    assert results == [[("AA", f"C{n}-{i}") for i in range(3)] for n in range(4)]
    assert len(search(router, "Patient")) == 12


def test_serve_stops_gracefully_when_cancelled(ingest: Hl7Ingest, router: FhirRouter, tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, mllp_port=0, mllp_ack_mode="commit")

    async def scenario() -> tuple[str, str]:
        started: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(serve(settings, ingest, ready=lambda s: started.set_result(s.port)))
        port = await asyncio.wait_for(started, 30)
        async with MllpClient("127.0.0.1", port) as client:
            ack = await client.send(samples.oru_r01())
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return msa(ack)

    assert asyncio.run(scenario()) == ("AA", "CTRL0100")
    assert len(search(router, "Observation")) == 3
