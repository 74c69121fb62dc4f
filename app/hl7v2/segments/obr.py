"""OBR (+ORC) -> ServiceRequest (IG OBR[ServiceRequest]) and DiagnosticReport (IG OBR[DiagnosticReport]).

ServiceRequest is keyed on the placer order number, DiagnosticReport on the filler order number (each falls back
to the other, then to a key derived from patient + OBR-4 + OBR-7), so a corrected result (OBR-25 C after P)
updates the same report.
"""

from __future__ import annotations

from typing import Any

from app.hl7v2 import datatypes as dt
from app.hl7v2 import vocab
from app.hl7v2.context import Context
from app.hl7v2.parser import Segment
from app.hl7v2.segments.orc import OrderFacts

PRIORITY = {"S": "stat", "A": "asap", "R": "routine", "P": "routine", "C": "routine", "T": "urgent"}


def order_key(f: OrderFacts, obr: Segment | None, ctx: Context, prefer: str) -> dict[str, Any]:
    first, second = (f.placer, f.filler) if prefer == "placer" else (f.filler, f.placer)
    ident = first or second
    if ident:
        return {k: v for k, v in ident.items() if k in ("system", "value")}
    code = obr[4][1].c(1) if obr is not None else ""
    when = obr[7].value if obr is not None else ""
    return ctx.derived_identifier("Order", ctx.patient_key, code, when, str(obr.sequence if obr else 0))


def _identifiers(f: OrderFacts) -> list[dict[str, Any]]:
    return [i for i in (f.placer, f.filler) if i]


def service_request(
    obr: Segment | None, f: OrderFacts, ctx: Context, *, owned: bool, code_fallback: dict[str, Any] | None = None
) -> str | None:
    code = dt.cwe(obr[4][1], ctx) if obr is not None else None
    code = code or code_fallback
    if code is None and not (f.placer or f.filler):
        return None
    res: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "identifier": _identifiers(f),
        "status": f.service_request_status(),
        "intent": "reflex-order" if obr is not None and obr[11].value.upper() == "G" else "order",
    }
    if f.group:
        res["requisition"] = f.group
    if code:
        res["code"] = code
    if ctx.patient_ref:
        res["subject"] = {"reference": ctx.patient_ref}
    if ctx.encounter_ref:
        res["encounter"] = {"reference": ctx.encounter_ref}
    if f.authored and f.control in ("NW", ""):
        res["authoredOn"] = f.authored
    elif f.authored:
        res["authoredOn"] = f.authored
    if f.requester and "reference" in f.requester:
        res["requester"] = f.requester
    if obr is not None:
        prio = PRIORITY.get(obr[5].value.upper())
        if prio:
            res["priority"] = prio
        reason = [c for c in (dt.cwe(r, ctx) for r in obr[31]) if c]
        if reason:
            res["reasonCode"] = reason
        when = dt.ts(obr[6].value, ctx.zone) or dt.ts(obr[27][1].c(4), ctx.zone)
        if when:
            res["occurrenceDateTime"] = when
    if "subject" not in res:
        return None  # subject is required: an order without a patient cannot be stored as ServiceRequest
    return ctx.upsert(res, order_key(f, obr, ctx, "placer"), owned=owned)


def diagnostic_report(obr: Segment, f: OrderFacts, ctx: Context, service_ref: str | None) -> str | None:
    code = dt.cwe(obr[4][1], ctx) or {"text": "unknown"}
    status = vocab.REPORT_STATUS.get(obr[25].value.upper(), "unknown")
    res: dict[str, Any] = {
        "resourceType": "DiagnosticReport",
        "identifier": _identifiers(f),
        "status": status,
        "code": code,
    }
    if service_ref:
        res["basedOn"] = [{"reference": service_ref}]
    category = dt.cwe(obr[24][1], ctx, "0074")
    if category:
        res["category"] = [category]
    if ctx.patient_ref:
        res["subject"] = {"reference": ctx.patient_ref}
    if ctx.encounter_ref:
        res["encounter"] = {"reference": ctx.encounter_ref}
    start, end = dt.ts(obr[7].value, ctx.zone), dt.ts(obr[8].value, ctx.zone)
    if start and end:
        res["effectivePeriod"] = {"start": start, "end": end}
    elif start:
        res["effectiveDateTime"] = start
    issued = dt.ts(obr[22].value, ctx.zone, "instant")
    if issued:
        res["issued"] = issued
    interp = [r for r in (_ndl(rep, ctx) for rep in obr[32]) if r]
    if interp:
        res["resultsInterpreter"] = interp
    return ctx.upsert(res, order_key(f, obr, ctx, "filler"), owned=True)


def _ndl(rep: Any, ctx: Context) -> dict[str, Any] | None:
    """NDL (OBR-32..35): name is a CNN in component 1 (id&family&given...)."""
    idv = rep.c(1, 1)
    family, given = rep.c(1, 2), rep.c(1, 3)
    display = " ".join(x for x in (given, family) if x)
    if not idv:
        return {"display": display} if display else None
    system = ctx.authority_system(rep.c(1, 9), rep.c(1, 10), rep.c(1, 11)) or ctx.unqualified_system()
    res: dict[str, Any] = {"resourceType": "Practitioner"}
    if family or given:
        res["name"] = [{k: v for k, v in (("family", family), ("given", [given] if given else None)) if v}]
    ref = ctx.upsert(res, {"system": system, "value": idv} if system else {"value": idv}, owned=False)
    return {"reference": ref, **({"display": display} if display else {})}
