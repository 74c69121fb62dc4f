"""Consumer groups on Redis Streams: at-least-once delivery, reclaim from dead consumers, retries with backoff,
dead letters with their error, replay (one, all, since a point in time)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from app.adapters.redis_bus import BusConfig, RedisEventBus
from app.billing.ports import ErpDataError, ErpNotReady, TransientErpError
from app.services.events import Event
from tests.events.conftest import drain
from tests.events.resources import PATIENT, put


@dataclass
class Recorder:
    """A consumer that records what it sees and fails as told: ``script[ref]`` is a list of errors to raise."""

    name: str = "rec"
    resource_types: frozenset[str] | None = None
    script: dict[str, list[BaseException]] = field(default_factory=dict)
    seen: list[Event] = field(default_factory=list)
    failures: list[tuple[str, str, int, bool]] = field(default_factory=list)

    def handle(self, event: Event) -> None:
        self.seen.append(event)
        errors = self.script.get(event.reference)
        if errors:
            raise errors.pop(0)

    def failed(self, event: Event, error: BaseException, *, attempts: int, dead: bool) -> None:
        self.failures.append((event.reference, type(error).__name__, attempts, dead))


def patients(backbone: Any, n: int) -> None:
    put(backbone.services.store, *({**PATIENT, "id": f"p{i}"} for i in range(n)))


def test_every_event_is_handled_once_and_acknowledged(backbone: Any) -> None:
    patients(backbone, 3)
    rec = Recorder()
    drain(backbone, backbone.bus.consumer(rec))
    assert sorted(e.resource_id for e in rec.seen) == ["p0", "p1", "p2"]
    assert backbone.bus.pending("rec") == 0


def test_entries_left_by_a_dead_consumer_are_reclaimed_and_handled(backbone: Any) -> None:
    patients(backbone, 2)
    backbone.bus.relay(backbone.outbox).publish_batch()
    rec = Recorder()
    backbone.bus.ensure_group("rec")
    # a consumer reads both entries and dies before acknowledging them
    taken = backbone.bus.redis.xreadgroup("rec", "dead-one", {backbone.bus.stream_key: ">"}, count=10)
    assert len(taken[0][1]) == 2
    assert backbone.bus.pending("rec") == 2
    survivor = backbone.bus.consumer(rec, name="survivor")
    drain(backbone, survivor)  # claim_idle_ms is 200 ms in these tests
    assert sorted(e.resource_id for e in rec.seen) == ["p0", "p1"]
    assert backbone.bus.pending("rec") == 0


def test_transient_failures_are_retried_with_growing_attempts_until_they_succeed(backbone: Any) -> None:
    patients(backbone, 1)
    rec = Recorder(script={"Patient/p0": [TransientErpError("down"), TransientErpError("still down")]})
    drain(backbone, backbone.bus.consumer(rec))
    assert [e.attempt for e in rec.seen] == [0, 1, 2]
    assert rec.failures == [
        ("Patient/p0", "TransientErpError", 1, False),
        ("Patient/p0", "TransientErpError", 2, False),
    ]
    assert backbone.bus.count_dead("rec") == 0


def test_after_max_attempts_the_event_is_dead_lettered_with_its_error(backbone: Any) -> None:
    patients(backbone, 1)
    rec = Recorder(script={"Patient/p0": [TransientErpError(f"down {i}") for i in range(10)]})
    drain(backbone, backbone.bus.consumer(rec))
    assert len(rec.seen) == 3  # events_max_attempts=3
    assert rec.failures[-1] == ("Patient/p0", "TransientErpError", 3, True)
    [letter] = backbone.bus.dead_letters("rec")
    assert letter.event.reference == "Patient/p0"
    assert letter.attempts == 3
    assert letter.error_class == "TransientErpError"
    assert letter.error_message == "down 2"
    assert backbone.bus.dead_letter("rec", letter.id) == letter


def test_a_permanent_error_is_dead_lettered_at_once(backbone: Any) -> None:
    patients(backbone, 1)
    rec = Recorder(script={"Patient/p0": [ErpDataError("rejected")]})
    drain(backbone, backbone.bus.consumer(rec))
    assert len(rec.seen) == 1
    assert [d.error_class for d in backbone.bus.dead_letters("rec")] == ["ErpDataError"]


def test_waiting_on_another_record_has_its_own_longer_budget(backbone: Any) -> None:
    patients(backbone, 1)
    rec = Recorder(script={"Patient/p0": [ErpNotReady("invoice not there yet") for _ in range(5)]})
    drain(backbone, backbone.bus.consumer(rec))
    assert len(rec.seen) == 6  # 5 waits > events_max_attempts, still not dead
    assert backbone.bus.count_dead("rec") == 0


def test_replaying_one_dead_letter_hands_it_back_forced_and_removes_it(backbone: Any) -> None:
    patients(backbone, 2)
    rec = Recorder(script={f"Patient/p{i}": [ErpDataError("no")] for i in range(2)})
    consumer = backbone.bus.consumer(rec)
    drain(backbone, consumer)
    first, second = backbone.bus.dead_letters("rec")
    rec.seen.clear()
    assert backbone.bus.replay_dead("rec", first.id)
    assert not backbone.bus.replay_dead("rec", first.id)  # gone now
    assert not backbone.bus.replay_dead("rec", "not-an-id")
    drain(backbone, consumer)
    assert [(e.reference, e.attempt, e.force) for e in rec.seen] == [(first.event.reference, 0, True)]
    assert [d.id for d in backbone.bus.dead_letters("rec")] == [second.id]


def test_replaying_all_dead_letters_of_a_consumer(backbone: Any) -> None:
    patients(backbone, 3)
    rec = Recorder(script={f"Patient/p{i}": [ErpDataError("no")] for i in range(3)})
    consumer = backbone.bus.consumer(rec)
    drain(backbone, consumer)
    assert backbone.bus.count_dead("rec") == 3
    rec.seen.clear()
    assert backbone.bus.replay_all_dead("rec") == 3
    drain(backbone, consumer)
    assert sorted(e.resource_id for e in rec.seen) == ["p0", "p1", "p2"]
    assert backbone.bus.count_dead("rec") == 0


def test_replay_since_re_projects_the_newest_version_of_each_resource_changed_since(backbone: Any) -> None:
    patients(backbone, 2)
    put(backbone.services.store, {**PATIENT, "id": "p0", "gender": "female"})
    rec = Recorder()
    consumer = backbone.bus.consumer(rec)
    drain(backbone, consumer)
    rec.seen.clear()
    since = datetime.now(UTC) - timedelta(minutes=5)
    assert backbone.bus.replay_since("rec", backbone.outbox, since) == 2
    drain(backbone, consumer)
    assert sorted((e.resource_id, e.version_id, e.force) for e in rec.seen) == [("p0", 2, True), ("p1", 1, True)]
    assert backbone.bus.replay_since("rec", backbone.outbox, datetime.now(UTC) + timedelta(minutes=1)) == 0


def test_an_entry_that_keeps_killing_its_consumer_ends_as_a_dead_letter(backbone: Any) -> None:
    patients(backbone, 1)
    backbone.bus.relay(backbone.outbox).publish_batch()
    backbone.bus.ensure_group("rec")
    redis = backbone.bus.redis
    for i in range(3):  # delivered 3 times, never acknowledged
        redis.xreadgroup("rec", f"victim-{i}", {backbone.bus.stream_key: "0" if i else ">"}, count=1)
        redis.xclaim(
            backbone.bus.stream_key, "rec", f"victim-{i + 1}", 0, [redis.xrange(backbone.bus.stream_key)[0][0]]
        )
    rec = Recorder()
    drain(backbone, backbone.bus.consumer(rec))
    assert rec.seen == []
    [letter] = backbone.bus.dead_letters("rec")
    assert letter.error_class == "_Poison"


def test_two_consumers_never_work_on_the_same_resource_at_once(backbone: Any) -> None:
    patients(backbone, 1)
    rec = Recorder()
    consumer = backbone.bus.consumer(rec)
    assert backbone.bus.lock("rec", "Patient/p0", "someone-else")
    backbone.bus.relay(backbone.outbox).publish_batch()
    consumer.run_once(block_ms=10)
    assert rec.seen == []  # put back for later, not handled, no attempt spent
    backbone.bus.unlock("rec", "Patient/p0", "someone-else")
    drain(backbone, consumer)
    assert [e.attempt for e in rec.seen] == [0]


@pytest.mark.parametrize("attempt", [1, 2, 3, 8, 20])
def test_backoff_doubles_per_attempt_with_jitter_and_a_cap(redis_client: Any, attempt: int) -> None:
    bus = RedisEventBus(redis_client, BusConfig(backoff_ms=100, backoff_max_ms=5000))
    full = min(5000, 100 * 2 ** (attempt - 1))
    delays = {bus.backoff_ms(attempt) for _ in range(50)}
    assert all(full / 2 <= d <= full for d in delays)
    assert len(delays) > 1  # jittered


def test_consumer_names_left_by_restarts_are_forgotten_once_idle_with_nothing_pending(backbone: Any) -> None:
    patients(backbone, 1)
    drain(backbone, backbone.bus.consumer(Recorder(), name="old-worker"))
    bus = RedisEventBus(backbone.bus.redis, BusConfig(prefix=backbone.bus.config.prefix, consumer_idle_forget_ms=1))
    names = lambda: {c["name"] for c in bus.redis.xinfo_consumers(bus.stream_key, "rec")}  # noqa: E731
    assert b"old-worker" in names()
    time.sleep(0.01)  # idle longer than 1 ms
    bus.consumer(Recorder(), name="new-worker").reclaim()
    assert b"old-worker" not in names()
