"""`interlace serve` as a real process: serves FHIR JSON, enforces auth when on, stops cleanly on SIGTERM."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest
import requests

if TYPE_CHECKING:
    from conftest import ServerProcess

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("live_server", ["sqlite", "postgres"], indirect=True)
def test_metadata_is_a_capability_statement_in_fhir_json(live_server: str) -> None:
    with requests.Session() as session:
        response = session.get(f"{live_server}/metadata", timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    body = response.json()
    assert body["resourceType"] == "CapabilityStatement"
    assert body["fhirVersion"].startswith("4.0")


def test_with_auth_on_an_unauthenticated_read_is_refused(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server(auth=True)
    session = server.session()
    assert session.get(f"{server.url}/metadata", timeout=30).status_code == 200  # discovery stays public
    response = session.get(f"{server.url}/Patient", timeout=30)
    assert response.status_code == 401
    assert response.json()["resourceType"] == "OperationOutcome"


def test_sigterm_stops_workers_and_embedded_redis_cleanly(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server()
    redis_pid = int((server.data_dir / "redis.pid").read_text())
    assert server.session().get(f"{server.url}/metadata", timeout=30).status_code == 200

    assert server.stop(signal.SIGTERM) == 0
    log = server.log()
    assert "Shutting down: Master" in log
    assert "Traceback" not in log
    with pytest.raises(ProcessLookupError):
        os.kill(redis_pid, 0)  # the embedded Redis went down with the master
    assert (server.data_dir / "redis.rdb").is_file()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{server.url}/metadata", timeout=5)
