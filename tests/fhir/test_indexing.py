import functools
import json
import re
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import fhirpathpy
import pytest
from fhirpathpy.engine.nodes import TypeInfo
from fhirpathpy.models import models
from hypothesis import given
from hypothesis import strategies as st

from app.fhir import indexing
from app.fhir.indexing import (
    COLUMN_PARAMS,
    CompileError,
    FhirPathIndexer,
    as_to_oftype,
    compile_fast,
    default_indexer,
    normalize_fast,
)
from app.fhir.query import (
    INDEXED_TYPES,
    DateIndex,
    NumberIndex,
    QuantityIndex,
    ReferenceIndex,
    StringIndex,
    TokenIndex,
    UriIndex,
)
from app.fhir.registry import SearchParamRegistry, default_registry, split_union
from app.fhir.values import normalize_string

FIXTURES = Path(__file__).parent / "fixtures" / "indexing"
# The official R4 examples (npm package hl7.fhir.r4.examples), when unpacked on this machine; never vendored.
OFFICIAL_EXAMPLES = Path("/tmp/npm/examples/package")


def load(name: str, **kwargs: Any) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"), **kwargs)


def rows(resource: dict[str, Any], param: str) -> list[Any]:
    return [e for e in default_indexer().index(resource) if e.param == param]


# ---------------------------------------------------------------- per datatype


def test_human_name_indexes_each_part_normalised_and_exact():
    names = rows(load("patient.json"), "name")
    assert StringIndex("name", "muller", "Müller") in names
    assert StringIndex("name", "zoe", "Zoë") in names
    assert {e.exact for e in names} == {"Müller", "Zoë", "Anne", "Dr.", "PhD", "Zoe  Mueller"}
    assert StringIndex("name", "zoe mueller", "Zoe  Mueller") in names  # whitespace collapsed
    assert [e.exact for e in rows(load("patient.json"), "family")] == ["Müller"]
    assert [e.exact for e in rows(load("patient.json"), "given")] == ["Zoë", "Anne"]


def test_address_indexes_lines_city_district_state_postal_code_country():
    address = {e.exact for e in rows(load("patient.json"), "address")}
    assert address == {"Hauptstraße 1", "Hinterhaus", "Berlin", "Mitte", "BE", "10115", "DE"}
    assert rows(load("patient.json"), "address-city") == [StringIndex("address-city", "berlin", "Berlin")]
    assert rows(load("patient.json"), "address-use") == [TokenIndex("address-use", None, "home")]


def test_identifier_indexes_system_value_and_type_text():
    assert rows(load("patient.json"), "identifier") == [
        TokenIndex("identifier", "urn:oid:1.2.36.146.595.217.0.1", "MRN-12345", "medical record number"),
        TokenIndex("identifier", None, "no-system"),
    ]


def test_contact_point_indexes_value_and_where_system_filters():
    patient = load("patient.json")
    assert rows(patient, "phone") == [TokenIndex("phone", None, "+49 30 1234567")]
    assert rows(patient, "email") == [TokenIndex("email", None, "zoe@example.org")]
    assert {e.code for e in rows(patient, "telecom")} == {"+49 30 1234567", "zoe@example.org"}


def test_code_and_boolean_primitives_become_tokens():
    patient = load("patient.json")
    assert rows(patient, "gender") == [TokenIndex("gender", None, "female")]
    assert rows(patient, "active") == [TokenIndex("active", None, "true")]
    assert rows(load("group-device.json"), "value") == [TokenIndex("value", None, "false")]


def test_deceased_is_true_for_a_death_date_and_false_when_absent():
    assert rows(load("patient.json"), "deceased") == [TokenIndex("deceased", None, "true")]
    assert rows({"resourceType": "Patient"}, "deceased") == [TokenIndex("deceased", None, "false")]
    assert rows({"resourceType": "Patient", "deceasedBoolean": False}, "deceased") == [
        TokenIndex("deceased", None, "false")
    ]


