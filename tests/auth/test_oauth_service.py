"""SMART Backend Services at the service level (authlib's cores, no Flask), on SQLite and PostgreSQL, with the
replay cache in Redis: what is accepted, and every way a client assertion or an access token is refused."""

from __future__ import annotations

import base64
import json
from dataclasses import replace

import pytest
from joserfc import jwt
from joserfc.jwk import import_key

from app.auth.clients import ClientRegistration, RegistrationError
from app.auth.scopes import Interaction
from app.services.oauth import InvalidToken, OAuthService

from .conftest import (
    URLS,
    assertion,
    b64,
    backend_client,
    backend_form,
    hs256_jwt,
    new_ec,
    new_rsa,
    now,
    token_request,
    unsigned_jwt,
)


def fetch(oauth: OAuthService, form: dict[str, str], **kw) -> tuple[int, dict]:
    result = oauth.token_response(token_request(form, **kw), URLS)
    return result.status, result.body


def refused(oauth: OAuthService, form: dict[str, str], needle: str, error: str = "invalid_client") -> None:
    status, body = fetch(oauth, form)
    assert status in (400, 401), body
    assert body["error"] == error
    assert needle in body["error_description"]


@pytest.fixture
def rs_client(oauth, rsa_key):
    oauth.add_client(backend_client("rs-app", rsa_key))
    return "rs-app"


# ------------------------------------------------------------------------------------------------ accepted


def test_rs384_assertion_gets_a_short_lived_jwt_access_token(oauth, rsa_key, rs_client):
    status, body = fetch(oauth, backend_form(assertion(rsa_key, rs_client, alg="RS384")))
    assert status == 200, body
    assert body["token_type"] == "Bearer" and body["scope"] == "system/*.rs"
    assert 0 < body["expires_in"] <= 300
    context = oauth.validate_access_token(body["access_token"], URLS)
    assert context.client_id == "rs-app" and context.permits(Interaction.READ, "Observation")
    header = jwt.decode(body["access_token"], _server_key(oauth)).header
    assert header["typ"] == "at+jwt" and header["kid"] and header["alg"] == "RS256"


def test_es384_assertion_is_accepted(oauth, ec_key):
    oauth.add_client(backend_client("ec-app", ec_key))
    status, body = fetch(oauth, backend_form(assertion(ec_key, "ec-app", alg="ES384")))
    assert status == 200, body


def test_the_key_is_chosen_by_kid_among_several(oauth):
    k1, k2 = new_rsa(), new_rsa()
    oauth.add_client(backend_client("two-keys", k1, k2))
    status, _ = fetch(oauth, backend_form(assertion(k2, "two-keys", header={"kid": k2.kid})))
    assert status == 200


def test_a_client_bound_to_a_patient_gets_patient_in_the_response_and_a_confined_token(oauth, rsa_key):
    oauth.add_client(backend_client("bound", rsa_key, patient="p42"))
    status, body = fetch(oauth, backend_form(assertion(rsa_key, "bound")))
    assert status == 200 and body["patient"] == "p42"
    context = oauth.validate_access_token(body["access_token"], URLS)
    (path,) = context.decide(Interaction.SEARCH_TYPE, "Observation").paths
    assert path.compartment is not None and path.compartment.patient_id == "p42"


# -------------------------------------------------------------------------------- refused client assertions


def test_alg_none_assertion_is_refused(oauth, rsa_key, rs_client):
    token = unsigned_jwt(
        {"alg": "none", "kid": rsa_key.kid},
        {"iss": rs_client, "sub": rs_client, "aud": URLS.token, "exp": now() + 60, "jti": "n1"},
    )
    refused(oauth, backend_form(token), "alg none is not accepted")


def test_hs256_assertion_signed_with_the_clients_public_key_is_refused(oauth, rsa_key, rs_client):
    public_pem = rsa_key.as_pem(private=False)
    claims = {"iss": rs_client, "sub": rs_client, "aud": URLS.token, "exp": now() + 60, "jti": "h1"}
    refused(oauth, backend_form(hs256_jwt({"alg": "HS256", "kid": rsa_key.kid}, claims, public_pem)), "alg HS256")


def test_rs256_is_not_one_of_the_smart_assertion_algorithms(oauth, rsa_key, rs_client):
    refused(oauth, backend_form(assertion(rsa_key, rs_client, alg="RS256")), "alg RS256")


