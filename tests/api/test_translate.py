"""ConceptMap/$translate over HTTP, on every store backend: vendored maps, stored maps, and the R4 parameters."""

from __future__ import annotations

from typing import Any

from .support import Fhir, assert_outcome

V2_SEX = "http://terminology.hl7.org/CodeSystem/v2-0001"
GENDER = "http://hl7.org/fhir/administrative-gender"
IG_GENDER_MAP = "https://interlace.dev/fhir/ConceptMap/v2-0001-gender"
LOCAL = "urn:id:LAB1-sex"


def params(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json(force=True)
    assert body["resourceType"] == "Parameters"
    return body


def result(body: dict[str, Any]) -> bool:
    return next(p["valueBoolean"] for p in body["parameter"] if p["name"] == "result")


def matches(body: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for p in body["parameter"]:
        if p["name"] == "match":
            parts = {q["name"]: next(v for k, v in q.items() if k.startswith("value")) for q in p["part"]}
            out.append(parts)
    return out


def local_map(code: str = "1", target: str = "female", *, map_id: str = "lab1-sex") -> dict[str, Any]:
    return {
        "resourceType": "ConceptMap",
        "url": f"https://lab1.example/ConceptMap/{map_id}",
        "status": "active",
        "sourceUri": "https://lab1.example/ValueSet/sex",
        "targetUri": "http://hl7.org/fhir/ValueSet/administrative-gender",
        "group": [
            {
                "source": LOCAL,
                "target": GENDER,
                "element": [{"code": code, "target": [{"code": target, "equivalence": "equivalent"}]}],
            }
        ],
    }


def test_get_translates_a_v2_code_with_the_vendored_v2_to_fhir_map(fhir: Fhir) -> None:
    body = params(fhir.request("GET", f"ConceptMap/$translate?system={V2_SEX}&code=F"))
    assert result(body) is True
    assert matches(body) == [
        {"equivalence": "equivalent", "concept": {"system": GENDER, "code": "female"}, "source": IG_GENDER_MAP}
    ]


def test_post_parameters_with_a_coding_and_reverse_finds_the_v2_code(fhir: Fhir) -> None:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "coding", "valueCoding": {"system": GENDER, "code": "female"}},
            {"name": "targetsystem", "valueUri": V2_SEX},
            {"name": "reverse", "valueBoolean": True},
        ],
    }
    found = matches(params(fhir.request("POST", "ConceptMap/$translate", body)))
    assert {"system": V2_SEX, "code": "F", "display": "Female"} in [m["concept"] for m in found]


def test_codeable_concept_translates_each_coding(fhir: Fhir) -> None:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "codeableConcept",
                "valueCodeableConcept": {"coding": [{"system": V2_SEX, "code": "M"}, {"system": V2_SEX, "code": "F"}]},
            }
        ],
    }
    codes = {m["concept"]["code"] for m in matches(params(fhir.request("POST", "ConceptMap/$translate", body)))}
    assert codes == {"male", "female"}


def test_an_unmapped_code_answers_result_false_with_a_message(fhir: Fhir) -> None:
    body = params(fhir.request("GET", f"ConceptMap/$translate?system={V2_SEX}&code=ZZ"))
    assert result(body) is False
    assert matches(body) == []
    assert any(p["name"] == "message" for p in body["parameter"])


def test_a_stored_concept_map_is_used_by_the_type_level_operation(fhir: Fhir) -> None:
    assert result(params(fhir.request("GET", f"ConceptMap/$translate?system={LOCAL}&code=1"))) is False
    fhir.create(local_map("1", "female"))
    body = params(fhir.request("GET", f"ConceptMap/$translate?system={LOCAL}&code=1"))
    assert [m["concept"]["code"] for m in matches(body)] == ["female"]
    assert matches(body)[0]["source"] == "https://lab1.example/ConceptMap/lab1-sex"


def test_a_stored_map_wins_over_the_vendored_map_for_the_same_code(fhir: Fhir) -> None:
    stored = local_map("F", "other", map_id="site-sex")
    stored["group"][0]["source"] = V2_SEX
    fhir.create(stored)
    found = matches(params(fhir.request("GET", f"ConceptMap/$translate?system={V2_SEX}&code=F")))
    assert [(m["concept"]["code"], m["source"]) for m in found] == [
        ("other", "https://lab1.example/ConceptMap/site-sex")
    ]


def test_instance_level_translate_uses_only_that_stored_map(fhir: Fhir) -> None:
    created = fhir.create(local_map("1", "female"))
    body = params(fhir.request("GET", f"ConceptMap/{created['id']}/$translate?system={LOCAL}&code=1"))
    assert [m["concept"]["code"] for m in matches(body)] == ["female"]
    # a v2 code the vendored maps know is not in this map
    assert result(params(fhir.request("GET", f"ConceptMap/{created['id']}/$translate?system={V2_SEX}&code=F"))) is False


def test_instance_level_translate_reaches_a_vendored_map_by_id_and_404s_otherwise(fhir: Fhir) -> None:
    body = params(fhir.request("GET", f"ConceptMap/v2-0001-gender/$translate?system={V2_SEX}&code=M"))
    assert [m["concept"]["code"] for m in matches(body)] == ["male"]
    assert_outcome(fhir.request("GET", f"ConceptMap/nope/$translate?system={V2_SEX}&code=M"), 404, "not-found")


def test_url_selects_one_map_and_an_unknown_url_is_404(fhir: Fhir) -> None:
    official = "http://hl7.org/fhir/ConceptMap/cm-administrative-gender-v2"
    body = params(fhir.request("GET", f"ConceptMap/$translate?url={official}&system={GENDER}&code=other"))
    assert sorted(m["concept"]["code"] for m in matches(body)) == ["A", "O"]
    assert {m["equivalence"] for m in matches(body)} == {"wider"}
    response = fhir.request("GET", f"ConceptMap/$translate?url=https://nowhere.example/cm&system={GENDER}&code=x")
    assert_outcome(response, 404, "not-found", "unknown-concept-map")


def test_an_inline_concept_map_in_post_is_used_alone(fhir: Fhir) -> None:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "conceptMap", "resource": local_map("9", "unknown")},
            {"name": "system", "valueUri": LOCAL},
            {"name": "code", "valueCode": "9"},
        ],
    }
    assert [m["concept"]["code"] for m in matches(params(fhir.request("POST", "ConceptMap/$translate", body)))] == [
        "unknown"
    ]


def test_bad_parameters_are_400_operation_outcomes(fhir: Fhir) -> None:
    assert_outcome(fhir.request("GET", "ConceptMap/$translate"), 400, "invalid")
    assert_outcome(fhir.request("GET", "ConceptMap/$translate?code=F"), 400, "invalid")
    assert_outcome(fhir.request("GET", f"ConceptMap/$translate?system={V2_SEX}&code=F&reverse=maybe"), 400, "invalid")
    assert_outcome(fhir.request("POST", "ConceptMap/$translate", {"resourceType": "Patient"}), 400, "invalid")


def test_other_operations_stay_not_implemented(fhir: Fhir) -> None:
    assert_outcome(fhir.request("GET", "Patient/$translate"), 501, "not-supported")
    assert_outcome(fhir.request("GET", "$translate"), 501, "not-supported")


def test_the_capability_statement_lists_translate_on_concept_map(fhir: Fhir) -> None:
    statement = fhir.request("GET", "metadata").get_json(force=True)
    by_type = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert {"name": "translate", "definition": "http://hl7.org/fhir/OperationDefinition/ConceptMap-translate"} in (
        by_type["ConceptMap"]["operation"]
    )
    assert "operation" not in by_type["Patient"]
