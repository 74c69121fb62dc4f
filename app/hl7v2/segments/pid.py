"""PID -> Patient (+ Account from PID-18), after the IG PID[Patient] and PID[Account] maps."""

from __future__ import annotations

from typing import Any

from app.hl7v2 import datatypes as dt
from app.hl7v2 import vocab
from app.hl7v2.context import Context
from app.hl7v2.errors import Location, RequiredFieldMissing
from app.hl7v2.parser import Segment

EXT_MOTHERS_MAIDEN = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"
EXT_BIRTH_TIME = "http://hl7.org/fhir/StructureDefinition/patient-birthTime"
EXT_RELIGION = "http://hl7.org/fhir/StructureDefinition/patient-religion"
SSN = "http://hl7.org/fhir/sid/us-ssn"


def identifiers(seg: Segment, ctx: Context) -> list[dict[str, Any]]:
    """PID-3 (all repetitions), legacy PID-2/PID-4, PID-19 SSN, PID-20 driver's licence."""
    out: list[dict[str, Any]] = []
    for n in (3, 2, 4):
        for rep in seg[n]:
            ident = dt.cx(rep, ctx)
            if ident and ident not in out:
                out.append(ident)
    ssn = seg[19].value
    if ssn:
        out.append(
            {"type": {"coding": [{"system": vocab.v2_table("0203"), "code": "SS"}]}, "system": SSN, "value": ssn}
        )
    dl = seg[20][1]
    if dl.c(1):
        ident = {"type": {"coding": [{"system": vocab.v2_table("0203"), "code": "DL"}]}, "value": dl.c(1)}
        if dl.c(2):
            ident["system"] = "urn:id:" + dl.c(2)
        out.append(ident)
    return out


def key_identifier(idents: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The identifier a conditional update matches on: first MR with a system, else first with a system.

    One identifier, not all of them OR-ed: an OR match can hit two records (412), and a merge (A40) is how v2 says
    two records are one. Every repetition is still stored on the Patient for search.
    """

    def is_type(i: dict[str, Any], code: str) -> bool:
        return any(c.get("code") == code for c in i.get("type", {}).get("coding", []))

    with_system = [i for i in idents if i.get("system") and not is_type(i, "SS") and not is_type(i, "DL")]
    for i in with_system:
        if is_type(i, "MR"):
            return i
    if with_system:
        return with_system[0]
    return idents[0] if idents else None


def patient(seg: Segment, ctx: Context) -> str:
    """Build the Patient, add it to the Bundle and remember it as the message's patient. PID-3 is required."""
    idents = identifiers(seg, ctx)
    key = key_identifier(idents)
    if key is None:
        raise RequiredFieldMissing("PID-3 patient identifier list is empty", location=Location("PID", seg.sequence, 3))
    res: dict[str, Any] = {"resourceType": "Patient", "identifier": idents}
    names = [n for n in (dt.xpn(r) for r in seg[5]) if n]
    if names:
        res["name"] = names
    maiden = seg[6][1].c(1)
    if maiden:
        res.setdefault("extension", []).append({"url": EXT_MOTHERS_MAIDEN, "valueString": maiden})
    dob_raw = seg[7][1].c(1)
    if dob_raw:
        birth = dt.ts(dob_raw, ctx.zone, "date")
        if birth:
            res["birthDate"] = birth
            if len(dob_raw.split("+")[0].split("-")[0]) > 8:
                bt = dt.ts(dob_raw, ctx.zone)
                if bt:
                    res["_birthDate"] = {"extension": [{"url": EXT_BIRTH_TIME, "valueDateTime": bt}]}
        else:
            ctx.warn(f"PID-7 birth date {dob_raw!r} is not a valid date; dropped", seg, 7)
    sex = seg[8][1].c(1).upper()
    if sex:
        gender = vocab.GENDER.get(sex)
        if gender:
            res["gender"] = gender
        else:
            ctx.warn(f"PID-8 administrative sex {sex!r} is not in table 0001; dropped", seg, 8)
    addresses = [a for a in (dt.xad(r) for r in seg[11]) if a]
    county = seg[12].value
    if county and addresses and "district" not in addresses[0]:
        addresses[0]["district"] = county
    if addresses:
        res["address"] = addresses
    telecom = [t for t in (dt.xtn(r, "home") for r in seg[13]) if t]
    telecom += [t for t in (dt.xtn(r, "work") for r in seg[14]) if t]
    telecom += [t for t in (dt.xtn(r) for r in seg[40]) if t]
    if telecom:
        res["telecom"] = _dedupe(telecom)
    lang = seg[15][1]
    if lang:
        cc = dt.cwe(lang, ctx)
        if cc:
            for c in cc.get("coding", []):
                if "system" not in c:
                    c["system"] = "urn:ietf:bcp:47"
            res["communication"] = [{"language": cc}]
    marital = seg[16][1]
    if marital.c(1):
        code = marital.c(1).upper()
        mapped = vocab.MARITAL.get(code)
        if mapped:
            system = vocab.V3_NULL if mapped[0] in ("UNK", "OTH") else vocab.V3_MARITAL
            res["maritalStatus"] = {
                "coding": [{"system": system, "code": mapped[0], "display": mapped[1]}],
                "text": marital.c(2) or mapped[1],
            }
        else:
            cc = dt.cwe(marital, ctx, "0002")
            if cc:
                res["maritalStatus"] = cc
    religion = dt.cwe(seg[17][1], ctx, "0006")
    if religion:
        res.setdefault("extension", []).append({"url": EXT_RELIGION, "valueCodeableConcept": religion})
    mb = seg[24].value.upper()
    order = dt.decimal(seg[25].value)
    if isinstance(order, int) and mb != "N":
        res["multipleBirthInteger"] = order
    elif mb in ("Y", "N"):
        res["multipleBirthBoolean"] = mb == "Y"
    death = dt.ts(seg[29].value, ctx.zone)
    if death:
        res["deceasedDateTime"] = death
    elif seg[30].value.upper() in ("Y", "N"):
        res["deceasedBoolean"] = seg[30].value.upper() == "Y"
    ref = ctx.upsert(res, key)
    ctx.patient_ref = ref
    ctx.patient_key = f"{key.get('system', '')}|{key['value']}"
    ctx.account_ref = account(seg, ctx, ref)
    return ref


def account(seg: Segment, ctx: Context, patient_ref: str) -> str | None:
    """PID-18 patient account number -> Account (status active, subject Patient)."""
    ident = dt.cx(seg[18][1], ctx)
    if not ident:
        return None
    res = {"resourceType": "Account", "status": "active", "subject": [{"reference": patient_ref}]}
    return ctx.upsert(res, ident)


def _dedupe(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in items:
        if i not in out:
            out.append(i)
    return out
