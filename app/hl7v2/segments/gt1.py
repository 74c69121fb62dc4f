"""GT1 -> Account.guarantor (no IG map; as Microsoft's converter). The Account is the PID-18 account when sent,
else a per-patient account derived from the patient key. A guarantor who is the patient (GT1-11 SEL) references
the Patient; an organisation guarantor (GT1-21) an Organization; anyone else a RelatedPerson keyed on GT1-2.
"""

from __future__ import annotations

from typing import Any

from app.hl7v2 import datatypes as dt
from app.hl7v2.context import Context
from app.hl7v2.parser import Segment


def guarantor(seg: Segment, ctx: Context, account_ref: str | None) -> str | None:
    if not ctx.patient_ref:
        return None
    party: dict[str, Any] | None = None
    rel = seg[11][1].c(1).upper()
    if rel in ("SEL", "SLF", "18", "01"):
        party = {"reference": ctx.patient_ref}
    elif seg[21].value:
        party = dt.xon(seg[21][1], ctx) or {"display": seg[21].value}
    else:
        name = dt.xpn(seg[3][1])
        gid = dt.cx(seg[2][1], ctx)
        if not (name or gid):
            return None
        rp: dict[str, Any] = {"resourceType": "RelatedPerson", "patient": {"reference": ctx.patient_ref}}
        if name:
            rp["name"] = [name]
        addr = [a for a in (dt.xad(r) for r in seg[5]) if a]
        if addr:
            rp["address"] = addr
        tel = [t for t in (dt.xtn(r, "home") for r in seg[6]) if t] + [
            t for t in (dt.xtn(r, "work") for r in seg[7]) if t
        ]
        if tel:
            rp["telecom"] = tel
        birth = dt.ts(seg[8].value, ctx.zone, "date")
        if birth:
            rp["birthDate"] = birth
        rel_cc = dt.cwe(seg[11][1], ctx, "0063")
        if rel_cc:
            rp["relationship"] = [rel_cc]
        key = gid or ctx.derived_identifier(
            "RelatedPerson", ctx.patient_key, "guarantor", name.get("family", "") if name else ""
        )
        party = {"reference": ctx.upsert(rp, key, owned=True)}
    if account_ref is None:
        acct = {"resourceType": "Account", "status": "active", "subject": [{"reference": ctx.patient_ref}]}
        account_ref = ctx.upsert(acct, ctx.derived_identifier("Account", ctx.patient_key), owned=True)
    account = ctx.resource(account_ref)
    entry: dict[str, Any] = {"party": party}
    p = dt.period(dt.ts(seg[13].value, ctx.zone, "date"), dt.ts(seg[14].value, ctx.zone, "date"))
    if p:
        entry["period"] = p
    account.setdefault("guarantor", []).append(entry)
    return account_ref
