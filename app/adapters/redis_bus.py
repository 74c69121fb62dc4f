"""The event bus on Redis Streams: outbox relay, consumer groups, delayed retries, dead letters, replay.

Keys (all under one hash tag ``{prefix}``, so a Redis Cluster keeps them in one slot):

* ``{p}:stream``            every published event; one consumer group per consumer (``erp`` ...).
* ``{p}:published``         sorted set of outbox ids already put on the stream (score = time): the relay's
                            idempotency key. The check and the XADD run in one Lua script, so a relay that died
                            after XADD but before marking the row published, or a second relay racing it, never
                            publishes an outbox row twice.
* ``{p}:g:<group>:redo``    the group's own stream of retries and replays (same group name, read together with
                            the main stream), so a retry reaches only the consumer that failed.
* ``{p}:g:<group>:retry``   sorted set of delayed retries (score = due time, ms); a Lua script moves due ones to
                            ``redo`` atomically, so a crash loses none.
* ``{p}:g:<group>:dead``    dead letters: the event plus ``error_class``, ``error_message``, ``attempts``.
* ``{p}:g:<group>:lock:<Type/id>``  a per-resource lease: one consumer at a time works on one resource.

Delivery is at least once: an entry is acknowledged only after its outcome (done, retry scheduled, dead letter)
is recorded, in the same MULTI as that record. Entries left pending by a dead consumer are taken over with
XAUTOCLAIM after ``claim_idle_ms``; one delivered more than ``max_attempts`` times (it keeps killing workers) goes
to the dead letters. Consumers read the current resource, so a repeated or reordered event is harmless.
"""

from __future__ import annotations

import logging
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import redis

from app.services.events import (
    Event,
    EventHandler,
    Outbox,
    describe_error,
    event_fields,
    event_from_fields,
    is_transient,
    is_waiting,
)

log = logging.getLogger("interlace.events")

# KEYS[1] published zset, KEYS[2] stream; ARGV: outbox id, now ms, maxlen, field, value, ...
_RELAY_LUA = """
if redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1]) == 0 then return 0 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', unpack(ARGV, 4))
return 1
"""
# KEYS[1] retry zset, KEYS[2] redo stream; ARGV: now ms, limit
_MOVE_DUE_LUA = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, member in ipairs(due) do
  local fields = cjson.decode(member)
  redis.call('XADD', KEYS[2], '*', unpack(fields['f']))
  redis.call('ZREM', KEYS[1], member)
end
return #due
"""
# KEYS[1] dead stream, KEYS[2] redo stream; ARGV[1] dead letter id. Moves it back as attempt 0, forced.
_REPLAY_LUA = """
local e = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
if #e == 0 then return false end
local f = e[1][2]
local skip = {attempt=1, force=1, error_class=1, error_message=1, attempts=1, failed_at=1, group=1}
local out = {}
for i = 1, #f, 2 do
  if not skip[f[i]] then table.insert(out, f[i]); table.insert(out, f[i + 1]) end
