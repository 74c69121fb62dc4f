"""Client registrations and the records the authorization server keeps, as plain data (stdlib only).

The storage adapter (``app.adapters.auth_store``) returns these; ``app.services.oauth`` works on them. Client
secrets are kept only as salted scrypt hashes (``hash_secret`` / ``verify_secret``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from app.auth.scopes import ScopeError, parse_scopes

__all__ = [
    "AUTH_METHODS",
    "GRANT_TYPES",
    "ClientRegistration",
    "GrantRecord",
    "LocalUser",
    "RegistrationError",
    "SigningKeyRecord",
    "hash_secret",
    "read_registrations",
    "registration_from_json",
    "verify_secret",
]

AUTH_METHODS = ("private_key_jwt", "client_secret_basic", "none")
GRANT_TYPES = ("client_credentials", "authorization_code", "refresh_token")
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._~:@-]{1,128}$")
_SCRYPT = {"n": 2**14, "r": 8, "p": 1}


class RegistrationError(ValueError):
    """A client registration that cannot be accepted (the message names the field)."""


def hash_secret(secret: str) -> str:
    """``scrypt$<n>$<r>$<p>$<salt>$<hash>`` (base64); the plain secret is never stored."""
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(secret.encode("utf-8"), salt=salt, dklen=32, **_SCRYPT)
    b64 = base64.urlsafe_b64encode
    return f"scrypt${_SCRYPT['n']}${_SCRYPT['r']}${_SCRYPT['p']}${b64(salt).decode()}${b64(digest).decode()}"


def verify_secret(secret: str, hashed: str | None) -> bool:
    """Constant-time check of ``secret`` against a ``hash_secret`` value."""
    if not hashed or not secret:
        return False
    try:
        scheme, n, r, p, salt, digest = hashed.split("$")
        if scheme != "scrypt":
            return False
        expected = base64.urlsafe_b64decode(digest)
        actual = hashlib.scrypt(
            secret.encode("utf-8"), salt=base64.urlsafe_b64decode(salt), dklen=len(expected), n=int(n), r=int(r),
            p=int(p),
        )  # fmt: skip
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


@dataclass(frozen=True)
class ClientRegistration:
    """A registered client. ``scopes`` is the ceiling: a token never carries more (``app.auth.scopes.narrow``)."""

    client_id: str
    name: str = ""
    scopes: str = ""  # space-separated registered scopes
    grant_types: tuple[str, ...] = ("client_credentials",)
    auth_method: str = "private_key_jwt"
    jwks: Mapping[str, Any] | None = None  # public keys by value ({"keys": [...]})
    jwks_uri: str | None = None
    secret_hash: str | None = None
    redirect_uris: tuple[str, ...] = ()
    rate_limit: int | None = None  # requests per minute; None = the server default
    patient: str | None = None  # fixed launch context: every token is confined to this patient's compartment
    disabled: bool = False
    created_at: datetime | None = None
    rotated_at: datetime | None = None

    def public_view(self) -> dict[str, Any]:
        """For listings: everything but the secret hash."""
        return {
            "client_id": self.client_id,
            "name": self.name,
            "scopes": self.scopes,
            "grant_types": list(self.grant_types),
            "token_endpoint_auth_method": self.auth_method,
            "jwks": dict(self.jwks) if self.jwks else None,
            "jwks_uri": self.jwks_uri,
            "redirect_uris": list(self.redirect_uris),
            "rate_limit": self.rate_limit,
            "patient": self.patient,
            "disabled": self.disabled,
            "has_secret": bool(self.secret_hash),
            "created_at": self.created_at.isoformat() if self.created_at else None,
            "rotated_at": self.rotated_at.isoformat() if self.rotated_at else None,
        }

    def validate(self) -> ClientRegistration:
        """Raise RegistrationError for an inconsistent registration; return self."""
        if not _CLIENT_ID.match(self.client_id):
            raise RegistrationError(f"client_id {self.client_id!r}: 1-128 characters of A-Z a-z 0-9 . _ ~ : @ -")
        if self.auth_method not in AUTH_METHODS:
            raise RegistrationError(f"token_endpoint_auth_method must be one of {', '.join(AUTH_METHODS)}")
        bad = [g for g in self.grant_types if g not in GRANT_TYPES]
        if bad or not self.grant_types:
            raise RegistrationError(f"grant_types must be a non-empty subset of {', '.join(GRANT_TYPES)}")
        if self.auth_method == "private_key_jwt":
            if not self.jwks and not self.jwks_uri:
                raise RegistrationError("private_key_jwt needs public keys: jwks (by value) or jwks_uri")
            if self.jwks is not None and not isinstance(self.jwks.get("keys"), list):
                raise RegistrationError('jwks must be a JWK Set: {"keys": [...]}')
            if self.jwks_uri and not self.jwks_uri.startswith(("https://", "http://")):
                raise RegistrationError("jwks_uri must be an https:// URL")
        if "authorization_code" in self.grant_types:
            if not self.redirect_uris:
                raise RegistrationError("authorization_code needs at least one registered redirect_uri")
            if any(not u.startswith(("https://", "http://")) or "#" in u for u in self.redirect_uris):
                raise RegistrationError("redirect_uris must be absolute http(s) URLs without a fragment")
        if "client_credentials" in self.grant_types and self.auth_method == "none":
            raise RegistrationError("client_credentials needs a confidential client (private_key_jwt or secret)")
        try:
            parsed = parse_scopes(self.scopes)
        except ScopeError as exc:
            raise RegistrationError(str(exc)) from None
        if parsed.unknown:
            raise RegistrationError(f"unknown scopes: {' '.join(parsed.unknown)}")
        if self.rate_limit is not None and self.rate_limit < 1:
            raise RegistrationError("rate_limit must be a positive number of requests per minute")
        if self.patient is not None and not re.match(r"^[A-Za-z0-9\-.]{1,64}$", self.patient):
            raise RegistrationError("patient must be a FHIR id (the client is bound to Patient/<id>)")
        return self


def _strings(value: Any, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(value.split())
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise RegistrationError(f"{name} must be a list of strings or a space-separated string")


def read_registrations(text: str) -> list[dict[str, Any]]:
    """The entries of an import file: a JSON list of registrations, or ``{"clients": [...]}``."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise RegistrationError(f"the import file is not JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("clients"), list):
        data = data["clients"]
    if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
        raise RegistrationError('the import file must hold a JSON list of registrations (or {"clients": [...]})')
    return data


