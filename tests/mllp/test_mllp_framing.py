"""FrameDecoder and encode: pure byte-level behaviour, no sockets."""

from __future__ import annotations

import pytest

from app.mllp.framing import HEAD_BYTES, Frame, FrameDecoder, FramingError, FramingErrorKind, encode

VT, FS, CR = b"\x0b", b"\x1c", b"\r"
MSG_A = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|CTRL-A|P|2.5\rPID|1||1^^^H^MR||DOE^JANE\r"
MSG_B = b"MSH|^~\\&|A|B|C|D|20240101||ORU^R01|CTRL-B|P|2.5\rOBX|1|NM|x||1.5\r"


def decode_all(chunks: list[bytes], max_frame_bytes: int = 10_000) -> list[Frame | FramingError]:
    dec = FrameDecoder(max_frame_bytes)
    out: list[Frame | FramingError] = []
    for chunk in chunks:
        out += dec.feed(chunk)
    return out + dec.finish()


def payloads(items: list[Frame | FramingError]) -> list[bytes]:
    return [i.payload for i in items if isinstance(i, Frame)]


def test_encode_wraps_payload_in_vt_fs_cr() -> None:
    assert encode(b"MSH|x") == b"\x0bMSH|x\x1c\r"


@pytest.mark.parametrize("bad", [b"a\x0bb", b"a\x1cb"])
def test_encode_refuses_payload_that_would_break_framing(bad: bytes) -> None:
    with pytest.raises(ValueError):
        encode(bad)


def test_one_frame_in_one_read() -> None:
    assert decode_all([encode(MSG_A)]) == [Frame(MSG_A)]


def test_split_at_every_byte_position_gives_the_same_frames() -> None:
    stream = encode(MSG_A) + encode(MSG_B)
    for cut in range(len(stream) + 1):
        assert decode_all([stream[:cut], stream[cut:]]) == [Frame(MSG_A), Frame(MSG_B)], cut


def test_split_at_every_pair_of_positions_including_junk_and_missing_cr() -> None:
    stream = b"\r\n" + encode(MSG_A) + b"xx" + VT + MSG_B + FS + VT + b"MSH|short" + FS
    expected = decode_all([stream])
    assert payloads(expected) == [MSG_A, MSG_B, b"MSH|short"]
    for i in range(0, len(stream) + 1, 3):
        for j in range(i, len(stream) + 1, 5):
            assert decode_all([stream[:i], stream[i:j], stream[j:]]) == expected, (i, j)


def test_byte_by_byte_feed() -> None:
    stream = encode(MSG_A) + encode(MSG_B)
    assert decode_all([stream[i : i + 1] for i in range(len(stream))]) == [Frame(MSG_A), Frame(MSG_B)]


def test_many_frames_in_one_read_come_out_in_order() -> None:
    msgs = [MSG_A.replace(b"CTRL-A", b"C%03d" % i) for i in range(50)]
    assert payloads(decode_all([b"".join(encode(m) for m in msgs)])) == msgs


def test_partial_frame_is_held_until_completed() -> None:
    dec = FrameDecoder(10_000)
    assert dec.feed(VT + MSG_A[:10]) == []
    assert dec.in_frame
    assert dec.feed(MSG_A[10:] + FS) == []
    assert dec.pending_fs
    assert dec.feed(CR) == [Frame(MSG_A)]
    assert not dec.in_frame


def test_junk_between_frames_is_skipped_and_reported_once_per_run() -> None:
    out = decode_all([encode(MSG_A) + b"garbage", b"more", encode(MSG_B)])
    assert out == [Frame(MSG_A), FramingError(FramingErrorKind.JUNK, 11), Frame(MSG_B)]


def test_whitespace_junk_is_flagged_as_harmless() -> None:
    out = decode_all([encode(MSG_A) + b"\r\n", encode(MSG_B)])
    assert out[1] == FramingError(FramingErrorKind.JUNK, 2, whitespace_only=True)


def test_junk_before_first_frame_and_at_end_of_stream_is_reported() -> None:
    out = decode_all([b"hello" + encode(MSG_A) + b"bye"])
    assert [type(i) for i in out] == [FramingError, Frame, FramingError]
    assert (out[0].size, out[2].size) == (5, 3)  # type: ignore[union-attr]


