"""A patient-scoped token (patient/*.rs with launch patient p1) tries to reach patient p2's data through every
indirect path: read, search with and without a patient parameter, _include, _revinclude, chains, _has, history,
vread, batch and transaction entries, conditional update/delete, system search with _type. Each must answer as if
p2's data did not exist (404 for reads, nothing in bundles) or refuse (403) -- never return it."""

from __future__ import annotations

import pytest

from .enforcement_support import LAB, Secure, ids, observation, patient_token, secure  # noqa: F401


@pytest.fixture
def tok(patient_token) -> str:  # noqa: F811
    return patient_token()


def test_read_inside_the_compartment_is_allowed(secure: Secure, tok: str) -> None:  # noqa: F811
    assert secure.call(tok, "GET", "Patient/p1").status_code == 200
    assert secure.call(tok, "GET", "Observation/o1").status_code == 200
    assert secure.call(tok, "GET", "Observation/o4").status_code == 200  # in p1's compartment through performer


@pytest.mark.parametrize("path", ["Patient/p2", "Observation/o2", "Encounter/e2", "Observation/nope"])
def test_read_outside_the_compartment_is_404_like_a_missing_resource(secure: Secure, tok: str, path: str) -> None:  # noqa: F811
    response = secure.call(tok, "GET", path)
    assert response.status_code == 404
    assert response.get_json(force=True)["resourceType"] == "OperationOutcome"


def test_read_of_a_type_outside_the_patient_compartment_is_403(secure: Secure, tok: str) -> None:  # noqa: F811
    assert secure.call(tok, "GET", "Practitioner/dr1").status_code == 403


@pytest.mark.parametrize(
    "query",
    ["", "?patient=p2", "?subject=Patient/p2", "?patient=p1", "?code=http://loinc.org|9999-9", "?_id=o2,o1"],
)
def test_search_returns_only_the_compartment_whatever_the_parameters(secure: Secure, tok: str, query: str) -> None:  # noqa: F811
    found = ids(secure.call(tok, "GET", f"Observation{query}"))
    assert "Observation/o2" not in found
    assert found <= {"Observation/o1", "Observation/o3", "Observation/o4"}


def test_search_without_parameters_finds_the_whole_compartment(secure: Secure, tok: str) -> None:  # noqa: F811
    assert ids(secure.call(tok, "GET", "Observation")) == {"Observation/o1", "Observation/o3", "Observation/o4"}
    assert ids(secure.call(tok, "GET", "Patient")) == {"Patient/p1"}


def test_include_drops_a_referenced_resource_outside_the_compartment(secure: Secure, tok: str) -> None:  # noqa: F811
    response = secure.call(tok, "GET", "Observation?_id=o4&_include=Observation:subject")
    assert ids(response, "match") == {"Observation/o4"}
    assert ids(response, "include") == set()  # o4.subject is Patient/p2


def test_include_of_an_unreadable_type_is_refused(secure: Secure, tok: str) -> None:  # noqa: F811
    response = secure.call(tok, "GET", "Observation?_include=Observation:performer:Practitioner")
    assert response.status_code == 403


def test_revinclude_brings_only_compartment_resources(secure: Secure, tok: str) -> None:  # noqa: F811
    response = secure.call(tok, "GET", "Patient?_revinclude=Observation:subject")
    assert ids(response, "match") == {"Patient/p1"}
    assert ids(response, "include") == {"Observation/o1", "Observation/o3"}


def test_revinclude_cannot_reach_another_patient(secure: Secure, tok: str) -> None:  # noqa: F811
    response = secure.call(tok, "GET", "Patient?_id=p2&_revinclude=Observation:subject")
    assert ids(response) == set()


def test_chain_cannot_probe_another_patients_fields(secure: Secure, tok: str) -> None:  # noqa: F811
    # o4 is ours (performer) but its subject is p2, named "Other": the chain must not see p2
    assert ids(secure.call(tok, "GET", "Observation?subject:Patient.name=Other")) == set()
    assert ids(secure.call(tok, "GET", "Observation?subject:Patient.name=Ours")) == {"Observation/o1", "Observation/o3"}


def test_chain_through_an_unreadable_type_is_refused(secure: Secure, tok: str) -> None:  # noqa: F811
    assert secure.call(tok, "GET", "Observation?performer:Practitioner.name=Doc").status_code == 403


def test_has_cannot_probe_another_patients_resources(secure: Secure, tok: str) -> None:  # noqa: F811
    assert ids(secure.call(tok, "GET", "Patient?_has:Observation:subject:code=http://loinc.org|9999-9")) == set()
    assert ids(secure.call(tok, "GET", "Patient?_has:Observation:subject:code=http://loinc.org|1234-5")) == {
        "Patient/p1"
    }


def test_has_on_an_unreadable_type_is_refused(secure: Secure, patient_token) -> None:  # noqa: F811
    tok = patient_token("patient/Patient.rs")
    assert secure.call(tok, "GET", "Patient?_has:Observation:subject:code=1234-5").status_code == 403


def test_history_and_vread_of_another_patients_resource_are_404(secure: Secure, tok: str) -> None:  # noqa: F811
    assert secure.call(tok, "GET", "Observation/o2/_history").status_code == 404
    assert secure.call(tok, "GET", "Observation/o2/_history/1").status_code == 404
    assert secure.call(tok, "GET", "Observation/o1/_history").status_code == 200
    assert secure.call(tok, "GET", "Observation/o1/_history/1").status_code == 200


