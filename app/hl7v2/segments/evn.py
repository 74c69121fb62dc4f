"""EVN -> event facts used by Provenance (recorded/occurred) and the event reason."""

from __future__ import annotations

from typing import Any

from app.hl7v2 import datatypes as dt
from app.hl7v2.context import Context
from app.hl7v2.parser import Segment


def event_facts(seg: Segment | None, ctx: Context) -> dict[str, Any]:
    """EVN-2 recorded date/time, EVN-6 event occurred, EVN-4 reason (table 0062), EVN-5 operator."""
    if seg is None:
        return {}
    out: dict[str, Any] = {}
    recorded = dt.ts(seg[2].value, ctx.zone)
    occurred = dt.ts(seg[6].value, ctx.zone)
    if recorded:
        out["recorded"] = recorded
    if occurred:
        out["occurred"] = occurred
    reason = dt.cwe(seg[4][1], ctx, "0062")
    if reason:
        out["reason"] = reason
    operator = seg[5][1]
    if operator:
        who = dt.xcn(operator, ctx)
        if who:
            out["operator"] = who
    return out
