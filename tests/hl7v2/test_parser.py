"""The ER7 tokenizer: delimiters, terminators, escapes, charsets, accessors and the errors that mean AR."""

from __future__ import annotations

import pytest

from app.hl7v2.errors import CharsetError, ParseError
from app.hl7v2.parser import Delimiters, escape, parse, unescape

ADT = (
    "MSH|^~\\&|APP|FAC|RCV|RFAC|20240101120000||ADT^A01^ADT_A01|C1|P|2.5.1\r"
    "PID|1||A1^^^AUTH&1.2.3&ISO^MR~B2^^^OTHER^PI||Doe^Jane^Q||19800101|F\r"
    "ZXX|anything|goes^here\r"
    "PV1|1|I\r"
)


def test_accessors_are_one_based_and_named_like_the_standard() -> None:
    msg = parse(ADT.encode())
    pid = msg.segment("PID")
    assert pid is not None
    assert pid[3][1][1].value == "A1"
    assert pid[3][1][4][2] == "1.2.3"
    assert pid[3][2].c(1) == "B2"
    assert msg.get("PID-3(2).4") == "OTHER"
    assert msg.get("PID-5.2") == "Jane"
    assert msg.get("PID-3.4.3") == "ISO"
    assert msg.get("MSH-9.2") == "A01"


def test_msh_1_and_msh_2_are_the_delimiters_themselves() -> None:
    msg = parse(ADT.encode())
    assert msg.get("MSH-1") == "|"
    assert msg.get("MSH-2") == "^~\\&"
    assert msg.msh[3].value == "APP"
    assert msg.msh[12].value == "2.5.1"


def test_missing_positions_are_empty_not_errors() -> None:
    msg = parse(ADT.encode())
    assert msg.get("PID-99.7.3") == ""
    assert msg.get("OBX-5") == ""
    assert msg.segment("PID")[40][3].c(9) == ""  # type: ignore[index]
    assert not msg.segment("PV1")[19]  # type: ignore[index]


def test_z_segments_are_kept_in_order() -> None:
    msg = parse(ADT.encode())
    assert [s.name for s in msg.segments] == ["MSH", "PID", "ZXX", "PV1"]
    assert msg.get("ZXX-2.2") == "here"


@pytest.mark.parametrize("terminator", ["\r", "\n", "\r\n"])
def test_cr_lf_and_crlf_terminators_all_split_segments(terminator: str) -> None:
    msg = parse(ADT.replace("\r", terminator).encode())
    assert [s.name for s in msg.segments] == ["MSH", "PID", "ZXX", "PV1"]


def test_leading_bom_and_mllp_bytes_are_tolerated() -> None:
    msg = parse(b"\xef\xbb\xbf" + ADT.encode() + b"\x1c\r")
    assert msg.get("PID-3.1") == "A1"


def test_custom_delimiters_come_from_msh_1_and_msh_2() -> None:
    msg = parse(b"MSH#$*\\%#APP#FAC#####ADT$A01#C2#P#2.5\rPID#1##X1$$$AU%9.9%ISO*X2##Roe$Ann")
    assert msg.delimiters == Delimiters("#", "$", "*", "\\", "%")
    assert msg.get("PID-3.4.2") == "9.9"
    assert msg.get("PID-3(2)") == "X2"
    assert msg.get("PID-5.2") == "Ann"


def test_truncation_character_in_msh_2_is_accepted() -> None:
    msg = parse(b"MSH|^~\\&#|APP|FAC|||||ADT^A01|C3|P|2.8\rPID|1||A\\P\\1")
    assert msg.delimiters.truncation == "#"
    assert msg.get("PID-3") == "A#1"


def test_escape_sequences_are_decoded_per_leaf_after_splitting() -> None:
    msg = parse(b"MSH|^~\\&|A|B|||||ADT^A01|C|P|2.5\rNTE|1||a\\F\\b\\S\\c\\T\\d\\R\\e\\E\\f")
    assert msg.get("NTE-3") == "a|b^c&d~e\\f"


def test_formatting_escapes_become_line_breaks_or_vanish() -> None:
    d = Delimiters()
    assert unescape("one\\.br\\two", d) == "one\ntwo"
    assert unescape("\\H\\bold\\N\\ text", d) == "bold text"
    assert unescape("x\\.sp 2\\y", d) == "x\n\ny"
    assert unescape("\\.in 4\\indented", d) == "indented"


