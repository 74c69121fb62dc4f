"""MRG -> patient merge (A40 and friends): the retired record gets ``active=false`` + ``link replaced-by`` and the
survivor ``link replaces``, the FHIR-native form of a merge (the IG has no Patient map for MRG; this follows
LinuxForHealth). The retired record is written by its own identifier so it stays discoverable.
"""

from __future__ import annotations

from typing import Any

from app.hl7v2 import datatypes as dt
from app.hl7v2.context import Context
from app.hl7v2.errors import Location, RequiredFieldMissing
from app.hl7v2.parser import Segment
from app.hl7v2.segments.pid import key_identifier


def merge(seg: Segment, ctx: Context, survivor_ref: str) -> str:
    old_ids = [i for i in (dt.cx(r, ctx) for r in seg[1]) if i]
    for n in (4,):  # MRG-4 prior patient id (legacy)
        old_ids += [i for i in (dt.cx(r, ctx) for r in seg[n]) if i and i not in old_ids]
    key = key_identifier(old_ids)
    if key is None:
        raise RequiredFieldMissing(
            "MRG-1 prior patient identifier list is empty", location=Location("MRG", seg.sequence, 1)
        )
    survivor = ctx.resource(survivor_ref)
    for i in old_ids:
        i["use"] = "old"
    old: dict[str, Any] = {
        "resourceType": "Patient",
        "identifier": old_ids,
        "active": False,
        "link": [{"other": {"reference": survivor_ref}, "type": "replaced-by"}],
    }
    name = dt.xpn(seg[7][1])
    if name:
        old["name"] = [name]
    old_key = {k: v for k, v in key.items() if k in ("system", "value")}
    if f"{old_key.get('system', '')}|{old_key['value']}" == ctx.patient_key:
        ctx.warn("MRG-1 names the surviving patient's own identifier: no merge", seg, 1)
        return survivor_ref
    old_ref = ctx.upsert(old, old_key, owned=True)
    survivor.setdefault("link", []).append({"other": {"reference": old_ref}, "type": "replaces"})
    survivor["active"] = True
    return old_ref
