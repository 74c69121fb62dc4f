"""TXA (+OBX content) -> DocumentReference (IG TXA[DocumentReference]); keyed on TXA-12 unique document number."""

from __future__ import annotations

import base64
from typing import Any

from app.hl7v2 import datatypes as dt
from app.hl7v2 import vocab
from app.hl7v2.context import Context
from app.hl7v2.parser import Segment
from app.hl7v2.segments import obx as obx_mod

_AVAILABILITY = {"AV": "current", "": "current", "OB": "superseded", "CA": "entered-in-error", "UN": "current"}


def content(obxs: list[Segment], ctx: Context, default_type: str) -> list[dict[str, Any]]:
    """OBX in MDM -> content: ED -> attachment data; RP -> url; TX/FT/ST lines -> one text/plain attachment."""
    out: list[dict[str, Any]] = []
    lines: list[str] = []
    for seg in obxs:
        vt = seg[2].value.upper()
        if vt in ("ED", "RP"):
            att = obx_mod.attachment(seg)
            if att:
                out.append({"attachment": att})
        else:
            for rep in seg[5]:
                lines.append(ctx.msg.unescape(rep.raw))
    if lines:
        text = "\n".join(lines)
        out.insert(
            0,
            {
                "attachment": {
                    "contentType": default_type or "text/plain",
                    "data": base64.b64encode(text.encode("utf-8")).decode("ascii"),
                }
            },
        )
    return out


def document(txa: Segment, obxs: list[Segment], ctx: Context, related: list[str]) -> str | None:
    if not ctx.patient_ref:
        return None
    unique = dt.ei(txa[12][1], ctx)
    ctype = txa[3].value
    mime = {"TX": "text/plain", "FT": "text/plain", "HTML": "text/html", "PDF": "application/pdf"}.get(
        ctype.upper(), ""
    )
    res: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "status": _AVAILABILITY.get(txa[19].value.upper(), "current"),
        "subject": {"reference": ctx.patient_ref},
    }
    if unique:
        res["masterIdentifier"] = {k: v for k, v in unique.items() if k in ("system", "value")}
    doc_status = vocab.DOC_STATUS.get(txa[17].value.upper())
    if doc_status:
        res["docStatus"] = doc_status
    dtype = dt.cwe(txa[2][1], ctx, "0270")
    if dtype:
        res["type"] = dtype
    when = dt.ts(txa[6].value, ctx.zone, "instant") or dt.ts(txa[4].value, ctx.zone, "instant")
    if when:
        res["date"] = when
    authors = [a for a in (dt.xcn(r, ctx) for r in txa[9]) if a and "reference" in a]
    if authors:
        res["author"] = authors
    auth = dt.xcn(txa[10][1], ctx)
    if auth and "reference" in auth:
        res["authenticator"] = auth
    ctx_part: dict[str, Any] = {}
    if ctx.encounter_ref:
        ctx_part["encounter"] = [{"reference": ctx.encounter_ref}]
    if related:
        ctx_part["related"] = [{"reference": r} for r in related]
    if ctx_part:
        res["context"] = ctx_part
    res["content"] = content(obxs, ctx, mime) or [
        {"attachment": {"contentType": mime or "text/plain", "title": txa[2][1].c(2) or "document"}}
    ]
    if unique:
        key = {k: v for k, v in unique.items() if k in ("system", "value")}
    else:
        key = ctx.derived_identifier("DocumentReference", ctx.patient_key, txa[16].value, txa[4].value, txa[2].value)
    return ctx.upsert(res, key, owned=True)
