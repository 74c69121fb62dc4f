"""The SearchParameter registry: the official FHIR R4 search parameters, resolved per resource type.

Loaded once from the vendored ``profiles/search-parameters.json`` (see profiles/README.md). Official definitions
often share one SearchParameter between many base types with a union expression
(``Patient.name | Practitioner.name``); the registry splits it so each resource type gets a ``SearchParamDef``
whose expression only contains the branches that start at that type. ``Resource``/``DomainResource`` level
parameters (``_tag``, ``_profile`` ...) are copied to every concrete type with the head rewritten
(``Resource.meta.tag`` -> ``Patient.meta.tag``), so every expression can be evaluated against the resource itself.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from app.fhir.query import SearchParamDef

DEFAULT_PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"
SEARCH_PARAMETERS_FILE = "search-parameters.json"
PATIENT_COMPARTMENT_FILE = "compartmentdefinition-patient.json"

# Resources that are not DomainResources (DomainResource-level params do not apply to them).
_NOT_DOMAIN_RESOURCES = frozenset({"Bundle", "Binary", "Parameters"})
_ABSTRACT_BASES = ("Resource", "DomainResource")


# ---------------------------------------------------------------- expression splitting


def split_union(expression: str) -> list[str]:
    """Split a FHIRPath expression on the top-level ``|`` (not inside parentheses or string literals)."""
    parts: list[str] = []
    depth = 0
    start = 0
    i = 0
    n = len(expression)
    while i < n:
        c = expression[i]
        if c == "'":
            i += 1
            while i < n and expression[i] != "'":
                i += 2 if expression[i] == "\\" else 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
        i += 1
    parts.append(expression[start:].strip())
    return [p for p in parts if p]


_HEAD = re.compile(r"^[\s(]*([A-Za-z_][A-Za-z0-9_]*)")


def expression_head(part: str) -> str | None:
    """The first identifier of one union branch: ``(Observation.value as Quantity)`` -> ``Observation``."""
    m = _HEAD.match(part)
    return m.group(1) if m else None


def _rebase(part: str, new_head: str) -> str:
    m = _HEAD.match(part)
    assert m is not None
    return part[: m.start(1)] + new_head + part[m.end(1) :]


_RESOLVE_IS = re.compile(r"resolve\(\)\s+is\s+([A-Z][A-Za-z]*)")
_MULTI_DESC = re.compile(r"^\*\s*([A-Za-z]+):\s*(.*)$")


def _descriptions_by_type(description: str) -> dict[str, str]:
    """``Multiple Resources:`` descriptions list one line per base type; pick each type's own line."""
    if not description.startswith("Multiple Resources"):
        return {}
    out: dict[str, str] = {}
    for line in description.splitlines():
        m = _MULTI_DESC.match(line.strip())
        if m:
            out[m.group(1)] = m.group(2).strip()
    return out


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class CompositeComponent:
    """One component of a composite search parameter: the component's parameter and its relative expression."""

    param: SearchParamDef
    expression: str


def _r4b_resource_types(candidates: Iterable[str]) -> frozenset[str]:
    """The R4 resource types that ``fhir.resources.R4B`` has a model for.

    Every candidate comes from the R4 definitions, so it is a resource; checking that R4B declares the model type
    is enough and avoids importing ~130 model modules at start-up (tests pin ``get_fhir_model_class`` agreement).
    """
    from fhir.resources.R4B import fhirtypes

    return frozenset(name for name in candidates if hasattr(fhirtypes, name + "Type"))


