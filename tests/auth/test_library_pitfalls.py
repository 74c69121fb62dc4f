"""The authlib/joserfc behaviours the issue warns about, pinned: if a library upgrade changes one, these tests say
so, and the tests in test_oauth_service.py show that our own code covers each of them regardless."""

from __future__ import annotations

import pytest
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from app.services.oauth import ASSERTION_ALGS, OAuthService

from .conftest import URLS, assertion, backend_client, backend_form, new_rsa, token_request


def test_joserfc_default_algorithms_refuse_smart_rs384_and_es384(rsa_key, ec_key):
    with pytest.raises(JoseError):
        jwt.decode(assertion(rsa_key, "c", alg="RS384"), rsa_key)
    with pytest.raises(JoseError):
        jwt.decode(assertion(ec_key, "c", alg="ES384"), ec_key)
    assert set(ASSERTION_ALGS) == {"RS384", "ES384"}  # so we name them explicitly


def test_joserfc_ignores_kid_when_given_the_one_registered_key(rsa_key):
    # The usual resolve_client_public_key returns the client's key: joserfc then never compares the header's kid
    # (a KeySet does compare it in joserfc 1.8, but falls back to its only key when the header has no kid).
    token = assertion(rsa_key, "c", alg="RS384", header={"kid": "not-this-key"})
    assert jwt.decode(token, rsa_key, algorithms=["RS384"]).header["kid"] == "not-this-key"
    no_kid = assertion(rsa_key, "c", alg="RS384", header={})
    assert jwt.decode(no_kid, KeySet([rsa_key]), algorithms=["RS384"]).claims["iss"] == "c"


def test_joserfc_never_looks_at_jku(rsa_key):
    token = assertion(rsa_key, "c", alg="RS384", header={"kid": rsa_key.kid, "jku": "https://evil.example/jwks"})
    assert jwt.decode(token, rsa_key, algorithms=["RS384"]).header["jku"] == "https://evil.example/jwks"


def test_ours_accepts_rs384_and_es384_that_stock_authlib_would_refuse(oauth: OAuthService, rsa_key, ec_key):
    oauth.add_client(backend_client("rs", rsa_key))
    oauth.add_client(backend_client("ec", ec_key))
    for key, client_id, alg in ((rsa_key, "rs", "RS384"), (ec_key, "ec", "ES384")):
        result = oauth.token_response(token_request(backend_form(assertion(key, client_id, alg=alg))), URLS)
        assert result.status == 200, result.body


def test_ours_does_not_let_a_single_key_ignore_kid(oauth: OAuthService, rsa_key):
    oauth.add_client(backend_client("one", rsa_key))
    result = oauth.token_response(token_request(backend_form(assertion(rsa_key, "one", header={"kid": "x"}))), URLS)
    assert result.status == 400 and "matches kid" in result.body["error_description"]


def test_ours_refuses_an_unregistered_jku_even_with_the_right_signature(oauth: OAuthService):
    key = new_rsa()
    oauth.add_client(backend_client("jku", key))
    form = backend_form(assertion(key, "jku", header={"kid": key.kid, "jku": "https://evil.example/jwks"}))
    result = oauth.token_response(token_request(form), URLS)
    assert result.status == 400 and "jku" in result.body["error_description"]
