"""The auth gate: every FHIR route needs a bearer token (401 + WWW-Authenticate + OperationOutcome) unless
INTERLACE_AUTH=off; metadata stays open. Scope enforcement itself is tested in tests/auth/test_enforcement_*."""

from __future__ import annotations

import dataclasses
import logging
import os

import pytest

from app import create_app
from app.adapters.sql_store import upgrade_database

from .support import assert_outcome

REDIS_URL = os.environ.get("INTERLACE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def closed_client(settings):
    upgrade_database(settings.effective_database_url)
    app = create_app(dataclasses.replace(settings, auth=True, redis_url=REDIS_URL))
    yield app.test_client()
    app.extensions["interlace"].close()


@pytest.mark.parametrize(("method", "path"), [("GET", "/fhir/Patient/1"), ("POST", "/fhir/"), ("GET", "/fhir/Patient")])
def test_fhir_routes_answer_401_when_auth_is_on(closed_client, method, path):
    response = closed_client.open(path, method=method, json={"resourceType": "Patient"})
    outcome = assert_outcome(response, 401, "login")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="interlace"'
    assert "Authorization: Bearer" in outcome["issue"][0]["diagnostics"]


def test_a_malformed_token_is_401_invalid_token(closed_client):
    response = closed_client.get("/fhir/Patient/1", headers={"Authorization": "Bearer not.a.token"})
    assert_outcome(response, 401, "login")
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


def test_metadata_stays_open_when_auth_is_on(closed_client):
    response = closed_client.get("/fhir/metadata")
    assert response.status_code == 200
    body = response.get_json(force=True)
    assert body["resourceType"] == "CapabilityStatement"
    assert body["rest"][0]["security"]["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"


def test_auth_off_logs_one_loud_warning(settings, caplog):
    with caplog.at_level(logging.WARNING, logger="interlace"):
        app = create_app(dataclasses.replace(settings, auth=False))
    try:
        warnings = [
            r
            for r in caplog.records
            if r.levelno == logging.WARNING and "INTERLACE_AUTH=off" in r.message and "/fhir " in r.message
        ]
        assert len(warnings) == 1
    finally:
        app.extensions["interlace"].close()