def test_hex_escapes_decode_in_the_message_charset() -> None:
    assert unescape("O\\X27\\Brien", Delimiters()) == "O'Brien"
    assert unescape("caf\\XC3A9\\", Delimiters(), "utf-8") == "caf\u00e9"
    assert unescape("caf\\XE9\\", Delimiters(), "latin-1") == "caf\u00e9"


def test_malformed_escapes_are_kept_literally() -> None:
    assert unescape("50\\% off \\Xzz\\", Delimiters()) == "50\\% off \\Xzz\\"


def test_escape_round_trips_through_unescape() -> None:
    d = Delimiters()
    text = "a|b^c&d~e\\f\nnext"
    assert unescape(escape(text, d), d) == text


def test_msh_18_8859_1_decodes_latin_1_bytes() -> None:
    raw = "MSH|^~\\&|A|B|||||ADT^A01|C|P|2.5||||||8859/1\rPID|1||1||M\u00fcller".encode("latin-1")
    msg = parse(raw)
    assert msg.get("PID-5") == "M\u00fcller"
    assert msg.charset == "latin-1"


def test_msh_18_utf8_with_invalid_bytes_is_a_charset_error() -> None:
    raw = b"MSH|^~\\&|A|B|||||ADT^A01|C|P|2.5||||||UNICODE UTF-8\rPID|1||1||M\xfcller"
    with pytest.raises(CharsetError) as err:
        parse(raw)
    assert err.value.ack_code == "AE"
    assert err.value.location.field == 18


def test_undeclared_charset_accepts_utf8_and_warns_about_it() -> None:
    msg = parse("MSH|^~\\&|A|B|||||ADT^A01|C|P|2.5\rPID|1||1||Zo\u00eb".encode())
    assert msg.get("PID-5") == "Zo\u00eb"
    assert msg.warnings


def test_undeclared_charset_falls_back_to_windows_1252() -> None:
    msg = parse(b"MSH|^~\\&|A|B|||||ADT^A01|C|P|2.5\rPID|1||1||Zo\xeb")
    assert msg.get("PID-5") == "Zo\u00eb"


def test_utf16_input_is_detected() -> None:
    msg = parse("MSH|^~\\&|A|B|||||ADT^A01|C|P|2.5||||||UNICODE\rPID|1||42".encode("utf-16-le"))
    assert msg.get("PID-3") == "42"


@pytest.mark.parametrize(
    "raw",
    [b"", b"hello world", b"PID|1||2", b"MSH", b"MSH|", b"MSH|^^\\&|A", b"MSHa^~\\&|x", b"MSH|^~\\&&|A"]
    + [b"MSH\xb9^~\\&\xb9A", b"MSH| ~\\&|A"],  # delimiters must be printable ASCII punctuation
)
def test_non_hl7_input_raises_parse_error_that_means_reject(raw: bytes) -> None:
    with pytest.raises(ParseError) as err:
        parse(raw)
    assert err.value.ack_code == "AR"


def test_explicit_null_is_distinguished_from_empty() -> None:
    msg = parse(b'MSH|^~\\&|A|B|||||ADT^A08|C|P|2.5\rPID|1||1||""|')
    pid = msg.segment("PID")
    assert pid is not None
    assert pid[5].is_null and not pid[5]
    assert not pid[6].is_null and not pid[6]


def test_segment_sequence_numbers_count_occurrences() -> None:
    msg = parse(b"MSH|^~\\&|A|B|||||ORU^R01|C|P|2.5\rOBX|1\rNTE|1\rOBX|2")
    obx2 = msg.segment("OBX", 2)
    assert obx2 is not None and obx2.sequence == 2 and obx2[1].value == "2"
    assert msg.get("OBX[2]-1") == "2"


def test_segment_get_reads_relative_paths() -> None:
    pid = parse(ADT.encode()).segment("PID")
    assert pid is not None
    assert pid.get("3.4.2") == "1.2.3"
    assert pid.get("3(2).1") == "B2"


def test_a_parsed_message_has_no_reference_cycles_so_it_is_freed_without_gc() -> None:
    import gc
    import weakref

    gc.disable()
    try:
        msg = parse(ADT.encode())
        assert msg.get("PID-3.4.2") == "1.2.3"  # touch the lazily built nodes too
        assert msg.segment("PID")[5][1][2].value == "Jane"  # type: ignore[index]
        ref = weakref.ref(msg)
        del msg
        assert ref() is None
    finally:
        gc.enable()
