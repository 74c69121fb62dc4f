"""The transport's last-resort reply: an ACK built from raw bytes that may be anything.

The server needs an answer when the handler failed, timed out or never ran (oversized frame). It asks
``app.hl7v2.ack.minimal_ack``; should that raise or return something that cannot be framed, the tiny
builder below answers instead: it never raises and never emits a control byte.

Also here: reading MSH-10 (control id) and MSA-1 (ack code) for log lines, which must carry nothing
else from a message (PHI).
"""

from __future__ import annotations

import logging
import re
import uuid
from datetime import datetime

from app.hl7v2.ack import minimal_ack

log = logging.getLogger(__name__)

_DEFAULT_ENC = b"^~\\&"
_SAFE_ID = re.compile(rb"[!-~]{1,64}")  # printable, no spaces: safe inside a logfmt line


def _msh_fields(raw: bytes) -> tuple[list[bytes], bytes, bytes] | None:
    """Split the MSH segment into fields (index n = MSH-n, index 0 = b"MSH"); None if there is no usable
    MSH. Tolerates a BOM or whitespace before it and CR, LF or CRLF after it."""
    start = raw.find(b"MSH")
    if start < 0 or raw[:start].strip(b"\xef\xbb\xbf \t\r\n"):
        return None
    seg = re.split(rb"[\r\n]", raw[start:], maxsplit=1)[0]
    if len(seg) < 8:
        return None
    fs = seg[3:4]
    parts = seg.split(fs)
    enc = parts[1]
    # Delimiters are echoed into the reply: printable punctuation only, all different (never VT/FS/CR).
    if not 4 <= len(enc) <= 5 or not all(0x21 <= c <= 0x7E and not chr(c).isalnum() for c in fs + enc):
        return None
    if len(set(fs + enc)) != len(enc) + 1:
        return None
    return [b"MSH", fs, *parts[1:]], fs, enc


def _field(fields: list[bytes], n: int) -> bytes:
    return fields[n] if n < len(fields) else b""


def _clean(value: bytes) -> bytes:
    # Copied fields must not carry control bytes (VT/FS would break framing, CR/LF segments).
    return bytes(b for b in value if 0x20 <= b != 0x7F)


def control_id(raw: bytes) -> str | None:
    """MSH-10 if it looks like an identifier (it goes into log lines, so nothing else is let through)."""
    parsed = _msh_fields(raw)
    if parsed is None:
        return None
    value = _field(parsed[0], 10)
    return value.decode("ascii") if _SAFE_ID.fullmatch(value) else None


def ack_code(ack: bytes) -> str | None:
    """MSA-1 of a reply (AA, AE, AR, CA, CE, CR) for log lines and counters."""
    m = re.search(rb"(?:^|[\r\n])MSA(.)([A-Z]{2})(?:\1|[\r\n]|$)", ack)
    return m.group(2).decode("ascii") if m else None


def local_minimal_ack(raw: bytes, code: str) -> bytes:
    """MSH + MSA|code|<MSH-10 or empty>, echoing the sender's delimiters, swapped MSH-3/4 and MSH-5/6,
    MSH-11, MSH-12 and MSH-18 when they can be read; sensible defaults otherwise. Never raises."""
    parsed = _msh_fields(raw)
    fs, enc = b"|", _DEFAULT_ENC
    fields: list[bytes] = []
    if parsed is not None:
        fields, fs, enc = parsed
    cs = enc[0:1]

    def f(n: int) -> bytes:
        return _clean(_field(fields, n))

    trigger = b""
    msg_type = _field(fields, 9).split(cs)
    if len(msg_type) > 1 and re.fullmatch(rb"[A-Z0-9]{1,3}", msg_type[1]):
        trigger = msg_type[1]
    ctrl = f(10)
    ack_type = b"ACK" + (cs + trigger + cs + b"ACK" if trigger else b"")
    now = datetime.now().astimezone().strftime("%Y%m%d%H%M%S%z").encode("ascii")
    # MSH-3 onwards; MSH-1 is the separator itself and MSH-2 follows it directly.
    msh = [f(5), f(6), f(3), f(4), now, b"", ack_type, uuid.uuid4().hex[:20].encode("ascii"), f(11) or b"P"]
    msh.append(f(12) or b"2.5")
    if f(18):
        msh += [b""] * (18 - 3 - len(msh)) + [f(18)]  # msh[k] is MSH-(k+3)
    segments = [
        b"MSH" + fs + enc + fs + fs.join(msh),
        fs.join([b"MSA", code.encode("ascii", "replace")[:2], ctrl]),
    ]
    return b"\r".join(segments) + b"\r"


def fallback_ack(raw: bytes, code: str) -> bytes:
    """``app.hl7v2.ack.minimal_ack`` guarded by the local builder: always returns a frameable ACK."""
    try:
        ack = minimal_ack(raw, code)
        if isinstance(ack, bytes) and ack and b"\x0b" not in ack and b"\x1c" not in ack:
            return ack
        log.error("mllp.fallback_ack_unusable")
    except Exception as exc:  # the last resort must not fail: log the type only (no PHI)
        log.error("mllp.fallback_ack_failed error=%s", type(exc).__name__)
    return local_minimal_ack(raw, code)
