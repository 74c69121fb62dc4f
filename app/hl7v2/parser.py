"""A fast, tolerant ER7 tokenizer: bytes -> Message > Segment > Field > Repetition > Component > subcomponent.

Why not hl7apy on the hot path: its full parse costs ~20 ms per ADT^A01, it does not decode escape sequences,
drops segments on CRLF input and drops Z-segments with group detection. This module splits with the message's own
delimiters (MSH-1/MSH-2), accepts CR, LF and CRLF terminators and a leading BOM, decodes the bytes with the
character set named in MSH-18, keeps every segment (Z-segments included) in order, and unescapes each leaf value
last. Splitting below the segment level is lazy, so mapping code only pays for the fields it reads.

Accessors are 1-based and named like the standard: ``msg.segment("PID")[3][1][4][2]`` is PID-3, first repetition,
component 4, subcomponent 2; ``msg.get("PID-3.4.2")`` is the same as a string. Missing parts are empty, never
IndexError: a tolerant reader must not crash on short segments.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Iterator
from dataclasses import dataclass

from app.hl7v2.errors import CharsetError, Location, ParseError

__all__ = [
    "Delimiters",
    "Message",
    "Segment",
    "Field",
    "Repetition",
    "Component",
    "parse",
    "split_batch",
    "decode_bytes",
    "unescape",
    "escape",
    "CHARSETS",
]


@dataclass(frozen=True, slots=True)
class Delimiters:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"
    truncation: str = ""  # v2.7+ 5th encoding character, usually '#'

    @property
    def encoding_characters(self) -> str:
        return self.component + self.repetition + self.escape + self.subcomponent + self.truncation


DEFAULT_DELIMITERS = Delimiters()

# v2 table 0211 (MSH-18) -> Python codec. Empty MSH-18 means ASCII by the standard; see decode_bytes for leniency.
CHARSETS: dict[str, str] = {
    "ASCII": "ascii",
    "8859/1": "latin-1",
    "8859/2": "iso8859-2",
    "8859/3": "iso8859-3",
    "8859/4": "iso8859-4",
    "8859/5": "iso8859-5",
    "8859/6": "iso8859-6",
    "8859/7": "iso8859-7",
    "8859/8": "iso8859-8",
    "8859/9": "iso8859-9",
    "8859/15": "iso8859-15",
    "ISO IR6": "ascii",
    "ISO IR14": "shift_jis",
    "ISO IR87": "iso2022_jp",
    "ISO IR159": "iso2022_jp_2",
    "ISO IR100": "latin-1",
    "GB 18030-2000": "gb18030",
    "KS X 1001": "euc_kr",
    "BIG-5": "big5",
    "UNICODE": "utf-16",
    "UNICODE UTF-8": "utf-8",
    "UTF-8": "utf-8",  # common non-standard spelling
    "UNICODE UTF-16": "utf-16",
    "UNICODE UTF-32": "utf-32",
}

_BOMS = (codecs.BOM_UTF8, codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)


def _sniff_utf16(raw: bytes) -> str | None:
    if raw.startswith(codecs.BOM_UTF16_LE) or raw[:6] == b"M\x00S\x00H\x00":
        return "utf-16-le"
    if raw.startswith(codecs.BOM_UTF16_BE) or raw[:6] == b"\x00M\x00S\x00H":
        return "utf-16-be"
    return None


def _msh18(header_line: str) -> str:
    """MSH-18 (first repetition) from the MSH line read as Latin-1, without a full parse."""
    if len(header_line) < 8:
        return ""
    sep = header_line[3]
    parts = header_line.split(sep)
    if len(parts) <= 17:
        return ""
    rep = header_line[5] if len(header_line) > 5 else "~"
    comp = header_line[4]
    return parts[17].split(rep, 1)[0].split(comp, 1)[0].strip()


def decode_bytes(raw: bytes) -> tuple[str, str, list[str]]:
    """Decode a de-framed message to text with the MSH-18 charset. Returns (text, codec, warnings).

    Undeclared (empty MSH-18) is ASCII by the standard, but many senders send UTF-8 or Windows-1252 without saying
    so: we try UTF-8 first, then cp1252, and warn. A declared charset is applied strictly (bad bytes -> CharsetError).
    """
    warnings: list[str] = []
    utf16 = _sniff_utf16(raw)
    if utf16:
        try:
            text = raw.decode(utf16)
        except UnicodeDecodeError as exc:
            raise CharsetError(f"invalid UTF-16 input: {exc.reason}", location=Location("MSH", 1, 18)) from None
        return text.lstrip("\ufeff"), utf16, warnings
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8) :]
        bom_utf8 = True
    else:
        bom_utf8 = False
    start = raw.find(b"MSH")
    head_end = len(raw)
    for term in (b"\r", b"\n"):
        pos = raw.find(term, start if start >= 0 else 0)
        if pos >= 0:
            head_end = min(head_end, pos)
    header = raw[max(start, 0) : head_end].decode("latin-1")
    declared = _msh18(header)
    if declared:
        codec = CHARSETS.get(declared.upper())
        if codec is None:
            warnings.append(f"MSH-18 character set {declared!r} is not supported; decoded as UTF-8")
            codec = "utf-8"
            try:
                return raw.decode(codec), codec, warnings
            except UnicodeDecodeError:
                return raw.decode("cp1252", errors="replace"), "cp1252", warnings
        if codec == "utf-16":  # UCS-2 declared but bytes were not sniffed as UTF-16: read as UTF-8
            codec = "utf-8"
        try:
            return raw.decode(codec), codec, warnings
        except UnicodeDecodeError as exc:
            raise CharsetError(
                f"bytes at offset {exc.start} are not valid {declared}", location=Location("MSH", 1, 18)
            ) from None
    try:
        text = raw.decode("utf-8")
        if not bom_utf8 and not raw.isascii():
            warnings.append("MSH-18 is empty (ASCII) but the message holds non-ASCII bytes; decoded as UTF-8")
        return text, "utf-8" if not raw.isascii() else "ascii", warnings
    except UnicodeDecodeError:
        warnings.append("MSH-18 is empty and the bytes are not UTF-8; decoded as Windows-1252")
        return raw.decode("cp1252", errors="replace"), "cp1252", warnings


_ESC_CACHE: dict[Delimiters, re.Pattern[str]] = {}


def _escape_pattern(d: Delimiters) -> re.Pattern[str]:
    pat = _ESC_CACHE.get(d)
    if pat is None:
        e = re.escape(d.escape)
        pat = re.compile(f"{e}([^{e}]*){e}")
        _ESC_CACHE[d] = pat
    return pat


def unescape(value: str, d: Delimiters = DEFAULT_DELIMITERS, charset: str = "utf-8") -> str:
    """Decode HL7 escape sequences in one leaf value (v2 chapter 2.7)."""
    if d.escape not in value:
        return value

    def repl(m: re.Match[str]) -> str:
        seq = m.group(1)
        if not seq:
            return m.group(0)
        head = seq[0]
        if seq == "F":
            return d.field
        if seq == "S":
            return d.component
        if seq == "T":
            return d.subcomponent
        if seq == "R":
            return d.repetition
        if seq == "E":
            return d.escape
        if seq == "P":
            return d.truncation or m.group(0)
        if head == "X":
            hexpart = seq[1:]
            try:
                data = bytes.fromhex(hexpart)
            except ValueError:
                return m.group(0)
            codec = charset if charset not in ("ascii",) else "utf-8"
            try:
                return data.decode(codec)
            except (UnicodeDecodeError, LookupError):
                return data.decode("latin-1")
        if seq in ("H", "N"):  # highlight on/off: presentation only
            return ""
        if head == ".":
            cmd = seq[1:3]
            if cmd == "br":
                return "\n"
            if cmd == "sp":
                arg = seq[3:].strip()
                n = int(arg) if arg.isascii() and arg.isdigit() and int(arg) < 100 else 1
                return "\n" * n
            return ""  # .fi .nf .in .ti .sk .ce: formatting hints
        if head in ("Z", "C", "M"):  # locally defined / charset switches: not representable, drop
            return ""
        return m.group(0)

    return _escape_pattern(d).sub(repl, value)


def escape(value: str, d: Delimiters = DEFAULT_DELIMITERS) -> str:
    """Escape text for inclusion as one leaf value (used when building ACKs)."""
    e = d.escape
    out = value.replace(e, f"{e}E{e}")
    out = out.replace(d.field, f"{e}F{e}").replace(d.component, f"{e}S{e}")
    out = out.replace(d.subcomponent, f"{e}T{e}").replace(d.repetition, f"{e}R{e}")
    if d.truncation:
        out = out.replace(d.truncation, f"{e}P{e}")
    return out.replace("\r\n", f"{e}.br{e}").replace("\n", f"{e}.br{e}").replace("\r", f"{e}.br{e}")


class Codec:
    """Delimiters + charset of one message: all the tree nodes need. Nodes hold this, not the Message, so a
    parsed message has no reference cycles and is freed as soon as it is dropped (no GC pressure at volume)."""

    __slots__ = ("delimiters", "charset", "_esc")

    def __init__(self, delimiters: Delimiters, charset: str) -> None:
        self.delimiters = delimiters
        self.charset = charset
        self._esc = delimiters.escape

    def unescape(self, value: str) -> str:
        if self._esc not in value:
            return value
        return unescape(value, self.delimiters, self.charset)


class Component:
    """One component: a list of raw (still escaped) subcomponents. ``comp[2]`` -> decoded subcomponent 2."""

    __slots__ = ("_raw", "_codec")

    def __init__(self, raw: str, codec: Codec) -> None:
        self._raw = raw
        self._codec = codec

    def __getitem__(self, n: int) -> str:
        if n < 1:
            raise IndexError("HL7 positions are 1-based")
        subs = self._raw.split(self._codec.delimiters.subcomponent)
        if n > len(subs):
            return ""
        return self._codec.unescape(subs[n - 1])

    def __len__(self) -> int:
        return len(self._raw.split(self._codec.delimiters.subcomponent))

    @property
    def value(self) -> str:
        return self[1]

    @property
    def raw(self) -> str:
        return self._raw

    def __str__(self) -> str:
        return self.value

    def __bool__(self) -> bool:
        return bool(self._raw)

    def __repr__(self) -> str:
        return f"Component({self._raw!r})"


class Repetition:
    """One repetition of a field: its components. ``rep[4]`` is the 4th component (a Component)."""

    __slots__ = ("_raw", "_codec", "_comps", "_vals")

    def __init__(self, raw: str, codec: Codec) -> None:
        self._raw = raw
        self._codec = codec
        self._comps: list[str] | None = None
        self._vals: list[str] | None = None

    def _split(self) -> list[str]:
        if self._comps is None:
            self._comps = self._raw.split(self._codec.delimiters.component)
        return self._comps

    def _values(self) -> list[str]:
        """Decoded, stripped first subcomponent of every component, computed once (mapping reads them a lot)."""
        vals = self._vals
        if vals is None:
            codec = self._codec
            sc = codec.delimiters.subcomponent
            esc = codec.delimiters.escape
            vals = []
            for raw in self._split():
                if sc in raw:
                    raw = raw.split(sc, 1)[0]
                if esc in raw:
                    raw = codec.unescape(raw)
                vals.append(raw.strip())
            self._vals = vals
        return vals

    def __getitem__(self, n: int) -> Component:
        if n < 1:
            raise IndexError("HL7 positions are 1-based")
        comps = self._split()
        return Component(comps[n - 1] if n <= len(comps) else "", self._codec)

    def c(self, n: int, sub: int = 1) -> str:
        """Decoded text of component n, subcomponent ``sub``: the common case in mapping code."""
        if sub == 1 and n > 0:
            vals = self._vals if self._vals is not None else self._values()
            try:
                return vals[n - 1]
            except IndexError:
                return ""
        comps = self._split()
        if n > len(comps) or n < 1:
            return ""
        raw = comps[n - 1]
        sc = self._codec.delimiters.subcomponent
        if sc not in raw:
            return raw.strip() if sub == 1 else ""
        subs = raw.split(sc)
        return self._codec.unescape(subs[sub - 1]).strip() if 0 < sub <= len(subs) else ""

    def values(self, size: int) -> list[str]:
        """Decoded first subcomponents of components 1..size (padded with ''): one call for many components."""
        vals = self._vals if self._vals is not None else self._values()
        if len(vals) >= size:
            return vals
        return vals + [""] * (size - len(vals))

    def __len__(self) -> int:
        return len(self._split())

    def __iter__(self) -> Iterator[Component]:
        for raw in self._split():
            yield Component(raw, self._codec)

    @property
    def value(self) -> str:
        return self.c(1)

    @property
    def raw(self) -> str:
        return self._raw

    @property
    def is_null(self) -> bool:
        """``""`` is HL7's explicit null (delete), distinct from an empty (not sent) value."""
        return self._raw == '""'

    def __bool__(self) -> bool:
        return bool(self._raw) and not self.is_null

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"Repetition({self._raw!r})"


