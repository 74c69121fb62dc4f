"""Conditional entries of a transaction Bundle resolved together (``FhirRouter._prefetch_conditionals``): the same
outcomes as one lock + search per entry, race-free creates, and no new version for an unchanged conditional update."""

from __future__ import annotations

import threading
from typing import Any

import orjson
import pytest

from app.adapters.sql_store import SqlStore
from app.fhir.registry import default_registry
from app.services.rest import FhirRequest, FhirRouter

SYSTEM = "http://example.org/ids"


@pytest.fixture
def router(store: SqlStore) -> FhirRouter:
    return FhirRouter(store, default_registry())


def _practitioner(value: str, family: str = "Welby") -> dict[str, Any]:
    return {
        "resourceType": "Practitioner",
        "identifier": [{"system": SYSTEM, "value": value}],
        "name": [{"family": family}],
    }


def _patient(value: str, family: str = "Doe") -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": value}], "name": [{"family": family}]}


def _create_if_absent(resource: dict[str, Any], value: str, full_url: str) -> dict[str, Any]:
    rtype = resource["resourceType"]
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": "POST", "url": rtype, "ifNoneExist": f"identifier={SYSTEM}|{value}"},
    }


def _upsert(resource: dict[str, Any], value: str, full_url: str) -> dict[str, Any]:
    rtype = resource["resourceType"]
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": "PUT", "url": f"{rtype}?identifier={SYSTEM}|{value}"},
    }


def _message(mrn: str, practitioner: str = "P1", family: str = "Doe") -> list[dict[str, Any]]:
    """An ADT-like transaction: the patient upserted, its GP created only when absent."""
    patient = {**_patient(mrn, family), "generalPractitioner": [{"reference": "urn:uuid:gp"}]}
    return [
        _upsert(patient, mrn, "urn:uuid:pat"),
        _create_if_absent(_practitioner(practitioner), practitioner, "urn:uuid:gp"),
    ]


def _commit(router: FhirRouter, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    body = orjson.loads(orjson.dumps(router.transaction(FhirRequest("POST", ""), entries).body))
    return [e["response"] for e in body["entry"]]


def _search(router: FhirRouter, rtype: str, **query: str) -> list[dict[str, Any]]:
    response = router.handle(FhirRequest("GET", rtype, query={k: [v] for k, v in query.items()}))
    body = orjson.loads(orjson.dumps(response.body))
    return [e["resource"] for e in body.get("entry", [])]


def test_matched_and_unmatched_conditional_entries_resolve_like_one_search_each(router: FhirRouter) -> None:
    existing = _commit(router, [_create_if_absent(_practitioner("P1"), "P1", "urn:uuid:x")])[0]
    responses = _commit(router, _message("M1"))
    assert [r["status"].split()[0] for r in responses] == ["201", "200"]
    assert responses[1]["location"] == existing["location"]  # the existing Practitioner, not a second one
    [patient] = _search(router, "Patient", identifier=f"{SYSTEM}|M1")
    assert patient["generalPractitioner"] == [{"reference": existing["location"].split("/_history/")[0].lstrip("/")}]
    assert len(_search(router, "Practitioner", identifier=f"{SYSTEM}|P1")) == 1


def test_an_unchanged_conditional_update_writes_no_new_version(router: FhirRouter) -> None:
    first = _commit(router, _message("M1"))
    again = _commit(router, _message("M1"))  # a resend: same content
    assert again[0]["status"].startswith("200")
    assert again[0]["location"] == first[0]["location"]  # still version 1
    assert again[0]["etag"] == 'W/"1"'
    changed = _commit(router, _message("M1", family="Roe"))  # an A08 with new data
    assert changed[0]["etag"] == 'W/"2"'
    [patient] = _search(router, "Patient", identifier=f"{SYSTEM}|M1")
    assert patient["name"] == [{"family": "Roe"}] and patient["meta"]["versionId"] == "2"


def test_concurrent_transactions_sharing_a_create_if_absent_create_it_once(router: FhirRouter) -> None:
    n = 12
    barrier = threading.Barrier(n)
    statuses: list[str] = []
    errors: list[BaseException] = []

    def send(i: int) -> None:
        try:
            barrier.wait()
            statuses.append(_commit(router, _message(f"M{i}", practitioner="SHARED"))[1]["status"].split()[0])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert errors == []
    assert sorted(statuses) == ["200"] * (n - 1) + ["201"]
    assert len(_search(router, "Practitioner", identifier=f"{SYSTEM}|SHARED")) == 1
    assert len(_search(router, "Patient", identifier=f"{SYSTEM}|M0")) == 1


def test_a_conditional_entry_matching_several_fails_the_transaction_naming_it(router: FhirRouter) -> None:
    for _ in range(2):
        router.handle(FhirRequest("POST", "Practitioner", resource=_practitioner("TWICE")))
    response = router.handle(
        FhirRequest(
            "POST",
            "",
            resource={
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [*_message("M9", practitioner="TWICE")],
            },
        )
    )
    assert response.status == 412
    outcome = response.json()
    assert outcome is not None and outcome["issue"][0]["expression"][0] == "Bundle.entry[1]"
    assert _search(router, "Patient", identifier=f"{SYSTEM}|M9") == []  # all or nothing


def test_a_failed_transaction_leaves_no_conditional_create_behind(router: FhirRouter) -> None:
    bad = {
        "resource": {"resourceType": "Patient", "birthDate": "not a date"},
        "request": {"method": "POST", "url": "Patient"},
    }
    response = router.handle(
        FhirRequest(
            "POST", "", resource={"resourceType": "Bundle", "type": "transaction", "entry": [*_message("M7"), bad]}
        )
    )
    assert response.status == 400
    assert _search(router, "Patient", identifier=f"{SYSTEM}|M7") == []
    assert _search(router, "Practitioner", identifier=f"{SYSTEM}|P1") == []
