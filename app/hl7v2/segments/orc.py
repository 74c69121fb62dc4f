"""ORC -> the common order facts shared by ServiceRequest, DiagnosticReport and Immunization (IG ORC maps)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.hl7v2 import datatypes as dt
from app.hl7v2 import vocab
from app.hl7v2.context import Context
from app.hl7v2.parser import Segment


@dataclass
class OrderFacts:
    control: str = ""  # ORC-1
    placer: dict[str, Any] | None = None  # ORC-2 / OBR-2 (identifier type PLAC)
    filler: dict[str, Any] | None = None  # ORC-3 / OBR-3 (identifier type FILL)
    group: dict[str, Any] | None = None  # ORC-4 placer group number (requisition)
    status: str = ""  # ORC-5 (table 0038)
    authored: str | None = None  # ORC-9
    requester: dict[str, Any] | None = None  # ORC-12
    extra: dict[str, Any] = field(default_factory=dict)

    def service_request_status(self) -> str:
        """ORC-5 wins over ORC-1 (IG); nothing sent -> active (an order being placed)."""
        if self.status and self.status in vocab.ORDER_STATUS:
            return vocab.ORDER_STATUS[self.status]
        return vocab.ORDER_CONTROL_STATUS.get(self.control, "active" if not self.control else "unknown")


def facts(orc: Segment | None, obr: Segment | None, ctx: Context) -> OrderFacts:
    f = OrderFacts()
    if orc is not None:
        f.control = orc[1].value.upper()
        f.placer = dt.ei(orc[2][1], ctx, "PLAC")
        f.filler = dt.ei(orc[3][1], ctx, "FILL")
        f.group = dt.ei(orc[4][1], ctx, "PGN")
        f.status = orc[5].value.upper()
        f.authored = dt.ts(orc[9].value, ctx.zone)
        f.requester = dt.xcn(orc[12][1], ctx)
    if obr is not None:
        f.placer = f.placer or dt.ei(obr[2][1], ctx, "PLAC")
        f.filler = f.filler or dt.ei(obr[3][1], ctx, "FILL")
        f.requester = f.requester or dt.xcn(obr[16][1], ctx)
    return f