class Field:
    """One field: its repetitions (an empty field has none). ``field[1]`` is the first Repetition."""

    __slots__ = ("_raw", "_codec", "_reps")

    def __init__(self, raw: str, codec: Codec, *, literal: bool = False) -> None:
        self._raw = raw
        self._codec = codec
        # MSH-1 and MSH-2 are never split or unescaped.
        self._reps: list[Repetition] | None = [Repetition(raw, codec)] if literal else None

    @property
    def repetitions(self) -> list[Repetition]:
        if self._reps is None:
            raw = self._raw
            if not raw:
                self._reps = []
            else:
                self._reps = [Repetition(r, self._codec) for r in raw.split(self._codec.delimiters.repetition)]
        return self._reps

    def __getitem__(self, n: int) -> Repetition:
        reps = self.repetitions
        if 0 < n <= len(reps):
            return reps[n - 1]
        if n < 1:
            raise IndexError("HL7 positions are 1-based")
        return EMPTY_REPETITION

    def __iter__(self) -> Iterator[Repetition]:
        return iter([r for r in self.repetitions if r])

    def __len__(self) -> int:
        return len(self.repetitions)

    @property
    def value(self) -> str:
        """First repetition, first component, first subcomponent, decoded and stripped."""
        if not self._raw:
            return ""
        return self[1].c(1)

    @property
    def raw(self) -> str:
        return self._raw

    @property
    def is_null(self) -> bool:
        return self._raw == '""'

    def __bool__(self) -> bool:
        return bool(self._raw) and not self.is_null

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"Field({self._raw!r})"