def test_assertion_signed_with_another_key_is_refused(oauth, rsa_key, rs_client):
    intruder = new_rsa()
    forged = assertion(intruder, rs_client, header={"kid": rsa_key.kid})
    refused(oauth, backend_form(forged), "signature does not verify")


def test_kid_is_honoured_even_with_a_single_registered_key(oauth, rsa_key, rs_client):
    # joserfc alone would ignore the kid and use the only key
    refused(oauth, backend_form(assertion(rsa_key, rs_client, header={"kid": "someone-else"})), "matches kid")


def test_several_keys_and_no_kid_is_refused(oauth):
    k1, k2 = new_rsa(), new_rsa()
    oauth.add_client(backend_client("two", k1, k2))
    refused(oauth, backend_form(assertion(k1, "two", header={})), "must name one with kid")


def test_jku_other_than_the_registered_jwks_uri_is_refused(oauth, rsa_key, rs_client):
    header = {"kid": rsa_key.kid, "jku": "https://attacker.example/jwks"}
    refused(oauth, backend_form(assertion(rsa_key, rs_client, header=header)), "jku")


def test_expired_assertion_is_refused(oauth, rsa_key, rs_client):
    old = now() - 600
    refused(oauth, backend_form(assertion(rsa_key, rs_client, claims={"iat": old, "exp": old + 60})), "expired")


def test_not_yet_valid_assertion_is_refused(oauth, rsa_key, rs_client):
    refused(oauth, backend_form(assertion(rsa_key, rs_client, claims={"nbf": now() + 240})), "not valid yet")


def test_exp_more_than_five_minutes_ahead_is_refused(oauth, rsa_key, rs_client):
    refused(oauth, backend_form(assertion(rsa_key, rs_client, expires_in=3600)), "more than 5 minutes")


def test_wrong_audience_is_refused(oauth, rsa_key, rs_client):
    refused(oauth, backend_form(assertion(rsa_key, rs_client, aud="https://other.example/token")), "aud")


def test_replayed_jti_is_refused(oauth, rsa_key, rs_client):
    form = backend_form(assertion(rsa_key, rs_client))
    assert fetch(oauth, form)[0] == 200
    refused(oauth, form, "replay")


def test_client_id_form_field_must_match_iss(oauth, rsa_key, rs_client):
    oauth.add_client(backend_client("other-app", rsa_key))
    refused(oauth, backend_form(assertion(rsa_key, rs_client), client_id="other-app"), "does not match")


def test_iss_must_equal_sub(oauth, rsa_key, rs_client):
    refused(oauth, backend_form(assertion(rsa_key, rs_client, claims={"sub": "someone"})), "iss and sub")


def test_unknown_client_is_refused(oauth, rsa_key):
    refused(oauth, backend_form(assertion(rsa_key, "ghost")), "does not exist")


def test_disabled_client_is_refused(oauth, rsa_key, rs_client):
    oauth.set_client_disabled(rs_client)
    refused(oauth, backend_form(assertion(rsa_key, rs_client)), "disabled")


def test_scope_escalation_is_narrowed_to_the_registration(oauth, rsa_key, rs_client):
    status, body = fetch(oauth, backend_form(assertion(rsa_key, rs_client), scope="system/*.cruds"))
    assert status == 200 and body["scope"] == "system/*.rs"
    context = oauth.validate_access_token(body["access_token"], URLS)
    assert not context.permits(Interaction.CREATE, "Patient")


def test_scope_wholly_outside_the_registration_is_invalid_scope(oauth, rsa_key, rs_client):
    refused(
        oauth, backend_form(assertion(rsa_key, rs_client), scope="system/*.d user/*.rs"), "none of", "invalid_scope"
    )


def test_backend_client_cannot_get_patient_scopes_without_a_bound_patient(oauth, rsa_key):
    oauth.add_client(backend_client("pat", rsa_key, scopes="patient/*.rs system/Patient.r"))
    status, body = fetch(oauth, backend_form(assertion(rsa_key, "pat"), scope="patient/*.rs system/Patient.r"))
    assert status == 200 and body["scope"] == "system/Patient.r"


# ------------------------------------------------------------------------------------ confidential clients


def test_client_secret_basic_gets_a_token_and_a_wrong_secret_does_not(oauth):
    reg, secret = oauth.add_client(
        ClientRegistration(client_id="conf", auth_method="client_secret_basic", scopes="system/*.rs")
    )
    assert secret and reg.secret_hash and secret not in reg.secret_hash
    form = {"grant_type": "client_credentials", "scope": "system/Patient.rs"}
    status, body = fetch(oauth, form, headers={"Authorization": _basic("conf", secret)})
    assert status == 200 and body["scope"] == "system/Patient.rs"
    status, body = fetch(oauth, form, headers={"Authorization": _basic("conf", secret + "x")})
    assert status == 401 and body["error"] == "invalid_client"


