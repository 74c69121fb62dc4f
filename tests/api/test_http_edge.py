"""The HTTP edge: content negotiation, media types, conditional reads, Prefer, and errors as OperationOutcomes."""

from __future__ import annotations

import logging
from email.utils import format_datetime, parsedate_to_datetime

import pytest

from .support import FHIR_JSON, assert_outcome, patient


@pytest.mark.parametrize(
    "accept",
    [
        "application/fhir+json",
        "application/json",
        "*/*",
        "application/*",
        "application/fhir+json; fhirVersion=4.0",
        "application/fhir+xml;q=1, application/fhir+json;q=0.5",
        "text/html, application/xhtml+xml, */*;q=0.8",
    ],
)
def test_json_accept_headers_are_served(fhir, accept):
    pid = fhir.create(patient())["id"]
    response = fhir.client.get(f"/fhir/Patient/{pid}", headers={"Accept": accept})
    assert response.status_code == 200
    assert response.mimetype in (FHIR_JSON, "application/json")
    assert response.get_json(force=True)["id"] == pid


@pytest.mark.parametrize(
    "accept", ["application/fhir+xml", "application/xml", "text/turtle", "application/fhir+json; fhirVersion=3.0"]
)
def test_non_json_accept_is_406(fhir, accept):
    assert_outcome(fhir.client.get("/fhir/metadata", headers={"Accept": accept}), 406, "not-supported")


@pytest.mark.parametrize("fmt", ["json", "application/fhir%2Bjson", "application/fhir+json", "application/json"])
def test_format_json_is_served_whatever_the_accept_header(fhir, fmt):
    response = fhir.client.get(f"/fhir/metadata?_format={fmt}", headers={"Accept": "application/fhir+xml"})
    assert response.status_code == 200
    assert response.get_json(force=True)["resourceType"] == "CapabilityStatement"


@pytest.mark.parametrize("fmt", ["xml", "application/fhir%2Bxml", "ttl"])
def test_format_xml_or_turtle_is_406(fhir, fmt):
    assert_outcome(fhir.client.get(f"/fhir/metadata?_format={fmt}"), 406, "not-supported")


def test_body_with_unsupported_content_type_is_415(fhir):
    response = fhir.client.post("/fhir/Patient", data=b"<Patient/>", headers={"Content-Type": "application/fhir+xml"})
    assert_outcome(response, 415, "not-supported")


