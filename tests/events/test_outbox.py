"""The transactional outbox and the relay: one event per change, committed with it, published exactly once."""

from __future__ import annotations

import threading
from typing import Any

import pytest
import sqlalchemy as sa

from app.adapters.outbox_sql import event_outbox, metadata
from tests.events.resources import PATIENT, put
from tests.migrations import assert_migrations_build


def _rows(backbone: Any) -> list[Any]:
    with backbone.services.store.session() as s:
        return list(s.connection.execute(sa.select(event_outbox).order_by(event_outbox.c.id)))


def test_migration_0004_builds_exactly_the_outbox_tables_the_adapter_queries(database_url: str) -> None:
    assert_migrations_build(database_url, metadata)


def test_create_update_delete_each_write_one_outbox_row_with_the_version(backbone: Any) -> None:
    store = backbone.services.store
    put(store, PATIENT)
    put(store, {**PATIENT, "gender": "female"})
    with store.session(write=True) as s:
        s.delete("Patient", "p1")
    rows = _rows(backbone)
    assert [(r.resource_type, r.resource_id, r.version_id, r.operation) for r in rows] == [
        ("Patient", "p1", 1, "create"),
        ("Patient", "p1", 2, "update"),
        ("Patient", "p1", 3, "delete"),
    ]
    assert len({r.event_id for r in rows}) == 3
    assert all(r.published_at is None for r in rows)
    assert rows[0].id < rows[1].id < rows[2].id


def test_a_rolled_back_write_leaves_neither_the_resource_nor_its_event(backbone: Any) -> None:
    store = backbone.services.store
    with pytest.raises(RuntimeError), store.session(write=True) as s:
        s.update(dict(PATIENT))
        raise RuntimeError("the transaction fails after the write")
    assert _rows(backbone) == []
    with store.session() as s, pytest.raises(Exception, match="not known"):
        s.read("Patient", "p1")


def test_relay_publishes_every_row_once_and_marks_it_published(backbone: Any) -> None:
    put(backbone.services.store, *({**PATIENT, "id": f"p{i}"} for i in range(5)))
    relay = backbone.bus.relay(backbone.outbox)
    assert relay.publish_batch() == 5
    assert relay.publish_batch() == 0
    assert backbone.bus.redis.xlen(backbone.bus.stream_key) == 5
    assert backbone.outbox.count(unpublished=True) == 0
    entries = backbone.bus.redis.xrange(backbone.bus.stream_key)
    assert [e[1][b"id"] for e in entries] == [f"p{i}".encode() for i in range(5)]


def test_a_relay_restarted_after_publishing_but_before_marking_publishes_nothing_twice(backbone: Any) -> None:
    put(backbone.services.store, *({**PATIENT, "id": f"p{i}"} for i in range(3)))
    rows = backbone.outbox.unpublished(10)
    assert backbone.bus.publish(rows) == 3  # ... and the relay dies here, before mark_published
    assert backbone.outbox.count(unpublished=True) == 3
    assert backbone.bus.relay(backbone.outbox).publish_batch() == 3  # the restarted relay goes over them again
    assert backbone.bus.redis.xlen(backbone.bus.stream_key) == 3
    assert backbone.outbox.count(unpublished=True) == 0


def test_two_relays_running_at_once_publish_each_row_once(backbone: Any) -> None:
    put(backbone.services.store, *({**PATIENT, "id": f"p{i}"} for i in range(40)))
    relays = [backbone.bus.relay(backbone.outbox) for _ in range(2)]
    barrier = threading.Barrier(2)

    def run(relay: Any) -> None:
        barrier.wait()
        while relay.publish_batch(limit=7):
            pass

    threads = [threading.Thread(target=run, args=(r,)) for r in relays]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ids = [e[1][b"oid"] for e in backbone.bus.redis.xrange(backbone.bus.stream_key)]
    assert len(ids) == 40
    assert len(set(ids)) == 40
    assert backbone.outbox.count(unpublished=True) == 0


def test_housekeeping_purges_only_outbox_rows_published_before_the_retention(backbone: Any) -> None:
    from datetime import UTC, datetime, timedelta

    put(backbone.services.store, *({**PATIENT, "id": f"p{i}"} for i in range(3)))
    backbone.outbox.mark_published([r.id for r in backbone.outbox.unpublished(2)])
    assert backbone.outbox.purge_published(datetime.now(UTC) - timedelta(days=1)) == 0
    assert backbone.outbox.purge_published(datetime.now(UTC) + timedelta(seconds=5)) == 2
    assert [r.resource_id for r in backbone.outbox.unpublished(10)] == ["p2"]  # unpublished rows are never purged


def test_a_row_committed_after_a_higher_id_was_published_is_still_published(backbone: Any) -> None:
    store = backbone.services.store
    if store.dialect == "sqlite":
        pytest.skip("SQLite serialises write transactions, so ids always commit in order there")
    relay = backbone.bus.relay(backbone.outbox)
    slow = store.session(write=True)
    session = slow.__enter__()
    session.update({**PATIENT, "id": "slow"})  # takes the lower outbox id, commits last
    put(store, {**PATIENT, "id": "fast"})
    assert relay.publish_batch() == 1
    slow.__exit__(None, None, None)
    assert relay.publish_batch() == 1
    ids = [e[1][b"id"] for e in backbone.bus.redis.xrange(backbone.bus.stream_key)]
    assert ids == [b"fast", b"slow"]
