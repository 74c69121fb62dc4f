"""The router without HTTP (Medplum style): plain FhirRequest in, FhirResponse out; and the small parsers."""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import format_datetime

import orjson
import pytest

from app.config import Settings
from app.fhir.errors import BadRequest
from app.services.rest import FhirRequest, Headers, http_date, parse_etag, parse_prefer
from app.wiring import build_services


@pytest.fixture
def router(app):
    return app.extensions["interlace"].router


def test_router_create_then_read_without_http(router):
    created = router.handle(
        FhirRequest(
            "POST", "Patient", body=orjson.dumps({"resourceType": "Patient"}), base_url="https://x.example/fhir"
        )
    )
    assert created.status == 201
    assert created.headers["Location"].startswith("https://x.example/fhir/Patient/")
    pid = created.json()["id"]
    read = router.handle(FhirRequest("get", f"Patient/{pid}", headers={"IF-NONE-MATCH": 'W/"1"'}))
    assert read.status == 304 and read.body is None


def test_router_turns_errors_into_outcomes(router):
    response = router.handle(FhirRequest("GET", "Nope/1"))
    assert response.status == 404
    assert response.json()["issue"][0]["code"] == "not-found"


@pytest.mark.parametrize(("raw", "version"), [('W/"3"', 3), ('"12"', 12), ("7", 7), (' w/"1" ', 1)])
def test_parse_etag_accepts_weak_strong_and_bare(raw, version):
    assert parse_etag(raw) == version


@pytest.mark.parametrize("raw", ['W/"x"', "", 'W/""'])
def test_parse_etag_rejects_non_versions(raw):
    with pytest.raises(BadRequest):
        parse_etag(raw)


def test_parse_prefer_reads_several_preferences():
    assert parse_prefer("return=minimal, handling=lenient") == {"return": "minimal", "handling": "lenient"}
    assert parse_prefer('return="OperationOutcome"') == {"return": "operationoutcome"}
    assert parse_prefer(None) == {}


def test_headers_are_case_insensitive():
    headers = Headers({"If-Match": 'W/"1"'})
    assert headers["if-match"] == headers.get("IF-MATCH") == 'W/"1"'
    assert "If-match" in headers and "Prefer" not in headers


def test_http_date_is_rfc7231():
    moment = datetime(2024, 2, 29, 23, 59, 59, 999, tzinfo=UTC)
    assert http_date(moment) == format_datetime(moment, usegmt=True) == "Thu, 29 Feb 2024 23:59:59 GMT"


def test_build_services_creates_the_sqlite_data_dir(tmp_path):
    data_dir = tmp_path / "not" / "yet"
    services = build_services(Settings(data_dir=data_dir, auth=False))
    try:
        assert data_dir.is_dir()
        assert services.router.store is services.store
    finally:
        services.close()
