"""search over HTTP: GET Type?, POST Type/_search (form body merged with the query), system search, handling."""

from __future__ import annotations

from urllib.parse import urlsplit

from .support import assert_outcome, patient


def _ids(bundle: dict) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == "match"}


def _search(fhir, path: str, **kw) -> dict:
    response = fhir.request("GET", path, **kw)
    assert response.status_code == 200, response.get_data(as_text=True)
    bundle = response.get_json(force=True)
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return bundle


def test_type_search_by_name(fhir):
    hit = fhir.create(patient("Quixote"))["id"]
    fhir.create(patient("Sancho"))
    bundle = _search(fhir, "Patient?family=quixote")
    assert _ids(bundle) == {hit}
    assert bundle["link"][0]["relation"] == "self"
    assert bundle["entry"][0]["fullUrl"] == f"http://localhost/fhir/Patient/{hit}"


def test_post_search_merges_the_form_body_with_the_query(fhir):
    hit = fhir.create(patient("Quixote", gender="male"))["id"]
    fhir.create(patient("Quixote", gender="female"))
    response = fhir.client.post(
        "/fhir/Patient/_search?gender=male",
        data="family=Quixote",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/fhir+json"},
    )
    assert response.status_code == 200, response.get_data(as_text=True)
    assert _ids(response.get_json(force=True)) == {hit}


def test_post_search_with_a_json_body_is_415(fhir):
    response = fhir.client.post(
        "/fhir/Patient/_search", data=b"{}", headers={"Content-Type": "text/plain", "Accept": "application/fhir+json"}
    )
    assert_outcome(response, 415, "not-supported")


def test_system_search_with_type_spans_types(fhir):
    pid = fhir.create(patient())["id"]
    oid = fhir.create({"resourceType": "Organization", "name": "Acme"})["id"]
    bundle = _search(fhir, "?_type=Patient,Organization")
    assert _ids(bundle) >= {pid, oid}


def test_search_paging_follows_next_links(fhir):
    created = {fhir.create(patient("Pager"))["id"] for _ in range(5)}
    seen: set[str] = set()
    path = "Patient?family=Pager&_count=2"
    for _ in range(10):
        bundle = _search(fhir, path)
        assert len(_ids(bundle)) <= 2
        seen |= _ids(bundle)
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not nxt:
            break
        parts = urlsplit(nxt[0])
        path = parts.path.removeprefix("/fhir/") + "?" + parts.query
    assert seen == created


def test_unknown_parameter_is_400_under_strict_handling(fhir):
    assert_outcome(fhir.request("GET", "Patient?no-such-param=1"), 400, "invalid")


def test_unknown_parameter_is_reported_as_outcome_entry_under_lenient_handling(fhir):
    pid = fhir.create(patient("Lenient"))["id"]
    bundle = _search(fhir, "Patient?family=Lenient&no-such-param=1", headers={"Prefer": "handling=lenient"})
    assert _ids(bundle) == {pid}
    outcomes = [e["resource"] for e in bundle["entry"] if e.get("search", {}).get("mode") == "outcome"]
    assert outcomes and outcomes[0]["resourceType"] == "OperationOutcome"
    assert "no-such-param" in str(outcomes[0])


def test_search_of_unknown_type_is_404(fhir):
    assert_outcome(fhir.request("GET", "Nonsense?name=x"), 404, "not-found")


def test_deleted_resources_are_not_found_by_search(fhir):
    pid = fhir.create(patient("Gone"))["id"]
    fhir.request("DELETE", f"Patient/{pid}")
    assert _ids(_search(fhir, "Patient?family=Gone")) == set()
