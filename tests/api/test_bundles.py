"""batch and transaction Bundles posted to the base (https://hl7.org/fhir/R4/http.html#transaction)."""

from __future__ import annotations

import base64

import orjson

from .support import assert_outcome, patient

SYSTEM = "http://example.org/mrn"


def _post(fhir, bundle: dict):
    return fhir.request("POST", "", bundle)


def _tx(*entries: dict, kind: str = "transaction") -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def _status(entry: dict) -> int:
    return int(entry["response"]["status"].split()[0])


def _id_from(entry: dict) -> str:
    return entry["response"]["location"].split("/")[1]


def test_transaction_rewrites_urn_uuid_references_everywhere(fhir):
    bundle = _tx(
        {
            "fullUrl": "urn:uuid:obs-1",
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "weight"},
                "subject": {"reference": "urn:uuid:pat-1"},
                "text": {
                    "status": "generated",
                    "div": '<div xmlns="http://www.w3.org/1999/xhtml"><a href="urn:uuid:pat-1">patient</a></div>',
                },
            },
            "request": {"method": "POST", "url": "Observation"},
        },
        {
            "fullUrl": "urn:uuid:pat-1",
            "resource": patient(),
            "request": {"method": "POST", "url": "Patient"},
        },
    )
    response = _post(fhir, bundle)
    assert response.status_code == 200, response.get_data(as_text=True)
    result = response.get_json(force=True)
    assert result["type"] == "transaction-response"
    assert [_status(e) for e in result["entry"]] == [201, 201]
    obs_id, pat_id = _id_from(result["entry"][0]), _id_from(result["entry"][1])
    obs = fhir.request("GET", f"Observation/{obs_id}").get_json(force=True)
    assert obs["subject"]["reference"] == f"Patient/{pat_id}"
    assert f'href="Patient/{pat_id}"' in obs["text"]["div"]


def test_transaction_failure_rolls_everything_back_and_names_the_entry(fhir):
    bundle = _tx(
        {"fullUrl": "urn:uuid:a", "resource": patient("Rollback"), "request": {"method": "POST", "url": "Patient"}},
        {
            "resource": {"resourceType": "Patient", "active": "not-a-boolean"},
            "request": {"method": "POST", "url": "Patient"},
        },
    )
    outcome = assert_outcome(_post(fhir, bundle), 400, "value")
    assert any(e.startswith("Bundle.entry[1]") for i in outcome["issue"] for e in i.get("expression", []))
    search = fhir.request("GET", "Patient?family=Rollback").get_json(force=True)
    assert not search.get("entry")


def test_transaction_runs_deletes_before_creates_and_reads_last(fhir):
    old = fhir.create(patient("Old"))["id"]
    bundle = _tx(
        {"request": {"method": "GET", "url": f"Patient/{old}"}},
        {"resource": patient("New"), "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "DELETE", "url": f"Patient/{old}"}},
    )
    response = _post(fhir, bundle)
    assert response.status_code == 410  # the GET ran after the DELETE, so the whole transaction fails
    assert fhir.request("GET", f"Patient/{old}").status_code == 200  # rolled back


def test_transaction_conditional_create_and_conditional_reference(fhir):
    existing = fhir.create(patient("Known", identifier=[{"system": SYSTEM, "value": "k1"}]))["id"]
    bundle = _tx(
        {
            "fullUrl": "urn:uuid:p",
            "resource": patient("Known", identifier=[{"system": SYSTEM, "value": "k1"}]),
            "request": {"method": "POST", "url": "Patient", "ifNoneExist": f"identifier={SYSTEM}|k1"},
        },
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "a"},
                "subject": {"reference": "urn:uuid:p"},
            },
            "request": {"method": "POST", "url": "Observation"},
        },
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "b"},
                "subject": {"reference": f"Patient?identifier={SYSTEM}|k1"},
            },
            "request": {"method": "POST", "url": "Observation"},
        },
    )
    response = _post(fhir, bundle)
    assert response.status_code == 200, response.get_data(as_text=True)
    entries = response.get_json(force=True)["entry"]
    assert [_status(e) for e in entries] == [200, 201, 201]
    for entry in entries[1:]:
        obs = fhir.request("GET", f"Observation/{_id_from(entry)}").get_json(force=True)
        assert obs["subject"]["reference"] == f"Patient/{existing}"


def test_transaction_conditional_update_put_and_if_match(fhir):
    pid = fhir.create(patient("Versioned"))["id"]
    bundle = _tx(
        {
            "resource": patient("Cond", identifier=[{"system": SYSTEM, "value": "cu"}]),
            "request": {"method": "PUT", "url": f"Patient?identifier={SYSTEM}|cu"},
        },
        {
            "resource": patient("Versioned2", id=pid),
            "request": {"method": "PUT", "url": f"Patient/{pid}", "ifMatch": 'W/"1"'},
        },
    )
    response = _post(fhir, bundle)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert [_status(e) for e in response.get_json(force=True)["entry"]] == [201, 200]
    stale = _tx(
        {
            "resource": patient("Versioned3", id=pid),
            "request": {"method": "PUT", "url": f"Patient/{pid}", "ifMatch": 'W/"1"'},
        }
    )
    outcome = assert_outcome(_post(fhir, stale), 412, "conflict")
    assert "Bundle.entry[0]" in str(outcome)


