"""Fixtures for the ingest tests: ``ingest`` (Hl7Ingest over a migrated store on every backend) and helpers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from app.adapters.message_store import SqlMessageStore
from app.fhir.registry import default_registry
from app.services.ingest import Hl7Ingest
from app.services.rest import FhirRequest, FhirRouter

if TYPE_CHECKING:
    from app.adapters.sql_store import SqlStore


@pytest.fixture
def router(store: SqlStore) -> FhirRouter:
    return FhirRouter(store, default_registry())


@pytest.fixture
def messages(store: SqlStore, database_url: str) -> Iterator[SqlMessageStore]:
    message_store = SqlMessageStore(database_url)  # the ``store`` fixture has migrated the database to head
    yield message_store
    message_store.close()


@pytest.fixture
def ingest(messages: SqlMessageStore, router: FhirRouter) -> Hl7Ingest:
    return Hl7Ingest(messages, router)


def search(router: FhirRouter, path: str, **params: str) -> list[dict[str, Any]]:
    """The resources a FHIR search returns (matches only)."""
    query = {k.replace("_", "-") if not k.startswith("_") else k: [v] for k, v in params.items()}
    response = router.handle(FhirRequest("GET", path, query=query))
    assert response.status == 200, response.json()
    body = orjson.loads(orjson.dumps(response.body))  # stored resources are spliced in as orjson.Fragment
    return [e["resource"] for e in body.get("entry", []) if e.get("search", {}).get("mode", "match") == "match"]


def msa(ack: bytes) -> tuple[str, str]:
    """(MSA-1, MSA-2) of an ACK."""
    for line in ack.split(b"\r"):
        if line.startswith(b"MSA"):
            fields = line.decode().split("|")
            return fields[1], fields[2] if len(fields) > 2 else ""
    raise AssertionError(f"no MSA in {ack!r}")


def err_lines(ack: bytes) -> list[str]:
    return [line.decode() for line in ack.split(b"\r") if line.startswith(b"ERR")]
