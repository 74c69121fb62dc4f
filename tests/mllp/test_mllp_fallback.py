"""The transport's last-resort ACK and the control-id/ack-code readers used in log lines."""

from __future__ import annotations

import pytest

from app.mllp.fallback import ack_code, control_id, fallback_ack, local_minimal_ack

from .samples import make_message


def segments(ack: bytes) -> list[list[bytes]]:
    assert ack.endswith(b"\r")
    return [seg.split(b"|") for seg in ack[:-1].split(b"\r")]


def test_ack_swaps_sender_and_receiver_and_echoes_control_id() -> None:
    msh, msa = segments(local_minimal_ack(make_message("CTRL42"), "AR"))
    assert msh[:6] == [b"MSH", b"^~\\&", b"RECVAPP", b"RECVFAC", b"SENDAPP", b"SENDFAC"]
    assert msh[8] == b"ACK^A01^ACK"
    assert msh[9] and msh[9] != b"CTRL42"  # a fresh control id of its own
    assert (msh[10], msh[11]) == (b"P", b"2.5.1")
    assert msa == [b"MSA", b"AR", b"CTRL42"]


def test_ack_keeps_the_senders_charset_in_msh_18() -> None:
    raw = b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|X1|P|2.5||||||UNICODE UTF-8\rPID|1\r"
    msh, _ = segments(local_minimal_ack(raw, "AE"))
    assert len(msh) == 18 and msh[17] == b"UNICODE UTF-8"


def test_ack_uses_the_senders_own_delimiters() -> None:
    raw = b"MSH#$*\\%#A#B#C#D#20240101##ORU$R01#X9#P#2.3\rPID#1\r"
    ack = local_minimal_ack(raw, "AE")
    assert ack.startswith(b"MSH#$*\\%#C#D#A#B#")
    assert b"#ORU" not in ack and b"#ACK$R01$ACK#" in ack
    assert ack.endswith(b"\rMSA#AE#X9\r")


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x00\xff garbage", b"MSH", b"MSH|^~", b"PID|1||x\r", b"MSH|||||\r", b"MSHA^~\\&|x", b"\xef\xbb\xbfMSX|"],
)
def test_ack_from_garbage_is_still_a_well_formed_ar(raw: bytes) -> None:
    msh, msa = segments(local_minimal_ack(raw, "AR"))
    assert msh[:2] == [b"MSH", b"^~\\&"]
    assert msa == [b"MSA", b"AR", b""]


def test_ack_tolerates_bom_and_lf_segment_ends() -> None:
    raw = b"\xef\xbb\xbf" + make_message("LF1").replace(b"\r", b"\n")
    assert local_minimal_ack(raw, "AA").endswith(b"\rMSA|AA|LF1\r")


def test_ack_never_copies_control_bytes_that_would_break_framing() -> None:
    raw = b"MSH|^~\\&|A\x1cX|B\x0b|C|D|2024||ADT^A01|ID\x1c1|P|2.5\r"
    ack = local_minimal_ack(raw, "AR")
    assert b"\x1c" not in ack and b"\x0b" not in ack


def test_fallback_ack_always_returns_an_ack() -> None:
    assert ack_code(fallback_ack(b"\x00", "AE")) == "AE"
    assert ack_code(fallback_ack(make_message("F1"), "AR")) == "AR"


def test_fallback_ack_uses_the_local_builder_when_hl7v2_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(raw: bytes, code: str) -> bytes:
        raise RuntimeError("bug")

    monkeypatch.setattr("app.mllp.fallback.minimal_ack", broken)
    assert fallback_ack(make_message("F2"), "AE").endswith(b"\rMSA|AE|F2\r")


def test_fallback_ack_refuses_an_hl7v2_reply_that_cannot_be_framed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("app.mllp.fallback.minimal_ack", lambda raw, code: b"MSH|\x1c\r")
    assert fallback_ack(make_message("F3"), "AR").endswith(b"\rMSA|AR|F3\r")


def test_control_id_reads_msh_10() -> None:
    assert control_id(make_message("ABC-123")) == "ABC-123"


@pytest.mark.parametrize("raw", [b"", b"garbage", make_message("has space"), make_message("x" * 100)])
def test_control_id_is_none_when_unreadable_or_unsafe_for_a_log_line(raw: bytes) -> None:
    assert control_id(raw) is None


@pytest.mark.parametrize(("ack", "code"), [(b"MSH|^~\\&|a\rMSA|AA|1\r", "AA"), (b"MSH#x\rMSA#CR\r", "CR")])
def test_ack_code_reads_msa_1(ack: bytes, code: str) -> None:
    assert ack_code(ack) == code


def test_ack_code_is_none_without_msa() -> None:
    assert ack_code(b"MSH|^~\\&|a\r") is None


@pytest.mark.parametrize(
    "msh", [b"MSH|\x1c^~\\&|A", b"MSH\x1c^~\\&\x1cA", b"MSH|^~\\^|A", b"MSH|^~ &|A", b"MSHa^~\\&aA"]
)
def test_unusable_delimiters_fall_back_to_the_standard_ones(msh: bytes) -> None:
    ack = local_minimal_ack(msh + b"|B|C|D|2024||ADT^A01|ID1|P|2.5\r", "AR")
    assert ack.startswith(b"MSH|^~\\&|") and ack.endswith(b"\rMSA|AR|\r")