def test_transaction_patch_entry_with_binary_json_patch(fhir):
    pid = fhir.create(patient(active=True))["id"]
    ops = base64.b64encode(orjson.dumps([{"op": "replace", "path": "/active", "value": False}])).decode()
    bundle = _tx(
        {
            "resource": {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": ops},
            "request": {"method": "PATCH", "url": f"Patient/{pid}"},
        }
    )
    response = _post(fhir, bundle)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert fhir.request("GET", f"Patient/{pid}").get_json(force=True)["active"] is False


def test_transaction_with_unresolvable_urn_reference_fails(fhir):
    bundle = _tx(
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": "urn:uuid:nowhere"},
            },
            "request": {"method": "POST", "url": "Observation"},
        }
    )
    assert_outcome(_post(fhir, bundle), 400, "invalid")


def test_batch_entries_succeed_or_fail_independently(fhir):
    pid = fhir.create(patient())["id"]
    bundle = _tx(
        {"resource": patient("BatchNew"), "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/missing"}},
        {"resource": {"resourceType": "Patient", "active": "x"}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": f"Patient/{pid}"}},
        {"request": {"method": "GET", "url": "Patient?family=BatchNew"}},
        kind="batch",
    )
    response = _post(fhir, bundle)
    assert response.status_code == 200
    result = response.get_json(force=True)
    assert result["type"] == "batch-response"
    entries = result["entry"]
    assert [_status(e) for e in entries] == [201, 404, 400, 200, 200]
    assert entries[1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert entries[3]["resource"]["id"] == pid
    assert entries[4]["resource"]["type"] == "searchset"
    assert len(entries[4]["resource"]["entry"]) == 1


def test_post_to_base_with_a_non_bundle_is_400(fhir):
    assert_outcome(_post(fhir, patient()), 400, "invalid")


def test_bundle_of_type_collection_is_rejected(fhir):
    assert_outcome(_post(fhir, {"resourceType": "Bundle", "type": "collection"}), 400, "invalid")


def test_transaction_touching_one_resource_twice_is_400(fhir):
    pid = fhir.create(patient())["id"]
    bundle = _tx(
        {"resource": patient("A", id=pid), "request": {"method": "PUT", "url": f"Patient/{pid}"}},
        {"request": {"method": "DELETE", "url": f"Patient/{pid}"}},
    )
    outcome = assert_outcome(_post(fhir, bundle), 400, "invalid")
    assert "Bundle.entry[1]" in outcome["issue"][0]["expression"]


def test_transaction_error_expression_points_into_the_entry_resource(fhir):
    bundle = _tx(
        {"resource": {"resourceType": "Patient", "active": 1}, "request": {"method": "POST", "url": "Patient"}},
    )
    outcome = assert_outcome(_post(fhir, bundle), 400, "value")
    assert outcome["issue"][0]["expression"] == ["Bundle.entry[0]", "Bundle.entry[0].resource.active"]


def test_nested_bundle_in_a_batch_is_reported_per_entry(fhir):
    inner = _tx(kind="batch")
    bundle = _tx({"resource": inner, "request": {"method": "POST", "url": "/"}}, kind="batch")
    response = _post(fhir, bundle)
    assert response.status_code == 200
    assert _status(response.get_json(force=True)["entry"][0]) == 400


def test_transaction_rewrites_relative_references_to_an_absolute_fullurl_on_this_server(fhir):
    bundle = _tx(
        {
            "fullUrl": "http://localhost/fhir/Patient/client-side-1",
            "resource": patient(),
            "request": {"method": "POST", "url": "Patient"},
        },
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": "Patient/client-side-1"},
            },
            "request": {"method": "POST", "url": "Observation"},
        },
    )
    response = _post(fhir, bundle)
    assert response.status_code == 200, response.get_data(as_text=True)
    pat_entry, obs_entry = response.get_json(force=True)["entry"]
    obs = fhir.request("GET", f"Observation/{_id_from(obs_entry)}").get_json(force=True)
    assert obs["subject"]["reference"] == f"Patient/{_id_from(pat_entry)}"


def test_transaction_conditional_delete_and_urn_oid_fullurl(fhir):
    doomed = fhir.create(patient("Doomed", identifier=[{"system": SYSTEM, "value": "del"}]))["id"]
    bundle = _tx(
        {"request": {"method": "DELETE", "url": f"Patient?identifier={SYSTEM}|del"}},
        {"fullUrl": "urn:oid:1.2.3.4", "resource": patient("Oid"), "request": {"method": "POST", "url": "Patient"}},
        {
            "resource": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "subject": {"reference": "urn:oid:1.2.3.4"},
            },
            "request": {"method": "POST", "url": "Observation"},
        },
    )
    response = _post(fhir, bundle)
    assert response.status_code == 200, response.get_data(as_text=True)
    entries = response.get_json(force=True)["entry"]
    assert [_status(e) for e in entries] == [200, 201, 201]
    assert fhir.request("GET", f"Patient/{doomed}").status_code == 410
    obs = fhir.request("GET", f"Observation/{_id_from(entries[2])}").get_json(force=True)
    assert obs["subject"]["reference"] == f"Patient/{_id_from(entries[1])}"


def test_unexpected_failure_of_one_batch_entry_spares_the_others(app, fhir, monkeypatch):
    router = app.extensions["interlace"].router

    def boom(*args, **kwargs):
        raise RuntimeError("unexpected")

    monkeypatch.setattr(router, "vread", boom)
    pid = fhir.create(patient())["id"]
    bundle = _tx(
        {"request": {"method": "GET", "url": f"Patient/{pid}/_history/1"}},
        {"request": {"method": "GET", "url": f"Patient/{pid}"}},
        kind="batch",
    )
    entries = _post(fhir, bundle).get_json(force=True)["entry"]
    assert [_status(e) for e in entries] == [500, 200]
    assert entries[0]["response"]["outcome"]["issue"][0]["code"] == "exception"