def test_plain_application_json_body_is_accepted(fhir):
    response = fhir.request("POST", "Patient", patient(), headers={"Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 201


def test_pretty_indents_the_response(fhir):
    pid = fhir.create(patient())["id"]
    compact = fhir.client.get(f"/fhir/Patient/{pid}").get_data(as_text=True)
    pretty = fhir.client.get(f"/fhir/Patient/{pid}?_pretty=true").get_data(as_text=True)
    assert "\n" not in compact
    assert "\n  " in pretty


def test_if_none_match_with_current_etag_is_304(fhir):
    pid = fhir.create(patient())["id"]
    response = fhir.request("GET", f"Patient/{pid}", headers={"If-None-Match": 'W/"1"'})
    assert response.status_code == 304
    assert response.get_data() == b""
    assert fhir.request("GET", f"Patient/{pid}", headers={"If-None-Match": 'W/"0"'}).status_code == 200


def test_if_modified_since_not_modified_is_304(fhir):
    created = fhir.request("POST", "Patient", patient())
    pid = created.get_json(force=True)["id"]
    modified = parsedate_to_datetime(created.headers["Last-Modified"])
    later = format_datetime(modified.replace(year=modified.year + 1), usegmt=True)
    earlier = format_datetime(modified.replace(year=modified.year - 1), usegmt=True)
    assert fhir.request("GET", f"Patient/{pid}", headers={"If-Modified-Since": later}).status_code == 304
    assert fhir.request("GET", f"Patient/{pid}", headers={"If-Modified-Since": earlier}).status_code == 200


def test_prefer_return_minimal_has_no_body(fhir):
    response = fhir.request("POST", "Patient", patient(), headers={"Prefer": "return=minimal"})
    assert response.status_code == 201
    assert response.get_data() == b""
    assert response.headers["Location"]


def test_prefer_return_operation_outcome(fhir):
    response = fhir.request("POST", "Patient", patient(), headers={"Prefer": "return=OperationOutcome"})
    assert response.status_code == 201
    assert response.get_json(force=True)["resourceType"] == "OperationOutcome"


def test_malformed_if_match_is_400(fhir):
    pid = fhir.create(patient())["id"]
    response = fhir.request("PUT", f"Patient/{pid}", patient(id=pid), headers={"If-Match": "banana"})
    assert_outcome(response, 400, "invalid")


def test_metadata_is_a_capability_statement(fhir):
    response = fhir.request("GET", "metadata")
    assert response.status_code == 200
    assert response.mimetype == FHIR_JSON
    assert response.get_json(force=True)["resourceType"] == "CapabilityStatement"


def test_unknown_route_outside_fhir_is_a_404_operation_outcome(client):
    assert_outcome(client.get("/nowhere"), 404, "not-found")


def test_unsupported_method_is_405_operation_outcome(fhir):
    assert_outcome(fhir.request("POST", "metadata"), 405, "not-supported")


def test_operations_are_501(fhir):
    assert_outcome(fhir.request("GET", "Patient/$everything"), 501, "not-supported")


def test_unexpected_error_is_500_outcome_and_logs_no_request_body(app, fhir, caplog, monkeypatch):
    router = app.extensions["interlace"].router

    secret = "-".join(["secret", "phi", "in", "message"])  # not in the source, so not in a traceback's code lines

    def boom(*args, **kwargs):
        raise RuntimeError(secret)

    monkeypatch.setattr(router, "create", boom)
    with caplog.at_level(logging.ERROR):
        response = fhir.request("POST", "Patient", patient("SecretFamilyName"))
    outcome = assert_outcome(response, 500, "exception")
    assert "secret" not in str(outcome)
    assert "RuntimeError" in caplog.text
    assert "SecretFamilyName" not in caplog.text
    assert secret not in caplog.text


def test_openapi_document_lists_the_fhir_routes(client):
    spec = client.get("/openapi.json").get_json()
    assert "/fhir/{rtype}/{rid}" in spec["paths"]


def test_head_read_has_headers_and_no_body(fhir):
    pid = fhir.create(patient())["id"]
    response = fhir.client.head(f"/fhir/Patient/{pid}")
    assert response.status_code == 200
    assert response.headers["ETag"] == 'W/"1"'
    assert response.get_data() == b""


def test_304_has_no_content_type(fhir):
    pid = fhir.create(patient())["id"]
    response = fhir.request("GET", f"Patient/{pid}", headers={"If-None-Match": 'W/"1"'})
    assert response.status_code == 304
    assert "Content-Type" not in response.headers


def test_if_none_exist_may_carry_the_type_prefix(fhir):
    body = patient(identifier=[{"system": "urn:s", "value": "pfx"}])
    first = fhir.request("POST", "Patient", body, headers={"If-None-Exist": "Patient?identifier=urn:s|pfx"})
    second = fhir.request("POST", "Patient", body, headers={"If-None-Exist": "Patient?identifier=urn:s|pfx"})
    assert (first.status_code, second.status_code) == (201, 200)
    wrong = fhir.request("POST", "Patient", body, headers={"If-None-Exist": "Observation?code=x"})
    assert_outcome(wrong, 400, "invalid")


def test_vread_of_a_non_numeric_version_is_404(fhir):
    pid = fhir.create(patient())["id"]
    assert_outcome(fhir.request("GET", f"Patient/{pid}/_history/abc"), 404, "not-found")
