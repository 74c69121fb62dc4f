"""HL7v2 -> FHIR R4, pure: parse (parser), acknowledge (ack), map (translate, messages, segments, datatypes).

Bytes in; an ACK and a FHIR transaction Bundle out. No storage, no sockets, no web framework here.
"""

from app.hl7v2.ack import accept_ack, application_ack, build_ack, minimal_ack
from app.hl7v2.config import Hl7Config
from app.hl7v2.errors import Hl7Error, Location
from app.hl7v2.parser import Message, parse
from app.hl7v2.translate import Receipt, Translation, receive, translate

__all__ = [
    "Hl7Config",
    "Hl7Error",
    "Location",
    "Message",
    "Receipt",
    "Translation",
    "accept_ack",
    "application_ack",
    "build_ack",
    "minimal_ack",
    "parse",
    "receive",
    "translate",
]