class Segment:
    """One segment. ``seg[n]`` is field n (1-based; for MSH, field 1 is the field separator itself)."""

    __slots__ = ("name", "_fields", "_codec", "index", "sequence", "_cache", "_is_header")

    def __init__(self, name: str, fields: list[str], codec: Codec, index: int, sequence: int) -> None:
        self.name = name
        self._fields = fields  # raw field strings; [0] is the segment id
        self._codec = codec
        self.index = index  # position in the message (0-based)
        self.sequence = sequence  # 1-based occurrence of this segment id (ERR-2.2)
        self._cache: dict[int, Field] = {}  # mapping code reads fields repeatedly: split each once
        self._is_header = name in ("MSH", "FHS", "BHS")

    def __getitem__(self, n: int) -> Field:
        f = self._cache.get(n)
        if f is not None:
            return f
        if n < 1:
            raise IndexError("HL7 positions are 1-based")
        if self._is_header:
            if n == 1:
                f = Field(self._codec.delimiters.field, self._codec, literal=True)
            elif n == 2:
                f = Field(self._fields[1] if len(self._fields) > 1 else "", self._codec, literal=True)
            else:
                f = Field(self._fields[n - 1] if n - 1 < len(self._fields) else "", self._codec)
        else:
            f = Field(self._fields[n] if n < len(self._fields) else "", self._codec)
        self._cache[n] = f
        return f

    def __len__(self) -> int:
        """Number of fields present (the highest field number sent)."""
        return len(self._fields) - 1 + (1 if self.name == "MSH" else 0)

    def get(self, path: str) -> str:
        """``seg.get("3.4.2")`` or ``seg.get("3(2).1")``: decoded text at field[.component[.subcomponent]]."""
        m = _PATH.match(path.strip())
        if not m:
            raise ValueError(f"not an HL7 path: {path!r}")
        return _at(self, m)

    def location(self, field: int = 0, component: int = 0, repetition: int = 0) -> Location:
        return Location(self.name, self.sequence, field, repetition, component)

    @property
    def raw(self) -> str:
        return self._codec.delimiters.field.join(self._fields)

    def __repr__(self) -> str:
        return f"Segment({self.raw[:60]!r})"


