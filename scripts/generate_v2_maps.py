#!/usr/bin/env python3
"""Generate ``terminology/v2-to-fhir-maps.json``: the v2 -> FHIR ConceptMaps the HL7v2 translation uses.

The maps follow the HL7 V2-to-FHIR IG vocabulary maps (its ConceptMap CSVs), reduced to the codes Interlace
translates. The tables below are the reviewable source; the JSON is what the server reads (``app.fhir.terminology``,
through ``app.hl7v2.vocab``). Each table becomes one R4 ConceptMap: ``group.source`` is the v2 table CodeSystem,
``group.target`` the FHIR (or v3) CodeSystem. Source displays come from the vendored ``terminology/v2-tables.json``.

Equivalence: ``equivalent`` for a one-to-one pair, ``wider`` when several v2 codes share a FHIR code (the target is
wider than each source), unless ``NOTES`` says otherwise.

Usage::

    scripts/generate_v2_maps.py           # rewrite terminology/v2-to-fhir-maps.json
    scripts/generate_v2_maps.py --check   # exit 1 if the file is out of date (the tests run this)

Site-specific codes do not belong here: put them in ``terminology/site-overrides.json`` (see terminology/README.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
OUT = Path("terminology/v2-to-fhir-maps.json")
V2_TABLES = Path("terminology/v2-tables.json")
BASE_URL = "https://interlace.dev/fhir/ConceptMap/"
V2_CS = "http://terminology.hl7.org/CodeSystem/v2-"
V2_VS = "http://terminology.hl7.org/ValueSet/v2-"
FHIR = "http://hl7.org/fhir/"
THO = "http://terminology.hl7.org/CodeSystem/"
V3_MARITAL = THO + "v3-MaritalStatus"
V3_NULL = THO + "v3-NullFlavor"

# fmt: off
# ---------------------------------------------------------------- the tables (v2 code -> FHIR code)

# 0001 Administrative Sex -> FHIR AdministrativeGender (IG ConceptMap v2-0001).
GENDER: dict[str, str] = {"F": "female", "M": "male", "O": "other", "U": "unknown", "A": "other", "N": "other"}

# 0002 Marital Status -> v3 MaritalStatus (IG ConceptMap).
MARITAL: dict[str, tuple[str, str]] = {
    "A": ("L", "Legally Separated"),
    "D": ("D", "Divorced"),
    "M": ("M", "Married"),
    "S": ("S", "Never Married"),
    "W": ("W", "Widowed"),
    "C": ("C", "Common Law"),
    "G": ("T", "Domestic partner"),
    "P": ("T", "Domestic partner"),
    "R": ("T", "Domestic partner"),
    "E": ("L", "Legally Separated"),
    "N": ("A", "Annulled"),
    "I": ("I", "Interlocutory"),
    "B": ("U", "unmarried"),
    "U": ("UNK", "unknown"),
    "O": ("OTH", "other"),
    "T": ("UNK", "unknown"),
}

# 0004 Patient Class -> v3 ActCode (Encounter.class).
ENCOUNTER_CLASS: dict[str, tuple[str, str]] = {
    "E": ("EMER", "emergency"),
    "I": ("IMP", "inpatient encounter"),
    "O": ("AMB", "ambulatory"),
    "P": ("PRENC", "pre-admission"),
    "R": ("IMP", "inpatient encounter"),
    "B": ("OBSENC", "observation encounter"),
    "C": ("AMB", "ambulatory"),
    "N": ("AMB", "ambulatory"),  # "not applicable": FHIR requires a class
    "U": ("AMB", "ambulatory"),
}

# Event -> Encounter.status (IG message maps; PV1-45 valued always means finished).
ENCOUNTER_STATUS_BY_EVENT: dict[str, str] = {
    "A01": "in-progress",
    "A02": "in-progress",
    "A03": "finished",
    "A04": "arrived",
    "A05": "planned",
    "A06": "in-progress",
    "A07": "in-progress",
    "A09": "in-progress",
    "A10": "in-progress",
    "A11": "cancelled",
    "A15": "in-progress",
    "A16": "in-progress",
    "A25": "in-progress",
    "A26": "in-progress",
    "A27": "cancelled",
    "A13": "in-progress",
    "A14": "planned",
    "A38": "cancelled",
}

# 0063 Relationship -> v3 RoleCode (NK1-3, IN1-17 uses 0063 too in 2.5+).
RELATIONSHIP: dict[str, str] = {
    "SEL": "ONESELF",
    "SPO": "SPS",
    "DOM": "DOMPART",
    "CHD": "CHILD",
    "GCH": "GRNDCHILD",
    "NCH": "NCHILD",
    "SCH": "STPCHLD",
    "FCH": "CHLDFOST",
    "DEP": "DEPEN",
    "WRD": "WARD",
    "PAR": "PRN",
    "MTH": "MTH",
    "FTH": "FTH",
    "CGV": "CAREGIVER",
    "GRD": "GUARD",
    "GRP": "GRPRN",
    "EXF": "EXT",
    "SIB": "SIB",
    "BRO": "BRO",
    "SIS": "SIS",
    "FND": "FRND",
    "OAD": "ADULTDTR",
    "EME": "EMP",
    "EMR": "ERR",
    "ASC": "ASSOC",
    "EMC": "ECON",
    "OWN": "OWN",
    "TRA": "TRAINER",
    "MGR": "MGR",
    "NON": "NONE",
    "UNK": "UNK",
    "OTH": "OTH",
}

# 0078 Abnormal flags -> v3 ObservationInterpretation (same letters except where noted).
INTERPRETATION: dict[str, str] = {
    "L": "L",
    "H": "H",
    "LL": "LL",
    "HH": "HH",
    "<": "<",
    ">": ">",
    "N": "N",
    "A": "A",
    "AA": "AA",
    "U": "U",
    "D": "D",
    "B": "B",
    "W": "W",
    "S": "S",
    "R": "R",
    "I": "I",
    "MS": "MS",
    "VS": "VS",
    "POS": "POS",
    "NEG": "NEG",
    "IND": "IND",
    "DET": "DET",
    "ND": "ND",
    "AC": "A",
    "RR": "RR",
    "QCF": "QCF",
    "TOX": "TOX",
    "EX": "EX",
    "HX": "HX",
    "LX": "LX",
    "L>": "LU",
    "H>": "HU",
    "NR": "N",
}

# 0085 Observation result status (OBX-11) -> Observation.status.
OBSERVATION_STATUS: dict[str, str] = {
    "C": "corrected",
    "D": "entered-in-error",
    "F": "final",
    "I": "registered",
    "N": "final",  # "not asked": value absent -> dataAbsentReason
    "O": "registered",
    "P": "preliminary",
    "R": "preliminary",
    "S": "preliminary",
    "U": "final",
    "W": "entered-in-error",
    "X": "cancelled",
    "A": "amended",
}

# 0123 Result status (OBR-25) -> DiagnosticReport.status.
REPORT_STATUS: dict[str, str] = {
    "O": "registered",
    "I": "registered",
    "S": "registered",
    "A": "partial",
    "P": "preliminary",
    "R": "partial",
    "N": "partial",
    "C": "corrected",
    "M": "corrected",
    "F": "final",
    "X": "cancelled",
    "Y": "unknown",
    "Z": "unknown",
}

# ORC-5 Order status (0038) -> ServiceRequest.status; wins over ORC-1.
ORDER_STATUS: dict[str, str] = {
    "A": "active",
    "CA": "revoked",
    "CM": "completed",
    "DC": "revoked",
    "ER": "entered-in-error",
    "HD": "on-hold",
    "IP": "active",
    "RP": "revoked",
    "SC": "active",
}

# ORC-1 Order control (0119) -> ServiceRequest.status when ORC-5 is empty.
ORDER_CONTROL_STATUS: dict[str, str] = {
    "NW": "active",
    "RQ": "active",
    "RO": "active",
    "OK": "active",
    "SC": "active",
    "XO": "active",
    "XX": "active",
    "RE": "active",
    "CA": "active",  # a cancel *request*: not yet revoked
    "OC": "revoked",
    "OD": "revoked",
    "DC": "revoked",
    "CR": "revoked",
    "DR": "revoked",
    "DF": "revoked",
    "HD": "on-hold",
    "HR": "on-hold",
    "OH": "on-hold",
    "FU": "completed",
}

# 0278 Filler status (SCH-25) -> Appointment.status.
APPOINTMENT_STATUS: dict[str, str] = {
    "BOOKED": "booked",
    "PENDING": "pending",
    "WAITLIST": "waitlist",
    "STARTED": "checked-in",
    "COMPLETE": "fulfilled",
    "CANCELLED": "cancelled",
    "DC": "cancelled",
    "DELETED": "entered-in-error",
    "BLOCKED": "booked",
    "OVERBOOK": "booked",
    "NOSHOW": "noshow",
}

# 0127 Allergen type (AL1-2) -> AllergyIntolerance.category.
ALLERGY_CATEGORY: dict[str, str] = {
    "DA": "medication",
    "MA": "medication",
    "FA": "food",
    "EA": "environment",
    "PA": "environment",
    "LA": "environment",
    "AA": "biologic",
    "PLANT": "environment",
    "POLLEN": "environment",
    "MC": "medication",
}

# 0128 Allergy severity (AL1-4) -> criticality.
ALLERGY_CRITICALITY: dict[str, str] = {"SV": "high", "MO": "low", "MI": "low", "U": "unable-to-assess"}

# 0201 Telecom use (XTN.2) -> ContactPoint.use; 0202 equipment (XTN.3) -> system.
TELECOM_USE: dict[str, str] = {
    "PRN": "home",
    "ORN": "home",
    "VHN": "home",
    "WPN": "work",
    "PRS": "mobile",
    "EMR": "home",
    "ASN": "temp",
    "BPN": "work",
}
TELECOM_SYSTEM: dict[str, str] = {
    "PH": "phone",
    "CP": "phone",
    "FX": "fax",
    "BP": "pager",
    "MD": "other",
    "TDD": "other",
    "TTY": "other",
    "SAT": "phone",
    "INTERNET": "email",
    "X.400": "email",
}

# 0200 Name type (XPN.7) -> HumanName.use.
NAME_USE: dict[str, str] = {
    "L": "official",
    "D": "usual",
    "M": "maiden",
    "N": "nickname",
    "A": "anonymous",
    "S": "anonymous",
    "BAD": "old",
    "NB": "old",
    "TEMP": "temp",
    "R": "official",
    "C": "official",
    "P": "usual",
}

# 0190 Address type (XAD.7) -> Address.use / Address.type.
ADDRESS_USE: dict[str, str] = {"H": "home", "B": "work", "O": "work", "C": "temp", "BA": "old", "BI": "billing"}
ADDRESS_TYPE: dict[str, str] = {"M": "postal", "SH": "physical", "P": "physical"}

# 0322 Completion status (RXA-20) -> Immunization.status.
IMMUNIZATION_STATUS: dict[str, str] = {"CP": "completed", "PA": "completed", "RE": "not-done", "NA": "not-done"}

# 0271 Document completion status (TXA-17) -> DocumentReference.docStatus.
DOC_STATUS: dict[str, str] = {
    "AU": "final",
    "LA": "final",
    "DI": "preliminary",
    "DO": "preliminary",
    "IP": "preliminary",
    "IN": "preliminary",
    "PA": "preliminary",
    "CA": "entered-in-error",
}

# 0017 Transaction type (FT1-6) -> ChargeItem.status: charges, credits (negative amounts) and adjustments are
# billable lines; a payment is not a charge. The type itself travels in an extension (see segments/ft1.py).
CHARGE_STATUS: dict[str, str] = {"CG": "billable", "CD": "billable", "AJ": "billable", "PY": "not-billable"}

# fmt: on

# (table, v2 code) -> (equivalence, comment) where the default rule says too little.
NOTES: dict[tuple[str, str], tuple[str, str]] = {
    ("0001", "A"): ("wider", "Ambiguous: FHIR has no such gender"),
    ("0001", "N"): ("inexact", "Not applicable: FHIR has no such gender"),
    ("0004", "N"): ("inexact", "not applicable: FHIR requires a class"),
    ("0004", "U"): ("inexact", "unknown: FHIR requires a class"),
    ("0085", "N"): ("inexact", "not asked: the value is absent (dataAbsentReason)"),
    ("0119", "CA"): ("inexact", "a cancel request: the order is not yet revoked"),
    ("0017", "PY"): ("inexact", "a payment is not a charge"),
}


@dataclass(frozen=True)
class MapSpec:
    id: str
    table: str
    target: str  # target CodeSystem
    target_vs: str
    title: str
    codes: dict[str, Any]  # v2 code -> code | (code, display)
    # v2 code -> another target CodeSystem (e.g. marital "unknown" is a NullFlavor)
    other_systems: dict[str, str] = field(default_factory=dict)


def _fhir(name: str) -> tuple[str, str]:
    return FHIR + name, FHIR + "ValueSet/" + name


def _tho(name: str) -> tuple[str, str]:
    return THO + name, "http://terminology.hl7.org/ValueSet/" + name


SPECS: tuple[MapSpec, ...] = (
    MapSpec(
        "v2-0001-gender", "0001", *_fhir("administrative-gender"), "Administrative Sex -> AdministrativeGender", GENDER
    ),
    MapSpec(
        "v2-0002-marital-status",
        "0002",
        *_tho("v3-MaritalStatus"),
        "Marital Status -> v3 MaritalStatus",
        MARITAL,
        {k: V3_NULL for k, v in MARITAL.items() if v[0] in ("UNK", "OTH")},
    ),
    MapSpec(
        "v2-0003-encounter-status",
        "0003",
        *_fhir("encounter-status"),
        "Event Type -> Encounter.status",
        ENCOUNTER_STATUS_BY_EVENT,
    ),
    MapSpec(
        "v2-0004-encounter-class", "0004", *_tho("v3-ActCode"), "Patient Class -> Encounter.class", ENCOUNTER_CLASS
    ),
    MapSpec(
        "v2-0017-chargeitem-status",
        "0017",
        *_fhir("chargeitem-status"),
        "Transaction Type -> ChargeItem.status",
        CHARGE_STATUS,
    ),
    MapSpec(
        "v2-0038-request-status",
        "0038",
        *_fhir("request-status"),
        "Order Status -> ServiceRequest.status",
        ORDER_STATUS,
    ),
    MapSpec("v2-0063-relationship", "0063", *_tho("v3-RoleCode"), "Relationship -> v3 RoleCode", RELATIONSHIP),
    MapSpec(
        "v2-0078-interpretation",
        "0078",
        *_tho("v3-ObservationInterpretation"),
        "Abnormal Flags -> Observation.interpretation",
        INTERPRETATION,
    ),
    MapSpec(
        "v2-0085-observation-status",
        "0085",
        *_fhir("observation-status"),
        "Observation Result Status -> Observation.status",
        OBSERVATION_STATUS,
    ),
    MapSpec(
        "v2-0119-request-status",
        "0119",
        *_fhir("request-status"),
        "Order Control -> ServiceRequest.status",
        ORDER_CONTROL_STATUS,
    ),
    MapSpec(
        "v2-0123-report-status",
        "0123",
        *_fhir("diagnostic-report-status"),
        "Result Status -> DiagnosticReport.status",
        REPORT_STATUS,
    ),
    MapSpec(
        "v2-0127-allergy-category",
        "0127",
        *_fhir("allergy-intolerance-category"),
        "Allergen Type -> AllergyIntolerance.category",
        ALLERGY_CATEGORY,
    ),
    MapSpec(
        "v2-0128-allergy-criticality",
        "0128",
        *_fhir("allergy-intolerance-criticality"),
        "Allergy Severity -> AllergyIntolerance.criticality",
        ALLERGY_CRITICALITY,
    ),
    MapSpec("v2-0190-address-use", "0190", *_fhir("address-use"), "Address Type -> Address.use", ADDRESS_USE),
    MapSpec("v2-0190-address-type", "0190", *_fhir("address-type"), "Address Type -> Address.type", ADDRESS_TYPE),
    MapSpec("v2-0200-name-use", "0200", *_fhir("name-use"), "Name Type -> HumanName.use", NAME_USE),
    MapSpec(
        "v2-0201-contact-point-use",
        "0201",
        *_fhir("contact-point-use"),
        "Telecommunication Use -> ContactPoint.use",
        TELECOM_USE,
    ),
    MapSpec(
        "v2-0202-contact-point-system",
        "0202",
        *_fhir("contact-point-system"),
        "Telecommunication Equipment Type -> ContactPoint.system",
        TELECOM_SYSTEM,
    ),
    MapSpec(
        "v2-0271-document-status",
        "0271",
        *_fhir("composition-status"),
        "Document Completion Status -> DocumentReference.docStatus",
        DOC_STATUS,
    ),
    MapSpec(
        "v2-0278-appointment-status",
        "0278",
        *_fhir("appointmentstatus"),
        "Filler Status -> Appointment.status",
        APPOINTMENT_STATUS,
    ),
    MapSpec(
        "v2-0322-immunization-status",
        "0322",
        *_fhir("event-status"),
        "Completion Status -> Immunization.status",
        IMMUNIZATION_STATUS,
    ),
)


# ---------------------------------------------------------------- generation


def v2_displays(root: Path) -> dict[str, dict[str, str]]:
    bundle = json.loads((root / V2_TABLES).read_text(encoding="utf-8"))
    out: dict[str, dict[str, str]] = {}
    for entry in bundle["entry"]:
        r = entry["resource"]
        if r["resourceType"] == "CodeSystem":
            out[r["url"]] = {c["code"]: c["display"] for c in r.get("concept", ()) if c.get("display")}
    return out


def concept_map(spec: MapSpec, displays: dict[str, dict[str, str]]) -> dict[str, Any]:
    source = V2_CS + spec.table
    known = displays.get(source, {})
    spelling = {c.upper(): c for c in known}
    fan_in: dict[tuple[str, str], int] = {}
    for code, value in spec.codes.items():
        key = (spec.other_systems.get(code, spec.target), value[0] if isinstance(value, tuple) else value)
        fan_in[key] = fan_in.get(key, 0) + 1
    groups: dict[str, list[dict[str, Any]]] = {}
    for code, value in spec.codes.items():
        system = spec.other_systems.get(code, spec.target)
        target_code, target_display = value if isinstance(value, tuple) else (value, None)
        equivalence, comment = NOTES.get(
            (spec.table, code), ("wider" if fan_in[(system, target_code)] > 1 else "equivalent", None)
        )
        target: dict[str, Any] = {"code": target_code}
        if target_display:
            target["display"] = target_display
        target["equivalence"] = equivalence
        if comment:
            target["comment"] = comment
        # the tables are keyed upper-case (lookups are case-insensitive); the map uses the table's own spelling
        official = spelling.get(code.upper(), code)
        element: dict[str, Any] = {"code": official}
        if official in known:
            element["display"] = known[official]
        element["target"] = [target]
        groups.setdefault(system, []).append(element)
    return {
        "resourceType": "ConceptMap",
        "id": spec.id,
        "url": BASE_URL + spec.id,
        "name": "".join(p.capitalize() for p in spec.id.replace("-", " ").split()),
        "title": f"v2 table {spec.table} {spec.title}",
        "status": "active",
        "publisher": "Interlace (after the HL7 V2-to-FHIR IG vocabulary maps)",
        "sourceCanonical": V2_VS + spec.table,
        "targetCanonical": spec.target_vs,
        "group": [{"source": source, "target": system, "element": elements} for system, elements in groups.items()],
    }


def render(root: Path = REPO_ROOT) -> str:
    displays = v2_displays(root)
    entries = [{"resource": concept_map(s, displays)} for s in SPECS]
    head = json.dumps({"resourceType": "Bundle", "id": "v2-to-fhir-maps", "type": "collection"}, separators=(",", ":"))
    lines = ",\n".join(json.dumps(e, ensure_ascii=False, separators=(",", ":")) for e in entries)
    return head[:-1] + ',"entry":[\n' + lines + "\n]}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="fail if the file is not what the tables generate")
    parser.add_argument("--root", type=Path, default=REPO_ROOT, help="repository root")
    args = parser.parse_args(argv)
    text = render(args.root)
    dest = args.root / OUT
    if args.check:
        current = dest.read_text(encoding="utf-8") if dest.exists() else ""
        if current != text:
            print(f"{OUT} is out of date: run scripts/generate_v2_maps.py", file=sys.stderr)
            return 1
        return 0
    dest.write_text(text, encoding="utf-8")
    print(f"wrote {OUT} ({len(SPECS)} ConceptMaps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
