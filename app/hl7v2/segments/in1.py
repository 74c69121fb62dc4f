"""IN1 (+IN2) -> Coverage (IG IN1[Coverage]); payor IN1-3/IN1-4 -> Organization.

Key: patient + insurance company id (IN1-3) + plan (IN1-2) + policy number (IN1-36), so a resent or updated
insurance block updates the same Coverage; a second IN1 for another plan is a separate Coverage.
"""

from __future__ import annotations

from typing import Any

from app.hl7v2 import datatypes as dt
from app.hl7v2 import vocab
from app.hl7v2.context import Context
from app.hl7v2.parser import Segment

SUBSCRIBER_REL = "http://terminology.hl7.org/CodeSystem/subscriber-relationship"
# table 0063/0072 insured's relationship -> subscriber-relationship
_REL = {
    "SEL": "self",
    "01": "self",
    "18": "self",
    "SPO": "spouse",
    "02": "spouse",
    "01S": "spouse",
    "CHD": "child",
    "03": "child",
    "19": "child",
    "PAR": "parent",
    "DOM": "common",
    "OTH": "other",
}


def coverage(seg: Segment, ctx: Context, in2: Segment | None = None) -> str | None:
    if not ctx.patient_ref:
        return None
    plan = seg[2][1]
    company_ids = [i for i in (dt.cx(r, ctx) for r in seg[3]) if i]
    policy = seg[36].value
    group = seg[8].value
    if not (plan.c(1) or company_ids or policy or seg[4].value):
        return None
    patient_key = ctx.patient_key
    key = ctx.derived_identifier(
        "Coverage",
        patient_key,
        company_ids[0]["value"] if company_ids else seg[4].value,
        plan.c(1),
        policy,
    )
    res: dict[str, Any] = {
        "resourceType": "Coverage",
        "status": "active",
        "beneficiary": {"reference": ctx.patient_ref},
    }
    idents: list[dict[str, Any]] = []
    if policy:
        idents.append(
            {
                "type": {"coding": [{"system": vocab.v2_table("0203"), "code": "MB"}]},
                "value": policy,
                **({"system": ctx.unqualified_system()} if ctx.unqualified_system() else {}),
            }
        )
    if idents:
        res["identifier"] = idents
    ctype = dt.cwe(seg[15][1], ctx, "0086")
    if ctype:
        res["type"] = ctype
    payor_name = seg[4][1].c(1)
    payor = dt.organization(
        payor_name,
        company_ids[0] if company_ids else None,
        ctx,
        address=[a for a in (dt.xad(r) for r in seg[5]) if a],
        telecom=[t for t in (dt.xtn(r, "work") for r in seg[7]) if t],
    )
    res["payor"] = [payor or {"display": payor_name or plan.c(2) or plan.c(1) or "unknown"}]
    classes = []
    if plan.c(1):
        classes.append(_cls("plan", plan.c(1), plan.c(2) or seg[9].value))
    if group:
        classes.append(_cls("group", group, seg[9].value))
    if classes:
        res["class"] = classes
    p = dt.period(dt.ts(seg[12].value, ctx.zone, "date"), dt.ts(seg[13].value, ctx.zone, "date"))
    if p:
        res["period"] = p
    rel = seg[17][1].c(1).upper()
    mapped = _REL.get(rel)
    if mapped:
        res["relationship"] = {"coding": [{"system": SUBSCRIBER_REL, "code": mapped}]}
    if mapped == "self":
        res["subscriber"] = {"reference": ctx.patient_ref}
    subscriber_id = seg[49].value
    if subscriber_id:
        res["subscriberId"] = subscriber_id
    elif policy:
        res["subscriberId"] = policy
    order = dt.decimal(seg[22].value)
    if isinstance(order, int) and order > 0:  # positiveInt
        res["order"] = order
    if in2 is not None:
        mcn = in2[8].value
        if mcn:
            res.setdefault("identifier", []).append(
                {"type": {"text": "Medicare health insurance card number"}, "value": mcn}
            )
    return ctx.upsert(res, key, owned=True)


def _cls(kind: str, value: str, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/coverage-class", "code": kind}]},
        "value": value,
    }
    if name:
        out["name"] = name
    return out