_PATH = re.compile(r"^(?:([A-Za-z][A-Za-z0-9]{2})(?:\[(\d+)\])?[-.])?(\d+)(?:\((\d+)\))?(?:\.(\d+))?(?:\.(\d+))?$")


class Message:
    """A parsed message: ordered segments plus the delimiters and charset they were read with."""

    def __init__(self, text: str, delimiters: Delimiters, charset: str = "utf-8", warnings: list[str] | None = None):
        self.delimiters = delimiters
        self.charset = charset
        self.warnings: list[str] = list(warnings or [])
        self.codec = Codec(delimiters, charset)
        self.segments: list[Segment] = []
        self._by_name: dict[str, list[Segment]] = {}
        sep = delimiters.field
        for line in text.split("\r"):
            if not line.strip():
                continue
            fields = line.split(sep)
            name = fields[0].strip().upper()
            if fields[0] != name:
                fields[0] = name
            same = self._by_name.setdefault(name, [])
            seg = Segment(name, fields, self.codec, len(self.segments), len(same) + 1)
            same.append(seg)
            self.segments.append(seg)

    def unescape(self, value: str) -> str:
        return self.codec.unescape(value)

    def segment(self, name: str, occurrence: int = 1) -> Segment | None:
        """The n-th segment with this id (1-based), or None."""
        same = self._by_name.get(name.upper())
        if not same or occurrence > len(same):
            return None
        return same[occurrence - 1]

    def all(self, name: str) -> list[Segment]:
        return list(self._by_name.get(name.upper(), ()))

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def __iter__(self) -> Iterator[Segment]:
        return iter(self.segments)

    def __len__(self) -> int:
        return len(self.segments)

    def get(self, path: str) -> str:
        """Terse path access: ``PID-3``, ``PID-3.1``, ``PID-3(2).4.2``, ``OBX[2]-5``. Missing -> ''."""
        m = _PATH.match(path.strip())
        if not m or not m.group(1):
            raise ValueError(f"not an HL7 path: {path!r} (expected like 'PID-3.1')")
        seg = self.segment(m.group(1), int(m.group(2) or 1))
        return "" if seg is None else _at(seg, m)


