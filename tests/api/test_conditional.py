"""Conditional create / update / delete / patch (https://hl7.org/fhir/R4/http.html#ccreate and friends)."""

from __future__ import annotations

import threading

import orjson

from .support import Fhir, assert_outcome, patient

SYSTEM = "http://example.org/mrn"


def _with_mrn(value: str, family: str = "Chalmers") -> dict:
    return patient(family, identifier=[{"system": SYSTEM, "value": value}])


def _count(fhir, query: str) -> int:
    bundle = fhir.request("GET", f"Patient?{query}&_total=accurate").get_json(force=True)
    return len([e for e in bundle.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"])


def test_if_none_exist_without_match_creates(fhir):
    response = fhir.request("POST", "Patient", _with_mrn("m1"), headers={"If-None-Exist": f"identifier={SYSTEM}|m1"})
    assert response.status_code == 201


def test_if_none_exist_with_one_match_returns_the_existing_with_200(fhir):
    first = fhir.create(_with_mrn("m2"))
    response = fhir.request(
        "POST", "Patient", _with_mrn("m2", "Other"), headers={"If-None-Exist": f"identifier={SYSTEM}|m2"}
    )
    assert response.status_code == 200
    assert response.get_json(force=True)["id"] == first["id"]
    assert response.headers["ETag"] == 'W/"1"'
    assert _count(fhir, f"identifier={SYSTEM}|m2") == 1


def test_if_none_exist_with_several_matches_is_412(fhir):
    fhir.create(_with_mrn("dup"))
    fhir.create(_with_mrn("dup"))
    response = fhir.request("POST", "Patient", _with_mrn("dup"), headers={"If-None-Exist": f"identifier={SYSTEM}|dup"})
    assert_outcome(response, 412, "conflict")


def test_concurrent_identical_conditional_creates_yield_one_resource(app):
    """16 clients race the same If-None-Exist: the store lock on the criteria lets exactly one create."""
    statuses: list[int] = []
    barrier = threading.Barrier(16)

    def worker() -> None:
        client = Fhir(app.test_client())
        barrier.wait()
        response = client.request(
            "POST", "Patient", _with_mrn("race"), headers={"If-None-Exist": f"identifier={SYSTEM}|race"}
        )
        statuses.append(response.status_code)

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(statuses) == [200] * 15 + [201]
    assert _count(Fhir(app.test_client()), f"identifier={SYSTEM}|race") == 1


def test_conditional_update_without_match_creates(fhir):
    response = fhir.request("PUT", f"Patient?identifier={SYSTEM}|u1", _with_mrn("u1"))
    assert response.status_code == 201
    assert _count(fhir, f"identifier={SYSTEM}|u1") == 1


def test_conditional_update_with_one_match_updates_it(fhir):
    pid = fhir.create(_with_mrn("u2"))["id"]
    response = fhir.request("PUT", f"Patient?identifier={SYSTEM}|u2", _with_mrn("u2", "Renamed"))
    assert response.status_code == 200
    body = response.get_json(force=True)
    assert body["id"] == pid and body["meta"]["versionId"] == "2"


def test_conditional_update_with_a_conflicting_body_id_is_400(fhir):
    fhir.create(_with_mrn("u3"))
    response = fhir.request("PUT", f"Patient?identifier={SYSTEM}|u3", {**_with_mrn("u3"), "id": "someone-else"})
    assert_outcome(response, 400, "invalid")


def test_conditional_update_with_several_matches_is_412(fhir):
    fhir.create(_with_mrn("u4"))
    fhir.create(_with_mrn("u4"))
    assert_outcome(fhir.request("PUT", f"Patient?identifier={SYSTEM}|u4", _with_mrn("u4")), 412, "conflict")


def test_conditional_update_with_unknown_criteria_is_400_not_a_blind_update(fhir):
    fhir.create(_with_mrn("u5"))
    assert_outcome(fhir.request("PUT", "Patient?no-such-param=1", _with_mrn("u5")), 400, "invalid")


def test_conditional_delete_removes_the_single_match(fhir):
    pid = fhir.create(_with_mrn("d1"))["id"]
    response = fhir.request("DELETE", f"Patient?identifier={SYSTEM}|d1")
    assert response.status_code == 200
    assert_outcome(fhir.request("GET", f"Patient/{pid}"), 410, "deleted")


def test_conditional_delete_removes_every_match(fhir):
    ids = [fhir.create(_with_mrn("d2"))["id"] for _ in range(3)]
    keep = fhir.create(_with_mrn("other"))["id"]
    assert fhir.request("DELETE", f"Patient?identifier={SYSTEM}|d2").status_code == 200
    for pid in ids:
        assert fhir.request("GET", f"Patient/{pid}").status_code == 410
    assert fhir.request("GET", f"Patient/{keep}").status_code == 200


def test_conditional_delete_without_match_is_a_no_op(fhir):
    response = fhir.request("DELETE", f"Patient?identifier={SYSTEM}|none")
    assert response.status_code in (200, 204)


def test_delete_of_a_whole_type_is_refused(fhir):
    assert_outcome(fhir.request("DELETE", "Patient"), 405, "not-supported")


def test_conditional_patch_patches_the_single_match(fhir):
    pid = fhir.create(_with_mrn("p1"))["id"]
    response = fhir.request(
        "PATCH",
        f"Patient?identifier={SYSTEM}|p1",
        data=orjson.dumps([{"op": "add", "path": "/active", "value": True}]),
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert fhir.request("GET", f"Patient/{pid}").get_json(force=True)["active"] is True
