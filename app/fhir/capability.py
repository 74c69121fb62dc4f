"""The CapabilityStatement, generated from what the server actually supports so it cannot drift from the code.

Resource types come from the search-parameter registry (every R4 type the R4B models can represent), search
parameters from the same registry the parser uses (only the types the parser accepts are advertised), and
_include/_revinclude targets from the reference parameters' targets. http://hl7.org/fhir/R4/capabilitystatement.html
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from app.fhir.model import resource_types as representable_types
from app.fhir.query import SearchParamDef
from app.fhir.search import is_supported

FHIR_VERSION = "4.0.1"
TYPE_INTERACTIONS: tuple[str, ...] = (
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)
SYSTEM_INTERACTIONS: tuple[str, ...] = ("transaction", "batch", "search-system", "history-system")
FORMATS: tuple[str, ...] = ("application/fhir+json", "json")
PATCH_FORMATS: tuple[str, ...] = ("application/json-patch+json",)
_ALL_TYPE_INTERACTIONS = frozenset(TYPE_INTERACTIONS)
_ALL_SYSTEM_INTERACTIONS = frozenset(SYSTEM_INTERACTIONS)


class ParamRegistry(Protocol):
    """What the generator needs from app.fhir.registry.SearchParamRegistry."""

    @property
    def resource_types(self) -> frozenset[str]: ...

    def params_for(self, resource_type: str) -> Mapping[str, SearchParamDef]: ...


def _search_params(params: Mapping[str, SearchParamDef]) -> list[dict[str, Any]]:
    out = []
    for code in sorted(params):
        p = params[code]
        if not is_supported(p):
            continue  # composite/special/unindexable: the parser rejects them, so they are not advertised
        entry: dict[str, Any] = {"name": code}
        if p.url:
            entry["definition"] = p.url
        entry["type"] = p.type
        if p.description:
            entry["documentation"] = p.description
        out.append(entry)
    return out


def _reference_params(
    registry: ParamRegistry, types: Sequence[str]
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(type -> its _include values, type -> _revinclude values pointing at it)."""
    includes: dict[str, list[str]] = {t: [] for t in types}
    revincludes: dict[str, list[str]] = {t: [] for t in types}
    wanted = set(types)
    for source in types:
        params = registry.params_for(source)
        for code in sorted(params):
            p = params[code]
            if p.type != "reference":
                continue
            includes[source].append(f"{source}:{code}")
            for target in p.targets:
                if target in wanted:
                    revincludes[target].append(f"{source}:{code}")
    return includes, revincludes


def capability_statement(
    registry: ParamRegistry,
    *,
    base_url: str,
    software_version: str,
    interactions: Iterable[str] = TYPE_INTERACTIONS,
    system_interactions: Iterable[str] = SYSTEM_INTERACTIONS,
    resource_types: Iterable[str] | None = None,
    software_name: str = "Interlace",
    description: str = "Interlace FHIR R4 facade",
    publisher: str | None = None,
    security: Mapping[str, Any] | None = None,
    operations: Sequence[Mapping[str, Any]] = (),
    resource_operations: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    conditional_create: bool = True,
    conditional_update: bool = True,
    conditional_delete: str = "single",
    date: datetime | None = None,
) -> dict[str, Any]:
    """A CapabilityStatement (kind ``instance``) for the server at ``base_url``.

    ``interactions`` are the type/instance interactions offered on every type; ``security`` (the SMART block:
    ``service``, ``extension`` with the oauth-uris ...) is copied into ``rest[0].security``; ``operations`` are
    system-level and ``resource_operations`` per type (``{"name": "validate", "definition": "..."}``).
    """
    type_interactions = [i for i in TYPE_INTERACTIONS if i in set(interactions)]
    unknown = set(interactions) - _ALL_TYPE_INTERACTIONS
    if unknown:
        raise ValueError(f"unknown type interactions: {', '.join(sorted(unknown))}")
    sys_interactions = [i for i in SYSTEM_INTERACTIONS if i in set(system_interactions)]
    unknown = set(system_interactions) - _ALL_SYSTEM_INTERACTIONS
    if unknown:
        raise ValueError(f"unknown system interactions: {', '.join(sorted(unknown))}")

    candidates = set(resource_types) if resource_types is not None else set(registry.resource_types)
    types = sorted(candidates & representable_types())
    includes, revincludes = _reference_params(registry, types)
    searchable = "search-type" in type_interactions
    by_type_ops = resource_operations or {}

    resources: list[dict[str, Any]] = []
    for t in types:
        entry: dict[str, Any] = {
            "type": t,
            "profile": f"http://hl7.org/fhir/StructureDefinition/{t}",
            "interaction": [{"code": i} for i in type_interactions],
            "versioning": "versioned-update",
            "readHistory": "vread" in type_interactions or "history-instance" in type_interactions,
            "updateCreate": "update" in type_interactions,
            "conditionalCreate": conditional_create and "create" in type_interactions,
            "conditionalRead": "not-supported",
            "conditionalUpdate": conditional_update and "update" in type_interactions,
            "conditionalDelete": conditional_delete if "delete" in type_interactions else "not-supported",
        }
        if searchable:
            entry["searchInclude"] = ["*", *includes[t]]
            if revincludes[t]:
                entry["searchRevInclude"] = revincludes[t]
            params = _search_params(registry.params_for(t))
            if params:
                entry["searchParam"] = params
        if by_type_ops.get(t):
            entry["operation"] = [dict(o) for o in by_type_ops[t]]
        resources.append(entry)

    rest: dict[str, Any] = {"mode": "server"}
    if security:
        rest["security"] = dict(security)
    rest["resource"] = resources
    if sys_interactions:
        rest["interaction"] = [{"code": i} for i in sys_interactions]
    if "search-system" in sys_interactions and types:
        common = _common_params(registry, types)
        if common:
            rest["searchParam"] = common
    if operations:
        rest["operation"] = [dict(o) for o in operations]

    when = (date or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    statement: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": when,
        "kind": "instance",
        "software": {"name": software_name, "version": software_version},
        "implementation": {"description": description, "url": base_url.rstrip("/")},
        "fhirVersion": FHIR_VERSION,
        "format": list(FORMATS),
        "patchFormat": list(PATCH_FORMATS),
        "rest": [rest],
    }
    if publisher:
        statement["publisher"] = publisher
    return statement


def _common_params(registry: ParamRegistry, types: Sequence[str]) -> list[dict[str, Any]]:
    """Parameters defined (with one type) on every resource type: those a system-level search accepts."""
    first = registry.params_for(types[0])
    common: dict[str, SearchParamDef] = {}
    for code, p in first.items():
        if all((q := registry.params_for(t).get(code)) is not None and q.type == p.type for t in types[1:]):
            common[code] = p
    return _search_params(common)
