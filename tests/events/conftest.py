"""Fixtures for the event backbone: real Redis (unique key prefix per test, removed afterwards), both database
backends (``database_url`` from tests/conftest.py), and the Odoo 17 double.

``drain`` runs relay + consumer passes until nothing is unpublished, pending or scheduled: a bounded number of
passes, not a timing assertion.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from app.config import Settings
from tests.fakes.odoo17 import FakeOdoo17

REDIS_URL = os.environ.get("INTERLACE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError:
        pytest.fail(f"Redis is not reachable at {REDIS_URL} (set INTERLACE_TEST_REDIS_URL)", pytrace=False)
    yield client
    client.close()


@pytest.fixture
def prefix(redis_client: redis.Redis) -> Iterator[str]:
    p = f"interlace-test:{uuid.uuid4().hex[:12]}"
    yield p
    keys = list(redis_client.scan_iter(match=f"{{{p}}}:*", count=1000))
    if keys:
        redis_client.delete(*keys)


@pytest.fixture
def odoo() -> Iterator[FakeOdoo17]:
    with FakeOdoo17() as fake:
        yield fake


def make_settings(
    tmp_path: Path, database_url: str, prefix: str, odoo: FakeOdoo17 | None = None, **kw: Any
) -> Settings:
    values: dict[str, Any] = dict(
        data_dir=tmp_path,
        database_url=database_url,
        redis_url=REDIS_URL,
        events_prefix=prefix,
        events_backoff_ms=10,
        events_backoff_max_ms=40,
        events_claim_idle_ms=200,
        events_max_attempts=3,
        events_wait_max_attempts=40,
        db_pool_size=4,
    )
    if odoo is not None:
        values.update(
            odoo_url=odoo.url,
            odoo_db=odoo.db_name,
            odoo_login="admin",
            odoo_api_key=odoo.api_key,
            odoo_tax_map="VAT15=1",
            odoo_timeout=5,
            odoo_payment_lease=1,
        )
    values.update(kw)
    return Settings(**values)


@pytest.fixture
def settings(tmp_path: Path, database_url: str, prefix: str, odoo: FakeOdoo17) -> Settings:
    from app.adapters.sql_store import upgrade_database

    upgrade_database(database_url)
    return make_settings(tmp_path, database_url, prefix, odoo)


@pytest.fixture
def backbone(settings: Settings) -> Iterator[Any]:
    from app.workers.events import close_backbone, open_backbone

    bb = open_backbone(settings)
    yield bb
    close_backbone(bb)


def drain(backbone: Any, consumer: Any, *, rounds: int = 400) -> int:
    """Relay and consume until the outbox, the stream, the retries and the redo stream are all empty."""
    relay = backbone.bus.relay(backbone.outbox)
    handled = 0
    for _ in range(rounds):
        published = relay.publish_batch()
        done = consumer.run_once(block_ms=10)
        handled += done
        if not published and not done and backbone.outbox.count(unpublished=True) == 0:
            if backbone.bus.pending(consumer.group) == 0:
                return handled
    raise AssertionError(f"events still pending after {rounds} rounds: {backbone.bus.pending(consumer.group)}")
