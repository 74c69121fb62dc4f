"""The store's cheap paths: read/vread/search outside a session (autocommit, one statement) and the bulk-written
history and index rows of write sessions. They must answer exactly what the session path answers."""

from __future__ import annotations

from dataclasses import replace

import pytest

from app.adapters.sql_store import SqlStore
from app.fhir.errors import Gone, NotFound
from app.fhir.store import iter_pages
from tests.adapters.test_sql_store import create, ids, patient, q


def test_store_read_answers_what_a_session_read_answers(store: SqlStore) -> None:
    (created,) = create(store, patient("p1", identifier=[{"system": "urn:s", "value": "1"}]))
    with store.session() as s:
        in_session = s.read("Patient", "p1")
    assert store.read("Patient", "p1") == in_session
    assert in_session.content == created.content and in_session.last_updated == created.last_updated


def test_store_read_of_unknown_and_deleted_resources(store: SqlStore) -> None:
    create(store, patient("p1"))
    with store.session(write=True) as s:
        s.delete("Patient", "p1")
    with pytest.raises(NotFound):
        store.read("Patient", "nope")
    with pytest.raises(Gone) as gone:
        store.read("Patient", "p1")
    assert gone.value.headers["ETag"] == 'W/"2"'


def test_store_vread_serves_every_version_including_the_deletion(store: SqlStore) -> None:
    (v1,) = create(store, patient("p1", family="One"))
    with store.session(write=True) as s:
        v2, _ = s.update(patient("p1", family="Two"))
        s.delete("Patient", "p1")
    assert store.vread("Patient", "p1", 1) == v1  # POST: history keeps how each version came to be
    assert store.vread("Patient", "p1", 2).content == v2.content
    assert store.vread("Patient", "p1", 2).method == "PUT"
    deletion = store.vread("Patient", "p1", 3)
    assert deletion.deleted and deletion.content is None and deletion.method == "DELETE"
    with pytest.raises(NotFound):
        store.vread("Patient", "p1", 4)


def test_store_search_pages_and_totals_like_a_session_search(store: SqlStore) -> None:
    create(store, *[patient(f"p{i}", family="Same" if i % 2 else "Other") for i in range(7)])
    query = replace(q("Patient", family="Same"), count=2)
    first = store.search(query)
    assert first.total == 3 and len(first.matches) == 2 and first.next_cursor
    last = store.search(replace(query, cursor=first.next_cursor))
    assert last.total == 3 and ids(last) == {"p5"} and last.next_cursor is None
    with store.session() as s:
        assert {r.id for r in iter_pages(s, query)} == ids(first) | ids(last) == {"p1", "p3", "p5"}


def test_store_search_totals_an_empty_result_and_an_empty_later_page(store: SqlStore) -> None:
    create(store, patient("p1", family="Only"), patient("p2", family="Only"))
    assert store.search(q("Patient", family="Nobody")).total == 0
    query = replace(q("Patient", family="Only"), count=1)
    first = store.search(query)
    assert first.total == 2 and ids(first) == {"p1"} and first.next_cursor
    with store.session(write=True) as s:
        s.delete("Patient", "p2")
    after = store.search(replace(query, cursor=first.next_cursor))  # nothing left after p1: counted on its own
    assert after.matches == [] and after.total == 1


def test_store_search_with_includes_and_sorting(store: SqlStore) -> None:
    create(
        store,
        patient("p1", family="Bravo"),
        patient("p2", family="Alpha"),
        {
            "resourceType": "Observation",
            "id": "o1",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": "Patient/p1"},
        },
    )
    sorted_page = store.search(q("Patient", _sort="family"))
    assert [r.id for r in sorted_page.matches] == ["p2", "p1"] and sorted_page.total == 2
    included = store.search(q("Observation", _include="Observation:subject"))
    assert ids(included) == {"o1"} and {r.id for r in included.included} == {"p1"}


def test_updating_a_resource_twice_in_one_session_leaves_only_the_last_index_rows(store: SqlStore) -> None:
    create(store, patient("p1", family="First"))
    with store.session(write=True) as s:
        s.update(patient("p1", family="Second"))
        s.update(patient("p1", family="Third"))
        # a search in the same session sees the queued rows
        assert ids(s.search(q("Patient", family="Third"))) == {"p1"}
        s.update(patient("p1", family="Fourth"))
    assert ids(store.search(q("Patient", family="Fourth"))) == {"p1"}
    for stale in ("First", "Second", "Third"):
        assert store.search(q("Patient", family=stale)).total == 0
    with store.session() as s:
        history = s.history(resource_type="Patient", id="p1")
    assert [e.version_id for e in history.entries] == [4, 3, 2, 1]


def test_history_and_index_rows_of_a_failed_session_are_never_written(store: SqlStore) -> None:
    create(store, patient("p1", family="Kept"))
    with pytest.raises(RuntimeError), store.session(write=True) as s:
        s.update(patient("p1", family="Lost"))
        s.create(patient("p2", family="Lost"))
        raise RuntimeError("boom")
    assert store.search(q("Patient", family="Lost")).total == 0
    with store.session() as s:
        assert s.history(resource_type="Patient", id="p1").total == 1
