"""AL1 -> AllergyIntolerance (IG AL1[AllergyIntolerance]); keyed on patient + allergen code (AL1-3)."""

from __future__ import annotations

from typing import Any

from app.hl7v2 import datatypes as dt
from app.hl7v2 import vocab
from app.hl7v2.context import Context
from app.hl7v2.parser import Segment

CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"


def allergy(seg: Segment, ctx: Context) -> str | None:
    code = dt.cwe(seg[3][1], ctx)
    if not code or not ctx.patient_ref:
        return None
    res: dict[str, Any] = {
        "resourceType": "AllergyIntolerance",
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "active"}]},
        "verificationStatus": {"coding": [{"system": VERIFICATION, "code": "confirmed"}]},
        "type": "allergy",
        "code": code,
        "patient": {"reference": ctx.patient_ref},
    }
    category = vocab.ALLERGY_CATEGORY.get(seg[2][1].c(1).upper())
    if category:
        res["category"] = [category]
    crit = vocab.ALLERGY_CRITICALITY.get(seg[4][1].c(1).upper())
    if crit:
        res["criticality"] = crit
    reactions = [r.c(1) for r in seg[5] if r.c(1)]
    if reactions:
        res["reaction"] = [{"manifestation": [{"text": r} for r in reactions]}]
    onset = dt.ts(seg[6].value, ctx.zone)
    if onset:
        res["onsetDateTime"] = onset
    patient_key = ctx.patient_key
    c0 = code.get("coding", [{}])[0]
    key = ctx.derived_identifier(
        "AllergyIntolerance", patient_key, c0.get("system", ""), c0.get("code", code.get("text", ""))
    )
    return ctx.upsert(res, key, owned=True)
