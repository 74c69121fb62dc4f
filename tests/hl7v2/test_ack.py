"""ACKs: original and enhanced mode, ERR built from Hl7Error, and byte-level answers for garbage."""

from __future__ import annotations

import pytest

from app.hl7v2.ack import accept_ack, application_ack, build_ack, is_ack, minimal_ack, should_send
from app.hl7v2.errors import Location, RequiredFieldMissing, UnsupportedEvent
from app.hl7v2.parser import parse

INBOUND = b"MSH|^~\\&|SENDAPP|SENDFAC|RCVAPP|RCVFAC|20240101120000||ADT^A01^ADT_A01|CTRL-1|P|2.5.1\rPID|1||1\r"


def segments(ack: bytes, charset: str = "ascii") -> list[list[str]]:
    text = ack.decode(charset)
    assert text.endswith("\r") and "\n" not in text  # CR-only terminators on output
    return [s.split(text[3]) for s in text.rstrip("\r").split("\r")]


def test_aa_swaps_sender_and_receiver_and_echoes_the_control_id() -> None:
    ack = build_ack(parse(INBOUND), "AA", control_id="ACK-1", timestamp="20240101120001")
    msh, msa = segments(ack)
    assert msh[:12] == [
        "MSH",
        "^~\\&",
        "RCVAPP",
        "RCVFAC",
        "SENDAPP",
        "SENDFAC",
        "20240101120001",
        "",
        "ACK^A01^ACK",
        "ACK-1",
        "P",
        "2.5.1",
    ]
    assert msa == ["MSA", "AA", "CTRL-1"]


def test_error_becomes_err_with_location_code_severity_and_message() -> None:
    err = RequiredFieldMissing("PID-3 is empty", location=Location("PID", 1, 3, 1, 1))
    ack = build_ack(parse(INBOUND), "AE", errors=[err], control_id="X")
    _, msa, err_seg = segments(ack)
    assert msa[:3] == ["MSA", "AE", "CTRL-1"]
    assert err_seg[2] == "PID^1^3^1^1"
    assert err_seg[3] == "101^Required field missing^HL70357"
    assert err_seg[4] == "E"
    assert err_seg[8] == "PID-3 is empty"


def test_v23_ack_uses_err_1_and_msa_3() -> None:
    inbound = INBOUND.replace(b"2.5.1", b"2.3").replace(b"^ADT_A01", b"")
    err = UnsupportedEvent("no A01 here", location=Location("MSH", 1, 9))
    _, msa, err_seg = segments(build_ack(parse(inbound), "AR", errors=[err], control_id="X"))
    assert msa == ["MSA", "AR", "CTRL-1", "no A01 here"]
    assert err_seg == ["ERR", "MSH^1^9^201&Unsupported event code&HL70357"]


def test_ack_text_is_escaped_with_the_senders_delimiters() -> None:
    err = RequiredFieldMissing("bad | value ^ here")
    ack = build_ack(parse(INBOUND), "AE", errors=[err], control_id="X")
    assert b"bad \\F\\ value \\S\\ here" in ack


def test_ack_keeps_custom_delimiters_and_charset() -> None:
    inbound = "MSH#$*\\%#A#B#C#D#20240101##ADT$A08#K9#P#2.5.1######8859/1\rPID#1##1##M\u00fcller".encode("latin-1")
    ack = build_ack(parse(inbound), "AA", control_id="X", timestamp="20240101")
    msh, msa = segments(ack, "latin-1")
    assert msh[1] == "$*\\%" and msh[8] == "ACK$A08$ACK"
    assert msh[17] == "8859/1"
    assert msa == ["MSA", "AA", "K9"]


@pytest.mark.parametrize(
    ("mode", "code", "sent"),
    [("AL", "AA", True), ("NE", "AA", False), ("ER", "AA", False), ("ER", "AE", True), ("SU", "AA", True)]
    + [("SU", "AR", False), ("", "AE", True), ("AL", "CA", True), ("ER", "CR", True)],
)
def test_table_0155_decides_whether_an_ack_is_sent(mode: str, code: str, sent: bool) -> None:
    assert should_send(mode, code) is sent


