"""PV2 -> Encounter additions (IG PV2[Encounter]): admit reason, expected dates, length of stay, priority."""

from __future__ import annotations

from typing import Any

from app.hl7v2 import datatypes as dt
from app.hl7v2.context import Context
from app.hl7v2.parser import Segment


def apply(seg: Segment, ctx: Context, encounter: dict[str, Any]) -> None:
    reason = dt.cwe(seg[3][1], ctx)
    if reason:
        encounter["reasonCode"] = [reason]
    elif seg[12].value:
        encounter["reasonCode"] = [{"text": seg[12].value}]
    los = dt.decimal(seg[11].value)
    if isinstance(los, int):
        encounter["length"] = {
            "value": los,
            "unit": "days",
            "system": "http://unitsofmeasure.org",
            "code": "d",
        }
    priority = dt.cwe(seg[25][1], ctx, "0217")
    if priority:
        encounter["priority"] = priority
    loc = dt.pl(seg[1][1], ctx)
    if loc:
        encounter.setdefault("location", []).append({"location": loc, "status": "planned"})
