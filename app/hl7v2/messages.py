"""Message handlers and their registry, keyed by a ``(message code, trigger event)`` tuple (never raw MSH-9 text:
``ADT^A01`` and ``ADT^A01^ADT_A01`` are the same message).

Each handler walks the segments once, in order, tracking the group it is in (patient, visit, order, observation,
insurance, resource). Segments a handler does not map (ROL, PRT, SFT, Z-segments ...) are skipped silently: they
never break group detection. ``owns`` names the resource types this message is the source of truth for (written
with conditional update); every other resource it mentions is created only when absent (conditional create).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from app.hl7v2.context import Context
from app.hl7v2.errors import Location, RequiredFieldMissing, UnsupportedEvent, UnsupportedMessageType
from app.hl7v2.parser import Message, Segment
from app.hl7v2.segments import (
    al1,
    dg1,
    ft1,
    gt1,
    in1,
    mrg,
    nk1,
    nte,
    obr,
    obx,
    orc,
    pd1,
    pid,
    pr1,
    pv1,
    rxa,
    sch,
    spm,
    txa,
)

Handler = Callable[[Message, Context], None]


@dataclass(frozen=True)
class Registration:
    handler: Handler
    owns: frozenset[str]
    structure: str


def _next(segs: list[Segment], i: int, name: str) -> Segment | None:
    return segs[i + 1] if i + 1 < len(segs) and segs[i + 1].name == name else None


def _following(segs: list[Segment], i: int, name: str) -> list[Segment]:
    out = []
    j = i + 1
    while j < len(segs) and segs[j].name == name:
        out.append(segs[j])
        j += 1
    return out


def _require_pid(msg: Message) -> Segment:
    seg = msg.segment("PID")
    if seg is None:
        raise RequiredFieldMissing("PID segment is missing", location=Location("PID", 1, 0))
    return seg


def _patient_level(msg: Message, ctx: Context, segs: list[Segment]) -> None:
    """The patient/visit part most messages share: PID, PD1, NK1, PV1/PV2, AL1, DG1, PR1, IN1/IN2, GT1, OBX."""
    pid_seg = next((s for s in segs if s.name == "PID"), None)
    if pid_seg is None:
        return
    patient_ref = pid.patient(pid_seg, ctx)
    pd1_seg = next((s for s in segs if s.name == "PD1"), None)
    if pd1_seg is not None:
        pd1.apply(pd1_seg, ctx, patient_ref)
    nk1.apply([s for s in segs if s.name == "NK1"], ctx, patient_ref)
    for i, s in enumerate(segs):
        if s.name == "PV1":
            pv1.encounter(s, ctx, trigger=ctx.trigger, pv2=_next(segs, i, "PV2"))
            break
    for i, s in enumerate(segs):
        name = s.name
        if name == "AL1":
            al1.allergy(s, ctx)
        elif name == "DG1":
            dg1.condition(s, ctx)
        elif name == "PR1":
            pr1.procedure(s, ctx)
        elif name == "IN1":
            in1.coverage(s, ctx, _next(segs, i, "IN2"))
        elif name == "GT1":
            ctx.account_ref = gt1.guarantor(s, ctx, ctx.account_ref) or ctx.account_ref
        elif name == "OBX":
            obx.observation(s, ctx, notes=nte.notes(_following(segs, i, "NTE"), ctx))


# ---- ADT --------------------------------------------------------------------------------------------------------
def adt(msg: Message, ctx: Context) -> None:
    _require_pid(msg)
    _patient_level(msg, ctx, msg.segments)


def adt_merge(msg: Message, ctx: Context) -> None:
    """A40 (ADT_A39): repeating PID [PD1] MRG [PV1] groups; each PID survives, its MRG is retired."""
    _require_pid(msg)
    if msg.segment("MRG") is None:
        raise RequiredFieldMissing("MRG segment is missing", location=Location("MRG", 1, 0))
    current: str | None = None
    for s in msg.segments:
        if s.name == "PID":
            current = pid.patient(s, ctx)
        elif s.name == "PD1" and current:
            pd1.apply(s, ctx, current)
        elif s.name == "MRG" and current:
            mrg.merge(s, ctx, current)


# ---- orders and results -----------------------------------------------------------------------------------------
def _order_groups(segs: list[Segment]) -> list[dict[str, Any]]:
    """Split the order part into groups: ORC opens one; OBR opens one unless it follows its own ORC."""
    groups: list[dict[str, Any]] = []
    cur: dict[str, Any] | None = None
    last_obx: dict[str, Any] | None = None
    for s in segs:
        n = s.name
        if n == "ORC":
            cur = {"orc": s, "obr": None, "obx": [], "nte": [], "spm": [], "dg1": [], "tq1": None, "rxa": [], "rxr": {}}
            groups.append(cur)
            last_obx = None
        elif n == "OBR":
            if cur is None or cur["obr"] is not None:
                cur = {"orc": None, "obr": s, "obx": [], "nte": [], "spm": [], "dg1": [], "tq1": None, "rxa": []}
                cur["rxr"] = {}
                groups.append(cur)
            else:
                cur["obr"] = s
            last_obx = None
        elif cur is None:
            continue
        elif n == "OBX":
            last_obx = {"seg": s, "nte": []}
            cur["obx"].append(last_obx)
        elif n == "NTE":
            (last_obx["nte"] if last_obx is not None else cur["nte"]).append(s)
        elif n == "SPM":
            cur["spm"].append(s)
            last_obx = None
        elif n == "DG1":
            cur["dg1"].append(s)
        elif n == "TQ1" and cur["tq1"] is None:
            cur["tq1"] = s
        elif n == "RXA":
            cur["rxa"].append(s)
            last_obx = None
        elif n == "RXR" and cur["rxa"]:
            cur["rxr"][cur["rxa"][-1].index] = s
    return groups


def _first_order_index(msg: Message) -> int:
    for s in msg.segments:
        if s.name in ("ORC", "OBR", "SPM", "RXA"):
            return s.index
    return len(msg.segments)


def oru(msg: Message, ctx: Context) -> None:
    """ORU^R01: DiagnosticReport per ORC/OBR group with its own Observations; Specimen per SPM."""
    cut = _first_order_index(msg)
    _patient_level(msg, ctx, msg.segments[:cut])
    for g in _order_groups(msg.segments[cut:]):
        if g["obr"] is None:
            continue
        facts = orc.facts(g["orc"], g["obr"], ctx)
        sr = obr.service_request(g["obr"], facts, ctx, owned=False) if facts.placer else None
        report_ref = obr.diagnostic_report(g["obr"], facts, ctx, sr)
        report = ctx.resource(report_ref)
        key = obr.order_key(facts, g["obr"], ctx, "filler")
        specimens = [r for r in (spm.specimen(s, ctx) for s in g["spm"]) if r]
        results = []
        for o in g["obx"]:
            ref = obx.observation(o["seg"], ctx, order_key=key, notes=nte.notes(o["nte"], ctx))
            if ref:
                if specimens:
                    ctx.resource(ref)["specimen"] = {"reference": specimens[0]}
                results.append({"reference": ref})
        if results:
            report["result"] = results
        if specimens:
            report["specimen"] = [{"reference": r} for r in specimens]
        conclusion = "\n".join(n["text"] for n in nte.notes(g["nte"], ctx))
        if conclusion:
            report["conclusion"] = conclusion


def orders(msg: Message, ctx: Context) -> None:
    """ORM^O01 / OML^O21: ServiceRequest per ORC[/OBR] group; DG1 -> reasonReference, OBX -> supportingInfo."""
    cut = _first_order_index(msg)
    _patient_level(msg, ctx, msg.segments[:cut])
    for g in _order_groups(msg.segments[cut:]):
        facts = orc.facts(g["orc"], g["obr"], ctx)
        ref = obr.service_request(g["obr"], facts, ctx, owned=True)
        if ref is None:
            seg = g["orc"] or g["obr"]
            ctx.warn("order without a patient or order number: not mapped", seg)
            continue
        sr = ctx.resource(ref)
        key = obr.order_key(facts, g["obr"], ctx, "placer")
        reasons = [r for r in (dg1.condition(s, ctx) for s in g["dg1"]) if r]
        if reasons:
            sr["reasonReference"] = [{"reference": r} for r in reasons]
        support = []
        for o in g["obx"]:
            oref = obx.observation(o["seg"], ctx, order_key=key, notes=nte.notes(o["nte"], ctx))
            if oref:
                support.append({"reference": oref})
        if support:
            sr["supportingInfo"] = support
        specimens = [r for r in (spm.specimen(s, ctx) for s in g["spm"]) if r]
        if specimens:
            sr["specimen"] = [{"reference": r} for r in specimens]
        notes = nte.notes(g["nte"], ctx)
        if notes:
            sr["note"] = notes


# ---- scheduling, financial, immunisation, documents -------------------------------------------------------------
def siu(msg: Message, ctx: Context) -> None:
    sch_seg = msg.segment("SCH")
    if sch_seg is None:
        raise RequiredFieldMissing("SCH segment is missing", location=Location("SCH", 1, 0))
    _patient_level(msg, ctx, [s for s in msg.segments if s.name in ("PID", "PD1", "PV1", "PV2")])
    segs = msg.segments
    sch_notes: list[Segment] = []
    for i, s in enumerate(segs):
        if s.name == "SCH":
            sch_notes = _following(segs, i, "NTE")
            if not sch_notes and i + 1 < len(segs) and segs[i + 1].name == "TQ1":
                sch_notes = _following(segs, i + 1, "NTE")
            break
    resources = [s for s in segs if s.name in ("AIS", "AIG", "AIL", "AIP")]
    sch.appointment(sch_seg, ctx, resources, msg.segment("TQ1"), nte.notes(sch_notes, ctx))


def dft(msg: Message, ctx: Context) -> None:
    """DFT^P03: ChargeItem per FT1, plus the patient-level DG1/PR1/IN1/GT1 (orders inside DFT are not mapped)."""
    _require_pid(msg)
    segs = [s for s in msg.segments if s.name not in ("ORC", "OBR", "OBX", "NTE")]
    _patient_level(msg, ctx, segs)
    for s in msg.all("FT1"):
        ft1.charge_item(s, ctx)


def bar(msg: Message, ctx: Context) -> None:
    """BAR^P01: add patient accounts: Account (PID-18), Encounter, Coverage, Condition, Procedure, guarantor."""
    _require_pid(msg)
    _patient_level(msg, ctx, msg.segments)


def vxu(msg: Message, ctx: Context) -> None:
    """VXU^V04: Immunization per ORC/RXA (+RXR); OBX under an RXA -> Observation partOf that Immunization."""
    _require_pid(msg)
    cut = _first_order_index(msg)
    _patient_level(msg, ctx, msg.segments[:cut])
    for g in _order_groups(msg.segments[cut:]):
        facts = orc.facts(g["orc"], None, ctx)
        imm_ref = None
        for r in g["rxa"]:
            imm_ref = rxa.immunization(r, g["rxr"].get(r.index), facts, ctx) or imm_ref
        for o in g["obx"]:
            obx.observation(o["seg"], ctx, notes=nte.notes(o["nte"], ctx), part_of=imm_ref)


def mdm(msg: Message, ctx: Context) -> None:
    """MDM^T02: DocumentReference from TXA with the OBX content; ORC/OBR -> ServiceRequest in context.related."""
    _require_pid(msg)
    txa_seg = msg.segment("TXA")
    if txa_seg is None:
        raise RequiredFieldMissing("TXA segment is missing", location=Location("TXA", 1, 0))
    cut = min(_first_order_index(msg), txa_seg.index)
    _patient_level(msg, ctx, msg.segments[:cut])
    related = []
    for g in _order_groups(msg.segments[cut:]):
        facts = orc.facts(g["orc"], g["obr"], ctx)
        if facts.placer or facts.filler:
            ref = obr.service_request(g["obr"], facts, ctx, owned=False)
            if ref:
                related.append(ref)
    obxs = [s for s in msg.segments[txa_seg.index :] if s.name == "OBX"]
    txa.document(txa_seg, obxs, ctx, related)


_PERSON = frozenset({"Patient", "Encounter", "Account", "Coverage", "AllergyIntolerance", "Condition"}) | frozenset(
    {"Procedure", "Observation", "RelatedPerson"}
)

_ORDER = frozenset({"ServiceRequest", "Observation", "Specimen", "Condition"})
_FINANCIAL = frozenset({"Account", "Coverage", "Condition", "Procedure", "RelatedPerson"})
# S12 new, S13 reschedule, S14 modify, S15 cancel, S16 discontinue, S17 delete, S26 no-show: one structure.
_SIU = ("S12", "S13", "S14", "S15", "S16", "S17", "S26")

REGISTRY: dict[tuple[str, str], Registration] = {
    **{("ADT", t): Registration(adt, _PERSON, "ADT_A01") for t in ("A01", "A04", "A08", "A13")},
    ("ADT", "A02"): Registration(adt, _PERSON, "ADT_A02"),
    ("ADT", "A03"): Registration(adt, _PERSON, "ADT_A03"),
    **{("ADT", t): Registration(adt, _PERSON, "ADT_A05") for t in ("A05", "A28", "A31")},
    **{("ADT", t): Registration(adt, _PERSON, "ADT_A06") for t in ("A06", "A07")},
    **{("ADT", t): Registration(adt, _PERSON, "ADT_A09") for t in ("A09", "A10", "A11")},
    **{("ADT", t): Registration(adt, _PERSON, "ADT_A05") for t in ("A14",)},
    **{("ADT", t): Registration(adt, _PERSON, "ADT_A16") for t in ("A15", "A16")},
    **{("ADT", t): Registration(adt, _PERSON, "ADT_A21") for t in ("A25", "A26", "A27")},
    ("ADT", "A40"): Registration(adt_merge, frozenset({"Patient"}), "ADT_A39"),
    ("ORU", "R01"): Registration(oru, frozenset({"DiagnosticReport", "Observation", "Specimen"}), "ORU_R01"),
    ("ORM", "O01"): Registration(
        orders, frozenset({"ServiceRequest", "Observation", "Specimen", "Condition"}), "ORM_O01"
    ),
    ("OML", "O21"): Registration(
        orders, frozenset({"ServiceRequest", "Observation", "Specimen", "Condition"}), "OML_O21"
    ),
    **{("SIU", t): Registration(siu, frozenset({"Appointment"}), "SIU_S12") for t in ("S12", "S13", "S14", "S15")},
    **{("DFT", t): Registration(dft, _FINANCIAL | {"ChargeItem"}, "DFT_P03") for t in ("P03", "P11")},
    ("BAR", "P01"): Registration(
        bar,
        frozenset(
            {"Account", "Encounter", "Coverage", "Condition", "Procedure", "RelatedPerson", "AllergyIntolerance"}
        ),
        "BAR_P01",
    ),
    ("VXU", "V04"): Registration(vxu, frozenset({"Immunization", "Observation"}), "VXU_V04"),
    **{("MDM", f"T{n:02d}"): Registration(mdm, frozenset({"DocumentReference"}), "MDM_T02") for n in range(1, 12)},
}

_CODES = {code for code, _ in REGISTRY}


def lookup(code: str, trigger: str) -> Registration:
    """The registration for (MSH-9.1, MSH-9.2); unknown message type -> AR 200, unknown event -> AR 201."""
    reg = REGISTRY.get((code.upper(), trigger.upper()))
    if reg is not None:
        return reg
    if code.upper() not in _CODES:
        raise UnsupportedMessageType(f"message type {code!r} is not supported", location=Location("MSH", 1, 9, 1, 1))
    raise UnsupportedEvent(f"event {code}^{trigger} is not supported", location=Location("MSH", 1, 9, 1, 2))


def supported() -> list[tuple[str, str]]:
    return sorted(REGISTRY)
