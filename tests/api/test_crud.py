"""create / read / vread / update / delete / patch over HTTP (https://hl7.org/fhir/R4/http.html)."""

from __future__ import annotations

import orjson

from .support import FHIR_JSON, assert_outcome, patient


def test_create_answers_201_with_location_etag_and_the_stored_resource(fhir):
    response = fhir.request("POST", "Patient", patient())
    assert response.status_code == 201
    body = response.get_json(force=True)
    assert body["resourceType"] == "Patient" and body["id"]
    assert body["meta"]["versionId"] == "1"
    assert response.headers["ETag"] == 'W/"1"'
    assert response.headers["Location"].endswith(f"/fhir/Patient/{body['id']}/_history/1")
    assert response.headers["Location"].startswith("http://localhost/fhir/")
    assert response.headers["Last-Modified"].endswith(" GMT")
    assert response.mimetype == FHIR_JSON


def test_create_ignores_a_client_supplied_id(fhir):
    body = fhir.create(patient(id="chosen-by-client"))
    assert body["id"] != "chosen-by-client"


def test_read_serves_the_stored_bytes_with_version_headers(fhir):
    created = fhir.request("POST", "Patient", patient())
    pid = created.get_json(force=True)["id"]
    response = fhir.request("GET", f"Patient/{pid}")
    assert response.status_code == 200
    assert response.get_data() == created.get_data()
    assert response.headers["ETag"] == 'W/"1"'
    assert response.headers["Last-Modified"] == created.headers["Last-Modified"]


def test_read_of_an_unknown_id_is_404_not_found(fhir):
    assert_outcome(fhir.request("GET", "Patient/does-not-exist"), 404, "not-found")


def test_unknown_resource_type_is_404_naming_the_type(fhir):
    outcome = assert_outcome(fhir.request("GET", "Patientx/1"), 404, "not-found", "unknown-resource-type")
    assert "Unknown resource type Patientx" in outcome["issue"][0]["diagnostics"]


def test_r4_type_dropped_by_r4b_is_404_saying_why(fhir):
    outcome = assert_outcome(fhir.request("GET", "MedicinalProduct?name=x"), 404, "not-found")
    assert "R4B" in outcome["issue"][0]["diagnostics"]


def test_update_creates_a_new_version(fhir):
    pid = fhir.create(patient())["id"]
    response = fhir.request("PUT", f"Patient/{pid}", patient("Windsor", id=pid))
    assert response.status_code == 200
    assert response.headers["ETag"] == 'W/"2"'
    assert response.get_json(force=True)["name"][0]["family"] == "Windsor"
    assert fhir.request("GET", f"Patient/{pid}").get_json(force=True)["meta"]["versionId"] == "2"


def test_update_as_create_with_a_client_id_answers_201(fhir):
    response = fhir.request("PUT", "Patient/client-chosen-1", patient(id="client-chosen-1"))
    assert response.status_code == 201
    assert response.headers["Location"].endswith("/Patient/client-chosen-1/_history/1")
    assert fhir.request("GET", "Patient/client-chosen-1").status_code == 200


def test_update_with_a_body_id_differing_from_the_url_is_400(fhir):
    assert_outcome(fhir.request("PUT", "Patient/a", patient(id="b")), 400, "invalid")


def test_update_without_a_body_id_is_400(fhir):
    assert_outcome(fhir.request("PUT", "Patient/a", patient()), 400, "invalid")


def test_body_resource_type_must_match_the_url(fhir):
    body = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    assert_outcome(fhir.request("POST", "Patient", body), 400, "invalid")


def test_invalid_resource_is_400_with_element_paths(fhir):
    outcome = assert_outcome(
        fhir.request("POST", "Patient", {"resourceType": "Patient", "active": "yes"}), 400, "value", "invalid-resource"
    )
    assert any("active" in e for i in outcome["issue"] for e in i.get("expression", []))


def test_malformed_json_is_400(fhir):
    response = fhir.request("POST", "Patient", data=b"{not json", headers={"Content-Type": FHIR_JSON})
    assert response.status_code == 400
    assert response.get_json(force=True)["resourceType"] == "OperationOutcome"


