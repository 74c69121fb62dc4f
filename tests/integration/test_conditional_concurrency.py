"""Conditional create and update stay single-match under a burst of identical requests to the real server.

16 clients fire at once (a Barrier) at `interlace serve` -- two gunicorn worker processes with threads -- so the race
crosses processes and database connections, on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

pytestmark = pytest.mark.slow

CLIENTS = 16
FHIR_JSON = "application/fhir+json"
SYSTEM = "urn:interlace:test:concurrency"


def fire_together(send: Callable[[requests.Session, int], requests.Response]) -> list[requests.Response]:
    """Run ``send`` from CLIENTS threads released at the same moment; each thread has its own connection."""
    barrier = threading.Barrier(CLIENTS)

    def one(index: int) -> requests.Response:
        with requests.Session() as session:
            session.headers.update({"Accept": FHIR_JSON, "Content-Type": FHIR_JSON})
            barrier.wait(timeout=60)
            return send(session, index)

    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        return list(pool.map(one, range(CLIENTS)))


def resource_id(response: requests.Response) -> str:
    body = response.json() if response.content else {}
    if body.get("id"):
        return body["id"]
    location = response.headers["Location"]  # .../Patient/<id>/_history/<vid>
    parts = location.split("/")
    return parts[parts.index("Patient") + 1]


def patients_with(live_server: str, value: str) -> list[dict[str, Any]]:
    with requests.Session() as session:
        response = session.get(
            f"{live_server}/Patient",
            params={"identifier": f"{SYSTEM}|{value}"},
            headers={"Accept": FHIR_JSON},
            timeout=60,
        )
    assert response.status_code == 200, response.text
    return [
        entry["resource"]
        for entry in response.json().get("entry", [])
        if entry.get("search", {}).get("mode") != "include"
    ]


def patient(value: str, family: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "identifier": [{"system": SYSTEM, "value": value}], "name": [{"family": family}]}


@pytest.mark.parametrize("live_server", ["sqlite", "postgres"], indirect=True)
def test_concurrent_conditional_creates_make_exactly_one_patient(live_server: str) -> None:
    value = uuid.uuid4().hex

    def send(session: requests.Session, index: int) -> requests.Response:
        return session.post(
            f"{live_server}/Patient",
            json=patient(value, "Concurrent"),
            headers={"If-None-Exist": f"identifier={SYSTEM}|{value}"},
            timeout=120,
        )

    responses = fire_together(send)

    assert [r.status_code for r in responses if r.status_code not in (200, 201)] == [], [r.text for r in responses]
    assert sorted(r.status_code for r in responses) == [200] * (CLIENTS - 1) + [201]
    ids = {resource_id(r) for r in responses}
    assert len(ids) == 1
    stored = patients_with(live_server, value)
    assert [p["id"] for p in stored] == list(ids)


@pytest.mark.parametrize("live_server", ["sqlite", "postgres"], indirect=True)
def test_concurrent_conditional_updates_serialise_on_one_patient(live_server: str) -> None:
    value = uuid.uuid4().hex

    def send(session: requests.Session, index: int) -> requests.Response:
        return session.put(
            f"{live_server}/Patient",
            params={"identifier": f"{SYSTEM}|{value}"},
            json=patient(value, f"Writer{index}"),
            timeout=120,
        )

    responses = fire_together(send)

    assert [r.status_code for r in responses if r.status_code not in (200, 201)] == [], [r.text for r in responses]
    assert sorted(r.status_code for r in responses) == [200] * (CLIENTS - 1) + [201]
    ids = {resource_id(r) for r in responses}
    assert len(ids) == 1
    # Each update saw the previous one: 16 distinct versions, none lost to a race.
    versions = sorted(int(r.json()["meta"]["versionId"]) for r in responses)
    assert versions == list(range(1, CLIENTS + 1))
    stored = patients_with(live_server, value)
    assert [p["id"] for p in stored] == list(ids)
    assert stored[0]["meta"]["versionId"] == str(CLIENTS)