def test_codeable_concept_indexes_each_coding_and_its_text():
    assert rows(load("observation.json"), "code") == [
        TokenIndex("code", "http://loinc.org", "29463-7", "body weight"),
        TokenIndex("code", None, None, "weight"),
    ]


def test_meta_tag_security_profile_source_are_indexed():
    patient = load("patient.json")
    assert rows(patient, "_tag") == [TokenIndex("_tag", "https://interlace.dev/tags", "imported")]
    assert rows(patient, "_security") == [
        TokenIndex("_security", "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "R", "restricted")
    ]
    assert rows(patient, "_profile") == [
        UriIndex("_profile", "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient|5.0.1")
    ]
    assert rows(patient, "_source") == [UriIndex("_source", "urn:interlace:mllp:sender-a")]


def test_id_and_last_updated_are_left_to_the_store_columns():
    entries = default_indexer().index(load("patient.json"))
    assert not [e for e in entries if e.param in COLUMN_PARAMS]


def test_reference_forms():
    gp = rows(load("patient.json"), "general-practitioner")
    assert gp == [
        # version dropped
        ReferenceIndex("general-practitioner", "Practitioner", "gp-1"),
        # absolute: url plus type/id from the last two segments
        ReferenceIndex(
            "general-practitioner", "Organization", "org-9", "https://other.example/fhir/Organization/org-9"
        ),
        # "#contained-1" is skipped; identifier-only references keep the identifier for :identifier
        ReferenceIndex("general-practitioner", None, None, None, "urn:ids", "PR-7"),
    ]
    assert rows(load("patient.json"), "organization") == [ReferenceIndex("organization", "Organization", "org-1")]


def test_where_resolve_is_keeps_only_references_to_that_type():
    observation = load("observation.json")
    assert rows(observation, "patient") == [ReferenceIndex("patient", "Patient", "pat-1")]
    assert {(e.target_type, e.target_id) for e in rows(observation, "performer")} == {
        ("Practitioner", "gp-1"),
        ("Patient", "pat-1"),
    }
    assert rows(load("careplan.json"), "patient") == []  # subject is a Group
    assert rows(load("careplan.json"), "subject") == [ReferenceIndex("subject", "Group", "grp-1")]


def test_canonical_reference_indexes_the_url_without_version():
    assert rows(load("careplan.json"), "instantiates-canonical") == [
        ReferenceIndex("instantiates-canonical", None, None, "http://example.org/fhir/PlanDefinition/diabetes")
    ]


def test_dates_are_utc_half_open_ranges_widened_by_precision():
    assert rows(load("patient.json"), "birthdate") == [
        DateIndex("birthdate", datetime(1974, 12, 1), datetime(1975, 1, 1))
    ]
    # +02:00 is converted to UTC
    assert rows(load("patient.json"), "death-date") == [
        DateIndex("death-date", datetime(2023, 3, 4, 3, 6, 7), datetime(2023, 3, 4, 3, 6, 8))
    ]


def test_period_with_an_open_end_and_timing_event_range():
    assert rows(load("observation.json"), "date") == [DateIndex("date", datetime(2024, 1, 2, 8, 0), None)]
    assert set(rows(load("careplan.json"), "activity-date")) == {
        DateIndex("activity-date", datetime(2024, 3, 1, 10, 0), datetime(2024, 3, 6)),  # Timing: first..last event
        DateIndex("activity-date", None, datetime(2024, 4, 2)),  # Period without start
    }


def test_quantity_keeps_units_and_implicit_precision():
    observation = load("observation.json", parse_float=Decimal)
    assert rows(observation, "value-quantity") == [
        QuantityIndex(
            "value-quantity",
            Decimal("72.50"),
            Decimal("72.495"),
            Decimal("72.505"),
            "http://unitsofmeasure.org",
            "kg",
            "kg",
        )
    ]
    component = rows(observation, "component-value-quantity")
    assert [(e.value, e.low, e.high, e.code) for e in component] == [
        (Decimal(180), Decimal("179.5"), Decimal("180.5"), "cm")
    ]


def test_money_is_a_quantity_in_iso_4217():
    assert rows(load("invoice.json"), "totalnet") == [
        QuantityIndex(
            "totalnet", Decimal("100.0"), Decimal("99.95"), Decimal("100.05"), "urn:iso:std:iso:4217", "EUR", None
        )
    ]


def test_number_and_range_quantity():
    group = load("group-device.json")
    assert rows(group, "type") == [TokenIndex("type", None, "person")]
    risk = {
        "resourceType": "RiskAssessment",
        "status": "final",
        "subject": {"reference": "Patient/p"},
        "prediction": [{"probabilityDecimal": 0.25}, {"probabilityRange": {"low": {"value": 1}, "high": {"value": 3}}}],
    }
    assert rows(risk, "probability") == [
        NumberIndex("probability", Decimal("0.25"), Decimal("0.245"), Decimal("0.255")),
        NumberIndex("probability", Decimal(1), Decimal("0.5"), Decimal("3.5")),
    ]
    condition = {
        "resourceType": "Condition",
        "subject": {"reference": "Patient/p"},
        "onsetRange": {
            "low": {"value": 40, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"},
            "high": {"value": 50, "unit": "a", "system": "http://unitsofmeasure.org", "code": "a"},
        },
    }
    assert rows(condition, "onset-age") == [
        QuantityIndex("onset-age", Decimal(40), Decimal("39.5"), Decimal("50.5"), "http://unitsofmeasure.org", "a", "a")
    ]


def test_duplicates_are_removed_and_malformed_values_are_ignored():
    patient = {
        "resourceType": "Patient",
        "name": [{"family": "Doe"}, {"family": "Doe"}, "not-a-name", {"given": [None, 7]}],
        "birthDate": "not-a-date",
        "generalPractitioner": {"reference": 5},
    }
    assert default_indexer().index(patient) == [
        TokenIndex("deceased", None, "false"),
        StringIndex("family", "doe", "Doe"),
        StringIndex("name", "doe", "Doe"),
        StringIndex("phonetic", "doe", "Doe"),
    ]


def test_unknown_or_missing_resource_type_yields_nothing():
    assert default_indexer().index({"resourceType": "NoSuchType", "id": "x"}) == []
    assert default_indexer().index({"id": "x"}) == []


def test_every_entry_belongs_to_an_indexed_param_of_the_type():
    registry = default_registry()
    for name in ("patient.json", "observation.json", "group-device.json", "invoice.json", "careplan.json"):
        resource = load(name)
        for entry in default_indexer().index(resource):
            param = registry.get(resource["resourceType"], entry.param)
            assert param is not None and param.type in INDEXED_TYPES, entry


# ---------------------------------------------------------------- fast path vs fhirpathpy


def test_core_clinical_types_compile_entirely_on_the_fast_path():
    indexer = FhirPathIndexer()
    for rtype in ("Patient", "Observation", "Encounter", "Condition", "MedicationRequest", "Invoice", "Claim"):
        indexer.plan(rtype)
        stats = indexer.stats[rtype]
        assert stats.fallback == 0 and not stats.failed, (rtype, stats)
        assert stats.fast > 10


def test_all_official_expressions_compile_fast_or_fall_back():
    indexer = FhirPathIndexer()
    registry = indexer.registry
    fast = fallback = 0
    for rtype in registry.resource_types:
        indexer.plan(rtype)
        stats = indexer.stats[rtype]
        assert not stats.failed, (rtype, stats.failed)
        fast += stats.fast
        fallback += stats.fallback
    assert fast > 2000
    assert fallback < 20  # R4 paths the R4B models lack (Evidence.*); fhirpathpy evaluates them on the JSON


def test_expressions_outside_the_subset_fall_back_to_fhirpathpy():
    with pytest.raises(CompileError):
        compile_fast("Patient.name.given.first().substring(0, 2)", "Patient")
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {
                "resource": {
                    "url": "http://example.org/SearchParameter/initials",
                    "code": "initials",
                    "base": ["Patient"],
                    "type": "string",
                    "expression": "Patient.name.given.first().substring(0, 2)",
                }
            }
        ],
    }
    indexer = FhirPathIndexer(SearchParamRegistry(bundle, ["Patient"]))
    assert indexer.index({"resourceType": "Patient", "name": [{"given": ["Zoë"]}]}) == [
        StringIndex("initials", "zo", "Zo")
    ]
    assert indexer.stats["Patient"].fallback == 1


