"""SPM -> Specimen (IG SPM[Specimen]); keyed on SPM-2 specimen id (placer or filler assigned)."""

from __future__ import annotations

from typing import Any

from app.hl7v2 import datatypes as dt
from app.hl7v2.context import Context
from app.hl7v2.parser import Segment


def specimen(seg: Segment, ctx: Context) -> str | None:
    eip = seg[2][1]
    ident = None
    for n in (1, 2):  # EIP: placer assigned ^ filler assigned (each an EI in subcomponents)
        comp = eip[n]
        if comp.value:
            ident = dt.ei(comp, ctx)
            break
    if ident is None or not ctx.patient_ref:
        return None
    res: dict[str, Any] = {"resourceType": "Specimen", "subject": {"reference": ctx.patient_ref}}
    stype = dt.cwe(seg[4][1], ctx, "0487")
    if stype:
        res["type"] = stype
    collection: dict[str, Any] = {}
    method = dt.cwe(seg[7][1], ctx, "0488")
    if method:
        collection["method"] = method
    site = dt.cwe(seg[8][1], ctx)
    if site:
        collection["bodySite"] = site
    start, end = dt.ts(seg[17][1].c(1), ctx.zone), dt.ts(seg[17][1].c(2), ctx.zone)
    if start and end:
        collection["collectedPeriod"] = {"start": start, "end": end}
    elif start:
        collection["collectedDateTime"] = start
    if collection:
        res["collection"] = collection
    received = dt.ts(seg[18].value, ctx.zone)
    if received:
        res["receivedTime"] = received
    return ctx.upsert(res, ident, owned=True)
