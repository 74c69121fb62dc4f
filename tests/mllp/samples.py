"""Sample messages and a stand-in handler shared by the MLLP tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any, TypeVar

from app.mllp.fallback import local_minimal_ack
from app.mllp.framing import Frame, FrameDecoder
from app.mllp.server import PeerInfo

T = TypeVar("T")


def make_message(control_id: str = "MSG00001", *, pid_name: str = "DOE^JOHN", extra: bytes = b"") -> bytes:
    """A small ADT^A01 with the given MSH-10; ``extra`` pads the PID segment (for size tests)."""
    return (
        b"MSH|^~\\&|SENDAPP|SENDFAC|RECVAPP|RECVFAC|20240101120000||ADT^A01^ADT_A01|"
        + control_id.encode()
        + b"|P|2.5.1\rEVN|A01|20240101120000\rPID|1||12345^^^HOSP^MR||"
        + pid_name.encode()
        + extra
        + b"||19800101|M\r"
    )


async def ack_handler(message: bytes, peer: PeerInfo) -> bytes:
    """Answers AA, echoing MSH-10 in MSA-2: the test's stand-in for the real ingest service."""
    return local_minimal_ack(message, "AA")


def run(coro: Coroutine[Any, Any, T], limit: float = 60.0) -> T:
    """asyncio.run with a safety net: a hang fails the test instead of blocking the suite."""

    async def bounded() -> T:
        async with asyncio.timeout(limit):
            return await coro

    return asyncio.run(bounded())


async def read_frames(reader: asyncio.StreamReader, count: int) -> list[bytes]:
    """Read exactly ``count`` reply frames (fails on EOF first)."""
    dec = FrameDecoder(1 << 20)
    frames: list[bytes] = []
    while len(frames) < count:
        data = await reader.read(65536)
        assert data, f"connection closed after {len(frames)} of {count} replies"
        frames += [i.payload for i in dec.feed(data) if isinstance(i, Frame)]
    assert len(frames) == count
    return frames


async def read_to_eof(reader: asyncio.StreamReader) -> list[bytes]:
    """All reply frames until the server closes the connection."""
    dec = FrameDecoder(1 << 20)
    frames: list[bytes] = []
    while data := await reader.read(65536):
        frames += [i.payload for i in dec.feed(data) if isinstance(i, Frame)]
    return frames + [i.payload for i in dec.finish() if isinstance(i, Frame)]


def msa(ack: bytes) -> tuple[str, str]:
    """(MSA-1, MSA-2) of an ACK."""
    seg = next(s for s in ack.split(b"\r") if s.startswith(b"MSA"))
    fields = seg.split(seg[3:4])
    return fields[1].decode("latin-1"), fields[2].decode("latin-1")


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
