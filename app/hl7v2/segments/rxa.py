"""RXA (+RXR, ORC) -> Immunization (IG RXA[Immunization], RXR[Immunization]); keyed on ORC-3 filler, else
ORC-2 placer, else patient + RXA-5 vaccine + RXA-3 date.
"""

from __future__ import annotations

from typing import Any

from app.hl7v2 import datatypes as dt
from app.hl7v2 import vocab
from app.hl7v2.context import Context
from app.hl7v2.errors import Location, RequiredFieldMissing
from app.hl7v2.parser import Segment
from app.hl7v2.segments.orc import OrderFacts

FUNCTION = "http://terminology.hl7.org/CodeSystem/v2-0443"


def immunization(rxa: Segment, rxr: Segment | None, f: OrderFacts, ctx: Context) -> str | None:
    if not ctx.patient_ref:
        return None
    vaccine = dt.cwe(rxa[5][1], ctx, "0292")
    if vaccine is None:
        raise RequiredFieldMissing("RXA-5 administered code is empty", location=Location("RXA", rxa.sequence, 5))
    when = dt.ts(rxa[3].value, ctx.zone)
    if when is None:
        raise RequiredFieldMissing("RXA-3 administration date is empty", location=Location("RXA", rxa.sequence, 3))
    completion = rxa[20].value.upper()
    status = vocab.IMMUNIZATION_STATUS.get(completion, "completed")
    if rxa[21].value.upper() == "D":
        status = "entered-in-error"
    res: dict[str, Any] = {
        "resourceType": "Immunization",
        "status": status,
        "vaccineCode": vaccine,
        "patient": {"reference": ctx.patient_ref},
        "occurrenceDateTime": when,
    }
    idents = [i for i in (f.placer, f.filler) if i]
    if idents:
        res["identifier"] = idents
    if ctx.encounter_ref:
        res["encounter"] = {"reference": ctx.encounter_ref}
    if f.authored:
        res["recorded"] = f.authored
    info = rxa[9][1].c(1)
    if info in ("00", "01"):
        res["primarySource"] = info == "00"
    amount = rxa[6].value
    if amount and amount != "999":
        q = dt.quantity(amount, rxa[7][1] if rxa[7] else None, ctx)
        if q:
            res["doseQuantity"] = q
    performers = []
    admin = dt.xcn(rxa[10][1], ctx)
    if admin and "reference" in admin:
        performers.append({"function": {"coding": [{"system": FUNCTION, "code": "AP"}]}, "actor": admin})
    if f.requester and "reference" in f.requester:
        performers.append({"function": {"coding": [{"system": FUNCTION, "code": "OP"}]}, "actor": f.requester})
    if performers:
        res["performer"] = performers
    lot = rxa[15][1].c(1)
    if lot:
        res["lotNumber"] = lot
    exp = dt.ts(rxa[16].value, ctx.zone, "date")
    if exp:
        res["expirationDate"] = exp
    mfr = rxa[17][1]
    if mfr.c(1) or mfr.c(2):
        system = dt.code_system_uri(mfr.c(3), ctx) if mfr.c(3) else None
        ident = {"system": system, "value": mfr.c(1)} if system and mfr.c(1) else None
        org = dt.organization(mfr.c(2) or mfr.c(1), ident, ctx)
        if org:
            res["manufacturer"] = org
    refusal = dt.cwe(rxa[18][1], ctx)
    if refusal and status == "not-done":
        res["statusReason"] = refusal
    reasons = [c for c in (dt.cwe(r, ctx) for r in rxa[19]) if c]
    if reasons:
        res["reasonCode"] = reasons
    if rxr is not None:
        route = dt.cwe(rxr[1][1], ctx, "0162")
        if route:
            res["route"] = route
        site = dt.cwe(rxr[2][1], ctx, "0163")
        if site:
            res["site"] = site
    ident = f.filler or f.placer
    if ident:
        key = {k: v for k, v in ident.items() if k in ("system", "value")}
    else:
        c0 = vaccine.get("coding", [{}])[0]
        key = ctx.derived_identifier(
            "Immunization", ctx.patient_key, c0.get("system", ""), c0.get("code", ""), rxa[3].value
        )
    return ctx.upsert(res, key, owned=True)
