"""HL7v2 over MLLP: framing (pure), an asyncio listener that hands each message to an injected handler
and writes back its ACK, and a small client. No storage and no HL7->FHIR mapping here."""

from app.mllp.client import MllpClient, MllpClientError, MllpConnectionClosed, send
from app.mllp.framing import Frame, FrameDecoder, FramingError, FramingErrorKind, encode
from app.mllp.server import MllpHandler, MllpServer, MllpStats, PeerInfo, server_ssl_context

__all__ = [
    "Frame",
    "FrameDecoder",
    "FramingError",
    "FramingErrorKind",
    "MllpClient",
    "MllpClientError",
    "MllpConnectionClosed",
    "MllpHandler",
    "MllpServer",
    "MllpStats",
    "PeerInfo",
    "encode",
    "send",
    "server_ssl_context",
]