@pytest.mark.parametrize("path", ["Observation/_history", "_history"])
def test_type_and_system_history_are_refused_to_a_confined_token(secure: Secure, tok: str, path: str) -> None:  # noqa: F811
    assert secure.call(tok, "GET", path).status_code == 403


def test_batch_entries_are_each_confined(secure: Secure, tok: str) -> None:  # noqa: F811
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "Observation/o2"}},
            {"request": {"method": "GET", "url": "Observation/o1"}},
            {"request": {"method": "GET", "url": "Observation?subject=Patient/p2"}},
            {"request": {"method": "GET", "url": "Practitioner/dr1"}},
        ],
    }
    body = secure.call(tok, "POST", "", bundle).get_json(force=True)
    statuses = [e["response"]["status"].split()[0] for e in body["entry"]]
    assert statuses == ["404", "200", "200", "403"]
    found = {e["resource"]["id"] for e in body["entry"][2]["resource"].get("entry", [])}
    assert found == {"o4"}  # subject p2, but in p1's compartment through performer; o2 stays invisible


def test_transaction_entry_reading_another_patient_fails_the_transaction(secure: Secure, tok: str) -> None:  # noqa: F811
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "GET", "url": "Observation/o2"}}],
    }
    assert secure.call(tok, "POST", "", bundle).status_code == 404


def test_transaction_writes_land_only_inside_the_compartment(secure: Secure, patient_token) -> None:  # noqa: F811
    tok = patient_token("patient/*.cruds")
    outside = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "POST", "url": "Observation"}, "resource": observation("x", "Patient/p2")},
        ],
    }
    assert secure.call(tok, "POST", "", outside).status_code == 403
    overwrite = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "PUT", "url": "Observation/o2"}, "resource": observation("o2", "Patient/p1")},
        ],
    }
    assert secure.call(tok, "POST", "", overwrite).status_code == 404
    assert (
        secure.call(tok, "POST", "", {**overwrite, "type": "batch"})
        .get_json(force=True)["entry"][0]["response"]["status"]
        .startswith("404")
    )
    inside = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "POST", "url": "Observation"}, "resource": observation("y", "Patient/p1")}],
    }
    assert secure.call(tok, "POST", "", inside).status_code == 200


def test_writes_must_land_inside_the_compartment(secure: Secure, patient_token) -> None:  # noqa: F811
    tok = patient_token("patient/*.cruds")
    assert secure.call(tok, "POST", "Observation", observation("x", "Patient/p2")).status_code == 403
    assert secure.call(tok, "POST", "Observation", observation("x", "Patient/p1")).status_code == 201
    assert secure.call(tok, "PUT", "Observation/o2", observation("o2", "Patient/p1")).status_code == 404
    assert secure.call(tok, "PUT", "Observation/o1", observation("o1", "Patient/p2")).status_code == 403
    assert secure.call(tok, "DELETE", "Observation/o2").status_code == 404
    move = b'[{"op": "replace", "path": "/subject/reference", "value": "Patient/p2"}]'
    patch = secure.call(tok, "PATCH", "Observation/o1", move, **{"Content-Type": "application/json-patch+json"})
    assert patch.status_code == 403
    assert secure.exists("Observation/o2")


def test_conditional_update_and_delete_cannot_reach_another_patient(secure: Secure, patient_token) -> None:  # noqa: F811
    tok = patient_token("patient/*.cruds")
    # o2's identifier: the conditional search is confined, so it matches nothing, and no match means a create
    body = observation("z", "Patient/p1")
    del body["id"]
    assert secure.call(tok, "PUT", "Observation?identifier=urn:obs|o2", body).status_code == 201
    assert secure.exists("Observation/o2")
    assert secure.call(tok, "DELETE", "Observation?identifier=urn:obs|o2").status_code == 200
    assert secure.exists("Observation/o2")
    conditional_create = secure.call(
        tok, "POST", "Observation", observation("n", "Patient/p1"), **{"If-None-Exist": "identifier=urn:obs|o2"}
    )
    assert conditional_create.status_code == 201  # o2 is invisible: no match, so a new resource


def test_system_search_with_type_is_confined_and_refuses_unreadable_types(secure: Secure, tok: str) -> None:  # noqa: F811
    found = ids(secure.call(tok, "GET", "?_type=Observation,Patient"))
    assert found == {"Patient/p1", "Observation/o1", "Observation/o3", "Observation/o4"}
    assert secure.call(tok, "GET", "?_type=Practitioner").status_code == 403
    unfiltered = ids(secure.call(tok, "GET", ""))
    assert unfiltered == {"Patient/p1", "Observation/o1", "Observation/o3", "Observation/o4"}


def test_translate_is_terminology_not_patient_data(secure: Secure, tok: str) -> None:  # noqa: F811
    system = "http://terminology.hl7.org/CodeSystem/v2-0001"
    response = secure.call(tok, "GET", f"ConceptMap/$translate?system={system}&code=F")
    assert response.status_code == 200
    only_obs = secure.token("patient/Observation.rs", patient="p1")
    assert secure.call(only_obs, "GET", f"ConceptMap/$translate?system={system}&code=F").status_code == 403


def test_granular_category_scope_narrows_search_and_reads(secure: Secure, patient_token) -> None:  # noqa: F811
    tok = patient_token(f"patient/Observation.rs?category={LAB}")
    assert ids(secure.call(tok, "GET", "Observation")) == {"Observation/o1", "Observation/o4"}
    assert secure.call(tok, "GET", "Observation/o3").status_code == 404  # vital-signs
    assert secure.call(tok, "GET", "Observation/o1").status_code == 200
