"""One exception root for HL7v2 work, with typed subclasses that carry what an ACK's ERR segment needs.

Every error knows its HL7 location (segment id, segment sequence, field, repetition, component), its code from
v2 table 0357 (message error condition codes) and whether it rejects (AR: resending will not help) or errors (AE:
the sender should fix the content). ``to_issue()`` turns it into an OperationOutcome issue so the ingest service
reports HL7 problems in the same form as every other error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app.fhir.errors import FhirError, Issue, UnprocessableEntity

TABLE_0357 = "http://terminology.hl7.org/CodeSystem/v2-0357"

# v2 table 0357 text, used in ERR-3.2 and MSA-3.
ERROR_TEXT: dict[int, str] = {
    0: "Message accepted",
    100: "Segment sequence error",
    101: "Required field missing",
    102: "Data type error",
    103: "Table value not found",
    104: "Value too long",
    200: "Unsupported message type",
    201: "Unsupported event code",
    202: "Unsupported processing id",
    203: "Unsupported version id",
    204: "Unknown key identifier",
    205: "Duplicate key identifier",
    206: "Application record locked",
    207: "Application internal error",
}

# OperationOutcome issue type per 0357 code.
_ISSUE_TYPE: dict[int, str] = {
    100: "structure",
    101: "required",
    102: "value",
    103: "code-invalid",
    104: "too-long",
    200: "not-supported",
    201: "not-supported",
    202: "not-supported",
    203: "not-supported",
    204: "not-found",
    205: "duplicate",
    206: "lock-error",
    207: "exception",
}


@dataclass(frozen=True)
class Location:
    """ERR-2 (ERL): where in the message the problem is. Numbers are 1-based; 0/None = not applicable."""

    segment: str = ""
    sequence: int = 1  # which occurrence of that segment in the message
    field: int = 0
    repetition: int = 0
    component: int = 0
    subcomponent: int = 0

    def __str__(self) -> str:
        if not self.segment:
            return ""
        out = self.segment
        if self.sequence and self.sequence != 1:
            out += f"[{self.sequence}]"
        if self.field:
            out += f"-{self.field}"
            if self.repetition and self.repetition != 1:
                out += f"({self.repetition})"
            if self.component:
                out += f".{self.component}"
                if self.subcomponent:
                    out += f".{self.subcomponent}"
        return out


class Hl7Error(Exception):
    """Root of every HL7v2 error. ``ack_code`` is what an original-mode ACK answers (AE or AR)."""

    code: int = 207
    ack_code: str = "AE"
    severity: str = "E"  # ERR-4: E error, W warning, I information

    def __init__(self, message: str, *, location: Location | None = None, code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.location = location or Location()
        if code is not None:
            self.code = code

    @property
    def code_text(self) -> str:
        return ERROR_TEXT.get(self.code, "Application error")

    def to_issue(self) -> Issue:
        where = str(self.location)
        return Issue(
            code=_ISSUE_TYPE.get(self.code, "processing"),
            diagnostics=f"{self.message} ({where})" if where else self.message,
            severity="error" if self.severity == "E" else ("warning" if self.severity == "W" else "information"),
            expression=(where,) if where else (),
            details_code=f"hl7v2-{self.code}",
        )

    def to_fhir_error(self) -> FhirError:
        return UnprocessableEntity(self.message, issues=[self.to_issue()])

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "ack": self.ack_code, "location": str(self.location), "message": self.message}


class ParseError(Hl7Error):
    """The bytes are not an HL7v2 ER7 message (no MSH, bad delimiters). Resending the same bytes cannot help."""

    code = 100
    ack_code = "AR"


class CharsetError(Hl7Error):
    """Bytes are invalid for the character set declared in MSH-18 (or MSH-18 names an unknown set)."""

    code = 102
    ack_code = "AE"


class SegmentSequenceError(Hl7Error):
    code = 100
    ack_code = "AE"


class RequiredFieldMissing(Hl7Error):
    code = 101
    ack_code = "AE"


class DataTypeError(Hl7Error):
    code = 102
    ack_code = "AE"


class TableValueNotFound(Hl7Error):
    code = 103
    ack_code = "AE"


class ValueTooLong(Hl7Error):
    code = 104
    ack_code = "AE"


class UnsupportedMessageType(Hl7Error):
    code = 200
    ack_code = "AR"


class UnsupportedEvent(Hl7Error):
    code = 201
    ack_code = "AR"


class UnsupportedProcessingId(Hl7Error):
    code = 202
    ack_code = "AR"


class UnsupportedVersion(Hl7Error):
    code = 203
    ack_code = "AR"


class UnknownKey(Hl7Error):
    code = 204
    ack_code = "AE"


class InternalError(Hl7Error):
    code = 207
    ack_code = "AE"


class ReceiverUnavailable(Hl7Error):
    """The message could not be stored or processed for a transient reason (store down): AR, resend later."""

    code = 207
    ack_code = "AR"


class Hl7Warning(Hl7Error):
    """Not raised: collected in ``Translation.warnings`` (ERR-4 = W) for data that was skipped or guessed."""

    severity = "W"
    code = 207