def test_update_with_stale_if_match_is_412(fhir):
    pid = fhir.create(patient())["id"]
    fhir.request("PUT", f"Patient/{pid}", patient("Two", id=pid))
    response = fhir.request("PUT", f"Patient/{pid}", patient("Three", id=pid), headers={"If-Match": 'W/"1"'})
    assert_outcome(response, 412, "conflict")
    ok = fhir.request("PUT", f"Patient/{pid}", patient("Three", id=pid), headers={"If-Match": 'W/"2"'})
    assert ok.status_code == 200 and ok.headers["ETag"] == 'W/"3"'


def test_vread_returns_each_version(fhir):
    pid = fhir.create(patient("One"))["id"]
    fhir.request("PUT", f"Patient/{pid}", patient("Two", id=pid))
    v1 = fhir.request("GET", f"Patient/{pid}/_history/1")
    assert v1.status_code == 200
    assert v1.get_json(force=True)["name"][0]["family"] == "One"
    assert v1.headers["ETag"] == 'W/"1"'
    assert v1.headers["Content-Location"].endswith(f"/Patient/{pid}/_history/1")
    assert_outcome(fhir.request("GET", f"Patient/{pid}/_history/9"), 404, "not-found")


def test_delete_then_read_is_410_gone(fhir):
    pid = fhir.create(patient())["id"]
    response = fhir.request("DELETE", f"Patient/{pid}")
    assert response.status_code == 200
    assert response.get_json(force=True)["resourceType"] == "OperationOutcome"
    assert_outcome(fhir.request("GET", f"Patient/{pid}"), 410, "deleted")
    assert_outcome(fhir.request("GET", f"Patient/{pid}/_history/2"), 410, "deleted")
    assert fhir.request("GET", f"Patient/{pid}/_history/1").status_code == 200


def test_delete_with_stale_if_match_is_412_and_keeps_the_resource(fhir):
    pid = fhir.create(patient())["id"]
    assert_outcome(fhir.request("DELETE", f"Patient/{pid}", headers={"If-Match": 'W/"7"'}), 412, "conflict")
    assert fhir.request("GET", f"Patient/{pid}").status_code == 200


def test_update_after_delete_revives_the_resource(fhir):
    pid = fhir.create(patient())["id"]
    fhir.request("DELETE", f"Patient/{pid}")
    response = fhir.request("PUT", f"Patient/{pid}", patient(id=pid))
    assert response.status_code in (200, 201)
    assert fhir.request("GET", f"Patient/{pid}").status_code == 200


def _patch(fhir, path, ops, **headers):
    return fhir.request(
        "PATCH", path, data=orjson.dumps(ops), headers={"Content-Type": "application/json-patch+json", **headers}
    )


def test_json_patch_applies_and_bumps_the_version(fhir):
    pid = fhir.create(patient(active=True))["id"]
    response = _patch(fhir, f"Patient/{pid}", [{"op": "replace", "path": "/active", "value": False}])
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["ETag"] == 'W/"2"'
    assert fhir.request("GET", f"Patient/{pid}").get_json(force=True)["active"] is False


def test_json_patch_with_stale_if_match_is_412(fhir):
    pid = fhir.create(patient(active=True))["id"]
    response = _patch(fhir, f"Patient/{pid}", [{"op": "remove", "path": "/active"}], **{"If-Match": 'W/"3"'})
    assert_outcome(response, 412, "conflict")


def test_json_patch_producing_an_invalid_resource_is_rejected(fhir):
    pid = fhir.create(patient(active=True))["id"]
    response = _patch(fhir, f"Patient/{pid}", [{"op": "replace", "path": "/active", "value": "maybe"}])
    assert response.status_code in (400, 422)
    assert response.get_json(force=True)["resourceType"] == "OperationOutcome"
    assert fhir.request("GET", f"Patient/{pid}").get_json(force=True)["active"] is True


def test_patch_with_a_fhir_json_body_is_415(fhir):
    pid = fhir.create(patient())["id"]
    assert_outcome(fhir.request("PATCH", f"Patient/{pid}", {"resourceType": "Parameters"}), 415, "not-supported")
