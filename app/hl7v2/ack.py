"""ACK messages (v2 chapter 2): original mode AA/AE/AR, enhanced mode CA/CE/CR + AL/NE/ER/SU, ERR from Hl7Error.

The ACK echoes the inbound delimiters, MSH-11/12 and MSH-18 (and is encoded in that charset), swaps sender and
receiver, answers ``ACK^<trigger>^ACK`` with a fresh MSH-10 and carries the inbound MSH-10 in MSA-2. Segments end
with CR only; MLLP framing is the listener's job. ``minimal_ack`` works on raw bytes, so even garbage is answered.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime

from app.hl7v2.errors import Hl7Error, Location, ParseError
from app.hl7v2.parser import CHARSETS, DEFAULT_DELIMITERS, Delimiters, Message, _is_delimiter, escape

__all__ = [
    "ack_code",
    "should_send",
    "build_ack",
    "application_ack",
    "accept_ack",
    "minimal_ack",
    "is_ack",
    "batch_ack",
]

SUCCESS = {"AA", "CA"}


def ack_code(error: Hl7Error | None, *, accept: bool = False) -> str:
    """AA/AE/AR (application) or CA/CE/CR (accept, enhanced mode) for the outcome of processing."""
    if error is None:
        return "CA" if accept else "AA"
    kind = error.ack_code  # AE or AR
    return ("CE" if kind == "AE" else "CR") if accept else kind


def should_send(mode: str, code: str) -> bool:
    """Table 0155 for MSH-15/16: AL always, NE never, ER only on error/reject, SU only on success. Empty -> send."""
    mode = (mode or "").upper()
    if mode == "NE":
        return False
    if mode == "ER":
        return code not in SUCCESS
    if mode == "SU":
        return code in SUCCESS
    return True


def _version_tuple(version: str) -> tuple[int, ...]:
    out = []
    for part in version.split("."):
        if not (part.isascii() and part.isdigit()):
            break
        out.append(int(part))
    return tuple(out) or (2, 5)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")


def new_control_id() -> str:
    return uuid.uuid4().hex[:20]


def _erl(loc: Location, d: Delimiters) -> str:
    if not loc.segment:
        return ""
    parts = [
        loc.segment,
        str(loc.sequence or 1),
        str(loc.field) if loc.field else "",
        str(loc.repetition or 1) if loc.field else "",
        str(loc.component) if loc.component else "",
        str(loc.subcomponent) if loc.subcomponent else "",
    ]
    return d.component.join(parts).rstrip(d.component)


def _err_segments(errors: Sequence[Hl7Error], version: str, d: Delimiters) -> list[str]:
    fs, cs, ss = d.field, d.component, d.subcomponent
    out = []
    for err in errors:
        text = escape(err.code_text, d)
        msg = escape(err.message, d)
        if _version_tuple(version) < (2, 5):
            # v2.3/2.4 ERR-1 (CM_ELD): segment^sequence^field^code&text&table
            loc = err.location
            code = ss.join((str(err.code), text, "HL70357"))
            eld = cs.join((loc.segment, str(loc.sequence or 1) if loc.segment else "", str(loc.field or ""), code))
            out.append(fs.join(("ERR", eld)))
        else:
            # ERR-2 location, ERR-3 code^text^HL70357, ERR-4 severity, ERR-8 user message
            code = cs.join((str(err.code), text, "HL70357"))
            out.append(fs.join(("ERR", "", _erl(err.location, d), code, err.severity, "", "", "", msg)))
    return out


def _assemble(
    *,
    d: Delimiters,
    sending: tuple[str, str],
    receiving: tuple[str, str],
    trigger: str,
    inbound_control_id: str,
    processing_id: str,
    version: str,
    charset: str,
    code: str,
    errors: Sequence[Hl7Error],
    text: str,
    control_id: str | None,
    timestamp: str | None,
) -> str:
    fs = d.field
    version = version or "2.5"
    msg_type = d.component.join(("ACK", trigger, "ACK")) if trigger else "ACK"
    if _version_tuple(version) < (2, 3, 1):
        msg_type = d.component.join(("ACK", trigger)) if trigger else "ACK"
    msh = [
        "MSH",
        d.encoding_characters,
        receiving[0],
        receiving[1],
        sending[0],
        sending[1],
        timestamp or _now(),
        "",
        msg_type,
        escape(control_id or new_control_id(), d),
        processing_id or "P",
        version,
    ]
    if charset:
        msh += ["", "", "", "", "", charset]
    msa = ["MSA", code, inbound_control_id]
    if text or (errors and _version_tuple(version) < (2, 5)):
        msa.append(escape(text or errors[0].message, d))
    segs = [fs.join(msh), fs.join(msa), *_err_segments(errors, version, d)]
    return "\r".join(segs) + "\r"


def _encode(text: str, charset: str) -> bytes:
    codec = CHARSETS.get(charset.upper(), "utf-8") if charset else "ascii"
    try:
        return text.encode(codec)
    except (UnicodeEncodeError, LookupError):
        return text.encode(codec if codec != "ascii" else "ascii", errors="replace")


def build_ack(
    msg: Message,
    code: str,
    *,
    errors: Sequence[Hl7Error] = (),
    text: str = "",
    control_id: str | None = None,
    timestamp: str | None = None,
) -> bytes:
    """An ACK for a parsed message with MSA-1 = ``code`` (AA/AE/AR/CA/CE/CR) and one ERR per error."""
    msh = msg.msh
    d = msg.delimiters
    charset = msh[18][1].raw.strip()
    out = _assemble(
        d=d,
        sending=(msh[3].raw, msh[4].raw),
        receiving=(msh[5].raw, msh[6].raw),
        trigger=msh[9][1].c(2),
        inbound_control_id=msh[10][1].raw,
        processing_id=msh[11].raw,
        version=msh[12].raw,
        charset=charset,
        code=code,
        errors=errors,
        text=text,
        control_id=control_id,
        timestamp=timestamp,
    )
    return _encode(out, charset)


def application_ack(
    msg: Message, error: Hl7Error | None = None, *, warnings: Sequence[Hl7Error] = (), **kw: str | None
) -> bytes | None:
    """The application ACK (AA/AE/AR), or None when MSH-16 says not to send one (enhanced mode NE/ER/SU)."""
    code = ack_code(error)
    if not should_send(msg.msh[16].value, code):
        return None
    errs = [error] if error else list(warnings)
    return build_ack(msg, code, errors=errs, **kw)  # type: ignore[arg-type]


def accept_ack(msg: Message, error: Hl7Error | None = None, **kw: str | None) -> bytes | None:
    """The enhanced-mode accept ACK (CA/CE/CR) once the message is safely stored; None if MSH-15 says not to."""
    code = ack_code(error, accept=True)
    if not should_send(msg.msh[15].value, code):
        return None
    return build_ack(msg, code, errors=[error] if error else [], **kw)  # type: ignore[arg-type]


def is_ack(raw: bytes) -> bool:
    """True when the bytes are themselves an ACK (never ACK an ACK)."""
    fields = _raw_msh_fields(raw)
    if not fields:
        return False
    d, f = fields
    return len(f) > 8 and f[8].split(d.component, 1)[0].upper() == "ACK"


def _raw_msh_fields(raw: bytes) -> tuple[Delimiters, list[str]] | None:
    """Split the MSH line of undecoded bytes (Latin-1 keeps byte positions); None when there is no usable MSH."""
    if not isinstance(raw, bytes | bytearray):
        return None
    data = bytes(raw)
    if data[:6] in (b"M\x00S\x00H\x00", b"\xff\xfeM\x00S\x00"):
        try:
            data = data.decode("utf-16").encode("utf-8")
        except UnicodeDecodeError:
            return None
    pos = data.find(b"MSH")
    if pos < 0 or pos > 16:
        return None
    end = len(data)
    for t in (b"\r", b"\n"):
        e = data.find(t, pos)
        if e >= 0:
            end = min(end, e)
    line = data[pos:end].decode("latin-1")
    if len(line) < 8:
        return None
    fs = line[3]
    enc_end = line.find(fs, 4)
    enc = line[4:enc_end] if enc_end > 0 else ""
    chars = [fs, *enc[:5]]
    if len(enc) < 4 or len(set(chars)) != len(chars) or not all(_is_delimiter(c) for c in chars):
        return None
    d = Delimiters(fs, enc[0], enc[1], enc[2], enc[3], enc[4] if len(enc) > 4 else "")
    parts = line.split(fs)
    # parts[1] is MSH-2; shift so f[n-1] is MSH-n
    return d, [fs, *parts[1:]]


def minimal_ack(
    raw: bytes,
    code: str = "AR",
    error: Hl7Error | None = None,
    *,
    control_id: str | None = None,
    timestamp: str | None = None,
) -> bytes:
    """An ACK from the bytes alone: works when parsing failed, even with no MSH at all (answers with a fresh MSH).

    Fields are copied from the raw MSH line only when it is structurally sound; otherwise defaults are used and
    MSA-2 is empty (the inbound control id is unknown).
    """
    got = _raw_msh_fields(raw)
    err_list = [error] if error else []
    if got is None:
        if not err_list and code not in SUCCESS:
            err_list = [ParseError("message does not start with a readable MSH segment", location=Location("MSH"))]
        text = _assemble(
            d=DEFAULT_DELIMITERS,
            sending=("", ""),
            receiving=("", ""),
            trigger="",
            inbound_control_id="",
            processing_id="P",
            version="2.5",
            charset="",
            code=code,
            errors=err_list,
            text="",
            control_id=control_id,
            timestamp=timestamp,
        )
        return _encode(text, "")
    d, f = got

    def fld(n: int) -> str:
        return f[n - 1] if n - 1 < len(f) else ""

    version = fld(12).split(d.component, 1)[0]
    if not version or not all(p.isascii() and p.isdigit() for p in version.split(".")):
        version = "2.5"
    charset = fld(18).split(d.repetition, 1)[0].strip()
    if charset and charset.upper() not in CHARSETS:
        charset = ""
    trigger = fld(9).split(d.component)[1] if len(fld(9).split(d.component)) > 1 else ""
    text = _assemble(
        d=d,
        sending=(_safe(fld(3), d), _safe(fld(4), d)),
        receiving=(_safe(fld(5), d), _safe(fld(6), d)),
        trigger=_safe(trigger, d),
        inbound_control_id=_safe(fld(10).split(d.component, 1)[0], d),
        processing_id=_safe(fld(11), d)[:3],
        version=version,
        charset=charset,
        code=code,
        errors=err_list,
        text="",
        control_id=control_id,
        timestamp=timestamp,
    )
    return _encode(text, charset)


def _safe(v: str, d: Delimiters) -> str:
    """Echoed raw values must not smuggle segment terminators into the ACK."""
    return v.replace("\r", "").replace("\n", "").replace("\x1c", "").replace("\x0b", "")


def batch_ack(envelope: Sequence[bytes], acks: Sequence[bytes], *, control_id: str | None = None) -> bytes:
    """Wrap per-message ACKs in a batch response: [FHS] BHS ... BTS|<count> [FTS] (v2 chapter 2.10.3).

    ``envelope`` is what ``parser.split_batch`` returned: sender/receiver are swapped and BHS-12 (reference batch
    control id) carries the inbound BHS-11. Answer with the ACKs of every message, or only the failed ones, as
    agreed with the sender.
    """
    d = DEFAULT_DELIMITERS
    header = next((s for s in envelope if s.startswith(b"BHS")), b"")
    fhs = next((s for s in envelope if s.startswith(b"FHS")), b"")
    line = header.decode("latin-1")
    fs = line[3] if len(line) > 3 else d.field
    f = line.split(fs)

    def fld(n: int) -> str:
        return _safe(f[n - 1], d) if 0 < n - 1 < len(f) else ""

    bhs = fs.join(["BHS", fld(2) or d.encoding_characters, fld(5), fld(6), fld(3), fld(4), _now(), "", "", ""])
    bhs += fs + escape(control_id or new_control_id(), d) + fs + fld(11)  # BHS-11 ours, BHS-12 theirs
    body = [bhs.encode("latin-1")]
    for a in acks:
        body.append(a.rstrip(b"\r"))
    body.append(f"BTS{fs}{len(acks)}".encode("ascii"))
    if fhs:
        fl = fhs.decode("latin-1").split(fs)
        swap = [fl[i] if i < len(fl) else "" for i in (4, 5, 2, 3)]
        body.insert(0, fs.join(["FHS", fld(2) or d.encoding_characters, *swap, _now()]).encode("latin-1"))
        body.append(f"FTS{fs}1".encode("ascii"))
    return b"\r".join(body) + b"\r"
