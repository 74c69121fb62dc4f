"""v2 data types -> FHIR data types, after the V2-to-FHIR IG datatype maps.

Each function takes a parsed Repetition (components are 1-based, as in the standard) and returns a FHIR JSON
fragment, or None when nothing was sent. Functions that create resources (XCN -> Practitioner, PL -> Location,
XON/HD -> Organization) add them to the Context and return a Reference.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from app.hl7v2 import vocab
from app.hl7v2.context import Context, _urn_part
from app.hl7v2.parser import Component, Repetition

_TS = re.compile(
    r"^(\d{4})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:(\d{2})(?:\.(\d{1,6}))?)?)?)?)?)?\s*(?:([+-])(\d{2})(\d{2}))?$"
)


# ---- time ------------------------------------------------------------------------------------------------------
def ts(value: str, zone: ZoneInfo, kind: str = "dateTime") -> str | None:
    """v2 DTM/TS/DT text -> FHIR date, dateTime or instant, keeping the sender's precision and offset.

    Date-only precision stays a date (an offset is dropped: it never shifts a date). Once hours appear FHIR needs
    minutes, seconds and an offset: pad with zeros and use the sent offset, else the sender's configured zone.
    ``kind="date"`` truncates to the date part; ``kind="instant"`` pads to full precision. Invalid -> None.
    """
    value = value.strip()
    if not value:
        return None
    m = _TS.match(value)
    if not m:
        return None
    y, mo, d, hh, mi, ss, frac, sign, oh, om = m.groups()
    try:
        datetime(int(y), int(mo or 1), int(d or 1), int(hh or 0), int(mi or 0), int(ss or 0))
    except ValueError:
        return None
    if int(y) < 1:
        return None
    if kind == "date" or (hh is None and kind != "instant"):
        out = y
        if mo:
            out += f"-{mo}"
            if d:
                out += f"-{d}"
        return out
    if kind == "instant" and not (mo and d):
        return None
    time = f"{hh or '00'}:{mi or '00'}:{ss or '00'}"
    if frac:
        time += "." + frac
    if sign:
        if int(oh) > 14 or int(om) > 59:
            return None
        offset = f"{sign}{oh}:{om}"
    else:
        local = datetime(int(y), int(mo), int(d), int(hh or 0), int(mi or 0), int(ss or 0), tzinfo=zone)
        delta = local.utcoffset() or timedelta(0)
        total = int(delta.total_seconds() // 60)
        offset = "Z" if total == 0 else f"{'+' if total > 0 else '-'}{abs(total) // 60:02d}:{abs(total) % 60:02d}"
    return f"{y}-{mo}-{d}T{time}{offset}"


def period(start: str | None, end: str | None) -> dict[str, str] | None:
    p = {k: v for k, v in (("start", start), ("end", end)) if v}
    return p or None


# ---- numbers ---------------------------------------------------------------------------------------------------
def decimal(value: str) -> int | float | None:
    """NM text -> JSON number. v2 allows '+1.50', '.5', '007': normalise; not a number -> None."""
    v = value.strip()
    if not v:
        return None
    try:
        d = Decimal(v)
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d == d.to_integral_value() and "." not in v and "e" not in v.lower():
        return int(d)
    return float(d)


# ---- identifiers -----------------------------------------------------------------------------------------------
def cx(rep: Repetition, ctx: Context) -> dict[str, Any] | None:
    """CX -> Identifier. CX.4 assigning authority -> system (see Context.authority_system); CX.5 -> type."""
    value = rep.c(1)
    if not value:
        return None
    out: dict[str, Any] = {}
    system = ctx.authority_system(rep.c(4, 1), rep.c(4, 2), rep.c(4, 3))
    if system is None:
        # CX.9 / CX.10 (jurisdiction / agency) are CWE in 2.5+; fall back to the sender's scope.
        system = ctx.unqualified_system()
    id_type = rep.c(5)
    if id_type:
        out["type"] = {"coding": [{"system": vocab.v2_table("0203"), "code": id_type}]}
    if system:
        out["system"] = system
    out["value"] = value
    if rep.c(4, 1) and system and system.startswith("urn:oid:"):
        out["assigner"] = {"display": rep.c(4, 1)}
    p = period(ts(rep.c(7), ctx.zone), ts(rep.c(8), ctx.zone))
    if p:
        out["period"] = p
    return out


def ei(rep: Repetition | Component, ctx: Context, type_code: str | None = None) -> dict[str, Any] | None:
    """EI (entity id^namespace^universal id^type) -> Identifier; type_code e.g. PLAC/FILL (table 0203)."""
    if isinstance(rep, Component):
        value, ns, uid, utype = rep[1].strip(), rep[2].strip(), rep[3].strip(), rep[4].strip()
    else:
        value, ns, uid, utype = rep.c(1), rep.c(2), rep.c(3), rep.c(4)
    if not value:
        return None
    out: dict[str, Any] = {}
    if type_code:
        out["type"] = {"coding": [{"system": vocab.v2_table("0203"), "code": type_code}]}
    system = ctx.authority_system(ns, uid, utype) or ctx.unqualified_system()
    if system:
        out["system"] = system
    out["value"] = value
    return out


# ---- names, addresses, telecom --------------------------------------------------------------------------------
def xpn(rep: Repetition, offset: int = 0) -> dict[str, Any] | None:
    """XPN -> HumanName. ``offset`` lets XCN (name starts at component 2) reuse this."""
    if not rep:
        return None
    v = rep.values(22)
    o = offset - 1  # 1-based component n is v[n + o]
    family = rep.c(1 + offset, 1)
    given = [g for g in (v[2 + o], v[3 + o]) if g]
    if not (family or given):
        return None
    out: dict[str, Any] = {}
    name_type = v[7 + o]
    use = vocab.NAME_USE.get(name_type.upper()) if name_type else None
    if use:
        out["use"] = use
    if family:
        out["family"] = family
    if given:
        out["given"] = given
    if v[5 + o]:
        out["prefix"] = [v[5 + o]]
    suffix = [s for s in (v[4 + o], v[6 + o] if offset == 0 else v[20]) if s]
    if suffix:
        out["suffix"] = suffix
    if offset == 0 and (v[11] or v[12]):
        p = period(_date_only(v[11]), _date_only(v[12]))
        if p:
            out["period"] = p
    return out


def _date_only(v: str) -> str | None:
    return ts(v, ZoneInfo("UTC"), "date") if v else None


def xad(rep: Repetition) -> dict[str, Any] | None:
    """XAD -> Address: SAD.1 + XAD.2 -> line; .3 city, .4 state, .5 postalCode, .6 country, .7 use/type, .9 district."""
    street = rep.c(1, 1)
    if not any(ch.isalpha() for ch in street):  # SAD.1 is only a house number: join street name, dwelling no.
        street = " ".join(x for x in (street, rep.c(1, 2), rep.c(1, 3)) if x)
    line = [x for x in (street, rep.c(2)) if x]
    out: dict[str, Any] = {}
    atype = rep.c(7).upper()
    if atype in vocab.ADDRESS_USE:
        out["use"] = vocab.ADDRESS_USE[atype]
    if atype in vocab.ADDRESS_TYPE:
        out["type"] = vocab.ADDRESS_TYPE[atype]
    if line:
        out["line"] = line
    for key, n in (("city", 3), ("district", 9), ("state", 4), ("postalCode", 5), ("country", 6)):
        if rep.c(n):
            out[key] = rep.c(n)
    if not (line or any(k in out for k in ("city", "state", "postalCode", "country", "district"))):
        return None
    p = period(_date_only(rep.c(13)), _date_only(rep.c(14)))
    if p:
        out["period"] = p
    return out


def xtn(rep: Repetition, default_use: str | None = None) -> dict[str, Any] | None:
    """XTN -> ContactPoint. Internet/X.400 -> email from XTN.4; else XTN.12, else +cc area local ext, else XTN.1."""
    equip = rep.c(3).upper()
    system = vocab.TELECOM_SYSTEM.get(equip)
    if equip in ("INTERNET", "X.400"):
        value = rep.c(4) or rep.c(1)
    else:
        value = rep.c(12)
        if not value and (rep.c(6) or rep.c(7)):
            cc, area, local, ext = rep.c(5), rep.c(6), rep.c(7), rep.c(8)
            value = " ".join(x for x in (f"+{cc}" if cc else "", f"({area})" if area else "", local) if x)
            if ext:
                value += f" ext. {ext}"
        if not value:
            value = rep.c(1)
        if not value and rep.c(4):
            value, system = rep.c(4), "email"
    if not value:
        return None
    out: dict[str, Any] = {"system": system or ("email" if "@" in value else "phone"), "value": value}
    use = vocab.TELECOM_USE.get(rep.c(2).upper()) or default_use
    if equip == "CP" and not rep.c(2):
        use = "mobile"
    if use:
        out["use"] = use
    return out


_WS = re.compile(r"\s+")


def _code(value: str) -> str:
    """FHIR ``code``: no leading/trailing or repeated internal whitespace."""
    return _WS.sub(" ", value).strip()


# ---- codes -----------------------------------------------------------------------------------------------------
def code_system_uri(name: str, ctx: Context | None = None) -> str | None:
    if not name:
        return None
    if ctx is not None and name in ctx.config.code_systems:
        return ctx.config.code_systems[name]
    up = name.upper()
    uri = vocab.CODE_SYSTEMS.get(up)
    if uri:
        return uri
    if up.startswith("HL7") and (up[3:].isascii() and up[3:].isdigit()):
        return vocab.v2_table(up[3:])
    if (up in ("L", "LOCAL") or up.startswith("99")) and ctx is not None and ctx.sender:
        # Local code systems mean nothing outside the sender: scope them like unqualified identifiers.
        return f"{ctx.unqualified_system() or 'urn:id:local'}.{_urn_part(name)}"
    if ":" in name and not _WS.search(name):
        return name
    return "urn:id:" + _urn_part(name)


def coding(code: str, display: str, system_name: str, ctx: Context | None, table: str | None) -> dict[str, Any] | None:
    if not (code or display):
        return None
    out: dict[str, Any] = {}
    system = code_system_uri(system_name, ctx) if system_name else (vocab.v2_table(table) if table else None)
    if system:
        out["system"] = system
    code = _code(code)
    if code:
        out["code"] = code
    if display:
        out["display"] = display
    return out if code else None


def cwe(rep: Repetition, ctx: Context | None = None, table: str | None = None) -> dict[str, Any] | None:
    """CE/CWE/CNE -> CodeableConcept: triplets 1-3, 4-6, 10-12 -> coding[]; CWE.9 (else the first display) -> text."""
    if not rep:
        return None
    v = rep.values(13)
    codings = []
    for c, d, s, ver in ((0, 1, 2, 6), (3, 4, 5, 7), (9, 10, 11, 12)):
        cd = coding(v[c], v[d], v[s], ctx, table if c == 0 else None)
        if cd:
            if v[ver] and c != 9:
                cd["version"] = v[ver]
            codings.append(cd)
    text = v[8]
    if not codings:
        # Text-only (code missing but display/text sent): keep it as text rather than drop it.
        text = text or v[1]
        return {"text": text} if text else None
    out: dict[str, Any] = {"coding": codings}
    if text:
        out["text"] = text
    return out


# ---- quantities ------------------------------------------------------------------------------------------------
def unit_of(rep: Repetition, ctx: Context | None) -> dict[str, Any]:
    """OBX-6 / CQ units (CWE) -> Quantity unit/system/code fields."""
    code, text, sysname = rep.c(1), rep.c(2), rep.c(3)
    out: dict[str, Any] = {}
    if code or text:
        out["unit"] = text or code
    if code and sysname:
        system = code_system_uri(sysname, ctx)
        if sysname.upper() in ("ISO+", "ANS+", "ISO"):
            system = "http://unitsofmeasure.org"
        if system:
            out["system"] = system
            out["code"] = _code(code)
    return out


def quantity(value: str, unit: Repetition | None, ctx: Context | None) -> dict[str, Any] | None:
    num = decimal(value)
    if num is None:
        return None
    out: dict[str, Any] = {"value": num}
    if unit is not None:
        out.update(unit_of(unit, ctx))
    return out


def sn(rep: Repetition, unit: Repetition | None, ctx: Context | None) -> tuple[str, Any] | None:
    """SN (comparator^num1^separator^num2) -> ("valueQuantity"|"valueRatio"|"valueRange"|"valueString", value)."""
    comp, n1, sep, n2 = rep.c(1), rep.c(2), rep.c(3), rep.c(4)
    u = unit_of(unit, ctx) if unit is not None else {}
    a, b = decimal(n1), decimal(n2)
    if not sep and a is not None:
        q: dict[str, Any] = {"value": a, **u}
        if comp in ("<", ">", "<=", ">="):
            q["comparator"] = comp
        elif comp in ("<>", "="):
            pass
        return "valueQuantity", q
    if sep in (":", "/") and a is not None and b is not None:
        return "valueRatio", {"numerator": {"value": a}, "denominator": {"value": b}}
    if sep in ("-",) and a is not None and b is not None:
        return "valueRange", {"low": {"value": a, **u}, "high": {"value": b, **u}}
    text = "".join(x for x in (comp, n1, sep, n2))
    return ("valueString", text) if text else None


# ---- people, places, organisations -----------------------------------------------------------------------------
def xcn(rep: Repetition, ctx: Context) -> dict[str, Any] | None:
    """XCN -> Practitioner (conditional on XCN.1 + XCN.9 authority) and a Reference to it.

    Without an id number, no resource is created (it could never be matched again): the Reference carries the
    name as display only.
    """
    name = xpn(rep, offset=1)
    if rep.c(7):
        name = name or {}
        name.setdefault("suffix", []).append(rep.c(7))
    display = _display(name) if name else ""
    idv = rep.c(1)
    if not idv:
        return {"display": display} if display else None
    system = ctx.authority_system(rep.c(9, 1), rep.c(9, 2), rep.c(9, 3))
    id_type = rep.c(13)
    if system is None and id_type.upper() == "NPI":
        system = vocab.CODE_SYSTEMS["NPI"]
    if system is None:
        system = ctx.unqualified_system()
    ident: dict[str, Any] = {"system": system, "value": idv} if system else {"value": idv}
    if id_type:
        ident["type"] = {"coding": [{"system": vocab.v2_table("0203"), "code": id_type}]}
    res: dict[str, Any] = {"resourceType": "Practitioner"}
    if name:
        res["name"] = [name]
    ref = ctx.upsert(res, ident, owned=False)
    out = {"reference": ref}
    if display:
        out["display"] = display
    return out


def _display(name: dict[str, Any]) -> str:
    parts = list(name.get("prefix", [])) + list(name.get("given", [])) + [name.get("family", "")]
    return " ".join(p for p in parts if p)


_PHYSICAL = (
    (3, "bd", "Bed"),
    (2, "ro", "Room"),
    (1, "wa", "Ward"),
)


def pl(rep: Repetition, ctx: Context) -> dict[str, Any] | None:
    """PL -> Location (the most specific part sent: bed, else room, else point of care) and a Reference.

    Identified by a derived key over facility + point of care + room + bed, so every message naming the same bed
    reaches the same Location.
    """
    poc, room, bed = rep.c(1), rep.c(2), rep.c(3)
    facility = rep.c(4, 1) or rep.c(4, 2)
    building, floor, desc = rep.c(7), rep.c(8), rep.c(9)
    parts = [p for p in (poc, room, bed) if p]
    if not parts and not desc and not facility:
        return None
    name = desc or " ".join(parts) or facility
    res: dict[str, Any] = {"resourceType": "Location", "status": "active", "name": name, "mode": "instance"}
    for n, code, disp in _PHYSICAL:
        if rep.c(n):
            res["physicalType"] = {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/location-physical-type",
                        "code": code,
                        "display": disp,
                    }
                ]
            }
            break
    else:
        if building:
            res["physicalType"] = {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/location-physical-type",
                        "code": "bu",
                        "display": "Building",
                    }
                ]
            }
    if rep.c(6):
        res["operationalStatus"] = {"system": vocab.v2_table("0116"), "code": rep.c(6)}
    desc_parts = [x for x in (facility, building, floor, poc, room, bed) if x]
    if desc_parts:
        res["description"] = " / ".join(desc_parts)
    key = ctx.derived_identifier("Location", facility, building, floor, poc, room, bed, "" if parts else desc)
    ref = ctx.upsert(res, key, owned=False)
    return {"reference": ref, "display": name}


def organization(name: str, ident: dict[str, Any] | None, ctx: Context, **extra: Any) -> dict[str, Any] | None:
    """An Organization by identifier (conditional create) or, without one, a display-only Reference."""
    if not name and not ident:
        return None
    if not ident:
        return {"display": name}
    res: dict[str, Any] = {"resourceType": "Organization", "active": True}
    if name:
        res["name"] = name
    res.update({k: v for k, v in extra.items() if v})
    ref = ctx.upsert(res, ident, owned=False)
    return {"reference": ref, "display": name} if name else {"reference": ref}


def xon(rep: Repetition, ctx: Context) -> dict[str, Any] | None:
    """XON -> Organization: XON.1 name; XON.10 (2.5+) or XON.3 id, XON.6 assigning authority."""
    name = rep.c(1)
    idv = rep.c(10) or rep.c(3)
    ident = None
    if idv:
        system = ctx.authority_system(rep.c(6, 1), rep.c(6, 2), rep.c(6, 3)) or ctx.unqualified_system()
        ident = {"system": system, "value": idv} if system else {"value": idv}
    return organization(name, ident, ctx)


def ed(rep: Repetition) -> dict[str, Any] | None:
    """ED (source^type^subtype^encoding^data) -> Attachment."""
    data = rep.c(5)
    if not data:
        return None
    tp, sub, enc = rep.c(2).upper(), rep.c(3), rep.c(4).upper()
    ctype = _content_type(tp, sub)
    out: dict[str, Any] = {"contentType": ctype}
    if enc in ("BASE64", "B64"):
        out["data"] = data.replace("\n", "").replace(" ", "")
    else:
        import base64

        raw = bytes.fromhex(data) if enc == "HEX" and _is_hex(data) else data.encode("utf-8")
        out["data"] = base64.b64encode(raw).decode("ascii")
    return out


def _is_hex(v: str) -> bool:
    return len(v) % 2 == 0 and all(c in "0123456789abcdefABCDEF" for c in v)


_SUBTYPES = {
    "PDF": "application/pdf",
    "RTF": "application/rtf",
    "HTML": "text/html",
    "XML": "text/xml",
    "JPEG": "image/jpeg",
    "JPG": "image/jpeg",
    "PNG": "image/png",
    "GIF": "image/gif",
    "TIFF": "image/tiff",
    "OCTET-STREAM": "application/octet-stream",
    "PLAIN": "text/plain",
}


def _content_type(tp: str, sub: str) -> str:
    if "/" in sub and not _WS.search(sub.strip()):
        return sub.strip()
    mt = _SUBTYPES.get(sub.upper())
    if mt:
        return mt
    if tp == "TEXT" or tp == "TX":
        return "text/plain"
    if tp == "IM":
        return "image/" + (sub.lower() or "jpeg")
    return "application/octet-stream"
