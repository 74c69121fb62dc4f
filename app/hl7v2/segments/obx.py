"""OBX -> Observation (IG OBX[Observation]): value typed by OBX-2, status OBX-11, interpretation OBX-8.

Key: OBX-21 observation instance id when sent; else the order (filler, else placer number) + OBX-3 code + OBX-4
sub-id, so a corrected or final result replaces the preliminary one; outside an order (ADT vitals) patient +
visit + OBX-3 + OBX-4.
"""

from __future__ import annotations

import re
from typing import Any

from app.hl7v2 import datatypes as dt
from app.hl7v2 import vocab
from app.hl7v2.context import Context
from app.hl7v2.parser import Repetition, Segment

_TM = re.compile(r"^([0-9]{2})([0-9]{2})([0-9]{2})?")
DATA_ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"


def value(seg: Segment, rep: Repetition, ctx: Context) -> tuple[str, Any] | None:
    """(valueX key, value) for one OBX-5 repetition, dispatching on OBX-2."""
    vt = seg[2].value.upper()
    units = seg[6][1] if seg[6] else None
    if vt == "NM":
        q = dt.quantity(rep.c(1), units, ctx)
        if q is None:
            return ("valueString", rep.c(1)) if rep.c(1) else None
        return "valueQuantity", q
    if vt == "SN":
        return dt.sn(rep, units, ctx)
    if vt in ("CE", "CWE", "CNE", "CF", "IS", "ID"):
        cc = dt.cwe(rep, ctx)
        return ("valueCodeableConcept", cc) if cc else None
    if vt in ("DT", "DTM", "TS"):
        v = dt.ts(rep.c(1), ctx.zone)
        return ("valueDateTime", v) if v else None
    if vt == "TM":
        m = _TM.match(rep.c(1))
        if m and int(m.group(1)) < 24 and int(m.group(2)) < 60 and int(m.group(3) or 0) < 60:
            return "valueTime", f"{m.group(1)}:{m.group(2)}:{m.group(3) or '00'}"
        return None
    if vt == "DR":
        p = dt.period(dt.ts(rep.c(1), ctx.zone), dt.ts(rep.c(2), ctx.zone))
        return ("valuePeriod", p) if p else None
    if vt == "NR":
        low, high = dt.decimal(rep.c(1)), dt.decimal(rep.c(2))
        r = {k: {"value": v} for k, v in (("low", low), ("high", high)) if v is not None}
        return ("valueRange", r) if r else None
    if vt in ("ED", "RP"):
        return None  # attachments: see attachment(); FHIR R4 Observation has no valueAttachment
    text = rep.c(1) if vt not in ("FT", "TX") else ctx.msg.unescape(rep.raw).strip()
    return ("valueString", text) if text else None


def attachment(seg: Segment) -> dict[str, Any] | None:
    vt = seg[2].value.upper()
    rep = seg[5][1]
    if vt == "ED":
        return dt.ed(rep)
    if vt == "RP" and rep.c(1):
        return {"url": rep.c(1), "contentType": dt._content_type(rep.c(3).upper(), rep.c(4))}
    return None


def observation(
    seg: Segment,
    ctx: Context,
    *,
    order_key: dict[str, Any] | None = None,
    notes: list[dict[str, Any]] | None = None,
    part_of: str | None = None,
) -> str | None:
    code = dt.cwe(seg[3][1], ctx)
    if code is None:
        ctx.warn("OBX-3 observation identifier is empty: OBX skipped", seg, 3)
        return None
    status_code = seg[11].value.upper()
    res: dict[str, Any] = {
        "resourceType": "Observation",
        "status": vocab.OBSERVATION_STATUS.get(status_code, "unknown"),
        "code": code,
    }
    category = dt.cwe(seg[29][1], ctx, "0936")
    if category:
        res["category"] = [category]
    if part_of:
        res["partOf"] = [{"reference": part_of}]
    if ctx.patient_ref:
        res["subject"] = {"reference": ctx.patient_ref}
    if ctx.encounter_ref:
        res["encounter"] = {"reference": ctx.encounter_ref}
    effective = dt.ts(seg[14].value, ctx.zone)
    if effective:
        res["effectiveDateTime"] = effective
    reps = [r for r in seg[5]]
    if status_code in ("N", "X") or not reps:
        if status_code == "N" or not reps:
            res["dataAbsentReason"] = {
                "coding": [{"system": DATA_ABSENT, "code": "not-asked" if status_code == "N" else "unknown"}]
            }
    elif len(reps) == 1:
        v = value(seg, reps[0], ctx)
        if v:
            res[v[0]] = v[1]
        else:
            att = attachment(seg)
            if att is not None:
                res.setdefault("extension", []).append(
                    {
                        "url": "http://hl7.org/fhir/5.0/StructureDefinition/extension-Observation.value",
                        "valueAttachment": att,
                    }
                )
                res["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT, "code": "unsupported"}]}
            else:
                res["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT, "code": "error"}]}
                ctx.warn(f"OBX-5 value {reps[0].raw[:40]!r} is not a valid {seg[2].value}", seg, 5)
    else:
        comps = []
        for r in reps:
            v = value(seg, r, ctx)
            if v:
                comps.append({"code": code, v[0]: v[1]})
        if comps:
            res["component"] = comps
        else:
            res["dataAbsentReason"] = {"coding": [{"system": DATA_ABSENT, "code": "error"}]}
    ref_range = seg[7].value
    if ref_range:
        rr: dict[str, Any] = {"text": ref_range}
        lo, _, hi = ref_range.partition("-")
        low, high = dt.decimal(lo), dt.decimal(hi)
        unit = dt.unit_of(seg[6][1], ctx) if seg[6] else {}
        if low is not None and high is not None and lo:
            rr["low"] = {"value": low, **unit}
            rr["high"] = {"value": high, **unit}
        res["referenceRange"] = [rr]
    interp = []
    for r in seg[8]:
        flag = r.c(1)
        mapped = vocab.INTERPRETATION.get(flag.upper()) if flag else None
        if mapped:
            item = {"coding": [{"system": vocab.V3_INTERP, "code": mapped}]}
            if item not in interp:  # one flag per repetition of OBX-5 (N~N~N) is one interpretation
                interp.append(item)
        elif flag:
            cc = dt.cwe(r, ctx, "0078")
            if cc:
                interp.append(cc)
    if interp:
        res["interpretation"] = interp
    method = dt.cwe(seg[17][1], ctx)
    if method:
        res["method"] = method
    site = dt.cwe(seg[20][1], ctx)
    if site:
        res["bodySite"] = site
    performers = [p for p in (dt.xcn(r, ctx) for r in seg[16]) if p and "reference" in p]
    org = dt.xon(seg[23][1], ctx)
    if org and "reference" in org:
        performers.append(org)
    if performers:
        res["performer"] = performers
    if notes:
        res["note"] = notes
    instance = dt.ei(seg[21][1], ctx)
    if instance is not None:
        key = {k: v for k, v in instance.items() if k in ("system", "value")}
    else:
        c0 = code.get("coding", [{}])[0]
        code_key = f"{c0.get('system', '')}|{c0.get('code', code.get('text', ''))}"
        if order_key is not None:
            anchor = f"{order_key.get('system', '')}|{order_key['value']}"
        else:
            anchor = ctx.patient_key + "|" + (ctx.encounter_ref or "")
        key = ctx.derived_identifier("Observation", anchor, code_key, seg[4].value)
    return ctx.upsert(res, key, owned=True)
