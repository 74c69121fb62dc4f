"""history: instance, type and system level, with _since, _at, _count and cursor paging."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

from .support import assert_outcome, patient


def _history(fhir, path: str) -> dict:
    response = fhir.request("GET", path)
    assert response.status_code == 200, response.get_data(as_text=True)
    bundle = response.get_json(force=True)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "history"
    return bundle


def _relative(url: str) -> str:
    parts = urlsplit(url)
    return parts.path.removeprefix("/fhir/") + (f"?{parts.query}" if parts.query else "")


def test_instance_history_lists_versions_newest_first_including_the_deletion(fhir):
    pid = fhir.create(patient("One"))["id"]
    fhir.request("PUT", f"Patient/{pid}", patient("Two", id=pid))
    fhir.request("DELETE", f"Patient/{pid}")
    bundle = _history(fhir, f"Patient/{pid}/_history")
    entries = bundle["entry"]
    assert [e["request"]["method"] for e in entries] == ["DELETE", "PUT", "POST"]
    assert entries[1]["resource"]["name"][0]["family"] == "Two"
    assert "resource" not in entries[0]


def test_history_of_an_unknown_resource_is_404(fhir):
    assert_outcome(fhir.request("GET", "Patient/nope/_history"), 404, "not-found")


def test_type_history_holds_only_that_type(fhir):
    fhir.create(patient())
    fhir.create({"resourceType": "Organization", "name": "Acme"})
    bundle = _history(fhir, "Patient/_history")
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} == {"Patient"}


def test_system_history_holds_every_type(fhir):
    fhir.create(patient())
    fhir.create({"resourceType": "Organization", "name": "Acme"})
    bundle = _history(fhir, "_history")
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} >= {"Patient", "Organization"}


def test_history_count_pages_with_next_links_until_exhausted(fhir):
    pid = fhir.create(patient("v1"))["id"]
    for n in range(2, 6):
        fhir.request("PUT", f"Patient/{pid}", patient(f"v{n}", id=pid))
    seen: list[str] = []
    path = f"Patient/{pid}/_history?_count=2"
    for _ in range(10):
        bundle = _history(fhir, path)
        assert len(bundle.get("entry", [])) <= 2
        seen += [e["resource"]["meta"]["versionId"] for e in bundle.get("entry", [])]
        nxt = [link["url"] for link in bundle.get("link", []) if link["relation"] == "next"]
        if not nxt:
            break
        path = _relative(nxt[0])
    assert seen == ["5", "4", "3", "2", "1"]


def test_history_since_excludes_older_versions(fhir):
    old = fhir.create(patient("old"))["id"]
    time.sleep(0.05)  # distinct lastUpdated instants
    new = fhir.create(patient("new"))
    since = new["meta"]["lastUpdated"].replace("+", "%2B")
    bundle = _history(fhir, f"Patient/_history?_since={since}")
    ids = {e["resource"]["id"] for e in bundle.get("entry", [])}
    assert new["id"] in ids
    assert old not in ids


def test_history_with_malformed_since_is_400(fhir):
    assert_outcome(fhir.request("GET", "_history?_since=yesterday"), 400, "invalid")


def test_history_at_returns_the_version_current_then(fhir):
    pid = fhir.create(patient("First"))["id"]
    time.sleep(0.05)
    second = fhir.request("PUT", f"Patient/{pid}", patient("Second", id=pid)).get_json(force=True)
    at = second["meta"]["lastUpdated"].replace("+", "%2B")
    bundle = _history(fhir, f"Patient/{pid}/_history?_at={at}")
    versions = [e["resource"]["meta"]["versionId"] for e in bundle.get("entry", [])]
    assert "2" in versions