def test_rotating_a_secret_invalidates_the_old_one(oauth):
    _, old = oauth.add_client(
        ClientRegistration(client_id="rot", auth_method="client_secret_basic", scopes="system/*.rs")
    )
    new = oauth.rotate_client("rot")
    form = {"grant_type": "client_credentials", "scope": "system/*.rs"}
    assert fetch(oauth, form, headers={"Authorization": _basic("rot", new)})[0] == 200
    assert fetch(oauth, form, headers={"Authorization": _basic("rot", old)})[0] == 401


# -------------------------------------------------------------------------------- refused access tokens


@pytest.fixture
def issued(oauth, rsa_key, rs_client) -> str:
    status, body = fetch(oauth, backend_form(assertion(rsa_key, rs_client)))
    assert status == 200
    return body["access_token"]


def _claims(oauth, token):
    return jwt.decode(token, _server_key(oauth)).claims


def _server_key(oauth):
    record, private = oauth.keys.active()
    return private


def test_tampered_access_token_is_refused(oauth, issued):
    header, payload, signature = issued.split(".")
    claims = _claims(oauth, issued)
    claims["scope"] = "system/*.cruds"
    forged = f"{header}.{b64(json.dumps(claims).encode())}.{signature}"
    with pytest.raises(InvalidToken, match="signature"):
        oauth.validate_access_token(forged, URLS)


def test_alg_none_access_token_is_refused(oauth, issued):
    kid = jwt.decode(issued, _server_key(oauth)).header["kid"]
    token = unsigned_jwt({"alg": "none", "typ": "at+jwt", "kid": kid}, _claims(oauth, issued))
    with pytest.raises(InvalidToken, match="alg none"):
        oauth.validate_access_token(token, URLS)


def test_hs256_access_token_keyed_with_the_servers_public_key_is_refused(oauth, issued):
    record, _ = oauth.keys.active()
    published = next(k for k in oauth.jwks()["keys"] if k["kid"] == record.kid)
    pem = import_key(published).as_pem()  # what anyone can fetch from jwks_uri
    token = hs256_jwt({"alg": "HS256", "typ": "at+jwt", "kid": record.kid}, _claims(oauth, issued), pem)
    with pytest.raises(InvalidToken, match="alg HS256"):
        oauth.validate_access_token(token, URLS)


def test_access_token_of_an_unknown_key_is_refused(oauth, issued):
    other = new_ec()
    token = jwt.encode(
        {"alg": "ES384", "typ": "at+jwt", "kid": other.kid}, _claims(oauth, issued), other, algorithms=["ES384"]
    )
    with pytest.raises(InvalidToken, match="not signed by a key of this server"):
        oauth.validate_access_token(token, URLS)


def _resign(oauth, claims):
    record, private = oauth.keys.active()
    return jwt.encode({"alg": record.alg, "typ": "at+jwt", "kid": record.kid}, claims, private, algorithms=[record.alg])


def test_expired_access_token_is_refused(oauth, issued):
    claims = _claims(oauth, issued) | {"exp": now() - 120, "iat": now() - 420, "nbf": now() - 420}
    with pytest.raises(InvalidToken, match="expired"):
        oauth.validate_access_token(_resign(oauth, claims), URLS)


def test_not_yet_valid_access_token_is_refused(oauth, issued):
    claims = _claims(oauth, issued) | {"nbf": now() + 200}
    with pytest.raises(InvalidToken, match="not valid yet"):
        oauth.validate_access_token(_resign(oauth, claims), URLS)


def test_access_token_for_another_audience_is_refused(oauth, issued):
    claims = _claims(oauth, issued) | {"aud": "https://elsewhere.example/fhir"}
    with pytest.raises(InvalidToken, match="audience"):
        oauth.validate_access_token(_resign(oauth, claims), URLS)


def test_access_token_that_is_not_typed_at_jwt_is_refused(oauth, issued):
    record, private = oauth.keys.active()
    token = jwt.encode({"alg": record.alg, "kid": record.kid}, _claims(oauth, issued), private, algorithms=[record.alg])
    with pytest.raises(InvalidToken, match="typ"):
        oauth.validate_access_token(token, URLS)


