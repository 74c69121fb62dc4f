"""Bundle builders (app.fhir.bundle)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import orjson
import pytest

from app.fhir.bundle import (
    SUBSETTED,
    batch_response,
    dumps,
    entry_for,
    error_entry,
    history_bundle,
    instant,
    response_entry,
    searchset,
    status_line,
    subset,
    transaction_response,
    with_cursor,
)
from app.fhir.errors import NotFound
from app.fhir.model import parse_resource
from app.fhir.query import SearchQuery
from app.fhir.store import HistoryPage, SearchPage, StoredResource

BASE = "https://fhir.example.org/fhir"
WHEN = datetime(2024, 5, 1, 10, 0, 0, 123000, tzinfo=UTC)


def stored(rtype: str, rid: str, body: dict[str, Any] | None = None, *, version: int = 1, **kw: Any) -> StoredResource:
    content = None
    if body is not None or not kw.get("deleted"):
        resource = {"resourceType": rtype, "id": rid, "meta": {"versionId": str(version)}, **(body or {})}
        # spaces and key order that a re-serialisation would not keep
        content = orjson.dumps(resource).replace(b'"id":', b'"id" :')
    return StoredResource(rtype, rid, version, WHEN, content=content, **kw)


PATIENT = stored(
    "Patient",
    "p1",
    {
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Jane</div>'},
        "identifier": [{"value": "MRN1"}],
        "active": True,
        "name": [{"family": "Doe"}],
        "gender": "female",
        "birthDate": "1970-01-01",
        "_birthDate": {"extension": [{"url": "http://x", "valueString": "y"}]},
        "deceasedBoolean": False,
        "photo": [{"title": "x"}],
    },
)
ORG = stored("Organization", "o1", {"name": "Acme"})


def query(**kw: Any) -> SearchQuery:
    return SearchQuery(resource_types=("Patient",), **kw)


# ---------------------------------------------------------------- searchset


def test_searchset_entries_links_and_total() -> None:
    page = SearchPage(matches=[PATIENT], included=[ORG], total=7, next_cursor="n1", prev_cursor="p0")
    q = query(canonical="gender=female&name=doe", count=10, cursor="c1")
    bundle = orjson.loads(dumps(searchset(page, q, BASE + "/", resource_type_path="Patient")))
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset" and bundle["total"] == 7
    assert [(e["fullUrl"], e["search"]["mode"]) for e in bundle["entry"]] == [
        (f"{BASE}/Patient/p1", "match"),
        (f"{BASE}/Organization/o1", "include"),
    ]
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert links["self"] == f"{BASE}/Patient?gender=female&name=doe&_count=10&_cursor=c1"
    assert links["next"] == f"{BASE}/Patient?gender=female&name=doe&_count=10&_cursor=n1"
    assert links["previous"] == f"{BASE}/Patient?gender=female&name=doe&_count=10&_cursor=p0"
    assert parse_resource(bundle) is bundle


def test_searchset_splices_the_stored_bytes_verbatim() -> None:
    page = SearchPage(matches=[PATIENT])
    raw = dumps(searchset(page, query(), BASE, resource_type_path="Patient"))
    assert PATIENT.content is not None and PATIENT.content in raw


def test_searchset_without_splice_gives_plain_dicts() -> None:
    bundle = searchset(SearchPage(matches=[PATIENT]), query(), BASE, resource_type_path="Patient", splice=False)
    assert bundle["entry"][0]["resource"] == PATIENT.as_dict()


def test_searchset_cursor_is_percent_encoded_in_links() -> None:
    page = SearchPage(matches=[], next_cursor="a+b/c=")
    bundle = searchset(page, query(), BASE, resource_type_path="Patient")
    nxt = next(link["url"] for link in bundle["link"] if link["relation"] == "next")
    assert parse_qs(urlsplit(nxt).query)["_cursor"] == ["a+b/c="]


def test_system_search_links_have_no_type_path() -> None:
    bundle = searchset(SearchPage(matches=[]), query(canonical="_tag=x"), BASE, resource_type_path="")
    assert bundle["link"][0]["url"] == f"{BASE}?_tag=x&_count=20"
    assert "entry" not in bundle  # no empty arrays in FHIR JSON


def test_total_is_omitted_when_unknown_or_not_wanted() -> None:
    assert "total" not in searchset(SearchPage(matches=[]), query(), BASE)
    assert "total" not in searchset(SearchPage(matches=[], total=3), query(total="none"), BASE)


def test_summary_count_has_no_entries() -> None:
    bundle = searchset(SearchPage(matches=[PATIENT], total=1), query(summary="count", count=0), BASE)
    assert bundle["total"] == 1 and "entry" not in bundle


def test_duplicates_between_matches_and_includes_are_served_once() -> None:
    page = SearchPage(matches=[PATIENT], included=[PATIENT, ORG])
    bundle = searchset(page, query(), BASE, splice=False)
    assert [e["fullUrl"].rsplit("/", 1)[1] for e in bundle["entry"]] == ["p1", "o1"]


def test_ignored_params_become_an_outcome_entry() -> None:
    bundle = searchset(SearchPage(matches=[PATIENT]), query(ignored=("shoe-size",)), BASE, splice=False)
    last = bundle["entry"][-1]
    assert last["search"] == {"mode": "outcome"}
    issue = last["resource"]["issue"][0]
    assert (issue["severity"], issue["code"], issue["expression"]) == ("warning", "not-supported", ["shoe-size"])


# ---------------------------------------------------------------- subsetting


def test_summary_true_keeps_summary_and_mandatory_elements_and_tags() -> None:
    bundle = searchset(SearchPage(matches=[PATIENT]), query(summary="true"), BASE)
    resource = bundle["entry"][0]["resource"]
    assert set(resource) == {
        "resourceType",
        "id",
        "meta",
        "identifier",
        "active",
        "name",
        "gender",
        "birthDate",
        "_birthDate",
        "deceasedBoolean",
    }
    assert SUBSETTED in resource["meta"]["tag"]
    assert parse_resource(resource) is resource


def test_summary_text_keeps_text_id_meta_and_mandatory() -> None:
    obs = stored(
        "Observation",
        "o",
        {"status": "final", "code": {"text": "x"}, "text": {"status": "empty", "div": "<div/>"}, "valueString": "v"},
    )
    out = subset(obs.as_dict(), summary="text")
    assert set(out) == {"resourceType", "id", "meta", "text", "status", "code"}


def test_summary_data_removes_text_only() -> None:
    out = subset(PATIENT.as_dict(), summary="data")
    assert "text" not in out and "photo" in out and SUBSETTED in out["meta"]["tag"]


def test_elements_keep_choice_elements_by_their_base_name() -> None:
    out = subset(PATIENT.as_dict(), elements=("deceased", "birthDate"))
    assert set(out) == {"resourceType", "id", "meta", "deceasedBoolean", "birthDate", "_birthDate"}


def test_summary_false_and_no_elements_leave_the_resource_alone() -> None:
    resource = PATIENT.as_dict()
    assert subset(resource, summary="false") is resource
    bundle = searchset(SearchPage(matches=[PATIENT]), query(summary="false"), BASE)
    assert isinstance(bundle["entry"][0]["resource"], orjson.Fragment)


def test_subsetting_does_not_duplicate_an_existing_subsetted_tag() -> None:
    once = subset(PATIENT.as_dict(), summary="true")
    twice = subset(once, summary="true")
    assert twice["meta"]["tag"].count(SUBSETTED) == 1


def test_elements_apply_in_a_searchset() -> None:
    bundle = searchset(SearchPage(matches=[PATIENT]), query(elements=("gender",)), BASE)
    assert set(bundle["entry"][0]["resource"]) == {"resourceType", "id", "meta", "gender"}


# ---------------------------------------------------------------- history


def test_history_entries_have_request_and_response_and_deletions_no_resource() -> None:
    v3 = StoredResource("Patient", "p1", 3, WHEN, deleted=True, content=None, method="DELETE")
    v2 = stored("Patient", "p1", {"active": False}, version=2, method="PUT")
    v1 = stored("Patient", "p1", {"active": True}, version=1, method="POST")
    page = HistoryPage(entries=[v3, v2, v1], total=3, next_cursor="nx")
    self_link = f"{BASE}/Patient/p1/_history?_count=3"
    bundle = orjson.loads(dumps(history_bundle(page, BASE, self_link)))
    assert bundle["type"] == "history" and bundle["total"] == 3
    entries = bundle["entry"]
    assert [e["request"] for e in entries] == [
        {"method": "DELETE", "url": "Patient/p1"},
        {"method": "PUT", "url": "Patient/p1"},
        {"method": "POST", "url": "Patient"},
    ]
    assert [e["response"]["status"] for e in entries] == ["204 No Content", "200 OK", "201 Created"]
    assert [e["response"]["etag"] for e in entries] == ['W/"3"', 'W/"2"', 'W/"1"']
    assert "resource" not in entries[0] and entries[1]["resource"]["active"] is False
    assert entries[0]["response"]["lastModified"] == "2024-05-01T10:00:00.123Z"
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert links["self"] == self_link
    assert parse_qs(urlsplit(links["next"]).query) == {"_count": ["3"], "_cursor": ["nx"]}
    assert parse_resource(bundle) is bundle


def test_with_cursor_replaces_an_existing_cursor() -> None:
    link = with_cursor(f"{BASE}/_history?_since=2024-01-01T00:00:00Z&_cursor=old", "new")
    assert parse_qs(urlsplit(link).query) == {"_since": ["2024-01-01T00:00:00Z"], "_cursor": ["new"]}


# ---------------------------------------------------------------- transaction / batch


def test_transaction_response_entries() -> None:
    created = response_entry(201, stored=PATIENT, base_url=BASE)
    minimal = response_entry(200, stored=ORG, base_url=BASE, include_resource=False)
    deleted = response_entry(204)
    bundle = orjson.loads(dumps(transaction_response([created, minimal, deleted], bundle_id="b1", now=WHEN)))
    assert bundle["type"] == "transaction-response" and bundle["id"] == "b1"
    assert bundle["meta"]["lastUpdated"] == "2024-05-01T10:00:00.123Z"
    first, second, third = bundle["entry"]
    assert first["response"] == {
        "status": "201 Created",
        "location": "Patient/p1/_history/1",
        "etag": 'W/"1"',
        "lastModified": "2024-05-01T10:00:00.123Z",
    }
    assert first["resource"]["id"] == "p1" and first["fullUrl"] == f"{BASE}/Patient/p1"
    assert "resource" not in second and "location" not in second["response"]
    assert third == {"response": {"status": "204 No Content"}}
    assert parse_resource(bundle) is bundle


def test_batch_response_with_an_error_entry() -> None:
    err = error_entry(NotFound("Patient/zz is not known"))
    bundle = batch_response([response_entry(200, stored=PATIENT, base_url=BASE, splice=False), err])
    assert bundle["type"] == "batch-response"
    assert err["response"]["status"] == "404 Not Found"
    assert err["response"]["outcome"]["issue"][0]["code"] == "not-found"
    assert parse_resource(orjson.loads(dumps(bundle)))["entry"][0]["resource"]["id"] == "p1"


def test_response_entry_with_an_explicit_resource() -> None:
    inner = {"resourceType": "Bundle", "type": "searchset"}
    entry = response_entry(200, resource=inner)
    assert entry == {"resource": inner, "response": {"status": "200 OK"}}


def test_entry_for() -> None:
    entry = entry_for(ORG, BASE, mode="include", splice=False)
    assert entry == {"fullUrl": f"{BASE}/Organization/o1", "resource": ORG.as_dict(), "search": {"mode": "include"}}


@pytest.mark.parametrize(("status", "line"), [(200, "200 OK"), (201, "201 Created"), (412, "412 Precondition Failed")])
def test_status_line(status: int, line: str) -> None:
    assert status_line(status) == line


def test_instant_is_utc_with_milliseconds() -> None:
    assert instant(datetime(2024, 1, 1, 12, 0)) == "2024-01-01T12:00:00.000Z"