def test_endless_junk_is_fatal_once_it_exceeds_the_frame_limit() -> None:
    dec = FrameDecoder(100)
    out = [i for _ in range(30) for i in dec.feed(b"MSH|unframed|" * 2)]
    assert out and all(isinstance(i, FramingError) and i.kind is FramingErrorKind.JUNK and i.fatal for i in out)


def test_missing_cr_tolerated_when_next_frame_starts() -> None:
    assert decode_all([VT + MSG_A + FS + VT + MSG_B + FS + CR]) == [Frame(MSG_A, cr_missing=True), Frame(MSG_B)]


def test_missing_cr_tolerated_at_end_of_stream() -> None:
    assert decode_all([VT + MSG_A + FS]) == [Frame(MSG_A, cr_missing=True)]


def test_assume_end_delivers_a_frame_waiting_only_for_its_cr() -> None:
    dec = FrameDecoder(10_000)
    assert dec.feed(VT + MSG_A + FS) == []
    assert dec.assume_end() == [Frame(MSG_A, cr_missing=True)]
    assert dec.feed(encode(MSG_B)) == [Frame(MSG_B)]


def test_assume_end_is_a_no_op_mid_frame() -> None:
    dec = FrameDecoder(10_000)
    dec.feed(VT + MSG_A)
    assert dec.assume_end() == []
    assert dec.feed(FS + CR) == [Frame(MSG_A)]


def test_lone_fs_followed_by_other_bytes_is_payload() -> None:
    assert decode_all([VT + b"ab" + FS + b"cd" + FS + CR]) == [Frame(b"ab\x1ccd")]


def test_vt_inside_a_frame_abandons_it_and_starts_again() -> None:
    out = decode_all([VT + b"MSH|half", VT + MSG_A + FS + CR])
    assert out == [FramingError(FramingErrorKind.ABANDONED, 8, head=b"MSH|half"), Frame(MSG_A)]


def test_end_of_stream_inside_a_frame_reports_truncation() -> None:
    assert decode_all([VT + b"MSH|cut"]) == [FramingError(FramingErrorKind.TRUNCATED, 7, head=b"MSH|cut")]


def test_empty_frame_is_a_frame() -> None:
    assert decode_all([VT + FS + CR]) == [Frame(b"")]


def test_frame_of_exactly_the_limit_passes() -> None:
    assert decode_all([encode(b"x" * 100)], max_frame_bytes=100) == [Frame(b"x" * 100)]


def test_oversized_frame_is_reported_once_with_its_head_and_decoding_resumes_after_it() -> None:
    big = MSG_A + b"Z" * 10_000
    stream = encode(big) + encode(MSG_B)
    for chunks in ([stream], [stream[i : i + 333] for i in range(0, len(stream), 333)]):
        out = decode_all(chunks, max_frame_bytes=1000)
        assert out == [
            FramingError(FramingErrorKind.OVERSIZE, 1001, fatal=True, head=big[:1000]),
            Frame(MSG_B),
        ]


def test_oversized_frame_head_keeps_msh_for_the_reply() -> None:
    out = decode_all([VT + MSG_A + b"Z" * 50_000], max_frame_bytes=20_000)
    assert isinstance(out[0], FramingError) and out[0].head.startswith(MSG_A)
    assert len(out[0].head) == HEAD_BYTES
    assert len(out) == 1  # the truncated remainder of an oversized frame is not reported twice


def test_oversize_memory_is_bounded_while_discarding() -> None:
    dec = FrameDecoder(1000)
    dec.feed(VT + b"x" * 2000)
    for _ in range(100):
        dec.feed(b"y" * 10_000)
    assert len(dec._buf) == 0  # nothing of the discarded frame is kept


def test_frames_started_counts_each_vt() -> None:
    dec = FrameDecoder(100)
    dec.feed(encode(b"a") + VT + b"b")
    assert dec.frames_started == 2


def test_max_frame_bytes_must_be_positive() -> None:
    with pytest.raises(ValueError):
        FrameDecoder(0)
