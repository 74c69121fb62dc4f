"""The SMART endpoints over HTTP: discovery, JWKS, token, introspection, revocation -- driven by authlib's own
OAuth2 client (OAuth2Session + PrivateKeyJWT) against a real loopback server, and by Flask's test client."""

from __future__ import annotations

import base64
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT

from app.auth.clients import ClientRegistration, GrantRecord
from app.services.oauth import capability_security, urls_from

from .conftest import assertion, backend_client, backend_form, new_rsa, public_jwks

TEST_URLS = urls_from("", "http://localhost/fhir")


def _basic(client_id: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()}


# ---------------------------------------------------------------------------------------------- discovery


@pytest.mark.parametrize("path", ["/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"])
def test_discovery_describes_the_server(client, path):
    response = client.get(path)
    assert response.status_code == 200
    doc = response.get_json()
    assert doc["issuer"] == "http://localhost"
    assert doc["token_endpoint"] == "http://localhost/auth/token"
    assert doc["jwks_uri"] == "http://localhost/auth/jwks"
    assert doc["introspection_endpoint"].endswith("/auth/introspect")
    assert doc["revocation_endpoint"].endswith("/auth/revoke")
    assert doc["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
    assert set(doc["token_endpoint_auth_methods_supported"]) == {"private_key_jwt", "client_secret_basic", "none"}
    assert doc["authorization_endpoint"] == "http://localhost/auth/authorize"
    assert {"launch-ehr", "launch-standalone", "sso-openid-connect"} <= set(doc["capabilities"])
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert set(doc["grant_types_supported"]) == {"authorization_code", "client_credentials", "refresh_token"}
    assert "permission-v2" in doc["capabilities"] and "system/*.rs" in doc["scopes_supported"]


def test_jwks_publishes_only_public_signing_keys(client):
    keys = client.get("/auth/jwks").get_json()["keys"]
    assert len(keys) == 1
    assert keys[0]["kty"] == "EC" and keys[0]["alg"] == "ES256" and keys[0]["kid"] and "d" not in keys[0]


# ------------------------------------------------------------------------ authlib's client, real server


def _smart_exp() -> dict[str, int]:
    # authlib's PrivateKeyJWT signs exp = now + 3600 by default; SMART allows at most 5 minutes (and we refuse more)
    return {"exp": int(time.time()) + 240}


def test_authlib_oauth2_session_with_private_key_jwt_rs384(http_oauth, live_url, rsa_key):
    _, oauth = http_oauth
    oauth.add_client(backend_client("bulk-export", rsa_key, scopes="system/*.rs"))
    token_url = live_url + "/auth/token"
    with OAuth2Session("bulk-export", rsa_key, token_endpoint_auth_method="private_key_jwt") as session:
        session.register_client_auth_method(
            PrivateKeyJWT(token_url, alg="RS384", headers={"kid": rsa_key.kid}, claims=_smart_exp())
        )
        token = session.fetch_token(token_url, grant_type="client_credentials", scope="system/Observation.rs")
    assert token["token_type"] == "Bearer" and token["scope"] == "system/Observation.rs"
    context = oauth.validate_access_token(token["access_token"], urls_from("", live_url + "/fhir"))
    assert context.client_id == "bulk-export"


def test_authlib_oauth2_session_with_private_key_jwt_es384(http_oauth, live_url, ec_key):
    _, oauth = http_oauth
    oauth.add_client(backend_client("ec-client", ec_key, scopes="system/Patient.rs"))
    token_url = live_url + "/auth/token"
    with OAuth2Session("ec-client", ec_key, token_endpoint_auth_method="private_key_jwt") as session:
        session.register_client_auth_method(
            PrivateKeyJWT(token_url, alg="ES384", headers={"kid": ec_key.kid}, claims=_smart_exp())
        )
        token = session.fetch_token(token_url, grant_type="client_credentials", scope="system/Patient.rs")
    assert token["expires_in"] <= 300


def test_keys_from_a_jwks_uri_are_cached_and_refetched_for_a_new_kid(client, http_oauth, jwks_server):
    _, oauth = http_oauth
    url, handler = jwks_server
    first, second = new_rsa(), new_rsa()
    handler.jwks = public_jwks(first)
    oauth.add_client(ClientRegistration(client_id="remote-keys", scopes="system/*.rs", jwks_uri=url))
    for _ in range(2):
        response = client.post("/auth/token", data=backend_form(assertion(first, "remote-keys")))
        assert response.status_code == 200, response.get_json()
    assert handler.hits == 1  # cached
    handler.jwks = public_jwks(first, second)  # the client rotates its key
    response = client.post("/auth/token", data=backend_form(assertion(second, "remote-keys")))
    assert response.status_code == 200, response.get_json()
    assert handler.hits == 2


def test_jku_equal_to_the_registered_jwks_uri_is_accepted(client, http_oauth, jwks_server):
    _, oauth = http_oauth
    url, handler = jwks_server
    key = new_rsa()
    handler.jwks = public_jwks(key)
    oauth.add_client(ClientRegistration(client_id="jku-app", scopes="system/*.rs", jwks_uri=url))
    form = backend_form(assertion(key, "jku-app", header={"kid": key.kid, "jku": url}))
    assert client.post("/auth/token", data=form).status_code == 200


# ------------------------------------------------------------------------------------- errors over HTTP


def test_oauth_errors_are_rfc6749_json_and_never_cached(client):
    response = client.post("/auth/token", data={"grant_type": "password", "username": "u", "password": "p"})
    assert response.status_code == 400
    assert response.headers["Cache-Control"] == "no-store"
    assert response.content_type == "application/json"
    assert response.get_json()["error"] == "unsupported_grant_type"


def test_token_endpoint_wants_a_form_body(client):
    response = client.post("/auth/token", json={"grant_type": "client_credentials"})
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_request"


def test_repeated_parameters_are_an_invalid_request(client, http_oauth, rsa_key):
    http_oauth[1].add_client(backend_client("rep", rsa_key))
    form = backend_form(assertion(rsa_key, "rep"))
    body = "&".join(f"{k}={v}" for k, v in form.items()) + "&scope=system/*.cruds"
    response = client.post("/auth/token", data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_request"


def test_unknown_client_with_basic_auth_is_401_invalid_client(client):
    response = client.post("/auth/token", data={"grant_type": "client_credentials"}, headers=_basic("nobody", "x"))
    assert response.status_code == 401
    assert response.get_json()["error"] == "invalid_client"


# ------------------------------------------------------------------------------ introspection, revocation


@pytest.fixture
def secret_client(http_oauth) -> tuple[str, str]:
    _, secret = http_oauth[1].add_client(
        ClientRegistration(client_id="svc", auth_method="client_secret_basic", scopes="system/*.rs")
    )
    return "svc", secret


def _token(client, client_id, secret, scope="system/*.rs") -> str:
    response = client.post(
        "/auth/token", data={"grant_type": "client_credentials", "scope": scope}, headers=_basic(client_id, secret)
    )
    assert response.status_code == 200, response.get_json()
    return response.get_json()["access_token"]


def test_introspection_reports_an_active_token_to_its_client(client, secret_client):
    token = _token(client, *secret_client)
    response = client.post("/auth/introspect", data={"token": token}, headers=_basic(*secret_client))
    body = response.get_json()
    assert response.status_code == 200 and body["active"] is True
    assert body["client_id"] == "svc" and body["scope"] == "system/*.rs" and body["exp"] > body["iat"]


def test_introspection_needs_client_authentication(client, secret_client):
    token = _token(client, *secret_client)
    response = client.post("/auth/introspect", data={"token": token})
    assert response.status_code == 401 and response.get_json()["error"] == "invalid_client"


def test_introspection_of_another_clients_token_or_garbage_is_inactive(client, http_oauth, secret_client):
    _, other_secret = http_oauth[1].add_client(
        ClientRegistration(client_id="other", auth_method="client_secret_basic", scopes="system/*.rs")
    )
    token = _token(client, *secret_client)
    for presented in (token, "garbage"):
        response = client.post("/auth/introspect", data={"token": presented}, headers=_basic("other", other_secret))
        assert response.get_json() == {"active": False}


def test_revoked_token_is_inactive_and_refused(client, http_oauth, secret_client):
    token = _token(client, *secret_client)
    response = client.post("/auth/revoke", data={"token": token}, headers=_basic(*secret_client))
    assert response.status_code == 200
    introspected = client.post("/auth/introspect", data={"token": token}, headers=_basic(*secret_client))
    assert introspected.get_json() == {"active": False}
    with pytest.raises(Exception, match="revoked"):
        http_oauth[1].validate_access_token(token, TEST_URLS)


def test_revoking_an_unknown_token_is_still_200(client, secret_client):
    response = client.post("/auth/revoke", data={"token": "never-issued"}, headers=_basic(*secret_client))
    assert response.status_code == 200


def test_a_public_client_revokes_its_refresh_token_by_client_id(client, http_oauth):
    _, oauth = http_oauth
    oauth.add_client(
        ClientRegistration(
            client_id="pub",
            auth_method="none",
            grant_types=("authorization_code", "refresh_token"),
            redirect_uris=("https://app.example/cb",),
            scopes="offline_access user/Patient.r",
        )
    )
    reg = oauth.store.get_client("pub")
    now = datetime.now(UTC)
    record = GrantRecord("x" * 64, "code", "pub", "offline_access user/Patient.r", now + timedelta(minutes=1), now)
    body = oauth.issue_user_tokens(reg, replace(record, subject="u"), TEST_URLS)
    response = client.post("/auth/revoke", data={"token": body["refresh_token"], "client_id": "pub"})
    assert response.status_code == 200
    again = client.post("/auth/token", data={"grant_type": "refresh_token", "refresh_token": body["refresh_token"],
                                             "client_id": "pub"})  # fmt: skip
    assert again.status_code == 400 and again.get_json()["error"] == "invalid_grant"


def test_capability_security_names_the_smart_service_and_oauth_uris():
    security = capability_security(TEST_URLS)
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris["token"] == "http://localhost/auth/token" and uris["authorize"] == "http://localhost/auth/authorize"
