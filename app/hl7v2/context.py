"""Per-message translation state: the transaction Bundle being built, identity rules and collected warnings.

Identity is expressed in the Bundle itself. Every resource with a business identifier becomes a conditional update
``PUT Type?identifier=system|value`` (or, for data a message type does not own, a conditional create
``POST`` + ``ifNoneExist``) with ``fullUrl = urn:uuid:uuid5(ns, "Type|system|value")``, so the same identifier
always yields the same fullUrl, a resend or an A08 updates instead of duplicating, and intra-Bundle references
use those urn:uuids (the store's transaction processor rewrites them). Resources the standard gives no identifier
(Observation, Condition, AllergyIntolerance ...) get a *derived* identifier: system ``urn:ietf:rfc:3986`` and a
``urn:uuid`` computed from their natural key (e.g. filler order number + OBX-3 + OBX-4).
"""

from __future__ import annotations

import re
import uuid
from functools import lru_cache
from typing import Any
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from app.hl7v2.config import Hl7Config
from app.hl7v2.errors import Hl7Warning, Location
from app.hl7v2.parser import Message, Segment

DERIVED_SYSTEM = "urn:ietf:rfc:3986"
# Types where a key collision inside one message means the sender reused an id (e.g. OBX-21 twice).
_ONE_PER_SEGMENT = frozenset({"Observation", "ChargeItem", "Immunization", "Appointment", "DocumentReference"})


_URL_SAFE = re.compile(r"^[A-Za-z0-9:/._~@!*'()-]*$")


def _fhir_escape(value: str) -> str:
    """Escape a token part for a FHIR search URL: backslash-escape \\ | , $ then percent-encode."""
    if _URL_SAFE.match(value):
        return value
    out = value.replace("\\", "\\\\").replace("|", "\\|").replace(",", "\\,").replace("$", "\\$")
    return quote(out, safe=":/.-_~@!*'()")


def identifier_query(system: str | None, value: str) -> str:
    return f"identifier={_fhir_escape(system)}|{_fhir_escape(value)}" if system else f"identifier={_fhir_escape(value)}"


