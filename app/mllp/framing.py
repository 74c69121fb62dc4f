"""MLLP framing: ``<VT> payload <FS><CR>``, as a pure incremental decoder (no I/O, no clock).

The decoder turns whatever the socket delivered (partial frames, several frames, junk) into a list of
``Frame`` and ``FramingError`` values. Its output depends only on the byte stream, never on how the
stream was cut into reads, which is what makes it testable by splitting at every position.

Leniency rules, chosen so that a frame boundary is never guessed:

* Bytes outside a frame are skipped and reported once per run (``JUNK``) when the next ``VT`` arrives
  (or at ``finish()``); a run longer than ``max_frame_bytes`` is reported as fatal (the peer is not
  speaking MLLP, e.g. unframed HL7).
* ``FS`` followed by ``VT`` ends the frame although ``CR`` is missing (the next frame has clearly
  begun); ``FS`` at end of stream ends it too (``finish()``), and the server may end it after a quiet
  grace period (``assume_end()``) for senders that send ``FS`` alone and wait. ``FS`` followed by any
  other byte is payload, as python-hl7 and Medplum read it.
* ``VT`` inside a frame means the sender abandoned that frame and started again: the partial frame is
  reported (``ABANDONED``) and never delivered, so a resend is not glued to its broken first try.
* A payload longer than ``max_frame_bytes`` is reported (``OVERSIZE``, fatal) as soon as the limit is
  crossed, with only its first bytes kept (enough for MSH, so the reply can carry MSA-2); the rest of
  that frame is discarded without buffering.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

VT = 0x0B  # start block
FS = 0x1C  # end block
CR = 0x0D  # trailer

_VT = b"\x0b"
_FS = b"\x1c"
_TRAILER = b"\x1c\x0d"

#: Bytes of an oversized or abandoned frame kept for building its reply (MSH fits easily).
HEAD_BYTES = 4096


class FramingErrorKind(enum.Enum):
    JUNK = "junk"  # bytes between frames, skipped
    OVERSIZE = "oversize"  # payload longer than max_frame_bytes
    ABANDONED = "abandoned"  # VT arrived before the current frame ended
    TRUNCATED = "truncated"  # stream ended inside a frame


@dataclass(frozen=True)
class Frame:
    """One complete MLLP frame; ``payload`` excludes VT, FS and CR."""

    payload: bytes
    cr_missing: bool = False  # ended by FS + VT, FS at end of stream, or assume_end()


@dataclass(frozen=True)
class FramingError:
    """A framing problem, returned as a value (not raised) in stream order with the frames.

    ``fatal`` means the connection cannot sensibly continue (the server answers an oversized frame with
    AR, then closes). ``head`` is the start of the offending payload (OVERSIZE, ABANDONED, TRUNCATED);
    it may hold PHI and must never be logged. ``size`` is the number of bytes concerned; for OVERSIZE it
    is ``max_frame_bytes + 1``, i.e. "more than the limit", because the rest is never counted.
    """

    kind: FramingErrorKind
    size: int
    fatal: bool = False
    head: bytes = b""
    whitespace_only: bool = False  # JUNK made of CR/LF/spaces only (a common, harmless sender quirk)


class _State(enum.Enum):
    OUTSIDE = 0
    INSIDE = 1
    AFTER_FS = 2  # saw FS inside a frame; the next byte decides


class FrameDecoder:
    """Incremental MLLP decoder. ``feed()`` bytes as they arrive, ``finish()`` at end of stream."""

    def __init__(self, max_frame_bytes: int) -> None:
        if max_frame_bytes < 1:
            raise ValueError("max_frame_bytes must be positive")
        self.max_frame_bytes = max_frame_bytes
        self._state = _State.OUTSIDE
        self._buf = bytearray()
        self._discarding = False  # current frame is oversized: count nothing, keep nothing
        self._junk = 0
        self._junk_ws = True
        self._frames_started = 0

    # -- state the server needs for its timers -------------------------------------------------------
    @property
    def in_frame(self) -> bool:
        """True between a VT and the end of its frame (the slow-sender timer runs)."""
        return self._state is not _State.OUTSIDE

    @property
    def pending_fs(self) -> bool:
        """True when the last byte seen was a frame-ending FS with no CR yet."""
        return self._state is _State.AFTER_FS

    @property
    def frames_started(self) -> int:
        """Count of VTs that opened a frame; lets a caller tell one partial frame from the next."""
        return self._frames_started

    # -- decoding -----------------------------------------------------------------------------------
    def feed(self, data: bytes) -> list[Frame | FramingError]:
        out: list[Frame | FramingError] = []
        i, n = 0, len(data)
        while i < n:
            if self._state is _State.OUTSIDE:
                j = data.find(_VT, i)
                end = n if j < 0 else j
                if end > i:
                    self._add_junk(data[i:end], out)
                if j < 0:
                    break
                self._flush_junk(out)
                self._open_frame()
                i = j + 1
            elif self._state is _State.INSIDE:
                j_fs = data.find(_FS, i)
                j_vt = data.find(_VT, i, n if j_fs < 0 else j_fs)
                if j_vt >= 0:  # restart before any FS: the current frame was abandoned
                    self._append(data[i:j_vt], out)
                    if not self._discarding:
                        out.append(
                            FramingError(FramingErrorKind.ABANDONED, len(self._buf), head=bytes(self._buf[:HEAD_BYTES]))
                        )
                    self._open_frame()
                    i = j_vt + 1
                elif j_fs >= 0:
                    self._append(data[i:j_fs], out)
                    self._state = _State.AFTER_FS
                    i = j_fs + 1
                else:
                    self._append(data[i:], out)
                    i = n
            else:  # AFTER_FS
                b = data[i]
                if b == CR:
                    self._close_frame(out, cr_missing=False)
                    i += 1
                elif b == VT:
                    self._close_frame(out, cr_missing=True)
                    self._open_frame()
                    i += 1
                else:  # a lone FS is payload; re-read this byte as payload
                    self._state = _State.INSIDE
                    self._append(_FS, out)
        return out

    def assume_end(self) -> list[Frame | FramingError]:
        """End a frame whose FS arrived without CR and nothing followed (the server calls this after a
        quiet grace period). A no-op in any other state."""
        out: list[Frame | FramingError] = []
        if self._state is _State.AFTER_FS:
            self._close_frame(out, cr_missing=True)
        return out

    def finish(self) -> list[Frame | FramingError]:
        """End of stream: deliver a frame that lacks only its CR, report pending junk or a truncated
        frame, and reset to the initial state."""
        out: list[Frame | FramingError] = []
        if self._state is _State.AFTER_FS:
            self._close_frame(out, cr_missing=True)
        elif self._state is _State.INSIDE:
            if not self._discarding:
                out.append(FramingError(FramingErrorKind.TRUNCATED, len(self._buf), head=bytes(self._buf[:HEAD_BYTES])))
            self._reset_frame()
        self._flush_junk(out)
        return out

    # -- helpers ------------------------------------------------------------------------------------
    def _open_frame(self) -> None:
        self._reset_frame()
        self._state = _State.INSIDE
        self._frames_started += 1

    def _reset_frame(self) -> None:
        self._buf = bytearray()
        self._discarding = False
        self._state = _State.OUTSIDE

    def _close_frame(self, out: list[Frame | FramingError], *, cr_missing: bool) -> None:
        if not self._discarding:
            out.append(Frame(bytes(self._buf), cr_missing=cr_missing))
        self._reset_frame()

    def _append(self, chunk: bytes, out: list[Frame | FramingError]) -> None:
        if self._discarding or not chunk:
            return
        if len(self._buf) + len(chunk) > self.max_frame_bytes:
            keep = min(HEAD_BYTES, self.max_frame_bytes)  # never more than the limit: same head for any read size
            head = (bytes(self._buf[:keep]) + chunk[:keep])[:keep]
            out.append(FramingError(FramingErrorKind.OVERSIZE, self.max_frame_bytes + 1, fatal=True, head=head))
            self._buf = bytearray()
            self._discarding = True
            return
        self._buf += chunk

    def _add_junk(self, chunk: bytes, out: list[Frame | FramingError]) -> None:
        # Count without keeping; report a fatal error each time a run passes the limit, at the same
        # stream position whatever the read sizes were.
        while chunk:
            room = self.max_frame_bytes + 1 - self._junk
            part, chunk = chunk[:room], chunk[room:]
            self._junk += len(part)
            self._junk_ws = self._junk_ws and not part.strip()
            if self._junk > self.max_frame_bytes:
                out.append(FramingError(FramingErrorKind.JUNK, self._junk, fatal=True))
                self._junk, self._junk_ws = 0, True

    def _flush_junk(self, out: list[Frame | FramingError]) -> None:
        if self._junk:
            out.append(FramingError(FramingErrorKind.JUNK, self._junk, whitespace_only=self._junk_ws))
        self._junk, self._junk_ws = 0, True


def encode(payload: bytes) -> bytes:
    """Wrap one message in an MLLP frame. Refuses payloads containing VT or FS, which would break the
    framing on the wire (HL7 text never contains them)."""
    if _VT in payload or _FS in payload:
        raise ValueError("MLLP payload must not contain VT (0x0B) or FS (0x1C)")
    return _VT + bytes(payload) + _TRAILER