def test_fhirpathpy_fallback_indexes_the_fixtures_like_the_fast_path(monkeypatch):
    fast = FhirPathIndexer()
    expected = {p.name: set(fast.index(load(p.name))) for p in FIXTURES.glob("*.json")}

    def no_fast_path(expression: str, resource_type: str) -> Any:
        raise CompileError("forced")

    monkeypatch.setattr(indexing, "compile_fast", no_fast_path)
    slow = FhirPathIndexer()
    for name, entries in expected.items():
        assert set(slow.index(load(name))) == entries, name
    assert slow.stats["Observation"].fast == 0 and slow.stats["Observation"].fallback > 30


@given(st.text())
def test_ascii_shortcut_normalises_exactly_like_the_shared_contract(text):
    assert normalize_fast(text) == normalize_string(text)
    assert normalize_fast(text.encode("ascii", "ignore").decode()) == normalize_string(
        text.encode("ascii", "ignore").decode()
    )


def test_as_over_a_collection_is_rewritten_to_oftype_for_fhirpathpy():
    assert as_to_oftype("(Observation.component.value as Quantity)") == "Observation.component.value.ofType(Quantity)"


_RESOLVE_IS = re.compile(r"\.where\(resolve\(\) is (\w+)\)$")


def _canonical(values: list[Any]) -> list[str]:
    def norm(v: Any) -> Any:
        if isinstance(v, bool) or v is None or isinstance(v, str):
            return v
        if isinstance(v, int | float | Decimal):
            return str(Decimal(str(v)).normalize())
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list):
            return [norm(x) for x in v]
        return str(v)

    return sorted(json.dumps(norm(v), sort_keys=True) for v in values)