end
table.insert(out, 'attempt'); table.insert(out, '0'); table.insert(out, 'force'); table.insert(out, '1')
table.insert(out, 'replay_of'); table.insert(out, ARGV[1])
local id = redis.call('XADD', KEYS[2], '*', unpack(out))
redis.call('XDEL', KEYS[1], ARGV[1])
return id
"""
_UNLOCK_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def _s(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _fields(raw: Mapping[Any, Any]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(frozen=True)
class BusConfig:
    prefix: str = "interlace:events"
    max_attempts: int = 5  # failed attempts before an event is dead-lettered
    wait_max_attempts: int = 30  # the same for "waiting on another record" (ErpNotReady)
    backoff_ms: int = 1000  # first retry delay; doubles per attempt, with jitter
    backoff_max_ms: int = 300_000
    claim_idle_ms: int = 60_000  # a pending entry idle this long belongs to a dead consumer
    lock_ms: int = 120_000  # per-resource lease (longer than one projection can take)
    stream_maxlen: int = 1_000_000  # approximate cap; the outbox table is the durable truth
    batch: int = 100
    published_retention_s: int = 86_400  # how long the relay remembers what it published
    outbox_retention_days: int = 30  # published outbox rows kept this long (replay --since reaches this far back)
    consumer_idle_forget_ms: int = 3_600_000  # a consumer name with nothing pending, idle this long, is removed


@dataclass(frozen=True)
class DeadLetter:
    id: str
    group: str
    event: Event
    error_class: str
    error_message: str
    attempts: int
    failed_at: str

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "consumer": self.group,
            "resource": self.event.reference,
            "versionId": self.event.version_id,
            "operation": self.event.operation,
            "outboxId": self.event.outbox_id,
            "eventId": self.event.event_id,
            "occurredAt": self.event.occurred_at,
            "errorClass": self.error_class,
            "errorMessage": self.error_message,
            "attempts": self.attempts,
            "failedAt": self.failed_at,
        }


class RedisEventBus:
    """Everything on the Redis side. One instance per process; the relay and consumers it makes share it."""

    def __init__(self, client: redis.Redis, config: BusConfig | None = None) -> None:
        self.redis = client
        self.config = config or BusConfig()
        self._relay_script = client.register_script(_RELAY_LUA)
        self._move_script = client.register_script(_MOVE_DUE_LUA)
        self._replay_script = client.register_script(_REPLAY_LUA)
        self._unlock_script = client.register_script(_UNLOCK_LUA)

    # -- keys --------------------------------------------------------------------------------------------
    @property
    def _tag(self) -> str:
        return "{" + self.config.prefix + "}"

    @property
    def stream_key(self) -> str:
        return f"{self._tag}:stream"

    @property
    def published_key(self) -> str:
        return f"{self._tag}:published"

    def group_key(self, group: str, part: str) -> str:
        return f"{self._tag}:g:{group}:{part}"

    def all_keys(self) -> list[str]:
        """Every key of this bus (tests clean up with it)."""
        return [_s(k) for k in self.redis.scan_iter(match=f"{self._tag}:*", count=1000)]

    # -- relay -------------------------------------------------------------------------------------------
    def relay(self, outbox: Outbox) -> OutboxRelay:
        return OutboxRelay(self, outbox)

    def publish(self, rows: Sequence[Any]) -> int:
        """XADD each outbox row unless already published; returns how many were new on the stream."""
        if not rows:
            return 0
        now = _now_ms()
        pipe = self.redis.pipeline(transaction=False)
        for row in rows:
            flat: list[str] = []
            for k, v in event_fields(row.event()).items():
                flat += [k, v]
            self._relay_script(
                keys=[self.published_key, self.stream_key],
                args=[row.id, now, self.config.stream_maxlen, *flat],
                client=pipe,
            )
        return sum(int(x) for x in pipe.execute())

    def forget_published(self) -> None:
        cut = _now_ms() - self.config.published_retention_s * 1000
        self.redis.zremrangebyscore(self.published_key, "-inf", cut)

    # -- consumers ---------------------------------------------------------------------------------------
    def consumer(self, handler: EventHandler, *, name: str | None = None) -> ConsumerGroup:
        return ConsumerGroup(self, handler, name=name)

    def ensure_group(self, group: str) -> None:
        for stream in (self.stream_key, self.group_key(group, "redo")):
            try:
                self.redis.xgroup_create(stream, group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    def backoff_ms(self, attempt: int) -> int:
        """Exponential backoff with jitter: base * 2^(attempt-1), capped, then scaled by a random 0.5..1."""
        cfg = self.config
        raw = min(cfg.backoff_max_ms, cfg.backoff_ms * 2 ** max(0, attempt - 1))
        return max(1, int(raw * random.uniform(0.5, 1.0)))

    def schedule(self, group: str, event: Event, delay_ms: int, pipe: Any | None = None) -> None:
        """Put ``event`` on the group's delayed-retry set, due in ``delay_ms``."""
        flat: list[str] = []
        for k, v in event_fields(event).items():
            flat += [k, v]
        member = orjson.dumps({"f": flat, "n": uuid.uuid4().hex}).decode()
        (pipe or self.redis).zadd(self.group_key(group, "retry"), {member: _now_ms() + max(0, delay_ms)})

    def move_due(self, group: str, limit: int = 500) -> int:
        return int(
            self._move_script(
                keys=[self.group_key(group, "retry"), self.group_key(group, "redo")], args=[_now_ms(), limit]
            )
        )

    def enqueue(self, group: str, events: Sequence[Event]) -> int:
        """Put events straight on the group's redo stream (replays)."""
        pipe = self.redis.pipeline(transaction=False)
        for ev in events:
            pipe.xadd(self.group_key(group, "redo"), event_fields(ev))
        pipe.execute()
        return len(events)

    def lock(self, group: str, reference: str, token: str) -> bool:
        return bool(self.redis.set(self.group_key(group, f"lock:{reference}"), token, nx=True, px=self.config.lock_ms))

    def unlock(self, group: str, reference: str, token: str, pipe: Any | None = None) -> None:
        key = self.group_key(group, f"lock:{reference}")
        if pipe is not None:
            pipe.eval(_UNLOCK_LUA, 1, key, token)  # EVAL, not EVALSHA: no script-cache check per pipeline
        else:
            self._unlock_script(keys=[key], args=[token])

    # -- dead letters --------------------------------------------------------------------------------------
    def dead_letters(self, group: str, *, count: int = 100, after: str | None = None) -> list[DeadLetter]:
        """Oldest first; ``after`` is the id of the last one of the previous page."""
        start = f"({after}" if after else "-"
        entries = self.redis.xrange(self.group_key(group, "dead"), start, "+", count=count)
        return [self._dead(group, eid, raw) for eid, raw in entries]

    def dead_letter(self, group: str, id: str) -> DeadLetter | None:
        try:
            entries = self.redis.xrange(self.group_key(group, "dead"), id, id)
        except redis.ResponseError:  # not a stream id
            return None
        return self._dead(group, *entries[0]) if entries else None

    def count_dead(self, group: str) -> int:
        return int(self.redis.xlen(self.group_key(group, "dead")))

    @staticmethod
    def _dead(group: str, eid: Any, raw: Mapping[Any, Any]) -> DeadLetter:
        f = _fields(raw)
        return DeadLetter(
            id=_s(eid),
            group=group,
            event=event_from_fields(f),
            error_class=f.get("error_class", ""),
            error_message=f.get("error_message", ""),
            attempts=int(f.get("attempts") or 0),
            failed_at=f.get("failed_at", ""),
        )

    def replay_dead(self, group: str, id: str) -> bool:
        """Move one dead letter back to the group (attempt 0, forced); False when there is no such letter."""
        try:
            moved = self._replay_script(keys=[self.group_key(group, "dead"), self.group_key(group, "redo")], args=[id])
        except redis.ResponseError:
            return False
        return moved is not None

    def replay_all_dead(self, group: str) -> int:
        done = 0
        while True:
            batch = self.dead_letters(group, count=500)
            if not batch:
                return done
            for letter in batch:
                done += int(self.replay_dead(group, letter.id))

    def replay_since(
        self, group: str, outbox: Outbox, since: datetime, *, resource_types: Sequence[str] | None = None
    ) -> int:
        """Re-project every resource changed at or after ``since`` (from the outbox table, the durable truth)."""
        rows = outbox.since(since, resource_types=resource_types)
        for start in range(0, len(rows), 1000):
            self.enqueue(group, [r.event(force=True) for r in rows[start : start + 1000]])
        return len(rows)

    def pending(self, group: str) -> int:
        total = 0
        for stream in (self.stream_key, self.group_key(group, "redo")):
            try:
                total += int(self.redis.xpending(stream, group)["pending"])
            except redis.ResponseError:  # no such group yet
                pass
        return total + int(self.redis.zcard(self.group_key(group, "retry")))


