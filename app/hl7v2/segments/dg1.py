"""DG1 -> Condition (IG DG1[Condition]) and Encounter.diagnosis; keyed on DG1-20, else patient + code."""

from __future__ import annotations

from typing import Any

from app.hl7v2 import datatypes as dt
from app.hl7v2.context import Context
from app.hl7v2.parser import Segment

CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"


def condition(seg: Segment, ctx: Context) -> str | None:
    if not ctx.patient_ref:
        return None
    code = dt.cwe(seg[3][1], ctx)
    if code is None and seg[4].value:
        code = {"text": seg[4].value}
    if code is None:
        return None
    if seg[4].value and "text" not in code:
        code["text"] = seg[4].value
    res: dict[str, Any] = {
        "resourceType": "Condition",
        "category": [{"coding": [{"system": CATEGORY, "code": "encounter-diagnosis"}]}],
        "code": code,
        "subject": {"reference": ctx.patient_ref},
    }
    if ctx.encounter_ref:
        res["encounter"] = {"reference": ctx.encounter_ref}
    onset = dt.ts(seg[5].value, ctx.zone)
    if onset:
        res["onsetDateTime"] = onset
    recorded = dt.ts(seg[19].value, ctx.zone)
    if recorded:
        res["recordedDate"] = recorded
    asserter = dt.xcn(seg[16][1], ctx)
    if asserter:
        res["asserter"] = asserter
    if seg[21].value.upper() == "D":
        res["verificationStatus"] = {"coding": [{"system": VERIFICATION, "code": "entered-in-error"}]}
    ident = dt.ei(seg[20][1], ctx)
    if ident is None:
        c0 = code.get("coding", [{}])[0]
        ident = ctx.derived_identifier(
            "Condition",
            ctx.patient_key,
            c0.get("system", ""),
            c0.get("code", code.get("text", "")),
        )
    ref = ctx.upsert(res, ident, owned=True)
    if ctx.encounter_ref:
        enc = ctx.resource(ctx.encounter_ref)
        diag: dict[str, Any] = {"condition": {"reference": ref}}
        rank = dt.decimal(seg[15].value)
        if isinstance(rank, int) and rank > 0:
            diag["rank"] = rank
        dtype = seg[6][1].c(1)
        if dtype:
            diag["use"] = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0052", "code": dtype}]}
        if diag not in enc.setdefault("diagnosis", []):
            enc["diagnosis"].append(diag)
    return ref