def _points_to(ref: Any, rtype: str) -> bool:
    # independent of the indexer's own reference parsing
    if not isinstance(ref, dict):
        return False
    target = ref.get("reference") or ""
    return target.startswith(rtype + "/") or f"/{rtype}/" in target or (not target and ref.get("type") == rtype)


@functools.cache
def _fhirpathpy_compiled(expression: str) -> Any:
    return fhirpathpy.compile(expression, model=models["r4"])


def _fhirpathpy_values(part: str, resource: dict[str, Any]) -> list[Any]:
    # fhirpathpy has no resolve(): evaluate the path, then apply the type test ourselves
    m = _RESOLVE_IS.search(part)
    TypeInfo.model = models["r4"]  # a global fhirpathpy only sets in `is`/`as`; pin it so order does not matter
    values = _fhirpathpy_compiled(as_to_oftype(part[: m.start()] if m else part))(resource)
    return [v for v in values if _points_to(v, m.group(1))] if m else values


def compare_with_fhirpathpy(resources: list[dict[str, Any]]) -> tuple[int, int, list[tuple[str, ...]]]:
    """(compared, non-empty, mismatches) of the raw values each fast-path branch selects vs fhirpathpy."""
    registry = default_registry()
    compared = nonempty = 0
    mismatches: list[tuple[str, ...]] = []
    for resource in resources:
        rtype = resource.get("resourceType")
        for param in registry.params_for(rtype).values():
            if param.type not in INDEXED_TYPES or not param.expression or param.code in COLUMN_PARAMS:
                continue
            for part in split_union(param.expression):
                if part.endswith(" as uri)"):
                    # deliberate difference: `source as uri` selects only sourceUri (the `source` param takes
                    # sourceCanonical), whereas FHIRPath's ofType(uri) also selects canonical, a subtype of uri
                    continue
                try:
                    branches = compile_fast(part, rtype)
                except CompileError:
                    continue
                fast = [v for b in branches for v in b.runner()([resource])]
                expected = _fhirpathpy_values(part, resource)
                compared += 1
                nonempty += bool(expected)
                if _canonical(fast) != _canonical(expected):
                    mismatches.append((rtype, resource.get("id", "?"), param.code, part))
    return compared, nonempty, mismatches


