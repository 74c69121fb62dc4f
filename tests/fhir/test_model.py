"""parse_resource, resource_types and reference helpers (app.fhir.model)."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class
from hypothesis import given, settings
from hypothesis import strategies as st

from app.fhir.errors import FhirError, InvalidResource, UnprocessableEntity
from app.fhir.model import (
    ISSUE_CODE_BY_ERROR_TYPE,
    R4_RESOURCE_TYPES,
    ReferenceParts,
    fhirpath,
    local_reference,
    parse_resource,
    resource_types,
    split_reference,
)

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {"versionId": "1", "lastUpdated": "2024-01-01T00:00:00Z"},
    "identifier": [{"system": "urn:oid:1.2.3", "value": "MRN1"}],
    "active": True,
    "name": [{"family": "Doe", "given": ["Jane", "Q"]}],
    "gender": "female",
    "birthDate": "1970-01-01",
    "multipleBirthInteger": 2,
}
OBSERVATION: dict[str, Any] = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2024-05-01T10:00:00+02:00",
    "valueQuantity": {"value": 120.50, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
    "component": [{"code": {"text": "x"}, "valueString": "y"}],
}


def invalid(body: Any, **kwargs: Any) -> FhirError:
    with pytest.raises(FhirError) as info:
        parse_resource(body, **kwargs)
    return info.value


def expressions(err: FhirError) -> list[str]:
    return [e for issue in err.issues for e in issue.expression]


# ---------------------------------------------------------------- success


def test_valid_dict_is_returned_as_the_same_unchanged_object() -> None:
    body = copy.deepcopy(PATIENT)
    result = parse_resource(body)
    assert result is body
    assert result == PATIENT


def test_valid_bytes_return_the_clients_json_not_a_model_dump() -> None:
    raw = orjson.dumps(OBSERVATION)
    result = parse_resource(raw, expected_type="Observation")
    assert result == orjson.loads(raw)
    assert list(result) == list(OBSERVATION)  # key order as sent


def test_str_body_is_accepted() -> None:
    assert parse_resource('{"resourceType": "Patient"}') == {"resourceType": "Patient"}


def test_primitive_array_alignment_may_use_null() -> None:
    body = {
        "resourceType": "Patient",
        "name": [{"given": ["A", None], "_given": [None, {"extension": [{"url": "http://x", "valueString": "y"}]}]}],
    }
    assert parse_resource(body) is body


def test_nested_resources_are_validated_too() -> None:
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": PATIENT}]}
    assert parse_resource(bundle) is bundle
    err = invalid({**bundle, "entry": [{"resource": {"resourceType": "Patient", "active": "yes"}}]})
    assert expressions(err) == ["Bundle.entry[0].resource.active"]


def test_primitive_extension_on_an_extension_value_is_accepted() -> None:
    # valid R4 that fhir.resources' Extension model lacks fields for (used by the official v2 code systems)
    translation = {
        "extension": [{"url": "lang", "valueCode": "nl"}],
        "url": "http://hl7.org/fhir/StructureDefinition/translation",
    }
    ext = {"url": "http://x", "valueString": "text", "_valueString": {"extension": [translation]}}
    body = {"resourceType": "Patient", "extension": [ext]}
    assert parse_resource(body) is body


def test_primitive_extension_on_an_extension_value_is_still_checked() -> None:
    ext = {"url": "http://x", "valueString": "text", "_valueString": {"extension": [{"valueCode": "nl"}]}}
    err = invalid({"resourceType": "Patient", "extension": [ext]})
    assert expressions(err) == ["Patient.extension[0].valueString.extension[0].url"]
    bogus = {"url": "http://x", "_valueNope": {"id": "a"}}
    assert expressions(invalid({"resourceType": "Patient", "extension": [bogus]})) == ["Patient.extension[0].valueNope"]


def test_r4_shape_of_a_type_r4b_redefined_is_unprocessable() -> None:
    r4_evidence = {"resourceType": "Evidence", "status": "draft", "exposureBackground": {"reference": "Group/1"}}
    err = invalid(r4_evidence)
    assert isinstance(err, UnprocessableEntity) and "R4B" in err.diagnostics
    assert err.issues[0].expression  # still says where


# ---------------------------------------------------------------- envelope errors


def test_bad_json_is_invalid_resource() -> None:
    err = invalid(b'{"resourceType": ')
    assert isinstance(err, InvalidResource) and err.status == 400
    assert err.diagnostics.startswith("body is not valid JSON: ")


@pytest.mark.parametrize("body", [b"[]", b"42", b'"Patient"'])
def test_body_must_be_an_object(body: bytes) -> None:
    assert isinstance(invalid(body), InvalidResource)


def test_missing_resource_type() -> None:
    err = invalid({"id": "x"})
    assert isinstance(err, InvalidResource)
    assert err.issues[0].code == "required" and err.issues[0].expression == ("resourceType",)


@pytest.mark.parametrize("rtype", ["Nope", "patient", "Citation", "SubscriptionTopic"])
def test_unknown_or_non_r4_type_is_invalid(rtype: str) -> None:
    err = invalid({"resourceType": rtype})
    assert isinstance(err, InvalidResource)
    assert err.issues[0].details_code == "unknown-type"


@pytest.mark.parametrize("rtype", ["MedicinalProduct", "EffectEvidenceSynthesis", "SubstanceProtein"])
def test_r4_type_that_r4b_cannot_represent_is_unprocessable(rtype: str) -> None:
    err = invalid({"resourceType": rtype})
    assert isinstance(err, UnprocessableEntity) and err.status == 422
    assert "cannot represent" in err.diagnostics


def test_expected_type_mismatch() -> None:
    err = invalid(PATIENT, expected_type="Observation")
    assert isinstance(err, InvalidResource)
    assert err.issues[0].details_code == "type-mismatch"


# ---------------------------------------------------------------- element errors


@pytest.mark.parametrize(
    ("patch", "expression", "code"),
    [
        ({"name": [{"given": [1]}]}, "Patient.name[0].given[0]", "value"),
        ({"name": [{"given": "Jane"}]}, "Patient.name[0].given", "structure"),
        ({"shoeSize": 12}, "Patient.shoeSize", "structure"),
        ({"birthDate": "1970-13-01"}, "Patient.birthDate", "value"),
        ({"id": "has space"}, "Patient.id", "value"),
        ({"active": "yes"}, "Patient.active", "value"),
        ({"multipleBirthInteger": "2"}, "Patient.multipleBirthInteger", "value"),
        ({"multipleBirthInteger": 1.5}, "Patient.multipleBirthInteger", "value"),
        ({"active": None}, "Patient.active", "structure"),
        ({"telecom": []}, "Patient.telecom", "structure"),
        ({"telecom": [{}]}, "Patient.telecom[0]", "structure"),
        ({"link": [{"type": "seealso"}]}, "Patient.link[0].other", "required"),
        ({"extension": [{"valueString": "x"}]}, "Patient.extension[0].url", "required"),
        (
            {"_birthDate": {"extension": [{"url": "u", "valueNope": 1}]}},
            "Patient.birthDate.extension[0].valueNope",
            "structure",
        ),
        ({"contained": [{"resourceType": "Nope"}]}, "Patient.contained[0].resourceType", "value"),
    ],
)
def test_element_errors_have_fhirpath_and_issue_code(patch: dict[str, Any], expression: str, code: str) -> None:
    err = invalid({"resourceType": "Patient", **patch})
    assert isinstance(err, InvalidResource)
    assert [(i.expression, i.code) for i in err.issues] == [((expression,), code)]
    assert err.issues[0].diagnostics.startswith(expression + ": ")
    assert err.issues[0].details_code == "invalid-resource"


@pytest.mark.parametrize(
    ("patch", "expression"),
    [
        ({"gender": "f"}, "Patient.gender"),
        ({"name": [{"use": "nick"}]}, "Patient.name[0].use"),
        ({"telecom": [{"system": "phone"}, {"system": "pigeon"}]}, "Patient.telecom[1].system"),
    ],
)
def test_codes_of_required_bindings_are_checked(patch: dict[str, Any], expression: str) -> None:
    err = invalid({"resourceType": "Patient", **patch})
    assert [(i.code, i.expression) for i in err.issues] == [("code-invalid", (expression,))]
    assert parse_resource(err.to_outcome())  # code-invalid is an R4 issue type


def test_codes_are_not_checked_where_r4_does_not_require_them() -> None:
    cs = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2024",
        "kind": "instance",
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "xml"],
    }
    assert parse_resource(cs) is cs
    lib = {"resourceType": "Library", "status": "draft", "type": {"text": "x"}}
    lib["extension"] = [{"url": "http://x", "valueExpression": {"language": "text/x-custom", "expression": "1"}}]
    assert parse_resource(lib) is lib


def test_decimal_given_as_a_string_is_rejected() -> None:
    obs = copy.deepcopy(OBSERVATION)
    obs["valueQuantity"]["value"] = "120.5"
    assert expressions(invalid(obs)) == ["Observation.valueQuantity.value"]


def test_missing_required_element_of_the_resource() -> None:
    obs = {k: v for k, v in OBSERVATION.items() if k != "status"}
    err = invalid(obs)
    assert [(i.code, i.expression) for i in err.issues] == [("required", ("Observation.status",))]


def test_two_choices_of_one_element_is_an_error() -> None:
    err = invalid({"resourceType": "Patient", "deceasedBoolean": True, "deceasedDateTime": "2020"})
    assert "deceasedBoolean" in err.issues[0].diagnostics


def test_every_problem_becomes_its_own_issue() -> None:
    err = invalid({"resourceType": "Patient", "active": "yes", "foo": 1, "birthDate": "x"})
    assert sorted(expressions(err)) == ["Patient.active", "Patient.birthDate", "Patient.foo"]
    assert "(and 2 more)" in err.diagnostics


def test_diagnostics_do_not_echo_submitted_values() -> None:
    err = invalid({"resourceType": "Patient", "active": "SECRET-VALUE", "name": [{"given": [{"x": "SECRET-2"}]}]})
    assert b"SECRET" not in orjson.dumps(err.to_outcome())


def test_outcome_is_a_valid_operation_outcome() -> None:
    err = invalid({"resourceType": "Patient", "foo": 1})
    outcome = err.to_outcome()
    assert parse_resource(outcome) is outcome
    assert outcome["issue"][0]["expression"] == ["Patient.foo"]


def test_issue_code_table_uses_only_valid_issue_types() -> None:
    valid = {"invalid", "structure", "required", "value", "invariant", "code-invalid"}
    assert set(ISSUE_CODE_BY_ERROR_TYPE.values()) <= valid


def test_fhirpath_rendering() -> None:
    assert fhirpath("Patient", ("name", 0, "given", 1)) == "Patient.name[0].given[1]"
    assert fhirpath("Patient", ("_birthDate", "extension", 0)) == "Patient.birthDate.extension[0]"


# ---------------------------------------------------------------- resource types


def test_resource_types_are_r4_types_with_an_r4b_model() -> None:
    types = resource_types()
    assert {"Patient", "Observation", "Bundle", "Binary", "Parameters"} <= types
    assert types <= R4_RESOURCE_TYPES
    assert not types & {"MedicinalProduct", "RiskEvidenceSynthesis", "SubstanceSpecification"}
    for t in types:
        assert get_fhir_model_class(t).__name__ == t


def test_r4_type_list_is_complete() -> None:
    # 4.0.1 resourcelist.html: 146 types; the Patient CompartmentDefinition names all but Parameters
    assert len(R4_RESOURCE_TYPES) == 146


# ---------------------------------------------------------------- references


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("Patient/1", ReferenceParts("Patient", "1")),
        ("Patient/1/_history/2", ReferenceParts("Patient", "1", "2")),
        ("https://x.org/fhir/Observation/a.b-c", ReferenceParts("Observation", "a.b-c", None, "https://x.org/fhir")),
        ("https://x.org/fhir/Patient/1/_history/3", ReferenceParts("Patient", "1", "3", "https://x.org/fhir")),
        ("#contained", None),
        ("urn:uuid:0d2d5d5c-1b3c-4b0d-9a43-3b6a0a0f4c11", None),
        ("Nope/1", None),
        ("Patient/", None),
        ("Patient/has space", None),
    ],
)
def test_split_reference(ref: str, expected: ReferenceParts | None) -> None:
    assert split_reference(ref) == expected


def test_local_reference_strips_our_base_only() -> None:
    assert local_reference("https://me.org/fhir/Patient/1", "https://me.org/fhir/") == "Patient/1"
    assert (
        local_reference("https://other.org/fhir/Patient/1", "https://me.org/fhir") == "https://other.org/fhir/Patient/1"
    )


# real element names at several levels, plus a few that exist nowhere, so the generator reaches deep paths
_ELEMENT_NAMES = [
    "id",
    "active",
    "name",
    "given",
    "family",
    "telecom",
    "value",
    "system",
    "birthDate",
    "_birthDate",
    "extension",
    "url",
    "valueString",
    "contained",
    "resourceType",
    "link",
    "other",
    "contact",
    "gender",
    "multipleBirthInteger",
    "nope",
]
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-5, 5)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.sampled_from(_ELEMENT_NAMES), children, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_ELEMENT_NAMES), _JSON, max_size=4))
def test_any_json_is_accepted_or_refused_with_an_outcome(body: dict[str, Any]) -> None:
    resource = {"resourceType": "Patient", **body}
    try:
        assert parse_resource(copy.deepcopy(resource)) == resource
    except (InvalidResource, UnprocessableEntity) as exc:
        assert exc.issues and all(i.expression for i in exc.issues)
        assert parse_resource(exc.to_outcome())  # the outcome itself is valid FHIR
