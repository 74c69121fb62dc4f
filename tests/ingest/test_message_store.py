"""The SQL message store on every backend: schema, dedupe, claims, listing and paging."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.adapters.message_store import SqlMessageStore, metadata
from app.fhir.errors import BadRequest
from app.services.ports import MessageHeaderFacts, MessageQuery
from tests.migrations import assert_migrations_build


def facts(control_id: str = "C1", code: str = "ADT", trigger: str = "A01", facility: str = "FAC") -> MessageHeaderFacts:
    return MessageHeaderFacts("APP", facility, control_id, code, trigger, "2.5")


def test_migration_builds_exactly_the_table_the_adapter_queries(database_url: str) -> None:
    assert_migrations_build(database_url, metadata)


def test_second_delivery_of_a_control_id_is_stored_as_a_duplicate(messages: SqlMessageStore) -> None:
    first, none = messages.add(b"raw1", facts(), peer="p", ack_mode="commit")
    second, original = messages.add(b"raw2", facts(), peer="p", ack_mode="commit")

    assert none is None and first.status == "received"
    assert original is not None and original.id == first.id
    assert second.status == "duplicate" and second.duplicate_of == first.id and second.raw == b"raw2"


def test_messages_without_a_control_id_are_never_duplicates(messages: SqlMessageStore) -> None:
    for _ in range(2):
        _, original = messages.add(b"junk", MessageHeaderFacts(), peer="p", ack_mode="commit", status="rejected")
        assert original is None


def test_concurrent_deliveries_of_one_message_yield_exactly_one_original(messages: SqlMessageStore) -> None:
    results: list[Any] = []
    barrier = threading.Barrier(4)

    def deliver() -> None:
        barrier.wait()
        results.append(messages.add(b"raw", facts("RACE"), peer="p", ack_mode="commit"))

    threads = [threading.Thread(target=deliver) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    originals = [rec for rec, original in results if original is None]
    assert len(originals) == 1
    assert all(original.id == originals[0].id for _, original in results if original is not None)


def test_a_claim_excludes_other_takers_until_released(messages: SqlMessageStore) -> None:
    rec, _ = messages.add(b"raw", facts(), peer="p", ack_mode="receipt")

    taken = messages.claim(rec.id, seconds=60)
    assert taken is not None and taken.attempts == 1
    assert messages.claim(rec.id, seconds=60) is None
    assert messages.claim_pending(10, seconds=60) == []
    messages.release(rec.id)
    assert [r.id for r in messages.claim_pending(10, seconds=60)] == [rec.id]


def test_an_expired_claim_can_be_taken_again(messages: SqlMessageStore) -> None:
    rec, _ = messages.add(b"raw", facts(), peer="p", ack_mode="commit", claim_seconds=0.001)
    import time

    time.sleep(0.01)
    [again] = messages.claim_pending(10, seconds=60)
    assert again.id == rec.id and again.attempts == 2


def test_claim_pending_takes_the_oldest_first_and_skips_finished(messages: SqlMessageStore) -> None:
    ids = [messages.add(b"r", facts(f"C{i}"), peer="p", ack_mode="receipt")[0].id for i in range(3)]
    messages.finish(ids[0], status="processed", keep_ack=True)

    assert [r.id for r in messages.claim_pending(1, seconds=60)] == [ids[1]]
    assert [r.id for r in messages.claim_pending(5, seconds=60)] == [ids[2]]


def test_finish_records_the_outcome(messages: SqlMessageStore) -> None:
    rec, _ = messages.add(b"raw", facts(), peer="p", ack_mode="commit", claim_seconds=60)
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "required"}]}
    done = messages.finish(rec.id, status="error", ack_code="AE", ack=b"MSH|...", error=outcome, resources=[])

    assert (done.status, done.ack_code, done.ack, done.error) == ("error", "AE", b"MSH|...", outcome)
    assert done.processed_at is not None
    assert messages.get(rec.id) == done
    assert messages.get("nope") is None


def test_list_filters_and_pages_newest_first(messages: SqlMessageStore) -> None:
    added = []
    for i, (code, trigger) in enumerate([("ADT", "A01"), ("ORU", "R01"), ("ADT", "A08"), ("ADT", "A01")]):
        rec, _ = messages.add(b"r", facts(f"L{i}", code, trigger), peer="p", ack_mode="commit")
        added.append(rec)
    messages.finish(added[1].id, status="error")

    def ids(**kw: Any) -> list[str]:
        return [r.id for r in messages.search(MessageQuery(**kw)).records]

    assert ids() == [r.id for r in reversed(added)]
    assert ids(status="error") == [added[1].id]
    assert ids(message_code="adt") == [added[3].id, added[2].id, added[0].id]
    assert ids(message_code="ADT", trigger_event="A01") == [added[3].id, added[0].id]
    assert ids(control_id="L2") == [added[2].id]
    assert ids(received_from=datetime.now(UTC) + timedelta(hours=1)) == []
    assert len(ids(received_to=datetime.now(UTC) + timedelta(hours=1))) == 4

    page1 = messages.search(MessageQuery(count=3))
    page2 = messages.search(MessageQuery(count=3, cursor=page1.next_cursor))
    assert [r.id for r in page1.records + page2.records] == [r.id for r in reversed(added)]
    assert page2.next_cursor is None


def test_a_forged_cursor_is_a_bad_request(messages: SqlMessageStore) -> None:
    with pytest.raises(BadRequest):
        messages.search(MessageQuery(cursor="not-a-cursor"))