def test_fast_path_matches_fhirpathpy_on_hand_made_fixtures():
    resources = [load(p.name) for p in sorted(FIXTURES.glob("*.json"))]
    compared, nonempty, mismatches = compare_with_fhirpathpy(resources)
    assert mismatches == []
    assert compared > 100 and nonempty > 40


def _official_examples(step: int) -> Iterator[dict[str, Any]]:
    registry = default_registry()
    for path in sorted(OFFICIAL_EXAMPLES.glob("*.json"))[::step]:
        try:
            resource = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(resource, dict) and resource.get("resourceType") in registry.resource_types:
            yield resource


needs_examples = pytest.mark.skipif(not OFFICIAL_EXAMPLES.is_dir(), reason="official R4 examples not unpacked")


@needs_examples
def test_fast_path_matches_fhirpathpy_on_a_sample_of_official_examples():
    compared, nonempty, mismatches = compare_with_fhirpathpy(list(_official_examples(step=25)))
    assert mismatches == []
    assert nonempty > 1000


@needs_examples
@pytest.mark.slow
def test_fast_path_matches_fhirpathpy_on_all_official_examples():
    compared, nonempty, mismatches = compare_with_fhirpathpy(list(_official_examples(step=1)))
    assert mismatches == []
    assert nonempty > 50000


@needs_examples
def test_indexing_official_examples_never_raises():
    indexer = default_indexer()
    total = 0
    for resource in _official_examples(step=10):
        total += len(indexer.index(resource))
    assert total > 5000


def test_urn_and_conditional_references():
    encounter = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"code": "AMB"},
        "subject": {"reference": "urn:uuid:5e0d5bd4-07b2-4d8f-a3b1-0d7c1e0e7a11"},
        "serviceProvider": {"reference": "Organization?identifier=urn:ids|42"},
        "participant": [{"individual": {"reference": "http://x.example/fhir/Practitioner/p1/_history/3"}}],
    }
    assert rows(encounter, "subject") == [
        ReferenceIndex("subject", None, None, "urn:uuid:5e0d5bd4-07b2-4d8f-a3b1-0d7c1e0e7a11")
    ]
    assert rows(encounter, "service-provider") == []  # resolved to Type/id by the transaction before storage
    assert rows(encounter, "practitioner") == [
        ReferenceIndex("practitioner", "Practitioner", "p1", "http://x.example/fhir/Practitioner/p1")
    ]


def test_custom_extension_parameters_compile_on_the_fast_path():
    url = "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName"
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {
                "resource": {
                    "url": "http://hl7.org/fhir/SearchParameter/patient-extensions-Patient-mothersMaidenName",
                    "code": "mothersMaidenName",
                    "base": ["Patient"],
                    "type": "string",
                    "expression": f"Patient.extension('{url}').value",
                }
            }
        ],
    }
    indexer = FhirPathIndexer(SearchParamRegistry(bundle, ["Patient"]))
    patient = {
        "resourceType": "Patient",
        "extension": [{"url": url, "valueString": "Smith"}, {"url": "x", "valueString": "no"}],
    }
    assert indexer.index(patient) == [StringIndex("mothersMaidenName", "smith", "Smith")]
    assert indexer.stats["Patient"].fallback == 0