class Context:
    def __init__(self, msg: Message, config: Hl7Config, *, code: str, trigger: str, sender: str) -> None:
        self.msg = msg
        self.config = config
        self.code = code
        self.trigger = trigger
        self.sender = sender  # scope for identifiers that name no assigning authority
        facility = msg.get("MSH-4.1")
        app = msg.get("MSH-3.1")
        zone_name = config.zone_for(facility, app)
        try:
            self.zone: ZoneInfo = ZoneInfo(zone_name)
        except (ZoneInfoNotFoundError, ValueError):
            self.zone = ZoneInfo("UTC")
        self.warnings: list[Hl7Warning] = []
        self._entries: dict[str, dict[str, Any]] = {}
        self.patient_ref: str | None = None
        self.patient_key: str = ""  # "system|value" of the Patient key identifier, for derived keys
        self.account_ref: str | None = None
        self.encounter_ref: str | None = None
        # Which resources this message type is the source of truth for; others are created only when absent, so a
        # thin PID in an ORU never wipes richer ADT demographics (snapshot semantics of PUT).
        self.owns: set[str] = set()
        self._anon = 0

    # ---- warnings -------------------------------------------------------------------------------------------
    def warn(self, message: str, seg: Segment | None = None, field: int = 0, component: int = 0) -> None:
        loc = Location(seg.name, seg.sequence, field, 0, component) if seg is not None else Location()
        self.warnings.append(Hl7Warning(message, location=loc))

    # ---- identity -------------------------------------------------------------------------------------------
    def uuid_for(self, *parts: str) -> str:
        return _uuid5(self.config.namespace, "|".join(parts))

    def derived_identifier(self, rtype: str, *parts: str) -> dict[str, str]:
        """A stable business identifier built from natural-key parts, for resources v2 gives no id."""
        return {"system": DERIVED_SYSTEM, "value": "urn:uuid:" + self.uuid_for("key", rtype, *parts)}

    def upsert(
        self,
        resource: dict[str, Any],
        identifier: dict[str, Any] | None,
        *,
        owned: bool | None = None,
    ) -> str:
        """Add (or merge into) a Bundle entry keyed by ``identifier``; returns the fullUrl to reference it by.

        ``owned`` False -> conditional create (POST + ifNoneExist), True -> conditional update (PUT). Default: PUT
        when this message type owns the resource type. Without an identifier the entry is a plain POST with a
        fullUrl derived from the message control id and position (stable within one message only).
        """
        rtype = resource["resourceType"]
        if owned is None:
            owned = rtype in self.owns or "*" in self.owns
        if identifier and identifier.get("value"):
            system = identifier.get("system")
            value = identifier["value"]
            full_url = "urn:uuid:" + self.uuid_for(rtype, system or "", value)
            query = identifier_query(system, value)
            ids = resource.setdefault("identifier", [])
            if isinstance(ids, list) and not any(
                i.get("value") == value and i.get("system") == system for i in ids if isinstance(i, dict)
            ):
                ids.insert(0, {k: v for k, v in identifier.items() if k in ("system", "value", "type", "use")})
            if owned:
                request = {"method": "PUT", "url": f"{rtype}?{query}"}
            else:
                request = {"method": "POST", "url": rtype, "ifNoneExist": query}
        else:
            self._anon += 1
            full_url = "urn:uuid:" + self.uuid_for("anon", self.msg.get("MSH-10"), rtype, str(self._anon))
            request = {"method": "POST", "url": rtype}
        existing = self._entries.get(full_url)
        if existing is not None:
            if rtype in _ONE_PER_SEGMENT and existing["resource"] != resource:
                self.warn(f"two segments map to the same {rtype} ({request['method']} key {full_url}); merged")
            _merge(existing["resource"], resource)
            if request["method"] == "PUT":
                existing["request"] = request
            return full_url
        self._entries[full_url] = {"fullUrl": full_url, "resource": resource, "request": request}
        return full_url

    def resource(self, full_url: str) -> dict[str, Any]:
        return self._entries[full_url]["resource"]

    def entries(self) -> list[dict[str, Any]]:
        return list(self._entries.values())

    # ---- systems --------------------------------------------------------------------------------------------
    def authority_system(self, namespace: str, universal_id: str = "", id_type: str = "") -> str | None:
        """Identifier.system for an assigning authority (HD): configured map, then OID/UUID/URI, then urn:id."""
        amap = self.config.authority_systems
        for key in (namespace, universal_id):
            if key and key in amap:
                return amap[key]
        t = id_type.upper()
        if universal_id:
            if t == "ISO" or (not t and _looks_like_oid(universal_id)):
                if _looks_like_oid(universal_id):
                    return f"urn:oid:{universal_id}"
            if t in ("UUID", "GUID"):
                return f"urn:uuid:{universal_id.lower()}"
            if t in ("URI", "URL") and ":" in universal_id and not re.search(r"\s", universal_id):
                return universal_id
        if namespace:
            return "urn:id:" + _urn_part(namespace)
        if universal_id:
            return "urn:id:" + _urn_part(universal_id)
        return None

    def unqualified_system(self) -> str | None:
        if self.config.scope_unqualified_identifiers and self.sender:
            return "urn:id:" + _urn_part(self.sender)
        return None


_URN_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@lru_cache(maxsize=65536)
def _uuid5(namespace: uuid.UUID, name: str) -> str:
    """uuid5, cached: feeds repeat the same practitioners, locations and patients constantly."""
    return str(uuid.uuid5(namespace, name))


def _urn_part(name: str) -> str:
    """A readable, URL-safe urn:id segment: keep letters, digits and .-_ ; anything else becomes '_'."""
    return _URN_UNSAFE.sub("_", name.strip()) or "_"


def _looks_like_oid(value: str) -> bool:
    parts = value.split(".")
    return len(parts) >= 2 and all(p.isascii() and p.isdigit() for p in parts) and value[0] in "012"


_CHOICE = re.compile(r"^_?([a-z]+)[A-Z]")


def _merge(into: dict[str, Any], new: dict[str, Any]) -> None:
    """Merge a second mention of the same resource in one message: fill gaps, extend lists without duplicates.

    A choice element (value[x], effective[x], deceased[x] ...) is never filled in a second form: a resource may
    carry only one of them.
    """
    bases = {m.group(1) for m in map(_CHOICE.match, into) if m}
    for k, v in new.items():
        m = _CHOICE.match(k)
        if m and m.group(1) in bases and k not in into:
            continue
        if k not in into or into[k] in (None, "", [], {}):
            into[k] = v
        elif isinstance(v, list) and isinstance(into[k], list):
            for item in v:
                if item not in into[k]:
                    into[k].append(item)
