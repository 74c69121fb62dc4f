"""``POST /hl7v2`` and the message operations over Flask's test client, on every backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.adapters.sql_store import upgrade_database
from app.config import Settings

from . import samples
from .conftest import msa

ER7 = "x-application/hl7-v2+er7"


def make_app(settings: Settings) -> tuple[Flask, Any]:
    upgrade_database(settings.effective_database_url)
    app = create_app(settings)
    app.config["TESTING"] = True
    return app, app.extensions["interlace.ingest"]


@pytest.fixture
def client(database_url: str, tmp_path: Path) -> Iterator[FlaskClient]:
    app, ingest = make_app(Settings(data_dir=tmp_path / "data", database_url=database_url, auth=False))
    yield app.test_client()
    ingest.messages.close()
    app.extensions["interlace"].close()


def post(client: FlaskClient, body: bytes) -> Any:
    return client.post("/hl7v2", data=body, content_type=ER7)


def test_post_message_answers_its_ack_as_er7(client: FlaskClient) -> None:
    response = post(client, samples.adt_a01())

    assert response.status_code == 200
    assert response.mimetype == ER7
    assert msa(response.data) == ("AA", "CTRL0001")
    found = client.get("/fhir/Patient?identifier=MRN1001").get_json()
    assert len(found["entry"]) == 1


def test_post_bad_messages_answers_ae_and_ar_with_200(client: FlaskClient) -> None:
    assert msa(post(client, samples.bad_content()).data)[0] == "AE"
    assert msa(post(client, samples.NOT_HL7).data)[0] == "AR"


def test_post_an_empty_body_is_a_bad_request(client: FlaskClient) -> None:
    response = post(client, b"  ")
    assert response.status_code == 400
    assert response.get_json()["resourceType"] == "OperationOutcome"


def test_post_a_batch_answers_a_batch_of_acks(client: FlaskClient) -> None:
    body = (
        b"FHS|^~\\&|SENDAPP|SENDFAC\rBHS|^~\\&|SENDAPP|SENDFAC\r"
        + samples.adt_a01("H1")
        + samples.oru_r01("H2")
        + b"BTS|2\rFTS|1\r"
    )
    lines = post(client, body).data.decode().split("\r")
    assert [line[:3] for line in lines if line] == ["FHS", "BHS", "MSH", "MSA", "MSH", "MSA", "BTS", "FTS"]


def test_list_and_read_messages(client: FlaskClient) -> None:
    post(client, samples.adt_a01())
    post(client, samples.bad_content())

    listed = client.get("/hl7v2/messages").get_json()["messages"]
    assert [m["status"] for m in listed] == ["error", "processed"]
    errors = client.get("/hl7v2/messages?status=error").get_json()["messages"]
    assert [m["controlId"] for m in errors] == ["CTRL0300"]
    by_type = client.get("/hl7v2/messages?type=ADT^A01&control-id=CTRL0001").get_json()["messages"]
    assert [m["controlId"] for m in by_type] == ["CTRL0001"]

    one = client.get(f"/hl7v2/messages/{listed[1]['id']}").get_json()
    assert one["raw"] == samples.adt_a01().decode()
    assert "MSA|AA|CTRL0001" in one["ack"]
    assert any(r["reference"].startswith("Patient/") for r in one["resources"])
    failed = client.get(f"/hl7v2/messages/{listed[0]['id']}").get_json()
    assert failed["error"]["resourceType"] == "OperationOutcome"


def test_list_pages_with_a_next_link(client: FlaskClient) -> None:
    for i in range(3):
        post(client, samples.adt_a01(f"P{i}"))
    first = client.get("/hl7v2/messages?_count=2").get_json()
    assert len(first["messages"]) == 2 and "next" in first
    second = client.get(first["next"]).get_json()
    assert [m["controlId"] for m in first["messages"] + second["messages"]] == ["P2", "P1", "P0"]
    assert "next" not in second


def test_bad_filters_are_bad_requests(client: FlaskClient) -> None:
    assert client.get("/hl7v2/messages?status=lost").status_code == 400
    assert client.get("/hl7v2/messages?received-from=yesterday").status_code == 400
    assert client.get("/hl7v2/messages/unknown-id").status_code == 404


def test_reprocess_one_and_in_bulk(client: FlaskClient) -> None:
    post(client, samples.adt_a01())
    [rec] = client.get("/hl7v2/messages").get_json()["messages"]

    again = client.post(f"/hl7v2/messages/{rec['id']}/$reprocess")
    assert again.status_code == 200 and again.get_json()["attempts"] == 2
    bulk = client.post("/hl7v2/messages/$reprocess?status=processed").get_json()
    assert bulk["reprocessed"] == 1 and bulk["outcomes"] == {"processed": 1}
    assert client.post("/hl7v2/messages/nope/$reprocess").status_code == 404


def test_auth_on_closes_the_hl7v2_routes(database_url: str, tmp_path: Path) -> None:
    app, ingest = make_app(Settings(data_dir=tmp_path / "data", database_url=database_url, auth=True))
    try:
        client = app.test_client()
        assert post(client, samples.adt_a01()).status_code == 401
        assert client.get("/hl7v2/messages").status_code == 401
    finally:
        if ingest is not None:
            ingest.messages.close()
        app.extensions["interlace"].close()
