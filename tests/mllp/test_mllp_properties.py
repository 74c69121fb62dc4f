"""Property tests: random and mutated byte streams never crash the decoder or the server, the decoder's
output never depends on how the stream was cut into reads, and the server answers every complete frame."""

from __future__ import annotations

import socket

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.mllp.fallback import fallback_ack, local_minimal_ack
from app.mllp.framing import Frame, FrameDecoder, FramingError, FramingErrorKind, encode

from .conftest import ThreadedServer
from .samples import make_message, msa

MAX = 2048  # the threaded server's max_frame_bytes

# Bytes that matter to framing turn up far more often than in uniform random data.
# A 2100-byte run is an oversized frame inside a frame and a junk flood outside one.
atoms = st.sampled_from(
    [b"\x0b", b"\x1c", b"\r", b"\n", b"\x1c\r", b"MSH|^~\\&|A|B|C|D|1||ADT^A01|", b"x" * 300, b"z" * 2100]
)
random_streams = st.lists(atoms | st.binary(max_size=40), max_size=60).map(b"".join)
payloads = st.binary(max_size=300).map(lambda b: b.replace(b"\x0b", b"").replace(b"\x1c", b""))
hl7_payloads = st.builds(
    lambda n, big: make_message(f"P{n}", extra=b"x" * 2100 if big else b""), st.integers(0, 10**6), st.booleans()
)
junk = st.binary(max_size=20).map(lambda b: b.replace(b"\x0b", b""))


@st.composite
def framed_streams(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    msgs = draw(st.lists(hl7_payloads | payloads, max_size=8))
    parts = [draw(junk) + encode(m) for m in msgs]
    return b"".join(parts) + draw(junk), msgs


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(framed_streams())[0])
    for _ in range(draw(st.integers(0, 6))):
        if not data:
            break
        pos = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["delete", "insert", "replace", "duplicate"]))
        byte = draw(st.sampled_from([0x0B, 0x1C, 0x0D, 0x0A, 0x41, 0x00]))
        if op == "delete":
            del data[pos]
        elif op == "insert":
            data.insert(pos, byte)
        elif op == "replace":
            data[pos] = byte
        else:
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 3000))]
    return bytes(data)


any_stream = random_streams | mutated_streams() | framed_streams().map(lambda t: t[0])


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]


def decode(chunks: list[bytes], max_frame_bytes: int = MAX) -> list[Frame | FramingError]:
    dec = FrameDecoder(max_frame_bytes)
    out: list[Frame | FramingError] = []
    for chunk in chunks:
        out += dec.feed(chunk)
    return out + dec.finish()


@settings(max_examples=300, deadline=None)
@given(any_stream, st.lists(st.integers(0, 10**6), max_size=12), st.integers(1, 3000))
def test_decoder_output_does_not_depend_on_read_boundaries(data: bytes, cuts: list[int], limit: int) -> None:
    whole = decode([data], limit)
    assert decode(split(data, cuts), limit) == whole
    for item in whole:
        if isinstance(item, Frame):
            assert b"\x0b" not in item.payload and len(item.payload) <= limit
        else:
            assert len(item.head) <= limit


@settings(max_examples=200, deadline=None)
@given(framed_streams(), st.lists(st.integers(0, 10**6), max_size=12))
def test_decoder_recovers_every_well_framed_message_among_junk(
    stream: tuple[bytes, list[bytes]], cuts: list[int]
) -> None:
    data, msgs = stream
    out = decode(split(data, cuts), max_frame_bytes=10_000)
    assert [i.payload for i in out if isinstance(i, Frame)] == msgs
    assert all(isinstance(i, Frame) or i.kind is FramingErrorKind.JUNK for i in out)


def expected_replies(data: bytes) -> list[tuple[str, str]]:
    """What the server must answer, from the decoder as oracle: every frame up to the first fatal error,
    plus the AR for an oversized frame."""
    replies = []
    for item in decode([data]):
        if isinstance(item, Frame):
            replies.append(msa(local_minimal_ack(item.payload, "AA")))
        elif item.fatal:
            if item.kind is FramingErrorKind.OVERSIZE:
                replies.append(msa(fallback_ack(item.head, "AR")))
            break
    return replies


def exchange(port: int, chunks: list[bytes]) -> list[bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
        for chunk in chunks:
            sock.sendall(chunk)
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while data := sock.recv(65536):
            received += data
    return [i.payload for i in decode([received], 1 << 20) if isinstance(i, Frame)]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(any_stream, st.lists(st.integers(0, 10**6), max_size=6))
def test_server_survives_any_stream_and_answers_every_complete_frame(
    threaded_server: ThreadedServer, data: bytes, cuts: list[int]
) -> None:
    replies = exchange(threaded_server.server.port, split(data, cuts))
    assert [msa(r) for r in replies] == expected_replies(data)


def test_server_is_still_healthy_after_the_property_runs(threaded_server: ThreadedServer) -> None:
    (reply,) = exchange(threaded_server.server.port, [encode(make_message("HEALTH"))])
    assert msa(reply) == ("AA", "HEALTH")
    assert threaded_server.server.stats.internal_errors == 0
