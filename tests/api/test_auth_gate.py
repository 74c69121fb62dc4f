"""The auth gate: closed (401 + WWW-Authenticate) unless INTERLACE_AUTH=off; metadata stays open."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from app import create_app

from .support import assert_outcome


@pytest.fixture
def closed_client(settings):
    app = create_app(dataclasses.replace(settings, auth=True))
    yield app.test_client()
    app.extensions["interlace"].close()


@pytest.mark.parametrize(("method", "path"), [("GET", "/fhir/Patient/1"), ("POST", "/fhir/"), ("GET", "/fhir/Patient")])
def test_fhir_routes_answer_401_when_auth_is_on(closed_client, method, path):
    response = closed_client.open(path, method=method, json={"resourceType": "Patient"})
    outcome = assert_outcome(response, 401, "login")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="interlace"'
    assert "INTERLACE_AUTH=off" in outcome["issue"][0]["diagnostics"]


def test_metadata_stays_open_when_auth_is_on(closed_client):
    response = closed_client.get("/fhir/metadata")
    assert response.status_code == 200
    assert response.get_json(force=True)["resourceType"] == "CapabilityStatement"


def test_auth_off_logs_one_loud_warning(settings, caplog):
    with caplog.at_level(logging.WARNING, logger="interlace"):
        app = create_app(dataclasses.replace(settings, auth=False))
    try:
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "INTERLACE_AUTH=off" in r.message]
        assert len(warnings) == 1
    finally:
        app.extensions["interlace"].close()
