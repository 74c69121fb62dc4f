"""MSH -> the message header facts (a MessageHeader-equivalent record) and the checks that decide AR."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from app.hl7v2.errors import Location, RequiredFieldMissing
from app.hl7v2.parser import Message

# Trigger -> message structure where v2.3 senders leave MSH-9.3 empty (ADT and SIU reuse structures).
STRUCTURE_BY_TRIGGER: dict[tuple[str, str], str] = {
    **{("ADT", t): "ADT_A01" for t in ("A01", "A04", "A08", "A13")},
    **{("ADT", t): "ADT_A05" for t in ("A05", "A14", "A28", "A31")},
    **{("ADT", t): "ADT_A06" for t in ("A06", "A07")},
    **{("ADT", t): "ADT_A09" for t in ("A09", "A10", "A11")},
    **{("ADT", t): "ADT_A39" for t in ("A34", "A35", "A36", "A39", "A40", "A41", "A42")},
    ("ADT", "A02"): "ADT_A02",
    ("ADT", "A03"): "ADT_A03",
    **{("SIU", f"S{n}"): "SIU_S12" for n in range(12, 27)},
    ("ORU", "R01"): "ORU_R01",
    ("ORM", "O01"): "ORM_O01",
    ("OML", "O21"): "OML_O21",
    ("DFT", "P03"): "DFT_P03",
    ("BAR", "P01"): "BAR_P01",
    ("VXU", "V04"): "VXU_V04",
    **{("MDM", f"T{n:02d}"): "MDM_T02" for n in (2, 4, 6, 8, 10)},
    ("ACK", ""): "ACK",
}


@dataclass(frozen=True)
class Header:
    """What MSH says, decoded: enough to ACK, to deduplicate deliveries and to record a MessageHeader."""

    control_id: str  # MSH-10: delivery id (dedupe, ACK correlation), never a resource key
    message_code: str  # MSH-9.1
    trigger: str  # MSH-9.2
    structure: str  # MSH-9.3, derived when absent
    version: str  # MSH-12.1
    processing_id: str  # MSH-11.1 (table 0103: P production, D debugging, T training)
    sending_application: str  # MSH-3.1
    sending_facility: str  # MSH-4.1
    receiving_application: str  # MSH-5.1
    receiving_facility: str  # MSH-6.1
    timestamp: str  # MSH-7 raw (v2 DTM)
    accept_ack_type: str  # MSH-15 (table 0155): empty in original mode
    application_ack_type: str  # MSH-16
    charset: str  # MSH-18 first repetition as sent (reply in the same set)
    security: str = ""  # MSH-8
    processing_mode: str = ""  # MSH-11.2 (table 0207: A archive, R restore, I initial load, T/blank current)

    @property
    def enhanced_mode(self) -> bool:
        return bool(self.accept_ack_type or self.application_ack_type)

    @property
    def sender(self) -> str:
        """The sending facility (else application): the scope of identifiers that name no assigning authority."""
        return self.sending_facility or self.sending_application

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def message_header(self, focus: list[str] | None = None) -> dict[str, Any]:
        """A FHIR MessageHeader for these facts (for the caller's message store; not part of the Bundle)."""
        mh: dict[str, Any] = {
            "resourceType": "MessageHeader",
            "eventCoding": {
                "system": "http://terminology.hl7.org/CodeSystem/v2-0003",
                "code": self.trigger,
                "display": f"{self.message_code}^{self.trigger}^{self.structure}",
            },
            "source": {"name": self.sending_application or "unknown", "endpoint": f"urn:id:{self.sender or 'unknown'}"},
        }
        if self.receiving_application or self.receiving_facility:
            dest = self.receiving_application or self.receiving_facility
            mh["destination"] = [{"name": dest, "endpoint": f"urn:id:{dest}"}]
        if focus:
            mh["focus"] = [{"reference": r} for r in focus]
        return mh


def read_header(msg: Message) -> Header:
    msh = msg.msh
    code = msh[9][1].c(1).upper()
    trigger = msh[9][1].c(2).upper()
    structure = msh[9][1].c(3).upper() or STRUCTURE_BY_TRIGGER.get((code, trigger), f"{code}_{trigger}" if code else "")
    control_id = msh[10][1].c(1)
    version = msh[12][1].c(1)
    if not code:
        raise RequiredFieldMissing("MSH-9 message type is empty", location=Location("MSH", 1, 9, 1, 1))
    return Header(
        control_id=control_id,
        message_code=code,
        trigger=trigger,
        structure=structure,
        version=version,
        processing_id=msh[11][1].c(1).upper(),
        sending_application=msh[3][1].c(1),
        sending_facility=msh[4][1].c(1),
        receiving_application=msh[5][1].c(1),
        receiving_facility=msh[6][1].c(1),
        timestamp=msh[7][1].c(1),
        accept_ack_type=msh[15][1].c(1).upper(),
        application_ack_type=msh[16][1].c(1).upper(),
        charset=msh[18][1].c(1),
        security=msh[8][1].c(1),
        processing_mode=msh[11][1].c(2).upper(),
    )