class SearchParamRegistry:
    """Search parameters per resource type, built from a Bundle of SearchParameter resources."""

    def __init__(self, search_parameters: Mapping[str, Any], resource_types: Iterable[str]) -> None:
        self.resource_types: frozenset[str] = frozenset(resource_types)
        self._by_type: dict[str, dict[str, SearchParamDef]] = {t: {} for t in sorted(self.resource_types)}
        self._by_url: dict[str, Mapping[str, Any]] = {}
        self._components: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
        for entry in search_parameters.get("entry", ()):
            sp = entry["resource"]
            self._by_url[sp["url"]] = sp
            self._add(sp)
        self._frozen = {t: MappingProxyType(params) for t, params in self._by_type.items()}

    # ---- construction

    def _add(self, sp: Mapping[str, Any]) -> None:
        bases: list[str] = list(sp.get("base", ()))
        concrete: list[str] = []
        for base in bases:
            if base == "Resource":
                concrete.extend(sorted(self.resource_types))
            elif base == "DomainResource":
                concrete.extend(t for t in sorted(self.resource_types) if t not in _NOT_DOMAIN_RESOURCES)
            elif base in self.resource_types:
                concrete.append(base)
        if not concrete:
            return
        expression: str | None = sp.get("expression")
        parts = split_union(expression) if expression else []
        per_type_desc = _descriptions_by_type(sp.get("description", ""))
        for rtype in concrete:
            type_parts = self._parts_for(rtype, parts, bases)
            type_expr = " | ".join(type_parts) if type_parts else None
            targets = tuple(sp.get("target", ()))
            restricted = [_RESOLVE_IS.findall(p) for p in type_parts]
            if type_parts and all(restricted):
                # every branch is `.where(resolve() is X)`: the param can only point at those types
                targets = tuple(dict.fromkeys(t for ts in restricted for t in ts))
            desc = per_type_desc.get(rtype) or sp.get("description", "")
            self._by_type[rtype][sp["code"]] = SearchParamDef(
                code=sp["code"],
                type=sp["type"],
                expression=type_expr,
                targets=targets,
                url=sp["url"],
                description=desc,
            )
            if sp.get("component"):
                self._components[(rtype, sp["code"])] = tuple(
                    (c["definition"], c["expression"]) for c in sp["component"]
                )

    @staticmethod
    def _parts_for(rtype: str, parts: list[str], bases: list[str]) -> list[str]:
        out = []
        for part in parts:
            head = expression_head(part)
            if head == rtype:
                out.append(part)
            elif head in _ABSTRACT_BASES and head in bases:
                out.append(_rebase(part, rtype))
            elif head is not None and head[0].islower() and len(bases) == 1:
                # relative path (``name | alias`` on InsurancePlan): evaluated against the resource itself
                out.append(part)
        return out

    # ---- queries

    def params_for(self, resource_type: str) -> Mapping[str, SearchParamDef]:
        """Every search parameter of ``resource_type`` by code (empty for an unknown type)."""
        return self._frozen.get(resource_type, MappingProxyType({}))

    def get(self, resource_type: str, code: str) -> SearchParamDef | None:
        params = self._by_type.get(resource_type)
        return params.get(code) if params is not None else None

    def composite_components(self, resource_type: str, code: str) -> tuple[CompositeComponent, ...]:
        """The components of a composite parameter, each with its own (type-resolved) parameter definition."""
        out = []
        for url, expr in self._components.get((resource_type, code), ()):
            sp = self._by_url.get(url)
            if sp is None:
                continue
            param = self.get(resource_type, sp["code"])
            if param is None or param.url != url:
                continue
            out.append(CompositeComponent(param=param, expression=expr))
        return tuple(out)

    def by_url(self, resource_type: str, url: str) -> SearchParamDef | None:
        sp = self._by_url.get(url)
        if sp is None:
            return None
        param = self.get(resource_type, sp["code"])
        return param if param is not None and param.url == url else None


def load_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@functools.cache
def default_registry(profiles_dir: Path | None = None) -> SearchParamRegistry:
    """The registry over the vendored R4 definitions (cached per directory)."""
    base = Path(profiles_dir) if profiles_dir is not None else DEFAULT_PROFILES_DIR
    search_parameters = load_json(base / SEARCH_PARAMETERS_FILE)
    # The Patient CompartmentDefinition enumerates every R4 resource type, including those without a
    # search parameter of their own (Binary, OperationOutcome ...).
    compartment = load_json(base / PATIENT_COMPARTMENT_FILE)
    candidates = {r["code"] for r in compartment.get("resource", ())}
    candidates |= {b for e in search_parameters["entry"] for b in e["resource"].get("base", ())}
    candidates -= set(_ABSTRACT_BASES)
    return SearchParamRegistry(search_parameters, _r4b_resource_types(candidates))
