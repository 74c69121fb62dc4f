"""Resource-server mode: access tokens from a configured external issuer (an enterprise IdP) are validated against
its JWKS (fetched and cached), its audience and its configured scope claim; nothing else about them is trusted."""

from __future__ import annotations

import pytest
from joserfc import jwt

from app.auth.scopes import Interaction
from app.services.oauth import ExternalIssuer, InvalidToken, OAuthConfig, OAuthService, parse_external_issuers

from .conftest import URLS, hs256_jwt, new_rsa, now, public_jwks

IDP = "https://idp.example.org/realms/hospital"
AUDIENCE = "api://interlace"


@pytest.fixture
def idp_key():
    return new_rsa()


@pytest.fixture
def federated(auth_store, replay, fetcher, jwks_server, idp_key):
    url, handler = jwks_server
    handler.jwks = public_jwks(idp_key)
    issuer = ExternalIssuer(issuer=IDP, jwks_uri=url, audience=AUDIENCE, scope_claim="scp")
    return OAuthService(auth_store, replay, fetcher, OAuthConfig(external_issuers=(issuer,))), handler


def idp_token(key, *, alg="RS256", header=None, **claims):
    body = {"iss": IDP, "aud": AUDIENCE, "sub": "svc-account", "azp": "reporting", "exp": now() + 300,
            "iat": now(), "scp": ["system/Observation.rs", "offline_access"]} | claims  # fmt: skip
    return jwt.encode({"alg": alg, "kid": key.kid, **(header or {})}, body, key, algorithms=[alg])


def test_a_token_of_a_configured_issuer_becomes_an_auth_context(federated, idp_key):
    oauth, handler = federated
    context = oauth.validate_access_token(idp_token(idp_key), URLS)
    assert context.client_id == "reporting" and context.subject == "svc-account" and context.issuer == IDP
    assert context.permits(Interaction.SEARCH_TYPE, "Observation")
    assert not context.permits(Interaction.READ, "Patient")
    oauth.validate_access_token(idp_token(idp_key), URLS)
    assert handler.hits == 1  # the JWKS is cached


def test_a_space_separated_scope_claim_works_too(auth_store, replay, fetcher, jwks_server, idp_key):
    url, handler = jwks_server
    handler.jwks = public_jwks(idp_key)
    oauth = OAuthService(auth_store, replay, fetcher, OAuthConfig(external_issuers=(ExternalIssuer(IDP, url),)))
    token = idp_token(idp_key, aud=URLS.fhir_base, scope="system/Patient.r")
    assert oauth.validate_access_token(token, URLS).permits(Interaction.READ, "Patient")


def test_idp_key_rotation_is_picked_up_by_kid(federated):
    oauth, handler = federated
    rotated = new_rsa()
    handler.jwks = public_jwks(rotated)
    assert oauth.validate_access_token(idp_token(rotated), URLS).client_id == "reporting"


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda k: idp_token(k, aud="api://someone-else"), "audience"),
        (lambda k: idp_token(k, exp=now() - 120), "expired"),
        (lambda k: idp_token(new_rsa()), "no key of the issuer"),
        (lambda k: idp_token(k, header={"jku": "https://evil.example/jwks"}), "jku"),
        (
            lambda k: hs256_jwt(
                {"alg": "HS256", "kid": k.kid},
                {"iss": IDP, "aud": AUDIENCE, "exp": now() + 60},
                k.as_pem(private=False),
            ),
            "alg HS256",
        ),  # fmt: skip
    ],
)
def test_bad_external_tokens_are_refused(federated, idp_key, make, needle):
    oauth, _ = federated
    with pytest.raises(InvalidToken, match=needle):
        oauth.validate_access_token(make(idp_key), URLS)


def test_an_external_token_cannot_claim_to_be_unbound_or_bound(federated, idp_key):
    oauth, _ = federated
    context = oauth.validate_access_token(idp_token(idp_key, fixed_patient=True), URLS)
    assert context.fixed_patient is False  # our private claim means nothing from a foreign issuer


def test_external_issuers_setting_is_a_json_list():
    (issuer,) = parse_external_issuers(
        '[{"issuer": "https://idp", "jwks_uri": "https://idp/jwks", "scope_claim": "scp", "algorithms": ["ES256"]}]'
    )
    assert issuer.scope_claim == "scp" and issuer.algorithms == ("ES256",)
    with pytest.raises(ValueError):
        parse_external_issuers('[{"issuer": "https://idp", "jwks_uri": "x", "algorithms": ["HS256"]}]')
    assert parse_external_issuers("") == ()