def _at(seg: Segment, m: re.Match[str]) -> str:
    n = int(m.group(3))
    field = seg[n]
    if seg.name == "MSH" and n in (1, 2):
        return field.raw
    rep = field[int(m.group(4) or 1)]
    if m.group(5) is None:
        return rep.c(1)
    return rep.c(int(m.group(5)), int(m.group(6) or 1))


EMPTY_REPETITION = Repetition("", Codec(DEFAULT_DELIMITERS, "utf-8"))  # shared: absent values are read a lot


def _is_delimiter(c: str) -> bool:
    """Delimiters are printable ASCII punctuation (v2 2.5.4): anything else cannot be echoed in every charset."""
    return len(c) == 1 and "!" <= c <= "~" and not c.isalnum()


def _delimiters_from(header: str) -> Delimiters:
    if len(header) < 5:
        raise ParseError("MSH segment is truncated", location=Location("MSH", 1, 1))
    fs = header[3]
    if not _is_delimiter(fs):
        raise ParseError(f"invalid field separator {fs!r} in MSH-1", location=Location("MSH", 1, 1))
    end = header.find(fs, 4)
    enc = header[4:end] if end >= 0 else header[4:]
    if not enc or len(enc) > 5:
        raise ParseError(f"MSH-2 encoding characters {enc!r} are invalid", location=Location("MSH", 1, 2))
    # A short MSH-2 (e.g. '^~\\' without '&') is seen from some senders: fill the rest from the defaults.
    chars = enc + "^~\\&"[len(enc) :] if len(enc) < 4 else enc
    comp, rep, esc, sub = chars[0], chars[1], chars[2], chars[3]
    trunc = chars[4] if len(chars) > 4 else ""
    all_chars = [fs, comp, rep, esc, sub] + ([trunc] if trunc else [])
    if len(set(all_chars)) != len(all_chars) or not all(_is_delimiter(c) for c in all_chars):
        raise ParseError(f"MSH-1/MSH-2 delimiters {fs + enc!r} are not distinct", location=Location("MSH", 1, 2))
    return Delimiters(fs, comp, rep, esc, sub, trunc)