class OutboxRelay:
    """Reads unpublished outbox rows in id order, publishes them, marks them published. Restartable: anything
    not marked is published again, and the bus's idempotency key drops what already reached the stream."""

    def __init__(self, bus: RedisEventBus, outbox: Outbox) -> None:
        self.bus = bus
        self.outbox = outbox
        self._passes = 0

    def publish_batch(self, limit: int | None = None) -> int:
        rows = self.outbox.unpublished(limit or self.bus.config.batch)
        if not rows:
            return 0
        self.bus.publish(rows)
        self.outbox.mark_published([r.id for r in rows])
        self._passes += 1
        if self._passes % 1000 == 1:
            self.housekeeping()
        return len(rows)

    def housekeeping(self) -> None:
        """Forget old idempotency keys and purge outbox rows published before the retention period."""
        self.bus.forget_published()
        purge = getattr(self.outbox, "purge_published", None)
        if purge is not None:
            purge(datetime.now(UTC) - timedelta(days=self.bus.config.outbox_retention_days))

    def run(self, stop: threading.Event, *, poll_ms: int = 100) -> None:
        failures = 0
        while not stop.is_set():
            try:
                n = self.publish_batch()
                failures = 0
            except Exception as exc:  # noqa: BLE001 - database or Redis away: keep trying, say so once per try
                failures += 1
                log.warning("outbox relay: %s; retrying", type(exc).__name__)
                stop.wait(min(5.0, 0.1 * 2**failures))
                continue
            if n == 0:
                stop.wait(poll_ms / 1000)


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class ConsumerGroup:
    """One consumer in the handler's group, reading the main stream and the group's redo stream."""

    def __init__(self, bus: RedisEventBus, handler: EventHandler, *, name: str | None = None) -> None:
        self.bus = bus
        self.handler = handler
        self.group = handler.name
        self.name = name or default_consumer_name()
        self._last_claim = 0.0
        self.bus.ensure_group(self.group)
        self._streams = [bus.stream_key, bus.group_key(self.group, "redo")]
        self.on_processed: Callable[[Event, str], None] | None = None  # hook for benchmarks and tests

    # -- one pass ------------------------------------------------------------------------------------------
    def run_once(self, *, block_ms: int = 1000) -> int:
        """Move due retries, reclaim abandoned entries, read and handle one batch; returns entries handled."""
        self.bus.move_due(self.group)
        handled = 0
        if time.monotonic() - self._last_claim >= self.bus.config.claim_idle_ms / 2000:
            self._last_claim = time.monotonic()
            handled += self.reclaim()
        reply = self.bus.redis.xreadgroup(
            self.group,
            self.name,
            {s: ">" for s in self._streams},
            count=self.bus.config.batch,
            block=block_ms if handled == 0 else None,
        )
        for stream, entries in reply or []:
            for eid, raw in entries:
                self._process(_s(stream), _s(eid), raw)
                handled += 1
        return handled

    def reclaim(self) -> int:
        """Take over entries another consumer left pending for longer than ``claim_idle_ms``."""
        handled = 0
        for stream in self._streams:
            start = "0-0"
            while True:
                try:
                    reply = self.bus.redis.xautoclaim(
                        stream, self.group, self.name, self.bus.config.claim_idle_ms, start, count=100
                    )
                except redis.ResponseError:
                    break
                start = _s(reply[0])
                for eid, raw in reply[1]:
                    eid = _s(eid)
                    if raw is None:  # trimmed from the stream meanwhile
                        self.bus.redis.xack(stream, self.group, eid)
                        continue
                    delivered = self._times_delivered(stream, eid)
                    if delivered > self.bus.config.max_attempts:
                        self._dead(stream, eid, event_from_fields(_fields(raw)), _Poison(delivered), delivered)
                    else:
                        self._process(stream, eid, raw)
                    handled += 1
                for eid in reply[2] if len(reply) > 2 else []:
                    self.bus.redis.xack(stream, self.group, _s(eid))
                if start == "0-0":
                    break
        self._forget_idle_consumers()
        return handled

    def _forget_idle_consumers(self) -> None:
        """Every restart joins under a new name; drop names with nothing pending that have long been idle."""
        for stream in self._streams:
            try:
                consumers = self.bus.redis.xinfo_consumers(stream, self.group)
            except redis.ResponseError:
                continue
            for c in consumers:
                name = _s(c["name"])
                if name != self.name and not c["pending"] and c["idle"] > self.bus.config.consumer_idle_forget_ms:
                    self.bus.redis.xgroup_delconsumer(stream, self.group, name)

    def _times_delivered(self, stream: str, eid: str) -> int:
        rows = self.bus.redis.xpending_range(stream, self.group, eid, eid, 1)
        return int(rows[0]["times_delivered"]) if rows else 1

    # -- one entry -----------------------------------------------------------------------------------------
    def _process(self, stream: str, eid: str, raw: Mapping[Any, Any]) -> None:
        try:
            event = event_from_fields(_fields(raw))
        except (KeyError, ValueError):
            log.error("events: malformed entry %s on %s dropped", eid, stream)
            self.bus.redis.xack(stream, self.group, eid)
            return
        types = self.handler.resource_types
        if types is not None and event.resource_type not in types:
            self.bus.redis.xack(stream, self.group, eid)
            self._notify(event, "ignored")
            return
        token = uuid.uuid4().hex
        if not self.bus.lock(self.group, event.reference, token):
            # another consumer is on this resource: come back shortly, without spending an attempt
            pipe = self.bus.redis.pipeline(transaction=True)
            self.bus.schedule(self.group, event, min(self.bus.config.backoff_ms, 1000), pipe)
            pipe.xack(stream, self.group, eid)
            pipe.execute()
            return
        try:
            self.handler.handle(event)
        except Exception as exc:  # noqa: BLE001 - every failure is classified, none escapes the loop
            try:
                self._failed(stream, eid, event, exc)
            finally:
                self.bus.unlock(self.group, event.reference, token)
            return
        pipe = self.bus.redis.pipeline(transaction=False)  # one round trip: acknowledge, then free the resource
        pipe.xack(stream, self.group, eid)
        self.bus.unlock(self.group, event.reference, token, pipe)
        pipe.execute()
        self._notify(event, "done")

    def _failed(self, stream: str, eid: str, event: Event, exc: BaseException) -> None:
        attempts = event.attempt + 1
        budget = self.bus.config.wait_max_attempts if is_waiting(exc) else self.bus.config.max_attempts
        cls, _ = describe_error(exc)
        if not is_transient(exc) or attempts >= budget:
            self._dead(stream, eid, event, exc, attempts)
            return
        log.info("events: %s %s failed (%s), attempt %d, retrying", self.group, event.resource_type, cls, attempts)
        self._tell(event, exc, attempts, dead=False)
        pipe = self.bus.redis.pipeline(transaction=True)
        self.bus.schedule(self.group, _with_attempt(event, attempts), self.bus.backoff_ms(attempts), pipe)
        pipe.xack(stream, self.group, eid)
        pipe.execute()
        self._notify(event, "retry")

    def _dead(self, stream: str, eid: str, event: Event, exc: BaseException, attempts: int) -> None:
        cls, message = describe_error(exc)
        log.warning(
            "events: %s %s dead-lettered after %d attempt(s): %s", self.group, event.resource_type, attempts, cls
        )
        self._tell(event, exc, attempts, dead=True)
        fields = {
            **event_fields(_with_attempt(event, attempts)),
            "group": self.group,
            "error_class": cls,
            "error_message": message,
            "attempts": str(attempts),
            "failed_at": datetime.now(UTC).isoformat(),
        }
        pipe = self.bus.redis.pipeline(transaction=True)
        pipe.xadd(self.bus.group_key(self.group, "dead"), fields)
        pipe.xack(stream, self.group, eid)
        pipe.execute()
        self._notify(event, "dead")

    def _tell(self, event: Event, exc: BaseException, attempts: int, *, dead: bool) -> None:
        try:
            self.handler.failed(event, exc, attempts=attempts, dead=dead)
        except Exception as err:  # noqa: BLE001 - bookkeeping must not stop the retry/dead-letter itself
            log.warning("events: recording the failure of %s failed: %s", event.resource_type, type(err).__name__)

    def _notify(self, event: Event, outcome: str) -> None:
        if self.on_processed is not None:
            self.on_processed(event, outcome)

    def run(self, stop: threading.Event, *, block_ms: int = 500) -> None:
        failures = 0
        while not stop.is_set():
            try:
                self.run_once(block_ms=block_ms)
                failures = 0
            except Exception as exc:  # noqa: BLE001 - Redis or the database away: keep trying, never die quietly
                failures += 1
                log.warning("events consumer %s: %s; retrying", self.group, type(exc).__name__)
                stop.wait(min(5.0, 0.1 * 2**failures))


class _Poison(RuntimeError):
    """An entry whose processing keeps killing the worker (delivered again and again, never acknowledged)."""

    def __init__(self, delivered: int) -> None:
        super().__init__(f"delivered {delivered} times without an outcome (the worker died each time)")


def _with_attempt(event: Event, attempt: int) -> Event:
    from dataclasses import replace

    return replace(event, attempt=attempt)
