"""NK1 -> Patient.contact (IG NK1[Patient] map).

The IG also offers NK1 -> RelatedPerson, but NK1 carries no identifier for the contact person: a RelatedPerson
would have to be keyed on a set id that senders renumber. As part of the Patient, contacts follow the Patient's
snapshot semantics (an A08 replaces them) and can never duplicate.
"""

from __future__ import annotations

from typing import Any

from app.hl7v2 import datatypes as dt
from app.hl7v2 import vocab
from app.hl7v2.context import Context
from app.hl7v2.parser import Segment

ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0131"


def contact(seg: Segment, ctx: Context) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    rels: list[dict[str, Any]] = []
    rel = seg[3][1]
    if rel.c(1):
        code = rel.c(1).upper()
        codings = []
        if code in vocab.RELATIONSHIP:
            codings.append({"system": vocab.V3_ROLE, "code": vocab.RELATIONSHIP[code]})
        cc = dt.cwe(rel, ctx, "0063") or {}
        codings += cc.get("coding", [])
        rels.append({"coding": codings, **({"text": rel.c(2)} if rel.c(2) else {})})
    role = dt.cwe(seg[7][1], ctx, "0131")
    if role:
        rels.append(role)
    if rels:
        out["relationship"] = rels
    name = dt.xpn(seg[2][1]) or dt.xpn(seg[30][1])
    if name:
        out["name"] = name
    telecom = [t for t in (dt.xtn(r, "home") for r in seg[5]) if t]
    telecom += [t for t in (dt.xtn(r, "work") for r in seg[6]) if t]
    telecom += [t for t in (dt.xtn(r) for r in seg[31]) if t]
    if telecom:
        out["telecom"] = telecom
    addr = dt.xad(seg[4][1]) or dt.xad(seg[32][1])
    if addr:
        out["address"] = addr
    sex = vocab.GENDER.get(seg[15][1].c(1).upper())
    if sex:
        out["gender"] = sex
    org_name = seg[13][1].c(1)
    if org_name:
        org = dt.xon(seg[13][1], ctx)
        if org:
            out["organization"] = org
    p = dt.period(dt.ts(seg[8].value, ctx.zone), dt.ts(seg[9].value, ctx.zone))
    if p:
        out["period"] = p
    if not (name or telecom or addr or "organization" in out):
        return None
    return out


def apply(segs: list[Segment], ctx: Context, patient_ref: str) -> None:
    contacts = [c for c in (contact(s, ctx) for s in segs) if c]
    if contacts:
        ctx.resource(patient_ref)["contact"] = contacts
