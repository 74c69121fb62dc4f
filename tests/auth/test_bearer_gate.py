"""The bearer gate the FHIR blueprint gets instead of the closed 401 gate: a valid token yields an AuthContext in
flask.g; a missing or bad one a 401 OperationOutcome with a Bearer challenge; the public paths stay public."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Blueprint, Flask, jsonify

from app.api import errors as api_errors
from app.api import smart
from app.config import Settings
from app.services.oauth import OAuthService

from .conftest import URLS, backend_client


@pytest.fixture
def gated(oauth: OAuthService) -> Iterator[Flask]:
    app = Flask("gate-test")
    settings = Settings(base_url=URLS.fhir_base)
    blp = Blueprint("fhir", __name__, url_prefix="/fhir")

    @blp.route("/<path:rest>")
    def anything(rest: str):
        auth = smart.current_auth()
        return jsonify({"client": auth.client_id if auth else None, "patient": auth.patient if auth else None})

    smart.install_bearer_gate(blp, oauth, settings)
    app.register_blueprint(blp)
    api_errors.register_error_handlers(app)
    yield app


@pytest.fixture
def token(oauth: OAuthService, rsa_key) -> str:
    oauth.add_client(backend_client("gate-app", rsa_key, patient="p1"))
    return oauth.mint_token("gate-app", "system/*.rs", URLS)["access_token"]


def test_a_valid_token_puts_the_callers_context_on_the_request(gated, token):
    response = gated.test_client().get("/fhir/Observation", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200
    assert response.get_json() == {"client": "gate-app", "patient": "p1"}


def test_no_token_is_401_with_a_bare_bearer_challenge(gated):
    response = gated.test_client().get("/fhir/Patient/1")
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="interlace"'
    assert response.get_json()["resourceType"] == "OperationOutcome"
    assert response.get_json()["issue"][0]["code"] == "login"


@pytest.mark.parametrize("header", ["Bearer not.a.jwt", "Bearer ", "Basic dXNlcjpwYXNz"])
def test_bad_credentials_are_401(gated, header):
    response = gated.test_client().get("/fhir/Patient/1", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm="interlace"')


def test_a_tampered_token_is_401_invalid_token(gated, token):
    head, payload, sig = token.split(".")
    tampered = f"{head}.{payload[:-4]}AAAA.{sig}"
    response = gated.test_client().get("/fhir/Patient", headers={"Authorization": f"Bearer {tampered}"})
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize("path", ["/fhir/metadata", "/fhir/.well-known/smart-configuration"])
def test_public_paths_need_no_token(gated, path):
    assert gated.test_client().get(path).status_code == 200