def registration_from_json(data: Mapping[str, Any]) -> ClientRegistration:
    """One registration from an import file entry: ``client_id``, ``jwks`` or ``jwks_uri``, ``scope``/``scopes``,
    ``grant_types``, ``patient``, optional ``name``, ``token_endpoint_auth_method``, ``redirect_uris``,
    ``rate_limit``. Secrets are not imported (``clients rotate`` issues one)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("client_id"), str):
        raise RegistrationError("each registration needs a client_id string")
    known = {
        "client_id", "name", "client_name", "jwks", "jwks_uri", "scope", "scopes", "grant_types", "patient",
        "token_endpoint_auth_method", "redirect_uris", "rate_limit",
    }  # fmt: skip
    extra = sorted(set(data) - known)
    if extra:
        raise RegistrationError(f"client {data['client_id']}: unknown fields {', '.join(extra)}")
    jwks = data.get("jwks")
    if jwks is not None and not isinstance(jwks, Mapping):
        raise RegistrationError(f"client {data['client_id']}: jwks must be an object")
    scopes = data.get("scopes", data.get("scope", ""))
    rate = data.get("rate_limit")
    if rate is not None and not isinstance(rate, int):
        raise RegistrationError(f"client {data['client_id']}: rate_limit must be a whole number")
    return ClientRegistration(
        client_id=data["client_id"],
        name=str(data.get("name") or data.get("client_name") or ""),
        scopes=" ".join(_strings(scopes, "scopes")),
        grant_types=_strings(data.get("grant_types"), "grant_types") or ("client_credentials",),
        auth_method=str(data.get("token_endpoint_auth_method") or "private_key_jwt"),
        jwks=dict(jwks) if jwks is not None else None,
        jwks_uri=data.get("jwks_uri"),
        redirect_uris=_strings(data.get("redirect_uris"), "redirect_uris"),
        rate_limit=rate,
        patient=data.get("patient"),
    ).validate()


@dataclass(frozen=True)
class SigningKeyRecord:
    """One of the server's signing keys. ``private_jwk`` is the stored form (encrypted when a key-encryption secret
    is configured); ``public_jwk`` is published at jwks_uri until ``retired_at`` + the longest token lifetime."""

    kid: str
    alg: str
    public_jwk: Mapping[str, Any]
    private_jwk: str
    created_at: datetime
    retired_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.retired_at is None


@dataclass(frozen=True)
class GrantRecord:
    """An authorization code or refresh token, stored by the SHA-256 of its value (never the value itself)."""

    token_hash: str
    kind: str  # "code" | "refresh"
    client_id: str
    scope: str
    expires_at: datetime
    created_at: datetime
    subject: str | None = None
    patient: str | None = None
    encounter: str | None = None
    fhir_user: str | None = None
    redirect_uri: str | None = None
    code_challenge: str | None = None
    code_challenge_method: str | None = None
    nonce: str | None = None
    used: bool = False
    revoked: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LocalUser:
    """A user of the built-in login page (development and demos): ``fhir_user`` is the FHIR resource the user is
    (``Practitioner/7``, ``Patient/5``); ``patients`` the ids the patient picker offers (a Patient user gets
    only themself)."""

    username: str
    password_hash: str
    name: str = ""
    fhir_user: str | None = None
    patients: tuple[str, ...] = ()
    disabled: bool = False
    created_at: datetime | None = None

    def selectable_patients(self) -> tuple[str, ...]:
        if self.fhir_user and self.fhir_user.startswith("Patient/"):
            return (self.fhir_user.split("/", 1)[1],)
        return self.patients
