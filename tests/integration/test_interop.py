"""Independent FHIR clients from PyPI (SMART's ``fhirclient`` and beda.software's ``fhirpy``) drive the real
server process: create, read, search with paging to the end, update with If-Match, transaction, history."""

from __future__ import annotations

import uuid

import pytest
import requests
from fhirclient import client as smart_client
from fhirclient.models.patient import Patient as SmartPatient
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import MultipleResourcesFound

pytestmark = [pytest.mark.interop, pytest.mark.slow]


@pytest.fixture
def family() -> str:
    # a family name no other test uses, so searches see only this test's patients
    return f"Interop{uuid.uuid4().hex[:10]}"


def test_fhirclient_create_read_search_paging_update_history(live_server: str, family: str) -> None:
    smart = smart_client.FHIRClient(settings={"app_id": "interlace-interop", "api_base": live_server + "/"})
    created_ids = []
    for n in range(7):
        patient = SmartPatient({"name": [{"family": family, "given": [f"G{n}"]}], "gender": "female"})
        created = patient.create(smart.server)
        assert created["resourceType"] == "Patient"
        created_ids.append(created["id"])

    read = SmartPatient.read(created_ids[0], smart.server)
    assert read.name[0].family == family
    assert read.meta.versionId == "1"

    # three pages of 3, 3 and 1, followed to the end through Bundle.link[next]
    search = SmartPatient.where(struct={"family": family, "_count": "3"})
    found = [p.id for p in search.perform_resources_iter(smart.server)]
    assert sorted(found) == sorted(created_ids)

    read.gender = "other"
    updated = read.update(smart.server)
    assert updated["gender"] == "other"
    assert updated["meta"]["versionId"] == "2"

    history = smart.server.request_json(f"Patient/{created_ids[0]}/_history")
    assert history["type"] == "history"
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]


def test_fhirpy_create_search_if_match_transaction_history(live_server: str, family: str) -> None:
    client = SyncFHIRClient(live_server)
    ids = []
    for n in range(5):
        patient = client.resource("Patient", name=[{"family": family, "given": [f"P{n}"]}], active=True)
        patient.save()
        ids.append(patient.id)

    fetched = client.reference("Patient", ids[0]).to_resource()
    assert fetched["name"][0]["family"] == family

    everyone = client.resources("Patient").search(family=family).limit(2).fetch_all()
    assert sorted(p.id for p in everyone) == sorted(ids)

    # update guarded by If-Match: the current version succeeds, a stale one is refused with 412
    current = SyncFHIRClient(live_server, extra_headers={"If-Match": 'W/"1"'})
    body = dict(fetched)
    body["active"] = False
    saved = current.resource("Patient", **body)
    saved.save()
    assert saved["meta"]["versionId"] == "2"
    stale = current.resource("Patient", **body)
    # fhirpy maps every 412 Precondition Failed to MultipleResourcesFound; its text is our OperationOutcome
    with pytest.raises(MultipleResourcesFound) as refused:
        stale.save()
    assert "version" in str(refused.value).lower()

    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:11111111-2222-3333-4444-555555555555",
                "resource": {"resourceType": "Patient", "name": [{"family": family, "given": ["Tx"]}]},
                "request": {"method": "POST", "url": "Patient"},
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                    "subject": {"reference": "urn:uuid:11111111-2222-3333-4444-555555555555"},
                },
                "request": {"method": "POST", "url": "Observation"},
            },
        ],
    }
    response = client.execute("", method="post", data=bundle)
    assert response["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in response["entry"]]
    assert all(s.startswith("201") for s in statuses)
    patient_ref = response["entry"][0]["response"]["location"].split("/_history")[0]
    observation_id = response["entry"][1]["response"]["location"].split("/")[1]
    observation = client.reference("Observation", observation_id).to_resource()
    assert observation["subject"]["reference"] == patient_ref

    history = client.execute(f"Patient/{ids[0]}/_history", method="get")
    assert history["total"] == 2
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]


def test_plain_http_delete_then_read_is_gone(live_server: str) -> None:
    r = requests.post(
        f"{live_server}/Patient",
        json={"resourceType": "Patient", "active": True},
        headers={"Content-Type": "application/fhir+json"},
        timeout=10,
    )
    assert r.status_code == 201
    pid = r.json()["id"]
    assert requests.delete(f"{live_server}/Patient/{pid}", timeout=10).status_code in (200, 204)
    gone = requests.get(f"{live_server}/Patient/{pid}", timeout=10)
    assert gone.status_code == 410
    assert gone.json()["resourceType"] == "OperationOutcome"
