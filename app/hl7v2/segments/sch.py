"""SCH + AIS/AIG/AIL/AIP (+TQ1, NTE) -> Appointment (IG SCH[Appointment], AI*[Appointment.participant]).

Keyed on SCH-2 filler appointment id, else SCH-1 placer id. Status from SCH-25 (table 0278), overridden by the
event for cancellations (S15/S16 cancelled, S17 entered-in-error, S26 noshow).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from app.hl7v2 import datatypes as dt
from app.hl7v2 import vocab
from app.hl7v2.context import Context
from app.hl7v2.errors import Location, RequiredFieldMissing
from app.hl7v2.parser import Segment

EVENT_STATUS = {"S15": "cancelled", "S16": "cancelled", "S17": "entered-in-error", "S26": "noshow"}
_UNIT_MINUTES = {"MIN": 1, "M": 1, "S": 1 / 60, "H": 60, "HR": 60, "D": 1440}


def _duration_minutes(amount: str, unit: str) -> int | None:
    n = dt.decimal(amount)
    if n is None or n <= 0:
        return None
    factor = _UNIT_MINUTES.get((unit or "MIN").upper().rstrip("S") or "MIN", 1)
    return int(n * factor)


def _plus(start: str, minutes: int) -> str | None:
    if "T" not in start:
        return None
    return (datetime.fromisoformat(start.replace("Z", "+00:00")) + timedelta(minutes=minutes)).isoformat()


def appointment(
    sch: Segment, ctx: Context, resources: list[Segment], tq1: Segment | None, notes: list[dict[str, Any]]
) -> str:
    ident = dt.ei(sch[2][1], ctx) or dt.ei(sch[1][1], ctx)
    if ident is None:
        raise RequiredFieldMissing("SCH-1/SCH-2 appointment id is empty", location=Location("SCH", sch.sequence, 2))
    idents = [i for i in (dt.ei(sch[1][1], ctx), dt.ei(sch[2][1], ctx)) if i]
    status = EVENT_STATUS.get(ctx.trigger) or vocab.APPOINTMENT_STATUS.get(sch[25][1].c(1).upper(), "booked")
    res: dict[str, Any] = {"resourceType": "Appointment", "identifier": idents, "status": status}
    reason = dt.cwe(sch[7][1], ctx, "0276")
    if reason:
        res["reasonCode"] = [reason]
    atype = dt.cwe(sch[8][1], ctx, "0277")
    if atype:
        res["appointmentType"] = atype
    if status == "cancelled":
        cancel = dt.cwe(sch[6][1], ctx)
        if cancel:
            res["cancelationReason"] = cancel
    minutes = _duration_minutes(sch[9].value, sch[10][1].c(1))
    start = end = None
    if tq1 is not None:
        start, end = dt.ts(tq1[7].value, ctx.zone), dt.ts(tq1[8].value, ctx.zone)
    if not start:
        start, end = dt.ts(sch[11][1].c(4), ctx.zone), dt.ts(sch[11][1].c(5), ctx.zone)
    participants: list[dict[str, Any]] = []
    if ctx.patient_ref:
        participants.append({"actor": {"reference": ctx.patient_ref}, "status": "accepted"})
    service_types = []
    for seg in resources:
        p_start = dt.ts(seg[6].value, ctx.zone) if seg.name == "AIS" else dt.ts(seg[6].value, ctx.zone)
        if seg.name == "AIS":
            st = dt.cwe(seg[3][1], ctx)
            if st:
                service_types.append(st)
            if not start and p_start:
                start = p_start
                dur = _duration_minutes(seg[7].value, seg[8][1].c(1))
                if dur and not minutes:
                    minutes = dur
            continue
        actor = None
        if seg.name == "AIP":
            actor = dt.xcn(seg[3][1], ctx)
        elif seg.name == "AIL":
            actor = dt.pl(seg[3][1], ctx)
        elif seg.name == "AIG":
            actor = {"display": seg[3][1].c(2) or seg[3][1].c(1)} if seg[3].value else None
        if not actor:
            continue
        part: dict[str, Any] = {"actor": actor, "status": "accepted"}
        role = dt.cwe(seg[4][1], ctx)
        if role:
            part["type"] = [role]
        if p_start:
            pend = None
            pdur = _duration_minutes(seg[8].value, seg[9][1].c(1))
            if pdur:
                pend = _plus(p_start, pdur)
            part["period"] = {"start": p_start, **({"end": pend} if pend else {})}
        participants.append(part)
    if service_types:
        res["serviceType"] = service_types
    if start and not end and minutes:
        end = _plus(start, minutes)
    if start and end:
        res["start"], res["end"] = start, end
    elif start:
        res["requestedPeriod"] = [{"start": start}]
    if minutes:
        res["minutesDuration"] = minutes
    if not participants:
        participants.append({"actor": {"display": "unknown"}, "status": "needs-action"})
    res["participant"] = participants
    if notes:
        res["comment"] = "\n".join(n["text"] for n in notes)
    return ctx.upsert(res, {k: v for k, v in ident.items() if k in ("system", "value")}, owned=True)
