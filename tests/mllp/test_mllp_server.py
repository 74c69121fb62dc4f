"""MllpServer over real sockets on 127.0.0.1 (free port), driven by MllpClient or raw streams."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from app.mllp.client import MllpClient, MllpConnectionClosed, send
from app.mllp.fallback import local_minimal_ack
from app.mllp.framing import encode
from app.mllp.server import MllpHandler, MllpServer, PeerInfo

from .samples import ack_handler, close_writer, make_message, msa, read_frames, read_to_eof, run

HOST = "127.0.0.1"


def server(handler: MllpHandler = ack_handler, **kwargs: Any) -> MllpServer:
    kwargs.setdefault("idle_timeout", 30)
    kwargs.setdefault("read_timeout", 10)
    return MllpServer(handler, host=HOST, port=0, **kwargs)


def test_sequential_messages_on_one_connection_are_acked_in_order() -> None:
    async def scenario() -> None:
        async with server() as srv, MllpClient(HOST, srv.port) as client:
            acks = [await client.send(make_message(f"SEQ{i}")) for i in range(20)]
            assert [msa(a) for a in acks] == [("AA", f"SEQ{i}") for i in range(20)]
            assert srv.stats.connections_total == 1
            assert srv.stats.messages == srv.stats.acks_sent == 20

    run(scenario())


def test_pipelined_frames_in_one_write_are_handled_one_at_a_time_in_order() -> None:
    seen: list[str] = []
    active = 0

    async def handler(message: bytes, peer: PeerInfo) -> bytes:
        nonlocal active
        active += 1
        assert active == 1, "two messages of one connection handled at once"
        await asyncio.sleep(0.01)
        seen.append(msa(local_minimal_ack(message, "AA"))[1])
        active -= 1
        return local_minimal_ack(message, "AA")

    async def scenario() -> None:
        async with server(handler) as srv:
            reader, writer = await asyncio.open_connection(HOST, srv.port)
            writer.write(b"".join(encode(make_message(f"P{i}")) for i in range(10)))
            acks = await read_frames(reader, 10)
            await close_writer(writer)
        assert [msa(a)[1] for a in acks] == seen == [f"P{i}" for i in range(10)]

    run(scenario())


def test_200_concurrent_connections_each_get_their_own_acks() -> None:
    async def one(port: int, n: int) -> list[tuple[str, str]]:
        async with MllpClient(HOST, port) as client:
            return [msa(await client.send(make_message(f"C{n}M{i}"))) for i in range(3)]

    async def scenario() -> None:
        async with server(max_connections=300) as srv:
            results = await asyncio.gather(*(one(srv.port, n) for n in range(200)))
            assert srv.stats.connections_total == 200
            assert srv.stats.connections_rejected == 0
        assert results == [[("AA", f"C{n}M{i}") for i in range(3)] for n in range(200)]

    run(scenario())


def test_handler_sees_peer_address_and_distinct_connection_ids() -> None:
    peers: list[PeerInfo] = []

    async def handler(message: bytes, peer: PeerInfo) -> bytes:
        peers.append(peer)
        return local_minimal_ack(message, "AA")

    async def scenario() -> None:
        async with server(handler) as srv:
            await send(HOST, srv.port, make_message("A"))
            await send(HOST, srv.port, make_message("B"))

    run(scenario())
    assert [p.host for p in peers] == [HOST, HOST]
    assert peers[0].connection_id != peers[1].connection_id
    assert not peers[0].tls


def test_idle_connection_is_closed_after_idle_timeout() -> None:
    async def scenario() -> None:
        async with server(idle_timeout=0.2) as srv:
            reader, writer = await asyncio.open_connection(HOST, srv.port)
            assert await reader.read() == b""  # EOF: the server hung up
            await close_writer(writer)
            assert srv.stats.idle_timeouts == 1

    run(scenario())


def test_slow_sender_is_cut_off_when_a_frame_does_not_complete_in_time() -> None:
    async def trickle(writer: asyncio.StreamWriter) -> None:
        # One byte every 20 ms keeps each read far inside any per-read timeout; only a deadline for the
        # whole frame stops it. Bounded: 500 bytes at most, and the frame never ends.
        writer.write(b"\x0b" + make_message("SLOW")[:-1])
        for _ in range(500):
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.02)

    async def scenario() -> None:
        async with server(idle_timeout=30, read_timeout=0.3) as srv:
            reader, writer = await asyncio.open_connection(HOST, srv.port)
            sender = asyncio.create_task(trickle(writer))
            assert await hung_up(reader)  # the server hung up...
            assert not sender.done()  # ...while the sender was still trickling
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
            await close_writer(writer)
            assert srv.stats.read_timeouts == 1
            assert srv.stats.messages == 0

    run(scenario())


async def hung_up(reader: asyncio.StreamReader) -> bool:
    """EOF or RST: the server closed on us (RST when our unread bytes were still in its buffer)."""
    try:
        return await reader.read() == b""
    except ConnectionResetError:
        return True


def test_oversized_frame_is_answered_ar_then_the_connection_closes() -> None:
    async def scenario() -> None:
        async with server(max_frame_bytes=1000) as srv:
            reader, writer = await asyncio.open_connection(HOST, srv.port)
            writer.write(encode(make_message("BIG", extra=b"x" * 50_000)) + encode(make_message("AFTER")))
            replies = await read_to_eof(reader)
            await close_writer(writer)
            assert [msa(r) for r in replies] == [("AR", "BIG")]
            assert srv.stats.oversize == 1
            # The listener itself is fine.
            assert msa(await send(HOST, srv.port, make_message("NEXT"))) == ("AA", "NEXT")

    run(scenario())


def test_handler_exception_is_answered_ae_and_the_next_message_is_processed(caplog: pytest.LogCaptureFixture) -> None:
    async def handler(message: bytes, peer: PeerInfo) -> bytes:
        if b"|BOOM|" in message:
            raise ValueError(f"cannot map {message!r}")  # exception text quoting PHI, as real ones do
        return local_minimal_ack(message, "AA")

    async def scenario() -> None:
        async with server(handler) as srv, MllpClient(HOST, srv.port) as client:
            first = await client.send(make_message("BOOM", pid_name="SECRETNAME^PHI"))
            second = await client.send(make_message("OK1"))
            assert srv.stats.handler_errors == 1
        assert msa(first) == ("AE", "BOOM")
        assert msa(second) == ("AA", "OK1")

    with caplog.at_level(logging.DEBUG, logger="app.mllp"):
        run(scenario())
    assert "ValueError" in caplog.text and "control_id=BOOM" in caplog.text
    assert "SECRETNAME" not in caplog.text and "PHI" not in caplog.text


def test_handler_returning_a_non_bytes_value_is_answered_ae() -> None:
    async def handler(message: bytes, peer: PeerInfo) -> bytes:
        return "MSA|AA"  # type: ignore[return-value]

    async def scenario() -> None:
        async with server(handler) as srv:
            assert msa(await send(HOST, srv.port, make_message("STR"))) == ("AE", "STR")

    run(scenario())


def test_handler_reply_that_would_break_framing_is_replaced_by_ae() -> None:
    async def handler(message: bytes, peer: PeerInfo) -> bytes:
        return b"MSH|^~\\&|\x1c\rMSA|AA|X\r"

    async def scenario() -> None:
        async with server(handler) as srv, MllpClient(HOST, srv.port) as client:
            assert msa(await client.send(make_message("FS1"))) == ("AE", "FS1")
            assert msa(await client.send(make_message("FS2"))) == ("AE", "FS2")

    run(scenario())


def test_handler_timeout_is_answered_ar_and_the_next_message_is_processed() -> None:
    async def handler(message: bytes, peer: PeerInfo) -> bytes:
        if b"|HANG|" in message:
            await asyncio.Event().wait()
        return local_minimal_ack(message, "AA")

    async def scenario() -> None:
        async with server(handler, handler_timeout=0.2) as srv, MllpClient(HOST, srv.port) as client:
            assert msa(await client.send(make_message("HANG"))) == ("AR", "HANG")
            assert msa(await client.send(make_message("OK2"))) == ("AA", "OK2")

    run(scenario())


def test_empty_reply_from_handler_sends_nothing_and_the_connection_goes_on() -> None:
    async def handler(message: bytes, peer: PeerInfo) -> bytes:
        return b"" if b"|ACK|" in message else local_minimal_ack(message, "AA")

    async def scenario() -> None:
        async with server(handler) as srv:
            reader, writer = await asyncio.open_connection(HOST, srv.port)
            writer.write(encode(b"MSH|^~\\&|A|B|C|D|2024||ACK|ACK|P|2.5\rMSA|AA|X\r") + encode(make_message("M2")))
            (only,) = await read_frames(reader, 1)
            await close_writer(writer)
            assert msa(only) == ("AA", "M2")

    run(scenario())


def test_junk_between_frames_and_missing_cr_before_next_frame_are_tolerated() -> None:
    async def scenario() -> None:
        async with server() as srv:
            reader, writer = await asyncio.open_connection(HOST, srv.port)
            writer.write(
                b"\r\nnoise"
                + encode(make_message("J1"))
                + b"\n"
                + b"\x0b"
                + make_message("J2")
                + b"\x1c"  # no CR, but the next VT makes the end unambiguous
                + encode(make_message("J3"))
            )
            acks = await read_frames(reader, 3)
            await close_writer(writer)
            assert [msa(a)[1] for a in acks] == ["J1", "J2", "J3"]

    run(scenario())


def test_frame_ended_by_fs_alone_is_answered_after_a_quiet_grace_period() -> None:
    async def scenario() -> None:
        async with server(lone_fs_grace=0.1) as srv:
            reader, writer = await asyncio.open_connection(HOST, srv.port)
            writer.write(b"\x0b" + make_message("NOCR") + b"\x1c")
            (ack,) = await read_frames(reader, 1)
            await close_writer(writer)
            assert msa(ack) == ("AA", "NOCR")

    run(scenario())


def test_last_frame_before_half_close_is_still_answered() -> None:
    async def scenario() -> None:
        async with server() as srv:
            reader, writer = await asyncio.open_connection(HOST, srv.port)
            writer.write(encode(make_message("H1")) + b"\x0b" + make_message("H2") + b"\x1c")
            writer.write_eof()
            acks = await read_to_eof(reader)
            await close_writer(writer)
            assert [msa(a)[1] for a in acks] == ["H1", "H2"]

    run(scenario())


def test_connections_over_max_connections_are_refused() -> None:
    async def scenario() -> None:
        async with server(max_connections=2) as srv:
            c1, c2 = MllpClient(HOST, srv.port), MllpClient(HOST, srv.port)
            await c1.send(make_message("K1"))
            await c2.send(make_message("K2"))
            with pytest.raises((MllpConnectionClosed, ConnectionError)):
                await send(HOST, srv.port, make_message("K3"))
            await c1.close()
            await c2.close()
            assert srv.stats.connections_rejected == 1

    run(scenario())


def test_graceful_shutdown_finishes_an_in_flight_message_and_delivers_its_ack() -> None:
    async def scenario() -> None:
        in_handler, release = asyncio.Event(), asyncio.Event()

        async def handler(message: bytes, peer: PeerInfo) -> bytes:
            in_handler.set()
            await release.wait()
            return local_minimal_ack(message, "AA")

        srv = server(handler, shutdown_timeout=10)
        await srv.start()
        reader, writer = await asyncio.open_connection(HOST, srv.port)
        idle_reader, idle_writer = await asyncio.open_connection(HOST, srv.port)
        writer.write(encode(make_message("INFLIGHT")))
        await in_handler.wait()
        closing = asyncio.create_task(srv.close())
        assert await idle_reader.read() == b""  # idle connections are let go at once
        with pytest.raises(OSError):
            await asyncio.open_connection(HOST, srv.port)  # no longer accepting
        assert not closing.done()
        release.set()
        (ack,) = await read_frames(reader, 1)
        assert msa(ack) == ("AA", "INFLIGHT")
        assert await reader.read() == b""  # then the connection is closed
        await closing
        await close_writer(writer)
        await close_writer(idle_writer)

    run(scenario())


def test_shutdown_timeout_cancels_a_handler_that_never_finishes() -> None:
    cancelled = False

    async def handler(message: bytes, peer: PeerInfo) -> bytes:
        nonlocal cancelled
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled = True
            raise
        return b""

    async def scenario() -> None:
        srv = server(handler)
        await srv.start()
        reader, writer = await asyncio.open_connection(HOST, srv.port)
        writer.write(encode(make_message("STUCK")))
        while srv.stats.messages == 0:
            await asyncio.sleep(0.01)
        await srv.close(timeout=0.2)
        assert await read_to_eof(reader) == []
        await close_writer(writer)
        assert srv.stats.connections_active == 0

    run(scenario())
    assert cancelled


def test_client_reconnects_after_the_server_closed_its_connection() -> None:
    async def scenario() -> None:
        async with server(idle_timeout=0.1) as srv, MllpClient(HOST, srv.port) as client:
            assert msa(await client.send(make_message("R1")))[1] == "R1"
            while srv.stats.idle_timeouts == 0:
                await asyncio.sleep(0.02)
            with pytest.raises((MllpConnectionClosed, ConnectionError)):
                await client.send(make_message("LOST"))
            assert msa(await client.send(make_message("R2")))[1] == "R2"

    run(scenario())


def test_stats_snapshot_is_a_plain_dict_of_counters() -> None:
    async def scenario() -> dict[str, int]:
        async with server() as srv:
            await send(HOST, srv.port, make_message("S1"))
            return srv.stats.snapshot()

    snap = run(scenario())
    assert snap["messages"] == 1 and snap["acks_sent"] == 1 and snap["connections_total"] == 1
