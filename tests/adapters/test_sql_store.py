"""Contract tests of the SQL store: every test runs unchanged on SQLite and PostgreSQL (``database_url``)."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest

from app.adapters.sql_store import SqlStore, metadata, upgrade_database
from app.fhir.errors import BadRequest, Conflict, FhirError, Gone, NotFound, PreconditionFailed, StoreUnavailable
from app.fhir.indexing import default_indexer
from app.fhir.query import (
    DateIndex,
    Include,
    IndexEntry,
    ParamClause,
    SearchParamDef,
    SearchQuery,
    SearchValue,
)
from app.fhir.registry import default_registry
from app.fhir.search import parse_search
from app.fhir.store import StoredResource, iter_pages
from tests.migrations import assert_migrations_build

# ---------------------------------------------------------------- helpers


def q(types: str | Sequence[str], params: Mapping[str, str | list[str]] | None = None, **kw: str) -> SearchQuery:
    """A SearchQuery from query-string style parameters, e.g. ``q("Patient", {"name:exact": "Eve"})``."""
    raw: dict[str, list[str]] = {}
    for key, value in {**(params or {}), **kw}.items():
        raw[key] = value if isinstance(value, list) else [value]
    return parse_search((types,) if isinstance(types, str) else tuple(types), raw, default_registry())


def ids(page_or_list: Any) -> set[str]:
    items = page_or_list.matches if hasattr(page_or_list, "matches") else page_or_list
    return {r.id for r in items}


def search_ids(store: SqlStore, query: SearchQuery) -> set[str]:
    with store.session() as s:
        return {r.id for r in iter_pages(s, query)}


def create(store: SqlStore, *resources: dict[str, Any]) -> list[StoredResource]:
    with store.session(write=True) as s:
        return [s.create(r, id=r.get("id")) for r in resources]


def patient(id: str, family: str = "Doe", given: str = "Eve", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": id, "name": [{"family": family, "given": [given]}], **extra}


def observation(id: str, subject: str | None = None, code: str = "1234-5", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "id": id,
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": "Body weight"}]},
        **extra,
    }
    if subject:
        body["subject"] = {"reference": subject}
    return body


class ScriptedIndexer:
    """The real indexer plus extra entries per resource id, for exact control over index values."""

    def __init__(self) -> None:
        self.extra: dict[str, list[IndexEntry]] = {}

    def index(self, resource: dict[str, Any]) -> list[IndexEntry]:
        return [*default_indexer().index(resource), *self.extra.get(resource["id"], [])]


@pytest.fixture
def scripted(database_url: str) -> Iterator[tuple[SqlStore, ScriptedIndexer]]:
    upgrade_database(database_url)
    indexer = ScriptedIndexer()
    sql_store = SqlStore(database_url, indexer)
    yield sql_store, indexer
    sql_store.close()


# ---------------------------------------------------------------- schema and migrations


def test_migrations_build_exactly_the_tables_the_store_queries(database_url: str) -> None:
    assert_migrations_build(database_url, metadata)


def test_unreachable_database_raises_store_unavailable() -> None:
    store = SqlStore("postgresql://postgres@127.0.0.1:1/nowhere", default_indexer())
    try:
        with pytest.raises(StoreUnavailable):
            with store.session() as s:
                s.read("Patient", "x")
    finally:
        store.close()


# ---------------------------------------------------------------- create / read / update / delete


def test_create_assigns_a_uuid_and_sets_meta_keeping_client_tags(store: SqlStore) -> None:
    body = {"resourceType": "Patient", "id": "ignored", "meta": {"versionId": "9", "tag": [{"code": "vip"}]}}
    with store.session(write=True) as s:
        stored = s.create(body)
    assert len(stored.id) == 36 and stored.id != "ignored"
    doc = stored.as_dict()
    assert doc["id"] == stored.id
    assert doc["meta"]["versionId"] == "1"
    assert doc["meta"]["tag"] == [{"code": "vip"}]
    assert datetime.fromisoformat(doc["meta"]["lastUpdated"].replace("Z", "+00:00")) == stored.last_updated
    assert stored.version_id == 1 and stored.method == "POST" and stored.etag == 'W/"1"'
    assert body["meta"]["versionId"] == "9"  # the caller's dict is left alone


def test_read_serves_exactly_the_stored_compact_json(store: SqlStore) -> None:
    (stored,) = create(store, patient("p1"))
    with store.session() as s:
        read = s.read("Patient", "p1")
    assert read.content == stored.content
    assert read.content == orjson.dumps(orjson.loads(read.content))  # compact
    assert read.last_updated == stored.last_updated and read.last_updated.tzinfo is not None


def test_read_of_unknown_resource_is_not_found(store: SqlStore) -> None:
    with store.session() as s:
        with pytest.raises(NotFound):
            s.read("Patient", "nope")
        with pytest.raises(NotFound):
            s.vread("Patient", "nope", 1)


def test_create_with_an_existing_id_conflicts(store: SqlStore) -> None:
    create(store, patient("p1"))
    with pytest.raises(Conflict):
        create(store, patient("p1"))


def test_update_writes_a_new_version_and_keeps_the_old_one(store: SqlStore) -> None:
    create(store, patient("p1", given="Eve"))
    with store.session(write=True) as s:
        stored, created = s.update(patient("p1", given="Eva"))
    assert (stored.version_id, created, stored.method) == (2, False, "PUT")
    with store.session() as s:
        assert s.read("Patient", "p1").as_dict()["name"][0]["given"] == ["Eva"]
        assert s.vread("Patient", "p1", 1).as_dict()["name"][0]["given"] == ["Eve"]
        assert s.vread("Patient", "p1", 2).as_dict()["meta"]["versionId"] == "2"
        assert s.vread("Patient", "p1", 2).last_updated > s.vread("Patient", "p1", 1).last_updated


def test_update_of_an_absent_resource_creates_it(store: SqlStore) -> None:
    with store.session(write=True) as s:
        stored, created = s.update(patient("new"))
    assert (stored.version_id, created) == (1, True)


def test_update_with_a_stale_if_match_is_refused_with_both_versions_named(store: SqlStore) -> None:
    create(store, patient("p1"))
    with store.session(write=True) as s:
        s.update(patient("p1", given="Eva"), if_match=1)
    with pytest.raises(PreconditionFailed) as err:
        with store.session(write=True) as s:
            s.update(patient("p1", given="Eve"), if_match=1)
    assert 'W/"1"' in err.value.diagnostics and 'W/"2"' in err.value.diagnostics
    with store.session() as s:
        assert s.read("Patient", "p1").version_id == 2


def test_if_match_on_an_absent_resource_is_refused(store: SqlStore) -> None:
    with pytest.raises(PreconditionFailed):
        with store.session(write=True) as s:
            s.update(patient("ghost"), if_match=1)


def test_delete_writes_a_deletion_version_and_later_reads_are_gone(store: SqlStore) -> None:
    create(store, patient("p1"))
    with store.session(write=True) as s:
        deleted = s.delete("Patient", "p1")
    assert deleted is not None and deleted.deleted and deleted.version_id == 2 and deleted.content is None
    with store.session() as s:
        with pytest.raises(Gone):
            s.read("Patient", "p1")
        marker = s.vread("Patient", "p1", 2)
        assert marker.deleted and marker.method == "DELETE"
        assert s.vread("Patient", "p1", 1).as_dict()["id"] == "p1"


def test_deleting_an_absent_or_deleted_resource_returns_none(store: SqlStore) -> None:
    create(store, patient("p1"))
    with store.session(write=True) as s:
        assert s.delete("Patient", "never") is None
        assert s.delete("Patient", "p1") is not None
        assert s.delete("Patient", "p1") is None


def test_delete_with_a_stale_if_match_is_refused(store: SqlStore) -> None:
    create(store, patient("p1"))
    with pytest.raises(PreconditionFailed):
        with store.session(write=True) as s:
            s.delete("Patient", "p1", if_match=7)


def test_update_after_delete_brings_the_resource_back_as_the_next_version(store: SqlStore) -> None:
    create(store, patient("p1"))
    with store.session(write=True) as s:
        s.delete("Patient", "p1")
        stored, created = s.update(patient("p1"))
    assert (stored.version_id, created) == (3, True)
    assert search_ids(store, q("Patient", family="doe")) == {"p1"}


def test_a_failing_session_rolls_everything_back(store: SqlStore) -> None:
    with pytest.raises(RuntimeError):
        with store.session(write=True) as s:
            s.create(patient("p1"))
            raise RuntimeError("boom")
    with store.session() as s:
        with pytest.raises(NotFound):
            s.read("Patient", "p1")


def test_writes_in_a_read_session_are_refused(store: SqlStore) -> None:
    with store.session() as s:
        with pytest.raises(FhirError):
            s.create(patient("p1"))
        with pytest.raises(FhirError):
            s.lock("x")


# ---------------------------------------------------------------- concurrency


def _run_threads(n: int, target: Any) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            barrier.wait()
            target(i)
        except BaseException as e:  # noqa: BLE001 - collected and asserted on
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return errors


def test_conditional_create_under_a_lock_yields_exactly_one_resource(store: SqlStore) -> None:
    identifier = "urn:test:mrn|1"
    query = q("Patient", identifier=identifier)

    def conditional_create(i: int) -> None:
        with store.session(write=True) as s:
            s.lock(f"Patient?identifier={identifier}")
            if not s.search(query).matches:
                s.create({**patient(f"t{i}"), "identifier": [{"system": "urn:test:mrn", "value": "1"}]}, id=f"t{i}")

    assert _run_threads(16, conditional_create) == []
    with store.session() as s:
        page = s.search(query)
    assert page.total == 1 and len(page.matches) == 1


def test_concurrent_updates_lose_no_version(store: SqlStore) -> None:
    create(store, patient("p1"))

    def update(i: int) -> None:
        with store.session(write=True) as s:
            s.update(patient("p1", given=f"g{i}"))

    assert _run_threads(8, update) == []
    with store.session() as s:
        assert s.read("Patient", "p1").version_id == 9
        history = s.history(resource_type="Patient", id="p1", count=50)
    assert [e.version_id for e in history.entries] == list(range(9, 0, -1))
    assert {e.as_dict()["name"][0]["given"][0] for e in history.entries[:-1]} == {f"g{i}" for i in range(8)}


# ---------------------------------------------------------------- search: string, token, reference, uri


@pytest.fixture
def people(store: SqlStore) -> SqlStore:
    create(
        store,
        patient("eve", "Núñez", "Eve", gender="female", identifier=[{"system": "urn:mrn", "value": "1"}]),
        patient("evelyn", "Smith", "Evelyn", gender="female", meta={"tag": [{"system": "urn:t", "code": "vip"}]}),
        patient("adam", "Smithers", "Adam", gender="male", identifier=[{"value": "nosys"}]),
        {"resourceType": "Patient", "id": "anon"},
    )
    return store


def test_string_matches_by_prefix_ignoring_case_and_accents(people: SqlStore) -> None:
    assert search_ids(people, q("Patient", name="EVE")) == {"eve", "evelyn"}
    assert search_ids(people, q("Patient", family="nunez")) == {"eve"}
    assert search_ids(people, q("Patient", family="smith")) == {"evelyn", "adam"}


def test_string_exact_and_contains(people: SqlStore) -> None:
    assert search_ids(people, q("Patient", {"family:exact": "Núñez"})) == {"eve"}
    assert search_ids(people, q("Patient", {"family:exact": "nunez"})) == set()
    assert search_ids(people, q("Patient", {"family:contains": "ITH"})) == {"evelyn", "adam"}
    assert search_ids(people, q("Patient", {"name:contains": "ely"})) == {"evelyn"}


def test_values_are_ored_and_parameters_anded(people: SqlStore) -> None:
    assert search_ids(people, q("Patient", given="adam,evelyn")) == {"adam", "evelyn"}
    assert search_ids(people, q("Patient", given="eve", family="smith")) == {"evelyn"}


def test_missing_modifier(people: SqlStore) -> None:
    assert search_ids(people, q("Patient", {"name:missing": "true"})) == {"anon"}
    assert search_ids(people, q("Patient", {"identifier:missing": "false"})) == {"eve", "adam"}


def test_token_code_system_and_no_system(people: SqlStore) -> None:
    assert search_ids(people, q("Patient", gender="female")) == {"eve", "evelyn"}
    assert search_ids(people, q("Patient", identifier="urn:mrn|1")) == {"eve"}
    assert search_ids(people, q("Patient", identifier="urn:mrn|")) == {"eve"}
    assert search_ids(people, q("Patient", identifier="|nosys")) == {"adam"}
    assert search_ids(people, q("Patient", identifier="|1")) == set()
    assert search_ids(people, q("Patient", _tag="urn:t|vip")) == {"evelyn"}


def test_token_not_includes_resources_without_the_element(people: SqlStore) -> None:
    assert search_ids(people, q("Patient", {"gender:not": "female"})) == {"adam", "anon"}


def test_token_text_matches_display_by_prefix(store: SqlStore) -> None:
    create(store, observation("o1"), observation("o2", code="999"))
    assert search_ids(store, q("Observation", {"code:text": "body WE"})) == {"o1", "o2"}
    assert search_ids(store, q("Observation", {"code:text": "weight"})) == set()
    assert search_ids(store, q("Observation", code="http://loinc.org|999")) == {"o2"}


def test_reference_by_type_and_id_by_id_and_by_type_modifier(store: SqlStore) -> None:
    create(
        store,
        patient("p1"),
        observation("o1", "Patient/p1"),
        observation("o2", "Group/p1"),
        observation("o3", "Patient/p2"),
        observation("o4", "http://other.org/fhir/Patient/p1"),
        observation("o5"),
    )
    # o4 may match too: the indexer cannot tell another server's absolute URL from one of ours
    assert search_ids(store, q("Observation", subject="Patient/p1")) - {"o4"} == {"o1"}
    assert {"o1", "o2"} <= search_ids(store, q("Observation", subject="p1"))
    assert "o2" not in search_ids(store, q("Observation", {"subject:Patient": "p1"}))
    assert search_ids(store, q("Observation", subject="http://other.org/fhir/Patient/p1")) == {"o4"}
    assert search_ids(store, q("Observation", {"subject:missing": "true"})) == {"o5"}


def test_reference_identifier_modifier(store: SqlStore) -> None:
    body = observation("o1")
    body["subject"] = {"identifier": {"system": "urn:mrn", "value": "42"}}
    create(store, body, observation("o2", "Patient/p1"))
    assert search_ids(store, q("Observation", {"subject:identifier": "urn:mrn|42"})) == {"o1"}
    assert search_ids(store, q("Observation", {"subject:identifier": "42"})) == {"o1"}
    assert search_ids(store, q("Observation", {"subject:identifier": "urn:other|42"})) == set()


def test_uri_exact_below_above_and_contains(store: SqlStore) -> None:
    create(
        store,
        *[
            {"resourceType": "ValueSet", "id": vid, "status": "active", "url": url}
            for vid, url in [
                ("a", "http://acme.org/fhir/ValueSet/123"),
                ("b", "http://acme.org/fhir/ValueSet/456"),
                ("c", "http://other.org/ValueSet/x"),
            ]
        ],
    )
    assert search_ids(store, q("ValueSet", url="http://acme.org/fhir/ValueSet/123")) == {"a"}
    assert search_ids(store, q("ValueSet", url="http://acme.org/fhir/ValueSet/12")) == set()
    assert search_ids(store, q("ValueSet", {"url:below": "http://acme.org/fhir/"})) == {"a", "b"}
    assert search_ids(store, q("ValueSet", {"url:above": "http://acme.org/fhir/ValueSet/123/_history/5"})) == {"a"}
    url_def = SearchParamDef("url", "uri", "ValueSet.url")
    contains = SearchQuery(
        ("ValueSet",), (ParamClause(url_def, (SearchValue(raw="OTHER", text="other"),), "contains"),)
    )
    assert search_ids(store, contains) == {"c"}


def test_unsupported_modifier_is_a_bad_request(store: SqlStore) -> None:
    gender = SearchParamDef("gender", "token", "Patient.gender")
    query = SearchQuery(("Patient",), (ParamClause(gender, (SearchValue(raw="x", code="x"),), "in"),))
    with store.session() as s:
        with pytest.raises(BadRequest):
            s.search(query)


# ---------------------------------------------------------------- search: date, number, quantity


DATE_RANGES = {
    "day": (datetime(2024, 3, 10), datetime(2024, 3, 11)),
    "straddle": (datetime(2024, 3, 9, 12), datetime(2024, 3, 10, 12)),
    "before": (datetime(2024, 1, 1), datetime(2024, 1, 2)),
    "after": (datetime(2024, 6, 1), datetime(2024, 6, 2)),
    "open_end": (datetime(2024, 3, 10, 6), None),
    "open_start": (None, datetime(2024, 3, 10, 6)),
    "far": (datetime(1990, 1, 1), datetime(1990, 1, 2)),
}


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        ("eq", {"day"}),
        ("ne", {"straddle", "before", "after", "open_end", "open_start", "far"}),
        ("gt", {"after", "open_end"}),
        ("lt", {"straddle", "before", "open_start", "far"}),
        ("ge", {"after", "open_end", "day"}),
        ("le", {"straddle", "before", "open_start", "far", "day"}),
        ("sa", {"after"}),
        ("eb", {"before", "far"}),
        ("ap", {"day", "straddle", "before", "after", "open_end", "open_start"}),
    ],
)
def test_date_prefixes_compare_ranges(
    scripted: tuple[SqlStore, ScriptedIndexer], prefix: str, expected: set[str]
) -> None:
    store, indexer = scripted
    for name, (low, high) in DATE_RANGES.items():
        indexer.extra[name] = [DateIndex("date", low, high)]
    create(store, *[{"resourceType": "Observation", "id": n, "status": "final", "code": {}} for n in DATE_RANGES])
    assert search_ids(store, q("Observation", date=f"{prefix}2024-03-10")) == expected


def test_date_search_on_real_values_and_time_zones(store: SqlStore) -> None:
    create(
        store,
        patient("p80", birthDate="1980-05-17"),
        patient("p81", birthDate="1981"),
        observation("late", effectiveDateTime="2024-01-01T23:30:00-02:00"),
    )
    assert search_ids(store, q("Patient", birthdate="1980")) == {"p80"}
    assert search_ids(store, q("Patient", birthdate="ge1981-01-01")) == {"p81"}
    assert search_ids(store, q("Patient", birthdate=["ge1980", "lt1981"])) == {"p80"}
    assert search_ids(store, q("Observation", date="2024-01-02")) == {"late"}  # 01:30 UTC


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("100", {"100", "100.4"}),
        ("eq100", {"100", "100.4"}),
        ("ne100", {"10", "1000"}),
        ("gt100", {"100.4", "1000"}),
        ("ge100", {"100", "100.4", "1000"}),
        ("lt100", {"10"}),
        ("le100", {"10", "100"}),
        ("sa100", {"1000"}),
        ("eb100", {"10"}),
        ("ap100", {"100", "100.4"}),
        ("100.40", {"100.4"}),
        ("10,1000", {"10", "1000"}),
    ],
)
def test_number_prefixes(store: SqlStore, value: str, expected: set[str]) -> None:
    create(
        store,
        *[
            {
                "resourceType": "RiskAssessment",
                "id": v.replace(".", "-"),
                "status": "final",
                "subject": {"reference": "Patient/x"},
                "prediction": [{"probabilityDecimal": float(v)}],
            }
            for v in ("10", "100", "100.4", "1000")
        ],
    )
    got = search_ids(store, q("RiskAssessment", probability=value))
    assert {g.replace("-", ".") for g in got} == expected


def test_quantity_with_system_code_unit_and_prefix(store: SqlStore) -> None:
    ucum = "http://unitsofmeasure.org"
    create(
        store,
        observation("kg", valueQuantity={"value": 72.5, "unit": "kg", "system": ucum, "code": "kg"}),
        observation("g", valueQuantity={"value": 72500, "unit": "g", "system": ucum, "code": "g"}),
        observation("mg", valueQuantity={"value": 5.4, "unit": "mg"}),
    )
    assert search_ids(store, q("Observation", {"value-quantity": f"72.5|{ucum}|kg"})) == {"kg"}
    assert search_ids(store, q("Observation", {"value-quantity": "5.4||mg"})) == {"mg"}
    assert search_ids(store, q("Observation", {"value-quantity": "gt70"})) == {"kg", "g"}
    assert search_ids(store, q("Observation", {"value-quantity": f"lt100000|{ucum}|g"})) == {"g"}
    assert search_ids(store, q("Observation", {"value-quantity:missing": "true"})) == set()


# ---------------------------------------------------------------- search: chain, _has, _id, _lastUpdated, system


@pytest.fixture
def clinic(store: SqlStore) -> SqlStore:
    create(
        store,
        {"resourceType": "Organization", "id": "org", "name": "Acme"},
        patient("eve", "Doe", "Eve", managingOrganization={"reference": "Organization/org"}),
        patient("bob", "Roe", "Bob", link=[{"other": {"reference": "Patient/eve"}, "type": "seealso"}]),
        observation("o-eve-1", "Patient/eve"),
        observation("o-eve-2", "Patient/eve", code="999"),
        observation("o-bob", "Patient/bob", code="999"),
    )
    return store


def test_chained_search_follows_the_reference(clinic: SqlStore) -> None:
    assert search_ids(clinic, q("Observation", {"subject:Patient.name": "eve"})) == {"o-eve-1", "o-eve-2"}
    assert search_ids(clinic, q("Observation", {"patient.family": "roe"})) == {"o-bob"}
    assert search_ids(clinic, q("Patient", {"organization.name": "acme"})) == {"eve"}


def test_chained_search_skips_deleted_targets(clinic: SqlStore) -> None:
    with clinic.session(write=True) as s:
        s.delete("Patient", "bob")
    assert search_ids(clinic, q("Observation", {"patient.family": "roe"})) == set()


def test_has_matches_resources_referenced_by_matching_resources(clinic: SqlStore) -> None:
    assert search_ids(clinic, q("Patient", {"_has:Observation:subject:code": "1234-5"})) == {"eve"}
    assert search_ids(clinic, q("Patient", {"_has:Observation:subject:code": "999"})) == {"eve", "bob"}
    assert search_ids(clinic, q("Patient", {"_has:Observation:subject:code": "nothing"})) == set()


def test_id_and_id_not(clinic: SqlStore) -> None:
    assert search_ids(clinic, q("Patient", _id="eve,nobody")) == {"eve"}
    assert search_ids(clinic, q("Patient", {"_id:not": "eve"})) == {"bob"}


def test_last_updated_prefixes(store: SqlStore) -> None:
    (first,) = create(store, patient("first"))
    (second,) = create(store, patient("second"))
    mid = second.last_updated.astimezone(UTC).isoformat().replace("+00:00", "Z")
    assert search_ids(store, q("Patient", _lastUpdated=f"lt{mid}")) == {"first"}
    assert search_ids(store, q("Patient", _lastUpdated=f"ge{mid}")) == {"second"}
    assert search_ids(store, q("Patient", _lastUpdated=["gt2000-01-01", f"le{mid}"])) == {"first", "second"}
    assert search_ids(store, q("Patient", _lastUpdated="sa2999")) == set()
    assert first.last_updated < second.last_updated


def test_system_level_search_spans_the_given_types(clinic: SqlStore) -> None:
    query = q(["Patient", "Observation", "Organization"], _id="eve,o-bob,org")
    assert search_ids(clinic, query) == {"eve", "o-bob", "org"}
    query = q(["Patient", "Observation"], _id="eve,o-bob,org")
    assert search_ids(clinic, query) == {"eve", "o-bob"}


def test_deleted_resources_never_match(clinic: SqlStore) -> None:
    with clinic.session(write=True) as s:
        s.delete("Observation", "o-eve-1")
    assert search_ids(clinic, q("Observation", subject="Patient/eve")) == {"o-eve-2"}
    with clinic.session() as s:
        assert s.search(q("Observation")).total == 2


def test_searches_after_refreshing_planner_statistics(people: SqlStore) -> None:
    people.analyze()
    assert search_ids(people, q("Patient", family="smith")) == {"evelyn", "adam"}
    assert search_ids(people, q("Patient", {"gender:not": "female"})) == {"adam", "anon"}


def test_index_rows_follow_updates(store: SqlStore) -> None:
    create(store, patient("p1", family="Old"))
    with store.session(write=True) as s:
        s.update(patient("p1", family="New"))
    assert search_ids(store, q("Patient", family="old")) == set()
    assert search_ids(store, q("Patient", family="new")) == {"p1"}


# ---------------------------------------------------------------- sort, paging, totals


def _page_ids(store: SqlStore, query: SearchQuery) -> list[str]:
    with store.session() as s:
        return [r.id for r in iter_pages(s, query)]


def test_sort_by_parameter_both_directions_with_missing_values_last(store: SqlStore) -> None:
    create(
        store,
        patient("c", "Cole", birthDate="1990"),
        patient("a", "Abel", birthDate="1970"),
        patient("b", "Baker"),
        {"resourceType": "Patient", "id": "z"},
    )
    assert _page_ids(store, q("Patient", _sort="family")) == ["a", "b", "c", "z"]
    assert _page_ids(store, q("Patient", _sort="-family")) == ["c", "b", "a", "z"]
    assert _page_ids(store, q("Patient", _sort="birthdate", _count="1")) == ["a", "c", "b", "z"]
    assert _page_ids(store, q("Patient", _sort="-birthdate,_id", _count="2")) == ["c", "a", "b", "z"]
    assert _page_ids(store, q("Patient", _sort="-_id")) == ["z", "c", "b", "a"]


def test_sort_by_last_updated_and_ties_are_stable(store: SqlStore) -> None:
    create(store, *[patient(f"p{i}", family="Same") for i in range(5)])
    assert _page_ids(store, q("Patient", _sort="-_lastUpdated")) == [f"p{i}" for i in reversed(range(5))]
    assert _page_ids(store, q("Patient", _sort="family", _count="2")) == [f"p{i}" for i in range(5)]


def test_sort_by_reference_and_token(clinic: SqlStore) -> None:
    assert _page_ids(clinic, q("Observation", _sort="subject")) == ["o-bob", "o-eve-1", "o-eve-2"]
    assert _page_ids(clinic, q("Observation", _sort="-code", _count="1")) == ["o-eve-2", "o-bob", "o-eve-1"]


def test_paging_to_the_end_has_no_duplicates_or_gaps_while_rows_are_inserted(store: SqlStore) -> None:
    create(store, *[patient(f"p{i:02d}", family=f"F{i % 7}") for i in range(23)])
    for sort in ("family", "-family", "_id", ""):
        params = {"_count": "5", **({"_sort": sort} if sort else {})}
        query = q("Patient", params)
        seen: list[str] = []
        with store.session() as s:
            before = s.search(q("Patient", _summary="count")).total
            page = s.search(query)
        assert page.total == before
        pages = 0
        while True:
            seen += [r.id for r in page.matches]
            pages += 1
            # a writer sneaks in between pages: sorting before, after and among the rows already seen
            create(store, patient(f"new-{sort}-{pages}", family="A" if pages % 2 else "Z"))
            if not page.next_cursor:
                break
            with store.session() as s:
                page = s.search(replace(query, cursor=page.next_cursor))
        originals = [i for i in seen if i.startswith("p")]
        assert sorted(originals) == [f"p{i:02d}" for i in range(23)], sort
        assert len(seen) == len(set(seen)), sort


def test_previous_cursor_returns_the_previous_page(store: SqlStore) -> None:
    create(store, *[patient(f"p{i}", family=f"F{i}") for i in range(7)])
    query = q("Patient", _sort="-family", _count="3")
    with store.session() as s:
        first = s.search(query)
        second = s.search(replace(query, cursor=first.next_cursor))
        assert first.prev_cursor is None
        back = s.search(replace(query, cursor=second.prev_cursor))
        third = s.search(replace(query, cursor=second.next_cursor))
    assert [r.id for r in back.matches] == [r.id for r in first.matches] == ["p6", "p5", "p4"]
    assert back.prev_cursor is None and back.next_cursor is not None
    assert [r.id for r in third.matches] == ["p0"] and third.next_cursor is None


def test_totals_and_summary_count(people: SqlStore) -> None:
    with people.session() as s:
        assert s.search(q("Patient", _count="1")).total == 4
        assert s.search(q("Patient", _total="none")).total is None
        counted = s.search(q("Patient", _summary="count"))
    assert counted.total == 4 and counted.matches == []


def test_a_cursor_from_another_query_or_garbage_is_a_bad_request(people: SqlStore) -> None:
    with people.session() as s:
        page = s.search(q("Patient", _count="1", _sort="family"))
        with pytest.raises(BadRequest):
            s.search(replace(q("Patient", _count="1"), cursor=page.next_cursor))
        with pytest.raises(BadRequest):
            s.search(replace(q("Patient"), cursor="not-a-cursor"))


# ---------------------------------------------------------------- _include / _revinclude


def test_include_returns_the_targets_once(clinic: SqlStore) -> None:
    with clinic.session() as s:
        page = s.search(q("Observation", {"_include": "Observation:subject", "code": "999"}))
    assert ids(page) == {"o-eve-2", "o-bob"}
    assert sorted(r.id for r in page.included) == ["bob", "eve"]


def test_revinclude_and_iterate(clinic: SqlStore) -> None:
    with clinic.session() as s:
        page = s.search(q("Patient", {"_id": "eve", "_revinclude": "Observation:subject"}))
        assert sorted(r.id for r in page.included) == ["o-eve-1", "o-eve-2"]
        page = s.search(
            q("Observation", {"_id": "o-bob", "_include": "Observation:subject", "_include:iterate": "Patient:link"})
        )
        assert [r.id for r in page.included] == ["bob", "eve"]
        # without :iterate an include applies to the matches only, even when its source type is included
        base = q("Observation", {"_id": "o-bob", "_include": "Observation:subject"})
        link = SearchParamDef("link", "reference", "Patient.link.other", targets=("Patient",))
        page = s.search(replace(base, includes=(*base.includes, Include("Patient", link))))
        assert [r.id for r in page.included] == ["bob"]


def test_wildcard_include_and_deleted_targets(clinic: SqlStore) -> None:
    with clinic.session() as s:
        page = s.search(q("Patient", {"_id": "eve,bob", "_include": "*"}))
        assert {r.id for r in page.included} == {"org"}
    with clinic.session(write=True) as s:
        s.delete("Organization", "org")
        s.delete("Observation", "o-eve-2")
    with clinic.session() as s:
        assert s.search(q("Patient", {"_id": "eve", "_include": "*"})).included == []
        page = s.search(q("Patient", {"_id": "eve", "_revinclude": "*"}))
        assert {r.id for r in page.included} == {"o-eve-1", "bob"}


# ---------------------------------------------------------------- history


def test_instance_history_is_newest_first_with_methods(store: SqlStore) -> None:
    create(store, patient("p1"))
    with store.session(write=True) as s:
        s.update(patient("p1", given="Eva"), method="PATCH")
        s.delete("Patient", "p1")
    with store.session() as s:
        history = s.history(resource_type="Patient", id="p1")
    assert [(e.version_id, e.method, e.deleted) for e in history.entries] == [
        (3, "DELETE", True),
        (2, "PATCH", False),
        (1, "POST", False),
    ]
    assert history.total == 3


def test_history_of_unknown_resource_is_not_found(store: SqlStore) -> None:
    with store.session() as s:
        with pytest.raises(NotFound):
            s.history(resource_type="Patient", id="nope")


def test_type_and_system_history_with_since_and_paging(store: SqlStore) -> None:
    create(store, patient("p1"), observation("o1"))
    with store.session() as s:
        marker = s.read("Observation", "o1").last_updated
    with store.session(write=True) as s:
        s.update(patient("p1", given="Eva"))
        s.update(patient("p2"))
    with store.session() as s:
        assert [(e.id, e.version_id) for e in s.history(resource_type="Patient").entries] == [
            ("p2", 1),
            ("p1", 2),
            ("p1", 1),
        ]
        system = s.history(count=2)
        assert [(e.resource_type, e.id) for e in system.entries] == [("Patient", "p2"), ("Patient", "p1")]
        rest = s.history(count=2, cursor=system.next_cursor)
        assert [(e.resource_type, e.id, e.version_id) for e in rest.entries] == [
            ("Observation", "o1", 1),
            ("Patient", "p1", 1),
        ]
        assert rest.next_cursor is None and system.total == 4
        back = s.history(count=2, cursor=rest.prev_cursor)
        assert [e.id for e in back.entries] == ["p2", "p1"]
        since = s.history(since=marker + timedelta(microseconds=1))
        assert {(e.id, e.version_id) for e in since.entries} == {("p2", 1), ("p1", 2)}


def test_history_at_returns_the_versions_current_then(store: SqlStore) -> None:
    (v1,) = create(store, patient("p1"))
    with store.session(write=True) as s:
        s.update(patient("p1", given="Eva"))
        v2 = s.update(patient("p1", given="Ava"))[0]
    with store.session() as s:
        at_v1 = s.history(resource_type="Patient", id="p1", at=v1.last_updated)
        at_v3 = s.history(resource_type="Patient", at=v2.last_updated + timedelta(seconds=1))
    assert [e.version_id for e in at_v1.entries] == [1]
    assert [e.version_id for e in at_v3.entries] == [3]


def test_numbers_survive_paging_cursors(store: SqlStore) -> None:
    create(
        store,
        *[
            {
                "resourceType": "RiskAssessment",
                "id": f"r{i}",
                "status": "final",
                "subject": {"reference": "Patient/x"},
                "prediction": [{"probabilityDecimal": float(Decimal("0.1") * i)}],
            }
            for i in range(6)
        ],
    )
    got = _page_ids(store, q("RiskAssessment", _sort="-probability", _count="2"))
    assert got == [f"r{i}" for i in reversed(range(6))]


def _conditional_create_in_process(url: str, n: int) -> None:
    sql_store = SqlStore(url, default_indexer(), pool_size=1)
    try:
        query = q("Patient", identifier="urn:test:mrn|proc")
        with sql_store.session(write=True) as s:
            s.lock("Patient?identifier=urn:test:mrn|proc")
            if not s.search(query).matches:
                s.create({"resourceType": "Patient", "identifier": [{"system": "urn:test:mrn", "value": "proc"}]})
    finally:
        sql_store.close()


@pytest.mark.slow
def test_conditional_create_across_processes_yields_exactly_one_resource(store: SqlStore, database_url: str) -> None:
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_conditional_create_in_process, args=(database_url, i)) for i in range(8)]
    for p in processes:
        p.start()
    for p in processes:
        p.join(180)
    assert [p.exitcode for p in processes] == [0] * 8
    assert len(search_ids(store, q("Patient", identifier="urn:test:mrn|proc"))) == 1
