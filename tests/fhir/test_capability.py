"""CapabilityStatement generation (app.fhir.capability)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import pytest

from app.fhir.capability import SYSTEM_INTERACTIONS, TYPE_INTERACTIONS, capability_statement
from app.fhir.model import parse_resource
from app.fhir.query import SearchParamDef
from app.fhir.registry import default_registry
from app.fhir.search import parse_search

BASE = "https://fhir.example.org/fhir"


def _p(code: str, ptype: str, targets: tuple[str, ...] = (), expression: str | None = "x") -> SearchParamDef:
    return SearchParamDef(code, ptype, expression, targets, f"http://example.org/sp/{code}", f"doc of {code}")  # type: ignore[arg-type]


class StubRegistry:
    def __init__(self) -> None:
        common = [_p("_id", "token"), _p("_lastUpdated", "date"), _p("_text", "string", expression=None)]
        own = {
            "Patient": [_p("name", "string"), _p("organization", "reference", ("Organization",))],
            "Organization": [_p("name", "string")],
            "Observation": [
                _p("subject", "reference", ("Patient", "Group")),
                _p("code-value-quantity", "composite"),
            ],
            "MedicinalProduct": [_p("name", "string")],  # R4 only: R4B cannot represent it
        }
        self._params = {t: {p.code: p for p in [*common, *ps]} for t, ps in own.items()}
        self.resource_types = frozenset(self._params)

    def params_for(self, resource_type: str) -> Mapping[str, SearchParamDef]:
        return self._params.get(resource_type, {})


def statement(**kw: Any) -> dict[str, Any]:
    kw.setdefault("base_url", BASE + "/")
    kw.setdefault("software_version", "1.2.3")
    return capability_statement(StubRegistry(), **kw)


def by_type(cs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["type"]: r for r in cs["rest"][0]["resource"]}


def test_statement_header() -> None:
    cs = statement(date=datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert cs["resourceType"] == "CapabilityStatement"
    assert (cs["status"], cs["kind"], cs["fhirVersion"]) == ("active", "instance", "4.0.1")
    assert cs["date"] == "2024-01-02T03:04:05Z"
    assert cs["format"] == ["application/fhir+json", "json"]
    assert cs["patchFormat"] == ["application/json-patch+json"]
    assert cs["software"] == {"name": "Interlace", "version": "1.2.3"}
    assert cs["implementation"]["url"] == BASE
    assert parse_resource(cs) is cs


def test_only_types_r4b_can_represent_are_listed() -> None:
    assert sorted(by_type(statement())) == ["Observation", "Organization", "Patient"]


def test_type_entries_declare_interactions_and_flags() -> None:
    patient = by_type(statement())["Patient"]
    assert [i["code"] for i in patient["interaction"]] == list(TYPE_INTERACTIONS)
    assert patient["versioning"] == "versioned-update"
    assert patient["readHistory"] is True and patient["updateCreate"] is True
    assert patient["conditionalCreate"] is True and patient["conditionalUpdate"] is True
    assert patient["conditionalDelete"] == "single"
    assert patient["profile"] == "http://hl7.org/fhir/StructureDefinition/Patient"


def test_search_params_are_the_supported_indexed_ones() -> None:
    types = by_type(statement())
    assert [p["name"] for p in types["Patient"]["searchParam"]] == ["_id", "_lastUpdated", "name", "organization"]
    assert [p["name"] for p in types["Observation"]["searchParam"]] == ["_id", "_lastUpdated", "subject"]
    name = types["Patient"]["searchParam"][2]
    assert name == {
        "name": "name",
        "definition": "http://example.org/sp/name",
        "type": "string",
        "documentation": "doc of name",
    }


def test_include_and_revinclude_follow_reference_targets() -> None:
    types = by_type(statement())
    assert types["Patient"]["searchInclude"] == ["*", "Patient:organization"]
    assert types["Patient"]["searchRevInclude"] == ["Observation:subject"]
    assert types["Organization"]["searchRevInclude"] == ["Patient:organization"]
    assert "searchRevInclude" not in types["Observation"]


def test_system_interactions_and_common_search_params() -> None:
    rest = statement()["rest"][0]
    assert [i["code"] for i in rest["interaction"]] == list(SYSTEM_INTERACTIONS)
    assert [p["name"] for p in rest["searchParam"]] == ["_id", "_lastUpdated"]


def test_security_hook_and_operations_are_copied() -> None:
    security = {"cors": True, "service": [{"text": "SMART-on-FHIR"}]}
    cs = statement(
        security=security,
        operations=[{"name": "export", "definition": "http://example.org/OperationDefinition/export"}],
        resource_operations={"Patient": [{"name": "everything", "definition": "http://x/OperationDefinition/e"}]},
    )
    rest = cs["rest"][0]
    assert rest["security"] == security
    assert rest["operation"][0]["name"] == "export"
    assert by_type(cs)["Patient"]["operation"][0]["name"] == "everything"
    assert "operation" not in by_type(cs)["Organization"]


def test_fewer_interactions_change_the_flags() -> None:
    cs = statement(interactions=["read", "vread", "create"], system_interactions=["batch"])
    patient = by_type(cs)["Patient"]
    assert [i["code"] for i in patient["interaction"]] == ["read", "vread", "create"]
    assert patient["conditionalDelete"] == "not-supported" and patient["updateCreate"] is False
    assert "searchParam" not in patient and "searchInclude" not in patient
    assert "searchParam" not in cs["rest"][0]


def test_unknown_interaction_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="transmogrify"):
        statement(interactions=["read", "transmogrify"])


def test_explicit_resource_types_narrow_the_list() -> None:
    assert list(by_type(statement(resource_types=["Patient", "Nope"]))) == ["Patient"]


# ---------------------------------------------------------------- with the real registry


@pytest.fixture(scope="module")
def real() -> dict[str, Any]:
    return capability_statement(default_registry(), base_url=BASE, software_version="0.1.0")


def test_real_statement_is_a_valid_capability_statement(real: dict[str, Any]) -> None:
    assert parse_resource(real) is real
    assert {"Patient", "Observation", "Encounter", "Bundle"} <= set(by_type(real))


_SAMPLE = {
    "string": "x",
    "token": "x",
    "reference": "x",
    "date": "2024",
    "number": "1",
    "quantity": "1",
    "uri": "http://x",
}


def test_every_advertised_search_param_is_accepted_by_the_parser(real: dict[str, Any]) -> None:
    registry = default_registry()
    for resource in real["rest"][0]["resource"]:
        for sp in resource.get("searchParam", ()):
            query = parse_search([resource["type"]], {sp["name"]: [_SAMPLE[sp["type"]]]}, registry)
            assert len(query.clauses) == 1, (resource["type"], sp["name"])
        for inc in resource["searchInclude"][1:]:
            assert parse_search([resource["type"]], {"_include": [inc]}, registry).includes
        for rev in resource.get("searchRevInclude", ()):
            assert parse_search([resource["type"]], {"_revinclude": [rev]}, registry).includes