def test_enhanced_mode_accept_ack_is_ca_and_application_ack_follows_msh_16() -> None:
    inbound = INBOUND.replace(b"|2.5.1\r", b"|2.5.1|||AL|ER\r")
    msg = parse(inbound)
    accept = accept_ack(msg, control_id="X")
    assert accept is not None and segments(accept)[1][:2] == ["MSA", "CA"]
    assert application_ack(msg) is None  # ER: only on error
    err = RequiredFieldMissing("missing")
    app = application_ack(msg, err, control_id="Y")
    assert app is not None and segments(app)[1][:3] == ["MSA", "AE", "CTRL-1"]
    commit_error = accept_ack(msg, err, control_id="Z")
    assert commit_error is not None and segments(commit_error)[1][1] == "CE"


def test_enhanced_mode_ne_ne_sends_nothing() -> None:
    msg = parse(INBOUND.replace(b"|2.5.1\r", b"|2.5.1|||NE|NE\r"))
    assert accept_ack(msg) is None
    assert application_ack(msg) is None


@pytest.mark.parametrize("raw", [b"", b"\x00\xff garbage", b"PID|1||2", b"MSH|^^^^|x"])
def test_minimal_ack_answers_garbage_with_a_fresh_msh_and_ar(raw: bytes) -> None:
    msh, msa, err = segments(minimal_ack(raw, control_id="N1", timestamp="20240101"))
    assert msh[0] == "MSH" and msh[1] == "^~\\&" and msh[9] == "N1"
    assert msa == ["MSA", "AR", ""]
    assert err[3].startswith("100^")


def test_minimal_ack_reuses_a_readable_msh_even_when_the_body_is_broken() -> None:
    raw = INBOUND + b"\xff\xfe\x00broken"
    msh, msa, *_ = segments(minimal_ack(raw, "AE", control_id="N2"))
    assert msh[2:6] == ["RCVAPP", "RCVFAC", "SENDAPP", "SENDFAC"]
    assert msa[:3] == ["MSA", "AE", "CTRL-1"]


def test_minimal_ack_never_copies_terminators_into_the_ack() -> None:
    raw = b"MSH|^~\\&|A\x0bB|F|||||ADT^A01|C\x1c1|P|2.5\r"
    ack = minimal_ack(raw, control_id="N3")
    assert b"\x0b" not in ack and b"\x1c" not in ack and ack.count(b"\r") == 2


def test_is_ack_recognises_acknowledgements() -> None:
    assert is_ack(build_ack(parse(INBOUND), "AA"))
    assert not is_ack(INBOUND)
    assert not is_ack(b"junk")


BATCH = (
    b"FHS|^~\\&|A|B|C|D|20240101\rBHS|^~\\&|A|B|C|D|20240101||||BATCH-7\r"
    b"MSH|^~\\&|A|B|C|D|20240101||ADT^A01|M1|P|2.5\rPID|1||1\r"
    b"MSH|^~\\&|A|B|C|D|20240101||ADT^A08|M2|P|2.5\rPID|1||2\rBTS|2\rFTS|1\r"
)


def test_a_batch_splits_into_its_messages_and_is_answered_with_a_batch_ack() -> None:
    from app.hl7v2.ack import batch_ack
    from app.hl7v2.parser import split_batch

    messages, envelope = split_batch(BATCH)
    assert [parse(m).get("MSH-10") for m in messages] == ["M1", "M2"]
    assert [e[:3] for e in envelope] == [b"FHS", b"BHS", b"BTS", b"FTS"]
    acks = [build_ack(parse(m), "AA", control_id="x") for m in messages]
    reply = batch_ack(envelope, acks, control_id="B1").decode().rstrip("\r").split("\r")
    assert [s[:3] for s in reply] == ["FHS", "BHS", "MSH", "MSA", "MSH", "MSA", "BTS", "FTS"]
    bhs = reply[1].split("|")
    assert bhs[2:6] == ["C", "D", "A", "B"] and bhs[10:12] == ["B1", "BATCH-7"]
    assert reply[6] == "BTS|2"


def test_a_plain_message_is_its_own_batch() -> None:
    from app.hl7v2.parser import split_batch

    assert split_batch(INBOUND) == ([INBOUND], [])
