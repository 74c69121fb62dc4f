"""FT1 -> ChargeItem (no IG map; after Microsoft's DFT templates). Keyed on FT1-2 transaction id, else on
patient + visit + FT1-4 date + FT1-7 code + FT1-1 set id.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from app.hl7v2 import datatypes as dt
from app.hl7v2 import vocab
from app.hl7v2.context import Context
from app.hl7v2.parser import Segment

TRANSACTION_TYPE = "http://terminology.hl7.org/CodeSystem/v2-0017"
# FT1-6 (charge, credit, payment, adjustment) matters to billing and has no ChargeItem element.
EXT_TRANSACTION_TYPE = "https://interlace.dev/fhir/StructureDefinition/v2-transaction-type"


def _money(rep: Any) -> dict[str, Any] | None:
    """CP (price: MO amount&currency ^ price type ...) -> Money."""
    amount = dt.decimal(rep.c(1, 1))
    if amount is None:
        return None
    out: dict[str, Any] = {"value": amount}
    currency = rep.c(1, 2)
    if len(currency) == 3 and currency.isascii() and currency.isalpha():
        out["currency"] = currency.upper()
    return out


def charge_item(seg: Segment, ctx: Context) -> str | None:
    if not ctx.patient_ref:
        return None
    code = dt.cwe(seg[7][1], ctx, "0132")
    if code is None and seg[8].value:
        code = {"text": seg[8].value}
    if code is None:
        ctx.warn("FT1-7 transaction code is empty: FT1 skipped", seg, 7)
        return None
    ttype = seg[6].value.upper()
    res: dict[str, Any] = {
        "resourceType": "ChargeItem",
        "status": vocab.CHARGE_STATUS.get(ttype, "billable"),
        "code": code,
        "subject": {"reference": ctx.patient_ref},
    }
    if ttype:
        res["extension"] = [{"url": EXT_TRANSACTION_TYPE, "valueCoding": {"system": TRANSACTION_TYPE, "code": ttype}}]
    if ctx.encounter_ref:
        res["context"] = {"reference": ctx.encounter_ref}
    start, end = dt.ts(seg[4][1].c(1), ctx.zone), dt.ts(seg[4][1].c(2), ctx.zone)
    if start and end:
        res["occurrencePeriod"] = {"start": start, "end": end}
    elif start:
        res["occurrenceDateTime"] = start
    entered = dt.ts(seg[5].value, ctx.zone)
    if entered:
        res["enteredDate"] = entered
    qty = dt.decimal(seg[10].value)
    if qty is not None:
        res["quantity"] = {"value": qty}
    # ChargeItem.priceOverride is the charge's TOTAL: FT1-11 (extended price) as sent, else FT1-12 (unit price)
    # times the quantity -- billing a quantity-2 charge at its unit price would under-bill it.
    price = _money(seg[11][1])
    if price is None:
        price = _money(seg[12][1])
        if price is not None and qty is not None:
            total = Decimal(str(price["value"])) * Decimal(str(qty))  # exact: 40.10 x 3 = 120.30, not 120.300...01
            price["value"] = int(total) if total == total.to_integral_value() else float(total)
    if price:
        res["priceOverride"] = price
    reasons = [c for c in (dt.cwe(r, ctx) for r in seg[19]) if c]
    if reasons:
        res["reason"] = reasons
    performers = [p for p in (dt.xcn(r, ctx) for r in seg[20]) if p and "reference" in p]
    if performers:
        res["performer"] = [{"actor": p} for p in performers]
    enterer = dt.xcn(seg[21][1], ctx)
    if enterer and "reference" in enterer:
        res["enterer"] = enterer
    product = dt.cwe(seg[29][1], ctx)
    if product:
        res["productCodeableConcept"] = product
    dept = seg[13][1]
    if dept.c(2) or dept.c(1):
        res["costCenter"] = {"display": dept.c(2) or dept.c(1)}  # FT1-13 department: display only (no org id)
    if ctx.account_ref:
        res["account"] = [{"reference": ctx.account_ref}]
    txid = seg[2].value
    if txid:
        system = ctx.unqualified_system()
        key: dict[str, Any] = {"system": system, "value": txid} if system else {"value": txid}
    else:
        c0 = code.get("coding", [{}])[0]
        key = ctx.derived_identifier(
            "ChargeItem", ctx.patient_key, ctx.encounter_ref or "", seg[4].raw, c0.get("code", ""), seg[1].value
        )
    return ctx.upsert(res, key, owned=True)
