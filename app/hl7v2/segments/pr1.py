"""PR1 -> Procedure (IG PR1[Procedure]); keyed on PR1-19, else patient + code + date."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from app.hl7v2 import datatypes as dt
from app.hl7v2.context import Context
from app.hl7v2.parser import Segment

_ROLES = ((8, "anesthesiologist", "88189002"), (11, "surgeon", "304292004"), (12, "assistant", "158967008"))


def procedure(seg: Segment, ctx: Context) -> str | None:
    if not ctx.patient_ref:
        return None
    code = dt.cwe(seg[3][1], ctx)
    if code is None and seg[4].value:
        code = {"text": seg[4].value}
    if code is None:
        return None
    res: dict[str, Any] = {"resourceType": "Procedure", "status": "completed", "code": code}
    res["subject"] = {"reference": ctx.patient_ref}
    if ctx.encounter_ref:
        res["encounter"] = {"reference": ctx.encounter_ref}
    start = dt.ts(seg[5].value, ctx.zone)
    minutes = dt.decimal(seg[7].value)
    if start and isinstance(minutes, int | float) and "T" in start and minutes > 0:
        end = (datetime.fromisoformat(start.replace("Z", "+00:00")) + timedelta(minutes=minutes)).isoformat()
        res["performedPeriod"] = {"start": start, "end": end}
    elif start:
        res["performedDateTime"] = start
    performers = []
    for n, role, snomed in _ROLES:
        for rep in seg[n]:
            who = dt.xcn(rep, ctx)
            if who:
                performers.append(
                    {
                        "function": {"coding": [{"system": "http://snomed.info/sct", "code": snomed, "display": role}]},
                        "actor": who,
                    }
                )
    if performers:
        res["performer"] = performers
    reason = dt.cwe(seg[15][1], ctx)
    if reason:
        res["reasonCode"] = [reason]
    ident = dt.ei(seg[19][1], ctx)
    if ident is None:
        c0 = code.get("coding", [{}])[0]
        ident = ctx.derived_identifier(
            "Procedure",
            ctx.patient_key,
            c0.get("system", ""),
            c0.get("code", code.get("text", "")),
            seg[5].value,
        )
    return ctx.upsert(res, ident, owned=True)
