"""PV1 -> Encounter (IG PV1[Encounter]); keyed on PV1-19 visit number (identifier type VN)."""

from __future__ import annotations

from typing import Any

from app.hl7v2 import datatypes as dt
from app.hl7v2 import vocab
from app.hl7v2.context import Context
from app.hl7v2.parser import Segment

PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
_PARTICIPANTS = ((7, "ATND", "attender"), (8, "REF", "referrer"), (9, "CON", "consultant"), (17, "ADM", "admitter"))


def status_for(seg: Segment, trigger: str, ctx: Context) -> str:
    if seg[45].value:
        return "finished"
    by_event = vocab.ENCOUNTER_STATUS_BY_EVENT.get(trigger)
    if by_event:
        if by_event == "arrived" and not seg[44].value:
            return "planned"
        return by_event
    # A08/A31 and non-ADT messages say nothing about the visit state: infer from what PV1 holds.
    if seg[2].value.upper() == "P":
        return "planned"
    return "in-progress" if seg[44].value else "unknown"


def encounter(seg: Segment, ctx: Context, *, trigger: str, pv2: Segment | None = None) -> str | None:
    """Add the Encounter (conditional on PV1-19) and return its fullUrl; None when PV1 names no visit."""
    if seg[2].value.upper() == "N" and not seg[19].value:
        return None  # "not applicable": a person-level event (A28/A31) without a visit
    ident = dt.cx(seg[19][1], ctx)
    if ident is not None:
        ident.setdefault("type", {"coding": [{"system": vocab.v2_table("0203"), "code": "VN"}]})
    elif seg[44].value and ctx.patient_ref:
        # No visit number: a visit is still one admission of one patient; key it on that.
        ident = ctx.derived_identifier("Encounter", ctx.patient_key, seg[44].value)
    else:
        ctx.warn("PV1-19 visit number is empty: no Encounter created", seg, 19)
        return None
    res: dict[str, Any] = {"resourceType": "Encounter", "status": status_for(seg, trigger, ctx)}
    pclass = seg[2].value.upper()
    mapped = vocab.ENCOUNTER_CLASS.get(pclass)
    if mapped:
        res["class"] = {"system": vocab.V3_ACT_CODE, "code": mapped[0], "display": mapped[1]}
    else:
        res["class"] = {"system": vocab.V3_NULL, "code": "UNK", "display": "unknown"}
    idents = [ident]
    alt = dt.cx(seg[50][1], ctx)
    if alt:
        idents.append(alt)
    res["identifier"] = idents
    etype = dt.cwe(seg[4][1], ctx, "0007")
    if etype:
        res["type"] = [etype]
    svc = dt.cwe(seg[10][1], ctx, "0069")
    if svc:
        res["serviceType"] = svc
    if ctx.patient_ref:
        res["subject"] = {"reference": ctx.patient_ref}
    participants = []
    for n, code, display in _PARTICIPANTS:
        for rep in seg[n]:
            who = dt.xcn(rep, ctx)
            if who and "reference" in who:
                participants.append(
                    {
                        "type": [{"coding": [{"system": PARTICIPATION, "code": code, "display": display}]}],
                        "individual": who,
                    }
                )
    if participants:
        res["participant"] = participants
    p = dt.period(dt.ts(seg[44].value, ctx.zone), dt.ts(seg[45].value, ctx.zone))
    if p:
        res["period"] = p
    locations = []
    current = dt.pl(seg[3][1], ctx)
    if current:
        status = "planned" if res["status"] == "planned" else ("completed" if res["status"] == "finished" else "active")
        locations.append({"location": current, "status": status})
    temp = dt.pl(seg[11][1], ctx)
    if temp:
        locations.append({"location": temp, "status": "active"})
    prior = dt.pl(seg[6][1], ctx)
    if prior:
        locations.append({"location": prior, "status": "completed"})
    if locations:
        res["location"] = locations
    hosp: dict[str, Any] = {}
    pre = dt.cx(seg[5][1], ctx)
    if pre:
        hosp["preAdmissionIdentifier"] = pre
    for key, n, table in (
        ("admitSource", 14, "0023"),
        ("reAdmission", 13, "0092"),
        ("dischargeDisposition", 36, "0112"),
    ):
        cc = dt.cwe(seg[n][1], ctx, table)
        if cc:
            hosp[key] = cc
    for key, n, table in (
        ("dietPreference", 38, "0114"),
        ("specialCourtesy", 16, "0099"),
        ("specialArrangement", 15, "0009"),
    ):
        ccs = [c for c in (dt.cwe(r, ctx, table) for r in seg[n]) if c]
        if ccs:
            hosp[key] = ccs
    if hosp:
        res["hospitalization"] = hosp
    if pv2 is not None:
        from app.hl7v2.segments import pv2 as pv2_mod

        pv2_mod.apply(pv2, ctx, res)
    ref = ctx.upsert(res, ident)
    ctx.encounter_ref = ref
    return ref
