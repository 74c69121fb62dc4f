"""The authorization server's settings: validated at start, with messages that say what a good value is."""

from __future__ import annotations

import pytest

from app.config import ConfigError, load_settings
from app.services.oauth import OAuthConfig


def test_auth_settings_are_read_and_mapped_to_the_oauth_config():
    settings = load_settings(
        {
            "INTERLACE_ISSUER": "https://fhir.example.org",
            "INTERLACE_TOKEN_LIFETIME": "120",
            "INTERLACE_SIGNING_ALG": "es256",
            "INTERLACE_KEY_SECRET": "k",
            "INTERLACE_EXTERNAL_ISSUERS": '[{"issuer": "https://idp", "jwks_uri": "https://idp/jwks"}]',
        }
    )
    config = OAuthConfig.from_settings(settings)
    assert settings.issuer == "https://fhir.example.org"
    assert config.access_token_lifetime == 120 and config.signing_alg == "ES256" and config.key_secret == "k"
    assert config.external_issuers[0].issuer == "https://idp"


@pytest.mark.parametrize(
    ("name", "value", "needle"),
    [
        ("INTERLACE_SIGNING_ALG", "HS256", "RS256 or ES256"),
        ("INTERLACE_TOKEN_LIFETIME", "86400", "at most 3600"),
        ("INTERLACE_ISSUER", "fhir.example.org", "base URL"),
        ("INTERLACE_EXTERNAL_ISSUERS", '{"issuer": "x"}', "JSON list"),
    ],
)
def test_bad_auth_settings_fail_at_start(name, value, needle):
    with pytest.raises(ConfigError, match=needle):
        load_settings({name: value})


def test_urls_for_the_cli_come_from_the_settings():
    from app.config import Settings
    from app.services.oauth import ServerUrls

    urls = ServerUrls.from_settings(Settings(base_url="https://fhir.example.org/fhir/"))
    assert urls.issuer == "https://fhir.example.org" and urls.fhir_base == "https://fhir.example.org/fhir"
    assert urls.token == "https://fhir.example.org/auth/token"
    explicit = ServerUrls.from_settings(Settings(issuer="https://auth.example.org", base_url="https://x/fhir"))
    assert explicit.issuer == "https://auth.example.org" and explicit.jwks == "https://auth.example.org/auth/jwks"
