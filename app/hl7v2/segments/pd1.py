"""PD1 -> Patient additions: PD1-3 primary facility and PD1-4 primary care provider -> generalPractitioner."""

from __future__ import annotations

from app.hl7v2 import datatypes as dt
from app.hl7v2.context import Context
from app.hl7v2.parser import Segment


def apply(seg: Segment, ctx: Context, patient_ref: str) -> None:
    patient = ctx.resource(patient_ref)
    gps = []
    for rep in seg[4]:
        ref = dt.xcn(rep, ctx)
        if ref:
            gps.append(ref)
    for rep in seg[3]:
        org = dt.xon(rep, ctx)
        if org:
            gps.append(org)
    if gps:
        patient["generalPractitioner"] = gps