def parse(raw: bytes | str) -> Message:
    """Parse one de-framed message. Raises ParseError (-> AR) for non-HL7 input, CharsetError for bad bytes."""
    warnings: list[str] = []
    if isinstance(raw, bytes | bytearray | memoryview):
        text, charset, warnings = decode_bytes(bytes(raw))
    else:
        text, charset = raw, "utf-8"
    text = text.lstrip("\ufeff \t\r\n\x0b")
    # Lenient on terminators: CR is the standard; files and some senders use CRLF or LF. MLLP end bytes too.
    if "\n" in text:
        text = text.replace("\r\n", "\r").replace("\n", "\r")
    text = text.rstrip("\x1c\r\n \t\x00")
    if not text.startswith("MSH"):
        raise ParseError("message does not start with an MSH segment", location=Location("MSH", 1, 0))
    delimiters = _delimiters_from(text)
    msg = Message(text, delimiters, charset, warnings)
    return msg


_ENVELOPE = (b"FHS", b"BHS", b"BTS", b"FTS")


def split_batch(raw: bytes) -> tuple[list[bytes], list[bytes]]:
    """Split an HL7 batch (FHS/BHS ... BTS/FTS) into its messages: (messages, envelope segments).

    Each message is processed on its own (v2 chapter 2.10). A plain message comes back as ``([raw], [])``.
    Works on bytes so each message is later decoded with its own MSH-18 (UTF-16 batches are not split).
    """
    data = raw[3:] if raw.startswith(codecs.BOM_UTF8) else raw
    head = data.lstrip(b" \t\r\n\x0b")
    if not head.startswith((b"FHS", b"BHS")):
        return [raw], []
    messages: list[list[bytes]] = []
    envelope: list[bytes] = []
    current: list[bytes] | None = None
    for line in head.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r"):
        if not line.strip():
            continue
        if line.startswith(_ENVELOPE):
            envelope.append(line)
            current = None
        elif line.startswith(b"MSH"):
            current = [line]
            messages.append(current)
        elif current is not None:
            current.append(line)
    return [b"\r".join(m) + b"\r" for m in messages], envelope