def test_invalid_token_carries_a_bearer_challenge(oauth):
    with pytest.raises(InvalidToken) as info:
        oauth.validate_access_token("not-a-jwt", URLS)
    assert info.value.status == 401
    assert info.value.headers["WWW-Authenticate"].startswith('Bearer realm="interlace", error="invalid_token"')


# ------------------------------------------------------------------------------------------- key rotation


def test_rotation_keeps_old_tokens_valid_and_publishes_both_keys(oauth, issued, rsa_key, rs_client):
    old_kid = jwt.decode(issued, _server_key(oauth)).header["kid"]
    new = oauth.keys.rotate()
    assert {k["kid"] for k in oauth.jwks()["keys"]} == {old_kid, new.kid}
    assert oauth.validate_access_token(issued, URLS).client_id == rs_client
    status, body = fetch(oauth, backend_form(assertion(rsa_key, rs_client)))
    assert jwt.decode(body["access_token"], oauth.keys.active()[1]).header["kid"] == new.kid


def test_published_keys_are_public_and_stored_private_keys_are_sealed(oauth, auth_store, issued):
    for key in oauth.jwks()["keys"]:
        assert "d" not in key and key["use"] == "sig"
    (record,) = auth_store.signing_keys()
    assert record.private_jwk.startswith("fernet:") and '"d"' not in record.private_jwk


# -------------------------------------------------------------------------------------- mint (operators)


def test_mint_narrows_to_the_registration(oauth, rs_client):
    body = oauth.mint_token(rs_client, "system/*.cruds", URLS)
    assert body["scope"] == "system/*.rs"
    assert oauth.validate_access_token(body["access_token"], URLS).client_id == rs_client


def test_mint_with_patient_confines_the_token(oauth, rsa_key):
    oauth.add_client(backend_client("viewer", rsa_key, scopes="patient/*.rs"))
    body = oauth.mint_token("viewer", "patient/Observation.rs", URLS, patient="p7", lifetime=60)
    assert body["patient"] == "p7" and body["expires_in"] == 60
    context = oauth.validate_access_token(body["access_token"], URLS)
    assert context.patient == "p7" and context.decide(Interaction.READ, "Observation").paths[0].compartment


def test_import_creates_then_updates_and_refuses_the_whole_file_on_one_bad_entry(oauth, rsa_key):
    entries = [
        {"client_id": "a", "jwks": {"keys": [rsa_key.as_dict(private=False)]}, "scopes": "system/*.rs"},
        {
            "client_id": "b",
            "jwks_uri": "https://example.org/jwks.json",
            "scopes": ["system/Patient.r"],
            "patient": "p1",
        },
    ]
    assert oauth.import_clients(entries) == [("a", "created"), ("b", "created")]
    assert oauth.import_clients(entries[:1]) == [("a", "updated")]
    with pytest.raises(RegistrationError):
        oauth.import_clients([{"client_id": "c", "jwks": {"keys": []}}, {"client_id": "d"}])
    assert [c.client_id for c in oauth.list_clients()] == ["a", "b"]


def _basic(client_id: str, secret: str) -> str:
    return "Basic " + base64.b64encode(f"{client_id}:{secret}".encode()).decode()


# ------------------------------------------------------------------------------- validated-token cache


def test_a_remembered_token_is_still_refused_once_revoked(oauth, issued):
    assert oauth.validate_access_token(issued, URLS).client_id == "rs-app"  # now cached
    view = oauth.lookup_token(issued, None, URLS)
    oauth.revoke(view)
    with pytest.raises(InvalidToken, match="revoked"):
        oauth.validate_access_token(issued, URLS)


def test_another_workers_revocation_is_seen_after_its_refresh_interval(oauth, auth_store, replay, fetcher, issued):
    other_worker = OAuthService(auth_store, replay, fetcher, replace(oauth.config, revocation_refresh=0))
    assert other_worker.validate_access_token(issued, URLS).client_id == "rs-app"
    oauth.revoke(oauth.lookup_token(issued, None, URLS))
    with pytest.raises(InvalidToken, match="revoked"):
        other_worker.validate_access_token(issued, URLS)


def test_the_cache_is_keyed_by_audience_too(oauth, issued):
    oauth.validate_access_token(issued, URLS)
    with pytest.raises(InvalidToken, match="audience"):
        oauth.validate_access_token(issued, replace(URLS, fhir_base="http://localhost/other/fhir"))
