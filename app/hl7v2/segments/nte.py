"""NTE -> Annotation (notes on the preceding segment's resource). NTE-3 repetitions join with line breaks."""

from __future__ import annotations

from typing import Any

from app.hl7v2 import datatypes as dt
from app.hl7v2.context import Context
from app.hl7v2.parser import Segment


def annotation(seg: Segment, ctx: Context) -> dict[str, Any] | None:
    text = "\n".join(r.c(1) for r in seg[3]).strip()
    if not text:
        return None
    out: dict[str, Any] = {"text": text}
    author = seg[5][1]
    if author:
        who = dt.xcn(author, ctx)
        if who and "reference" in who:
            out["authorReference"] = who
        elif who:
            out["authorString"] = who.get("display", "")
    when = dt.ts(seg[6].value, ctx.zone)
    if when:
        out["time"] = when
    return out


def notes(segs: list[Segment], ctx: Context) -> list[dict[str, Any]]:
    return [a for a in (annotation(s, ctx) for s in segs) if a]
