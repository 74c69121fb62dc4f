"""The SMART on FHIR authorization server and token validator, on authlib's spec cores (no Flask here).

- Token endpoint (RFC 6749 via ``authlib.oauth2.rfc6749``): ``client_credentials`` for SMART Backend Services with
  ``private_key_jwt`` (RFC 7523) and for confidential clients with ``client_secret_basic``.
- Access tokens: signed JWTs in the RFC 9068 profile (``typ: at+jwt``, ``kid`` of a rotating server key, RS256 or
  ES256), at most 5 minutes for backend services.
- Introspection (RFC 7662) and revocation (RFC 7009) through authlib's endpoint classes.
- ``validate_access_token``: our tokens (algorithm pinned per key, ``kid`` required, iss/aud/exp/nbf, revoked
  ``jti``) and, in resource-server mode, tokens of configured external issuers (their JWKS fetched and cached).

Known authlib/joserfc pitfalls, each handled here on purpose (and tested in tests/auth):

1. ``JWTBearerClientAssertion.process_assertion_claims`` calls ``jwt.decode`` without ``algorithms``, and joserfc's
   default set is HS256/RS256/ES256 only: SMART's RS384/ES384 assertions would be refused. We decode with the
   header's algorithm after checking it against ``assertion_algorithms`` (so ``none``/HS256 are refused first).
2. With a single key in a KeySet joserfc ignores ``kid``; it never looks at ``jku``. We select the key ourselves:
   by ``kid`` when given (unknown kid: refetch a ``jwks_uri`` once, then refuse), else the only key of the right
   type; a ``jku`` other than the registered ``jwks_uri`` -- and any embedded ``jwk``/``x5u`` header -- is refused.
3. authlib does not compare a ``client_id`` form field with ``iss``, does not cap ``exp`` and leaves the ``jti``
   replay store to the application: ``SmartClientAssertion`` does all three (replay cache: a ``ReplayCache``).

Storage, the replay cache and HTTP fetching of JWK Sets are reached through the Protocols below; adapters in
``app.adapters`` implement them and ``app.wiring`` plugs them in.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from urllib.parse import urlsplit

import orjson
from authlib.oauth2.rfc6749 import (
    AuthorizationServer,
    ClientMixin,
    InvalidClientError,
    InvalidGrantError,
    InvalidRequestError,
    InvalidScopeError,
    OAuth2Error,
    OAuth2Request,
    UnauthorizedClientError,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, BaseGrant, ClientCredentialsGrant
from authlib.oauth2.rfc6749.grants.base import TokenEndpointMixin
from authlib.oauth2.rfc6749.requests import OAuth2Payload
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from joserfc import jws, jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, Key, RSAKey, import_key

from app.auth.clients import (
    ClientRegistration,
    GrantRecord,
    LocalUser,
    RegistrationError,
    SigningKeyRecord,
    hash_secret,
    registration_from_json,
    verify_secret,
)
from app.auth.context import AuthContext
from app.auth.scopes import CONTEXT_SCOPES, ParsedScopes, ScopeError, narrow, parse_scopes, render_scopes
from app.config import Settings
from app.fhir.errors import Unauthorized

log = logging.getLogger("interlace.auth")

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
BACKEND_MAX_LIFETIME = 300  # SMART Backend Services: access tokens live at most five minutes
ASSERTION_MAX_LIFETIME = 300  # ... and so may a client assertion ("exp" no more than 5 minutes ahead)
SIGNING_ALGS = ("RS256", "ES256")
ASSERTION_ALGS = ("RS384", "ES384")
_ALG_KTY = {"RS256": "RSA", "RS384": "RSA", "RS512": "RSA", "ES256": "EC", "ES384": "EC", "ES512": "EC"}
_ALG_CRV = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
_AUTHORIZE_PARAMS = (
    "response_type", "client_id", "redirect_uri", "scope", "state", "aud", "launch", "code_challenge",
    "code_challenge_method", "nonce",
)  # fmt: skip
_FORBIDDEN_DESC = re.compile(r"[^\x20-\x21\x23-\x5b\x5d-\x7e]")

__all__ = [
    "ASSERTION_ALGS",
    "AuthorizationPrompt",
    "LoginFailed",
    "AuthStore",
    "ExternalIssuer",
    "InvalidToken",
    "JwksCache",
    "KeyRing",
    "OAuthConfig",
    "OAuthResponse",
    "OAuthService",
    "ReplayCache",
    "ServerUrls",
    "TokenHttpRequest",
    "capability_security",
]


# ------------------------------------------------------------------------------------------------------- ports


class AuthStore(Protocol):
    def add_client(self, reg: ClientRegistration) -> ClientRegistration: ...
    def upsert_client(self, reg: ClientRegistration) -> tuple[ClientRegistration, bool]: ...
    def get_client(self, client_id: str) -> ClientRegistration | None: ...
    def list_clients(self) -> list[ClientRegistration]: ...
    def set_client_disabled(self, client_id: str, disabled: bool) -> bool: ...
    def rotate_client_credentials(
        self,
        client_id: str,
        *,
        secret_hash: str | None = None,
        jwks: dict[str, Any] | None = None,
        jwks_uri: str | None = None,
    ) -> bool: ...
    def add_signing_key(self, key: SigningKeyRecord) -> None: ...
    def signing_keys(self) -> list[SigningKeyRecord]: ...
    def retire_signing_keys(self, except_kid: str, at: datetime) -> int: ...
    def delete_signing_keys_retired_before(self, cutoff: datetime) -> int: ...
    def save_grant(self, grant: GrantRecord) -> None: ...
    def get_grant(self, token_hash: str) -> GrantRecord | None: ...
    def consume_grant(self, token_hash: str) -> bool: ...
    def revoke_grant(self, token_hash: str) -> bool: ...
    def revoke_client_grants(self, client_id: str) -> int: ...
    def revoke_token_id(self, jti: str, client_id: str | None, expires_at: datetime) -> None: ...
    def is_token_revoked(self, jti: str) -> bool: ...
    def revoked_token_ids(self, now: datetime) -> set[str]: ...
    def add_user(self, user: LocalUser) -> None: ...
    def get_user(self, username: str) -> LocalUser | None: ...


class ReplayCache(Protocol):
    def first_use(self, issuer: str, jti: str, expires_at: int) -> bool: ...


JwksFetcher = Callable[[str], dict[str, Any]]


# ----------------------------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class ExternalIssuer:
    """Resource-server mode: accept access tokens of another authorization server (e.g. an enterprise IdP)."""

    issuer: str
    jwks_uri: str
    audience: str = ""  # "" = our FHIR base URL
    scope_claim: str = "scope"  # e.g. "scp" (a list) for some IdPs
    algorithms: tuple[str, ...] = ("RS256", "ES256", "RS384", "ES384")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ExternalIssuer:
        if not isinstance(data.get("issuer"), str) or not isinstance(data.get("jwks_uri"), str):
            raise ValueError("each external issuer needs an issuer and a jwks_uri")
        algs = tuple(data.get("algorithms") or cls.algorithms)
        if any(a not in _ALG_KTY for a in algs):
            raise ValueError(f"external issuer {data['issuer']}: algorithms must be among {', '.join(_ALG_KTY)}")
        return cls(
            issuer=data["issuer"],
            jwks_uri=data["jwks_uri"],
            audience=str(data.get("audience") or ""),
            scope_claim=str(data.get("scope_claim") or "scope"),
            algorithms=algs,
        )


@dataclass(frozen=True)
class OAuthConfig:
    access_token_lifetime: int = BACKEND_MAX_LIFETIME
    signing_alg: str = "RS256"  # RS256 or ES256 for new server keys
    assertion_algorithms: tuple[str, ...] = ASSERTION_ALGS
    leeway: int = 30  # clock skew allowed on exp/nbf/iat
    key_secret: str = ""  # encrypts stored private signing keys (Fernet); "" = stored unencrypted, with a warning
    external_issuers: tuple[ExternalIssuer, ...] = ()
    jwks_cache_ttl: int = 300
    key_cache_ttl: int = 30  # how long a worker trusts its copy of the server keys
    refresh_token_lifetime: int = 30 * 24 * 3600
    code_lifetime: int = 60
    validated_cache_size: int = 4096  # validated tokens remembered per worker (a client reuses its token)
    revocation_refresh: float = 2.0  # seconds a worker trusts its copy of the revoked-jti list (0 = every time)

    @classmethod
    def from_settings(cls, settings: Settings) -> OAuthConfig:
        """INTERLACE_ISSUER, _TOKEN_LIFETIME, _SIGNING_ALG, _KEY_SECRET, _EXTERNAL_ISSUERS."""
        return cls(
            access_token_lifetime=settings.token_lifetime,
            signing_alg=settings.signing_alg,
            key_secret=settings.key_secret,
            external_issuers=parse_external_issuers(settings.external_issuers),
        )

    def __post_init__(self) -> None:
        if self.signing_alg not in SIGNING_ALGS:
            raise ValueError(f"signing_alg must be one of {', '.join(SIGNING_ALGS)}")
        bad = [a for a in self.assertion_algorithms if a not in _ALG_KTY]
        if bad:
            raise ValueError(f"assertion algorithms must be asymmetric RS*/ES*: {', '.join(bad)}")


@dataclass(frozen=True)
class ServerUrls:
    """Where things are. ``issuer`` is the authorization server's base URL, ``fhir_base`` the audience of our
    access tokens (the FHIR base URL)."""

    issuer: str
    fhir_base: str

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerUrls:
        """For processes without a request (CLI ``tokens mint``): INTERLACE_ISSUER and INTERLACE_BASE_URL, else
        the listen address. Set INTERLACE_BASE_URL in production so that minted tokens match what the server
        computes per request."""
        return urls_from(settings.issuer, settings.base_url or f"http://{settings.host}:{settings.port}/fhir")

    @property
    def token(self) -> str:
        return self.issuer + "/auth/token"

    @property
    def jwks(self) -> str:
        return self.issuer + "/auth/jwks"

    @property
    def authorize(self) -> str:
        return self.issuer + "/auth/authorize"

    @property
    def introspect(self) -> str:
        return self.issuer + "/auth/introspect"

    @property
    def revoke(self) -> str:
        return self.issuer + "/auth/revoke"


@dataclass(frozen=True)
class TokenHttpRequest:
    """A framework-free HTTP request to one of the OAuth endpoints."""

    method: str
    url: str
    form: Mapping[str, Sequence[str]]  # every value of every form field (repeats are an error)
    headers: Mapping[str, str]


@dataclass(frozen=True)
class OAuthResponse:
    status: int
    body: dict[str, Any]
    headers: list[tuple[str, str]] = field(default_factory=list)


class InvalidToken(Unauthorized):
    """401 for a missing, malformed, expired, revoked or otherwise invalid bearer token (RFC 6750 ``invalid_token``).
    ``headers`` carry the ``WWW-Authenticate`` challenge."""

    def __init__(self, description: str, *, realm: str = "interlace") -> None:
        safe = _FORBIDDEN_DESC.sub("", description)
        super().__init__(
            f"Invalid access token: {description}",
            headers={"WWW-Authenticate": f'Bearer realm="{realm}", error="invalid_token", error_description="{safe}"'},
        )
        self.description = description


def _desc(text: str) -> str:
    """An RFC 6749 error_description may not contain quotes or backslashes (authlib refuses it outright)."""
    return _FORBIDDEN_DESC.sub("'", text)


def _utc(ts: int) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------------------------------- JWKS cache


class JwksCache:
    """JWK Sets by URL, cached ``ttl`` seconds; a forced refresh (unknown ``kid``) at most every ``min_refresh``
    seconds per URL, so a stream of bogus kids cannot turn us into a request amplifier."""

    def __init__(self, fetch: JwksFetcher, *, ttl: int = 300, min_refresh: int = 10) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._min_refresh = min_refresh
        self._entries: dict[str, tuple[float, dict[str, Any]]] = {}
        self._forced: dict[str, float] = {}
        self._lock = threading.Lock()

    def get(self, url: str, *, force: bool = False) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(url)
            if entry is not None and now - entry[0] < self._ttl:
                if not force or now - self._forced.get(url, -1e9) < self._min_refresh:
                    return entry[1]
            if force:
                self._forced[url] = now
        data = self._fetch(url)
        with self._lock:
            self._entries[url] = (now, data)
        return data


def _select_key(jwks: Mapping[str, Any], header: Mapping[str, Any], *, what: str) -> Key | None:
    """The key that verifies a JWS with ``header``: by ``kid`` when the header names one (never "the only key
    anyway"), else the single key of the algorithm's type; None when none fits."""
    alg = str(header.get("alg"))
    kty = _ALG_KTY.get(alg)
    candidates = []
    for data in jwks.get("keys", []):
        if not isinstance(data, Mapping) or data.get("kty") != kty:
            continue
        if data.get("use") not in (None, "sig") or data.get("alg") not in (None, alg):
            continue
        if alg in _ALG_CRV and data.get("crv") != _ALG_CRV[alg]:
            continue
        candidates.append(data)
    kid = header.get("kid")
    if kid is not None:
        candidates = [d for d in candidates if d.get("kid") == kid]
    elif len(candidates) > 1:
        raise _AssertionRefused(f"{what} has several keys for {alg}: the JWT header must name one with kid")
    if len(candidates) != 1:
        return None
    try:
        return import_key(dict(candidates[0]))
    except (JoseError, ValueError, TypeError):
        return None


class _AssertionRefused(Exception):
    pass


# ------------------------------------------------------------------------------------------- server key ring


class KeyRing:
    """The server's signing keys: one active (newest) signs; retired ones stay published until every token they
    signed has expired. Private keys are sealed with Fernet when a key secret is configured."""

    def __init__(self, store: AuthStore, config: OAuthConfig) -> None:
        self._store = store
        self._config = config
        self._lock = threading.Lock()
        self._loaded_at = -1e9
        self._records: list[SigningKeyRecord] = []
        self._keys: dict[str, Key] = {}
        self._private: dict[str, Key] = {}
        self._warned = False
        self._last_forced = -1e9

    # sealing
    def _fernet(self) -> Any:
        from cryptography.fernet import Fernet

        digest = hashlib.sha256(b"interlace-signing-keys\x00" + self._config.key_secret.encode("utf-8")).digest()
        return Fernet(base64.urlsafe_b64encode(digest))

    def _seal(self, private: dict[str, Any]) -> str:
        raw = orjson.dumps(private)
        if self._config.key_secret:
            return "fernet:" + str(self._fernet().encrypt(raw).decode("ascii"))
        if not self._warned:
            log.warning("INTERLACE_KEY_SECRET is not set: server signing keys are stored unencrypted in the database")
            self._warned = True
        return "plain:" + raw.decode("utf-8")

    def _unseal(self, sealed: str) -> dict[str, Any]:
        scheme, _, body = sealed.partition(":")
        if scheme == "plain":
            return orjson.loads(body)  # type: ignore[no-any-return]
        if scheme == "fernet":
            if not self._config.key_secret:
                raise RuntimeError("signing keys are encrypted but INTERLACE_KEY_SECRET is not set")
            return orjson.loads(self._fernet().decrypt(body.encode("ascii")))  # type: ignore[no-any-return]
        raise RuntimeError("unknown signing-key storage scheme")

    # lifecycle
    def generate(self, alg: str | None = None, *, now: datetime | None = None) -> SigningKeyRecord:
        """Create and store a new active key; the caller retires the others (``rotate``)."""
        alg = alg or self._config.signing_alg
        key: Key = RSAKey.generate_key(2048, private=True) if alg.startswith("RS") else ECKey.generate_key("P-256")
        key.ensure_kid()  # RFC 7638 thumbprint
        public = {**key.as_dict(private=False), "alg": alg, "use": "sig"}
        record = SigningKeyRecord(
            kid=str(key.kid),
            alg=alg,
            public_jwk=public,
            private_jwk=self._seal(key.as_dict(private=True)),
            created_at=now or datetime.now(UTC),
        )
        self._store.add_signing_key(record)
        self.invalidate()
        return record

    def rotate(self, alg: str | None = None) -> SigningKeyRecord:
        """A new signing key; the previous ones are retired but stay published until their tokens expire."""
        record = self.generate(alg)
        self._store.retire_signing_keys(record.kid, datetime.now(UTC))
        keep = timedelta(seconds=self._config.access_token_lifetime + self._config.leeway + 60)
        self._store.delete_signing_keys_retired_before(datetime.now(UTC) - keep)
        self.invalidate()
        return record

    def invalidate(self) -> None:
        with self._lock:
            self._loaded_at = -1e9

    def _load(self, *, force: bool = False) -> None:
        now = time.monotonic()
        with self._lock:
            fresh = now - self._loaded_at < self._config.key_cache_ttl
            if fresh and not force:
                return
            if force and now - self._last_forced < 1.0:
                return  # unknown kids: reload at most once a second
            if force:
                self._last_forced = now
        records = self._store.signing_keys()
        keys = {r.kid: import_key(dict(r.public_jwk)) for r in records}
        with self._lock:
            self._records, self._keys, self._loaded_at = records, keys, now

    def active(self) -> tuple[SigningKeyRecord, Key]:
        """The newest active key and its private key, creating the first one on first use."""
        self._load()
        active = [r for r in self._records if r.active]
        if not active:
            self._load(force=True)
            active = [r for r in self._records if r.active]
            if not active:
                self.generate()
                self._loaded_at = -1e9
                self._load()
                active = [r for r in self._records if r.active]
        record = active[0]
        private = self._private.get(record.kid)
        if private is None:
            private = import_key(self._unseal(record.private_jwk))
            self._private[record.kid] = private
        return record, private

    def public_key(self, kid: str) -> tuple[Key, str] | None:
        """(key, alg) of a published key by ``kid``; reloads once if unknown (a key made by another worker)."""
        self._load()
        if kid not in self._keys:
            self._load(force=True)
        key = self._keys.get(kid)
        if key is None:
            return None
        alg = next(r.alg for r in self._records if r.kid == kid)
        return key, alg

    def published(self) -> dict[str, Any]:
        """The JWK Set at jwks_uri: public parts of the active and still-needed retired keys."""
        self.active()  # make sure there is one to publish
        keep = timedelta(seconds=self._config.access_token_lifetime + self._config.leeway + 60)
        cutoff = datetime.now(UTC) - keep
        keys = [dict(r.public_jwk) for r in self._records if r.retired_at is None or r.retired_at >= cutoff]
        return {"keys": keys}


# --------------------------------------------------------------------------------------- authlib integration


class _Client(ClientMixin):  # type: ignore[misc]
    def __init__(self, reg: ClientRegistration) -> None:
        self.reg = reg
        self.client_id = reg.client_id

    def get_client_id(self) -> str:
        return self.reg.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.reg.redirect_uris[0] if self.reg.redirect_uris else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.reg.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        return verify_secret(client_secret, self.reg.secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        return method == self.reg.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.reg.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.reg.grant_types

    def get_allowed_scope(self, scope: str) -> str:
        return render_scopes(narrow(scope or "", self.reg.scopes))


class _Payload(OAuth2Payload):  # type: ignore[misc]
    def __init__(self, form: Mapping[str, Sequence[str]]) -> None:
        self._datalist = {k: list(v) for k, v in form.items()}
        self._data = {k: v[0] for k, v in form.items() if v}

    @property
    def data(self) -> dict[str, str]:
        return self._data

    @property
    def datalist(self) -> dict[str, list[str]]:
        return self._datalist


class _Request(OAuth2Request):  # type: ignore[misc]
    def __init__(self, http: TokenHttpRequest) -> None:
        super().__init__(method=http.method, uri=http.url, headers=dict(http.headers))
        self.payload = _Payload(http.form)

    @property
    def form(self) -> dict[str, str]:
        return self.payload.data

    @property
    def args(self) -> dict[str, str]:
        return {}


class SmartClientAssertion(JWTBearerClientAssertion):  # type: ignore[misc]
    """``private_key_jwt`` the way SMART Backend Services wants it (see the module docstring for why each check is
    ours rather than authlib's)."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, service: OAuthService) -> None:
        super().__init__(validate_jti=True, leeway=service.config.leeway)
        self.service = service

    def __call__(self, query_client: Callable[[str], _Client | None], request: _Request) -> _Client | None:
        form = request.payload.data
        if form.get("client_assertion_type") != ASSERTION_TYPE or not form.get("client_assertion"):
            return None
        try:
            return self._authenticate(query_client, request, form)
        except _AssertionRefused as exc:
            raise InvalidClientError(description=_desc(str(exc))) from None

    def _authenticate(
        self, query_client: Callable[[str], _Client | None], request: _Request, form: Mapping[str, str]
    ) -> _Client:
        config = self.service.config
        try:
            compact = jws.extract_compact(form["client_assertion"].encode("ascii"))
            header = compact.headers()
            unverified = orjson.loads(compact.payload)
        except (JoseError, ValueError, UnicodeError):
            raise _AssertionRefused("client_assertion is not a compact JWS") from None
        if not isinstance(unverified, dict):
            raise _AssertionRefused("client_assertion payload is not a JSON object")
        alg = header.get("alg")
        if alg not in config.assertion_algorithms:
            # "none", HS256 (a public key used as an HMAC secret) and anything unexpected end here
            raise _AssertionRefused(
                f"client_assertion alg {alg} is not accepted; use one of {', '.join(config.assertion_algorithms)}"
            )
        for name in ("jwk", "x5u", "x5c"):
            if name in header:
                raise _AssertionRefused(f"client_assertion header {name} is not accepted: keys come from registration")
        iss, sub = unverified.get("iss"), unverified.get("sub")
        if not isinstance(iss, str) or not isinstance(sub, str) or not iss or iss != sub:
            raise _AssertionRefused("client_assertion iss and sub must both be the client_id")
        form_client = form.get("client_id")
        if form_client is not None and form_client != iss:
            raise _AssertionRefused("the client_id parameter does not match the client_assertion issuer")
        client = query_client(iss)  # raises for a disabled client
        if client is None:
            raise _AssertionRefused("The client does not exist on this server.")
        reg = client.reg
        if reg.auth_method != "private_key_jwt":
            raise _AssertionRefused(f"client {reg.client_id} does not authenticate with private_key_jwt")
        jku = header.get("jku")
        if jku is not None and jku != reg.jwks_uri:
            raise _AssertionRefused("client_assertion jku is not the client's registered jwks_uri")
        key = self._resolve_key(reg, header)
        try:
            token = jwt.decode(form["client_assertion"], key, algorithms=[alg])
        except JoseError:
            raise _AssertionRefused(
                "client_assertion signature does not verify with the client's registered key"
            ) from None
        self._check_claims(token.claims, reg, request)
        request.client = client
        return client

    def _resolve_key(self, reg: ClientRegistration, header: Mapping[str, Any]) -> Key:
        what = f"client {reg.client_id}"
        if reg.jwks is not None:
            key = _select_key(reg.jwks, header, what=what)
            if key is not None:
                return key
        if reg.jwks_uri:
            try:
                key = _select_key(self.service.jwks_cache.get(reg.jwks_uri), header, what=what)
                if key is None and header.get("kid") is not None:
                    key = _select_key(self.service.jwks_cache.get(reg.jwks_uri, force=True), header, what=what)
            except Exception as exc:  # the fetcher's own error type is an adapter detail
                log.warning("jwks_uri of client %s could not be fetched: %s", reg.client_id, type(exc).__name__)
                raise _AssertionRefused(f"the jwks_uri of client {reg.client_id} could not be fetched") from None
            if key is not None:
                return key
        kid = header.get("kid")
        raise _AssertionRefused(
            f"no registered key of client {reg.client_id} matches kid {kid}"
            if kid is not None
            else f"no registered key of client {reg.client_id} fits alg {header.get('alg')}"
        )

    def _check_claims(self, claims: Mapping[str, Any], reg: ClientRegistration, request: _Request) -> None:
        leeway = self.service.config.leeway
        now = int(time.time())
        if claims.get("iss") != reg.client_id or claims.get("sub") != reg.client_id:
            raise _AssertionRefused("client_assertion iss and sub must both be the client_id")
        audiences = {self.service.urls_for(request).token, getattr(request, "endpoint_url", "")} - {""}
        aud = claims.get("aud")
        auds = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if not any(a in audiences for a in auds):
            raise _AssertionRefused("client_assertion aud must be this server's token endpoint URL")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise _AssertionRefused("client_assertion has no numeric exp")
        if exp < now - leeway:
            raise _AssertionRefused("client_assertion has expired")
        if exp > now + ASSERTION_MAX_LIFETIME + leeway:
            raise _AssertionRefused("client_assertion exp is more than 5 minutes in the future")
        nbf = claims.get("nbf")
        if nbf is not None and (not isinstance(nbf, int | float) or nbf > now + leeway):
            raise _AssertionRefused("client_assertion is not valid yet (nbf)")
        iat = claims.get("iat")
        if iat is not None and (not isinstance(iat, int | float) or iat > now + leeway):
            raise _AssertionRefused("client_assertion was issued in the future (iat)")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti or len(jti) > 256:
            raise _AssertionRefused("client_assertion needs a jti")
        if not self.service.replay.first_use(reg.client_id, jti, int(exp)):
            raise _AssertionRefused("client_assertion jti has been used before (replay)")


class _ClientCredentialsGrant(ClientCredentialsGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["private_key_jwt", "client_secret_basic"]

    def validate_token_request(self) -> None:
        _no_repeats(self.request)
        super().validate_token_request()
        service: OAuthService = self.server.service
        self.granted = service.narrow_for_client(self.request.client.reg, self.request.payload.scope, backend=True)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        service: OAuthService = self.server.service
        reg: ClientRegistration = self.request.client.reg
        token = service.issue_access_token(
            reg,
            self.granted,
            urls=service.urls_for(self.request),
            patient=reg.patient,
            fixed_patient=bool(reg.patient),
            lifetime=BACKEND_MAX_LIFETIME,  # SMART Backend Services: at most five minutes, whatever is configured
        )
        return 200, token, self.TOKEN_RESPONSE_HEADER


def _no_repeats(request: _Request) -> None:
    for name, values in request.payload.datalist.items():
        if len(values) > 1:
            raise InvalidRequestError(_desc(f"parameter {name} is repeated"))


@dataclass
class _TokenView:
    """What introspection/revocation know about a presented token (authlib's TokenMixin methods)."""

    kind: str  # access_token | refresh_token
    client_id: str
    claims: dict[str, Any]
    expires_at: int
    revoked: bool
    token_hash: str | None = None

    def check_client(self, client: _Client) -> bool:
        return self.client_id == client.get_client_id()

    def is_expired(self) -> bool:
        return self.expires_at <= int(time.time())

    def is_revoked(self) -> bool:
        return self.revoked

    def get_scope(self) -> str:
        return str(self.claims.get("scope", ""))


class _Introspection(IntrospectionEndpoint):  # type: ignore[misc]
    CLIENT_AUTH_METHODS = ["private_key_jwt", "client_secret_basic"]

    def check_permission(self, token: _TokenView, client: _Client, request: _Request) -> bool:
        # A client may introspect its own tokens; anything else looks inactive (RFC 7662 section 2.2).
        return token.check_client(client)

    def query_token(self, token_string: str, token_type_hint: str | None) -> _TokenView | None:
        return self.server.service.lookup_token(token_string, token_type_hint, self.server.urls)  # type: ignore[no-any-return]

    def introspect_token(self, token: _TokenView) -> dict[str, Any]:
        keep = ("scope", "client_id", "sub", "aud", "iss", "exp", "iat", "nbf", "jti", "patient", "fhirUser")
        body = {k: token.claims[k] for k in keep if k in token.claims}
        body.update(active=True, token_type="Bearer" if token.kind == "access_token" else "refresh_token")
        return body


class _Revocation(RevocationEndpoint):  # type: ignore[misc]
    # RFC 7009 section 2.1: a public client revokes its own tokens by naming its client_id
    CLIENT_AUTH_METHODS = ["private_key_jwt", "client_secret_basic", "none"]

    def query_token(self, token_string: str, token_type_hint: str | None) -> _TokenView | None:
        return self.server.service.lookup_token(token_string, token_type_hint, self.server.urls)  # type: ignore[no-any-return]

    def revoke_token(self, token: _TokenView, request: _Request) -> None:
        self.server.service.revoke(token)


# ------------------------------------------------------------------ authorization code + PKCE, refresh tokens


@dataclass
class _Code:
    """An authorization code as authlib's AuthorizationCodeGrant and CodeChallenge read it."""

    record: GrantRecord

    @property
    def code_challenge(self) -> str | None:
        return self.record.code_challenge

    @property
    def code_challenge_method(self) -> str | None:
        return self.record.code_challenge_method

    def get_redirect_uri(self) -> str | None:
        return self.record.redirect_uri

    def get_scope(self) -> str:
        return self.record.scope


@dataclass
class _EndUser:
    """The signed-in user with the launch context chosen for this authorization."""

    user: LocalUser
    patient: str | None = None
    encounter: str | None = None

    def get_user_id(self) -> str:
        return self.user.username


class _S256Required(CodeChallenge):  # type: ignore[misc]
    """PKCE the way SMART App Launch 2 requires it: a ``code_challenge`` on EVERY authorization request and S256
    only. authlib's ``CodeChallenge(required=True)`` lets a request without any code_challenge through (it only
    insists on a code_verifier from public clients) and accepts ``plain``."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge"):
            raise InvalidRequestError("code_challenge is required (PKCE with S256)")
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256")
        super().validate_code_challenge(grant, redirect_uri)

    def validate_code_verifier(self, grant: Any, result: Any) -> None:
        if not grant.request.form.get("code_verifier"):
            raise InvalidRequestError("code_verifier is required")
        super().validate_code_verifier(grant, result)


class _AuthorizationCodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS = ["none", "client_secret_basic", "private_key_jwt"]

    def validate_authorization_request(self) -> str:
        redirect_uri: str = super().validate_authorization_request()
        service: OAuthService = self.server.service
        urls: ServerUrls = self.server.urls
        data = self.request.payload.data
        try:
            _no_repeats(self.request)
            if not data.get("state"):
                raise InvalidRequestError("state is required")
            if (data.get("aud") or "").rstrip("/") != urls.fhir_base:
                raise InvalidRequestError(_desc(f"aud must be this server's FHIR base URL {urls.fhir_base}"))
            self.granted = service.narrow_for_user_app(self.request.client.reg, self.request.payload.scope)
            self.launch = service.launch_context(data["launch"]) if data.get("launch") else None
        except OAuth2Error as error:
            error.redirect_uri = redirect_uri
            raise
        return redirect_uri

    @property
    def needs_patient(self) -> bool:
        return any(g.context == "patient" for g in self.granted.grants) or "launch/patient" in self.granted.context

    def save_authorization_code(self, code: str, request: _Request) -> None:
        service: OAuthService = self.server.service
        user: _EndUser = request.user
        data = request.payload.data
        now = datetime.now(UTC)
        service.store.save_grant(
            GrantRecord(
                token_hash=_sha256(code),
                kind="code",
                client_id=request.client.get_client_id(),
                scope=render_scopes(self.granted),
                subject=user.user.username,
                patient=user.patient,
                encounter=user.encounter,
                fhir_user=user.user.fhir_user,
                redirect_uri=request.payload.redirect_uri,
                code_challenge=data.get("code_challenge"),
                code_challenge_method=data.get("code_challenge_method"),
                nonce=data.get("nonce"),
                created_at=now,
                expires_at=now + timedelta(seconds=service.config.code_lifetime),
            )
        )

    def query_authorization_code(self, code: str, client: _Client) -> _Code | None:
        record = self.server.service.store.get_grant(_sha256(code))
        if record is None or record.kind != "code" or record.client_id != client.get_client_id():
            return None
        if record.used or record.revoked or record.expires_at <= datetime.now(UTC):
            return None
        return _Code(record)

    def validate_token_request(self) -> None:
        _no_repeats(self.request)
        super().validate_token_request()  # client auth, code, redirect_uri, then PKCE (hook)
        if not self.server.service.store.consume_grant(self.request.authorization_code.record.token_hash):
            raise InvalidGrantError("the authorization code has been used already")

    def delete_authorization_code(self, authorization_code: _Code) -> None:
        pass  # consumed atomically in validate_token_request

    def authenticate_user(self, authorization_code: _Code) -> _EndUser | None:
        record = authorization_code.record
        user = self.server.service.store.get_user(record.subject or "")
        if user is None or user.disabled:
            return None
        return _EndUser(user, record.patient, record.encounter)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        service: OAuthService = self.server.service
        record = self.request.authorization_code.record
        if self.authenticate_user(self.request.authorization_code) is None:
            raise InvalidGrantError("the user of this code no longer exists or is disabled")
        body = service.issue_user_tokens(self.request.client.reg, record, self.server.urls)
        return 200, body, self.TOKEN_RESPONSE_HEADER


class _RefreshTokenGrant(BaseGrant, TokenEndpointMixin):  # type: ignore[misc]
    """refresh_token (RFC 6749 section 6) with rotation: each refresh token works once; the scope can only shrink."""

    GRANT_TYPE = "refresh_token"
    TOKEN_ENDPOINT_AUTH_METHODS = ["none", "client_secret_basic", "private_key_jwt"]

    def validate_token_request(self) -> None:
        _no_repeats(self.request)
        client = self.authenticate_token_endpoint_client()
        if not client.check_grant_type(self.GRANT_TYPE):
            raise UnauthorizedClientError("the client may not use grant_type=refresh_token")
        token = self.request.form.get("refresh_token")
        if not token:
            raise InvalidRequestError("refresh_token is required")
        store = self.server.service.store
        record = store.get_grant(_sha256(token))
        if (
            record is None
            or record.kind != "refresh"
            or record.client_id != client.get_client_id()
            or record.revoked
            or record.expires_at <= datetime.now(UTC)
        ):
            raise InvalidGrantError("the refresh token is invalid, expired or revoked")
        scope = record.scope
        requested = self.request.payload.scope
        if requested:
            narrowed = narrow(requested, record.scope)
            if not narrowed.grants and not narrowed.context:
                raise InvalidScopeError(description="the requested scope is not within the original grant")
            scope = render_scopes(narrowed)
        if not store.consume_grant(record.token_hash):  # rotation: a second use of the same token fails
            raise InvalidGrantError("the refresh token has been used already")
        self.request.client = client
        self.record = replace(record, scope=scope)

    def create_token_response(self) -> tuple[int, dict[str, Any], list[tuple[str, str]]]:
        service: OAuthService = self.server.service
        body = service.issue_user_tokens(self.request.client.reg, self.record, self.server.urls)
        return 200, body, self.TOKEN_RESPONSE_HEADER


@dataclass(frozen=True)
class AuthorizationPrompt:
    """What the login/consent page shows for a valid authorization request."""

    client_id: str
    client_name: str
    scope: str  # what the user is asked to grant (already narrowed to the registration)
    needs_patient: bool
    launch_patient: str | None
    params: dict[str, str]


@dataclass(frozen=True)
class LoginFailed:
    """The credentials on the login page were wrong (the page is shown again; no redirect)."""

    message: str


class _Server(AuthorizationServer):  # type: ignore[misc]
    """authlib's AuthorizationServer bound to one request's URLs (cheap: created per request)."""

    def __init__(self, service: OAuthService, urls: ServerUrls) -> None:
        super().__init__(scopes_supported=None)
        self.service = service
        self.urls = urls
        self.register_client_auth_method("private_key_jwt", SmartClientAssertion(service))
        self.register_grant(_ClientCredentialsGrant)
        self.register_grant(_AuthorizationCodeGrant, [_S256Required(required=True)])
        self.register_grant(_RefreshTokenGrant)
        self.register_endpoint(_Introspection)
        self.register_endpoint(_Revocation)

    def query_client(self, client_id: str) -> _Client | None:
        reg = self.service.store.get_client(client_id)
        if reg is None:
            return None  # authlib answers invalid_client ("does not exist")
        if reg.disabled:
            raise InvalidClientError(status_code=401, description="The client is disabled.")
        return _Client(reg)

    def save_token(self, token: dict[str, Any], request: _Request) -> None:
        pass  # access tokens are self-contained JWTs; revocation keeps their jti

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass

    def create_oauth2_request(self, request: TokenHttpRequest | _Request) -> _Request:
        return request if isinstance(request, _Request) else _Request(request)

    def handle_response(self, status: int, body: Any, headers: Iterable[tuple[str, str]]) -> OAuthResponse:
        return OAuthResponse(status, dict(body) if body else {}, list(headers))


# ------------------------------------------------------------------------------------------------ the service


class OAuthService:
    """Token endpoint, introspection, revocation, access-token validation and the client registry."""

    def __init__(
        self,
        store: AuthStore,
        replay: ReplayCache,
        fetch_jwks: JwksFetcher,
        config: OAuthConfig | None = None,
    ) -> None:
        self.store = store
        self.replay = replay
        self.config = config or OAuthConfig()
        self.jwks_cache = JwksCache(fetch_jwks, ttl=self.config.jwks_cache_ttl)
        self.keys = KeyRing(store, self.config)
        self._external = {e.issuer: e for e in self.config.external_issuers}
        self._validated: OrderedDict[tuple[str, str, str], AuthContext] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._revoked: frozenset[str] = frozenset()
        self._revoked_loaded_at = -1e9

    def close(self) -> None:
        """Close what the adapters hold open (database pool, HTTP session)."""
        for part in (self.store, self.jwks_cache._fetch):
            close = getattr(part, "close", None)
            if callable(close):
                close()

    # URLs -------------------------------------------------------------------------------------------------

    def urls_for(self, request: _Request) -> ServerUrls:
        return request.server_urls  # type: ignore[no-any-return]

    # endpoints ------------------------------------------------------------------------------------------

    def _run(
        self, http: TokenHttpRequest, urls: ServerUrls, endpoint: str, action: Callable[[_Server, _Request], Any]
    ) -> OAuthResponse:
        server = _Server(self, urls)
        try:
            request = _Request(http)
        except OAuth2Error as error:  # e.g. insecure transport
            return server.handle_error_response(None, error)  # type: ignore[no-any-return]
        request.server_urls = urls
        request.endpoint_url = endpoint  # a client assertion may name the token endpoint or this one as aud
        if http.method != "POST":
            return server.handle_error_response(request, InvalidRequestError("use POST"))  # type: ignore[no-any-return]
        result = action(server, request)
        if not isinstance(result, OAuthResponse):
            raise RuntimeError("authlib returned no response")
        return result

    def token_response(self, http: TokenHttpRequest, urls: ServerUrls) -> OAuthResponse:
        """POST /auth/token."""
        return self._run(http, urls, urls.token, lambda server, request: server.create_token_response(request))

    def introspection_response(self, http: TokenHttpRequest, urls: ServerUrls) -> OAuthResponse:
        """POST /auth/introspect (RFC 7662)."""
        return self._run(
            http,
            urls,
            urls.introspect,
            lambda server, request: server.create_endpoint_response("introspection", request),
        )

    def revocation_response(self, http: TokenHttpRequest, urls: ServerUrls) -> OAuthResponse:
        """POST /auth/revoke (RFC 7009)."""
        return self._run(
            http, urls, urls.revoke, lambda server, request: server.create_endpoint_response("revocation", request)
        )

    def jwks(self) -> dict[str, Any]:
        return self.keys.published()

    # scopes and tokens --------------------------------------------------------------------------------------

    def narrow_for_client(self, reg: ClientRegistration, requested: str | None, *, backend: bool) -> ParsedScopes:
        """What ``reg`` may have of ``requested``: the intersection with its registered scopes; for backend
        services (no user) only system/ scopes, or patient/ ones for a client bound to a patient."""
        if not requested or not requested.strip():
            raise InvalidScopeError(description="scope is required (e.g. system/*.rs)")
        try:
            granted = narrow(requested, reg.scopes)
        except ScopeError as exc:
            raise InvalidScopeError(description=_desc(str(exc))) from None
        if backend:
            allowed_contexts = {"system", "patient"} if reg.patient else {"system"}
            granted = ParsedScopes(
                tuple(g for g in granted.grants if g.context in allowed_contexts), frozenset(), granted.unknown
            )
        if not granted.grants:
            raise InvalidScopeError(
                description=_desc("none of the requested scopes is within what this client is registered for")
            )
        return granted

    def issue_access_token(
        self,
        reg: ClientRegistration,
        granted: ParsedScopes,
        *,
        urls: ServerUrls,
        subject: str | None = None,
        patient: str | None = None,
        fixed_patient: bool = False,
        fhir_user: str | None = None,
        lifetime: int | None = None,
    ) -> dict[str, Any]:
        """Sign an RFC 9068 access token and build the token response (``patient`` included when there is one)."""
        record, private = self.keys.active()
        now = int(time.time())
        lifetime = min(lifetime or self.config.access_token_lifetime, self.config.access_token_lifetime)
        scope = render_scopes(granted)
        claims: dict[str, Any] = {
            "iss": urls.issuer,
            "sub": subject or reg.client_id,
            "aud": urls.fhir_base,
            "client_id": reg.client_id,
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "jti": secrets.token_urlsafe(18),
            "scope": scope,
        }
        if patient:
            claims["patient"] = patient
            if fixed_patient:
                claims["fixed_patient"] = True
        if fhir_user:
            claims["fhirUser"] = fhir_user
        header = {"alg": record.alg, "typ": "at+jwt", "kid": record.kid}
        token = jwt.encode(header, claims, private, algorithms=[record.alg])
        body: dict[str, Any] = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": lifetime,
            "scope": scope,
        }
        if patient:
            body["patient"] = patient
        return body

    def validate_access_token(self, token: str, urls: ServerUrls) -> AuthContext:
        """The AuthContext of a valid bearer token; InvalidToken (401) otherwise. Ours: key by ``kid``, the
        algorithm pinned to that key, iss/aud/exp/nbf checked, a revoked ``jti`` refused. External issuers:
        their JWKS and their configured audience and scope claim.

        A token that validated before is remembered (exact string, per issuer and audience) until it expires, so
        the per-request cost is a dictionary lookup plus the revocation check; revocations made by other workers
        are seen within ``revocation_refresh`` seconds (this worker's own at once)."""
        key = (token, urls.issuer, urls.fhir_base)
        with self._cache_lock:
            cached = self._validated.get(key)
            if cached is not None:
                self._validated.move_to_end(key)
        if cached is not None:
            if cached.expires_at is None or cached.expires_at <= time.time() - self.config.leeway:
                self._forget(key)
                raise InvalidToken("the token has expired")
            if cached.token_id and self._is_revoked(cached.token_id):
                self._forget(key)
                raise InvalidToken("the token has been revoked")
            return cached
        context = self._validate_uncached(token, urls)
        if context.expires_at is not None and self.config.validated_cache_size > 0:
            with self._cache_lock:
                self._validated[key] = context
                while len(self._validated) > self.config.validated_cache_size:
                    self._validated.popitem(last=False)
        return context

    def _forget(self, key: tuple[str, str, str]) -> None:
        with self._cache_lock:
            self._validated.pop(key, None)

    def _is_revoked(self, jti: str) -> bool:
        now = time.monotonic()
        if now - self._revoked_loaded_at >= self.config.revocation_refresh:
            revoked = frozenset(self.store.revoked_token_ids(datetime.now(UTC)))
            with self._cache_lock:
                self._revoked, self._revoked_loaded_at = revoked, now
        return jti in self._revoked

    def _validate_uncached(self, token: str, urls: ServerUrls) -> AuthContext:
        try:
            compact = jws.extract_compact(token.encode("ascii"))
            header = compact.headers()
            unverified = orjson.loads(compact.payload)
        except (JoseError, ValueError, UnicodeError):
            raise InvalidToken("not a signed JWT") from None
        if not isinstance(unverified, dict):
            raise InvalidToken("the payload is not a JSON object")
        iss = unverified.get("iss")
        external = self._external.get(iss) if isinstance(iss, str) else None
        if external is not None:
            return self._validate_external(token, header, external, urls)
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise InvalidToken("the token names no signing key (kid)")
        found = self.keys.public_key(kid)
        if found is None:
            raise InvalidToken("the token was not signed by a key of this server")
        key, alg = found
        if header.get("alg") != alg:  # pins the algorithm: no "none", no HS256 keyed with our public key
            raise InvalidToken(f"alg {header.get('alg')} is not the algorithm of key {kid}")
        if header.get("typ") not in ("at+jwt", "application/at+jwt"):
            raise InvalidToken("not an access token (typ must be at+jwt)")
        try:
            claims = jwt.decode(token, key, algorithms=[alg]).claims
        except JoseError:
            raise InvalidToken("the signature does not verify") from None
        self._check_time_and_audience(claims, issuer=urls.issuer, audience=urls.fhir_base)
        jti = claims.get("jti")
        if not isinstance(jti, str):
            raise InvalidToken("the token has no jti")
        if self._is_revoked(jti):
            raise InvalidToken("the token has been revoked")
        return AuthContext.from_claims(claims)

    def _validate_external(
        self, token: str, header: Mapping[str, Any], issuer: ExternalIssuer, urls: ServerUrls
    ) -> AuthContext:
        alg = header.get("alg")
        if alg not in issuer.algorithms:
            raise InvalidToken(f"alg {alg} is not accepted from {issuer.issuer}")
        if "jku" in header or "jwk" in header or "x5u" in header:
            raise InvalidToken("tokens may not point at their own keys (jku/jwk/x5u)")
        try:
            key = _select_key(self.jwks_cache.get(issuer.jwks_uri), header, what=issuer.issuer)
            if key is None and header.get("kid") is not None:
                key = _select_key(self.jwks_cache.get(issuer.jwks_uri, force=True), header, what=issuer.issuer)
        except _AssertionRefused as exc:
            raise InvalidToken(str(exc)) from None
        except Exception as exc:  # the fetcher's error type is an adapter detail
            log.warning("JWKS of external issuer %s could not be fetched: %s", issuer.issuer, type(exc).__name__)
            raise InvalidToken("the issuer's keys could not be fetched") from None
        if key is None:
            raise InvalidToken("no key of the issuer matches the token")
        try:
            claims = jwt.decode(token, key, algorithms=[str(alg)]).claims
        except JoseError:
            raise InvalidToken("the signature does not verify") from None
        self._check_time_and_audience(claims, issuer=issuer.issuer, audience=issuer.audience or urls.fhir_base)
        claims = {k: v for k, v in claims.items() if k != "fixed_patient"}
        return AuthContext.from_claims(claims, scope_claim=issuer.scope_claim)

    def _check_time_and_audience(self, claims: Mapping[str, Any], *, issuer: str, audience: str) -> None:
        registry = jwt.JWTClaimsRegistry(
            leeway=self.config.leeway,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": audience},
            exp={"essential": True},
        )
        try:
            registry.validate(dict(claims))
        except JoseError as exc:
            raise InvalidToken(_describe_claims_error(exc)) from None

    # introspection / revocation -------------------------------------------------------------------------

    def lookup_token(self, token: str, hint: str | None, urls: ServerUrls) -> _TokenView | None:
        """A presented token as introspection/revocation see it; None when it is not one of ours."""
        if hint != "refresh_token" and token.count(".") == 2:
            view = self._lookup_access(token, urls)
            if view is not None:
                return view
        grant = self.store.get_grant(_sha256(token))
        if grant is None or grant.kind != "refresh":
            return None
        expires_at = int(grant.expires_at.timestamp())
        claims: dict[str, Any] = {"scope": grant.scope, "client_id": grant.client_id, "exp": expires_at}
        if grant.subject:
            claims["sub"] = grant.subject
        if grant.patient:
            claims["patient"] = grant.patient
        return _TokenView(
            "refresh_token",
            grant.client_id,
            claims,
            expires_at,
            grant.revoked or grant.used,
            token_hash=grant.token_hash,
        )

    def _lookup_access(self, token: str, urls: ServerUrls) -> _TokenView | None:
        try:
            header = jws.extract_compact(token.encode("ascii")).headers()
            found = self.keys.public_key(str(header.get("kid")))
            if found is None or header.get("alg") != found[1]:
                return None
            claims = jwt.decode(token, found[0], algorithms=[found[1]]).claims
        except (JoseError, ValueError, UnicodeError):
            return None
        if claims.get("iss") != urls.issuer or not isinstance(claims.get("exp"), int):
            return None
        jti = claims.get("jti")
        revoked = not isinstance(jti, str) or self.store.is_token_revoked(jti)
        return _TokenView("access_token", str(claims.get("client_id", "")), dict(claims), claims["exp"], revoked)

    def revoke(self, token: _TokenView) -> None:
        if token.kind == "access_token":
            jti = str(token.claims["jti"])
            self.store.revoke_token_id(jti, token.client_id, _utc(token.expires_at))
            with self._cache_lock:
                self._revoked = self._revoked | {jti}  # this worker refuses it at once
        elif token.token_hash:
            self.store.revoke_grant(token.token_hash)

    # authorization code flow (SMART App Launch: standalone and EHR launch) ----------------------------------

    def narrow_for_user_app(self, reg: ClientRegistration, requested: str | None) -> ParsedScopes:
        """An app acting for a user gets patient/ and user/ scopes (never system/) within its registration."""
        if not requested or not requested.strip():
            raise InvalidScopeError(description="scope is required (e.g. launch/patient patient/*.rs)")
        try:
            granted = narrow(requested, reg.scopes)
        except ScopeError as exc:
            raise InvalidScopeError(description=_desc(str(exc))) from None
        granted = ParsedScopes(
            tuple(g for g in granted.grants if g.context in ("patient", "user")), granted.context, granted.unknown
        )
        if not granted.grants:
            raise InvalidScopeError(description="none of the requested scopes is within the client's registration")
        return granted

    def create_launch(self, patient: str, encounter: str | None = None) -> str:
        """EHR launch: an opaque ``launch`` value carrying the context, valid five minutes."""
        launch = secrets.token_urlsafe(24)
        now = datetime.now(UTC)
        self.store.save_grant(
            GrantRecord(
                token_hash=_sha256(launch),
                kind="launch",
                client_id="",
                scope="",
                patient=patient,
                encounter=encounter,
                created_at=now,
                expires_at=now + timedelta(minutes=5),
            )
        )
        return launch

    def launch_context(self, launch: str) -> GrantRecord:
        record = self.store.get_grant(_sha256(launch))
        if record is None or record.kind != "launch" or record.expires_at <= datetime.now(UTC):
            raise InvalidRequestError("the launch parameter is unknown or has expired")
        return record

    def authorization_prompt(self, http: TokenHttpRequest, urls: ServerUrls) -> AuthorizationPrompt | OAuthResponse:
        """Validate an authorization request (GET /auth/authorize): what to ask the user, or the error (a redirect
        back to the client once its redirect_uri is known to be registered, else a plain 400)."""
        server, request = self._prepare(http, urls)
        if isinstance(request, OAuthResponse):
            return request
        try:
            grant = server.get_consent_grant(request)
        except OAuth2Error as error:
            return server.handle_error_response(request, error)  # type: ignore[no-any-return]
        reg = request.client.reg
        return AuthorizationPrompt(
            client_id=reg.client_id,
            client_name=reg.name or reg.client_id,
            scope=render_scopes(grant.granted),
            needs_patient=grant.needs_patient,
            launch_patient=grant.launch.patient if grant.launch else None,
            params={k: v for k, v in request.payload.data.items() if k in _AUTHORIZE_PARAMS},
        )

    def authorize(
        self,
        http: TokenHttpRequest,
        urls: ServerUrls,
        *,
        username: str,
        password: str,
        approved: bool,
        patient: str | None = None,
    ) -> OAuthResponse | LoginFailed:
        """The login/consent form was submitted: check the user, the chosen patient, and redirect to the client
        with a code (or ``access_denied``)."""
        server, request = self._prepare(http, urls)
        if isinstance(request, OAuthResponse):
            return request
        try:
            grant = server.get_consent_grant(request)
        except OAuth2Error as error:
            return server.handle_error_response(request, error)  # type: ignore[no-any-return]
        user = self.store.get_user(username)
        if user is None or user.disabled or not verify_secret(password, user.password_hash):
            return LoginFailed("unknown user or wrong password")
        end_user: _EndUser | None = None
        if approved:
            chosen = grant.launch.patient if grant.launch else (patient or None)
            if grant.needs_patient:
                allowed = user.selectable_patients()
                if not chosen:
                    return LoginFailed("choose the patient this app may see")
                if grant.launch is None and allowed and chosen not in allowed:
                    return LoginFailed(f"{user.username} may not choose patient {chosen}")
            end_user = _EndUser(user, chosen, grant.launch.encounter if grant.launch else None)
        return server.create_authorization_response(request, grant_user=end_user, grant=grant)  # type: ignore[no-any-return]

    def _prepare(self, http: TokenHttpRequest, urls: ServerUrls) -> tuple[_Server, _Request | OAuthResponse]:
        server = _Server(self, urls)
        try:
            request = _Request(http)
        except OAuth2Error as error:
            return server, server.handle_error_response(None, error)
        request.server_urls = urls
        request.endpoint_url = urls.authorize
        return server, request

    def issue_user_tokens(self, reg: ClientRegistration, record: GrantRecord, urls: ServerUrls) -> dict[str, Any]:
        """The token response of an authorization code or refresh: access token with the launch context, a new
        refresh token for offline_access/online_access, an OpenID Connect id_token for openid."""
        granted = parse_scopes(record.scope)
        wants_user = bool({"openid", "fhirUser"} & granted.context)
        fhir_user = f"{urls.fhir_base}/{record.fhir_user}" if record.fhir_user and wants_user else None
        body = self.issue_access_token(
            reg, granted, urls=urls, subject=record.subject, patient=record.patient, fhir_user=fhir_user
        )
        if record.encounter:
            body["encounter"] = record.encounter
        if {"offline_access", "online_access"} & granted.context and "refresh_token" in reg.grant_types:
            refresh = secrets.token_urlsafe(32)
            now = datetime.now(UTC)
            self.store.save_grant(
                replace(
                    record,
                    token_hash=_sha256(refresh),
                    kind="refresh",
                    client_id=reg.client_id,
                    created_at=now,
                    expires_at=now + timedelta(seconds=self.config.refresh_token_lifetime),
                    used=False,
                    revoked=False,
                    code_challenge=None,
                    code_challenge_method=None,
                )
            )
            body["refresh_token"] = refresh
        if "openid" in granted.context and record.subject:
            body["id_token"] = self._id_token(reg, record, urls, fhir_user)
        return body

    def _id_token(self, reg: ClientRegistration, record: GrantRecord, urls: ServerUrls, fhir_user: str | None) -> str:
        key_record, private = self.keys.active()
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": urls.issuer,
            "sub": record.subject,
            "aud": reg.client_id,
            "iat": now,
            "exp": now + self.config.access_token_lifetime,
        }
        if record.nonce:
            claims["nonce"] = record.nonce
        if fhir_user:
            claims["fhirUser"] = fhir_user
        header = {"alg": key_record.alg, "typ": "JWT", "kid": key_record.kid}
        return jwt.encode(header, claims, private, algorithms=[key_record.alg])

    def add_user(
        self,
        username: str,
        password: str,
        *,
        name: str = "",
        fhir_user: str | None = None,
        patients: Sequence[str] = (),
    ) -> LocalUser:
        """A user of the development login page (the password is stored as a scrypt hash)."""
        if fhir_user is not None and not re.match(
            r"^(Patient|Practitioner|PractitionerRole|RelatedPerson|Person)/[A-Za-z0-9\-.]{1,64}$", fhir_user
        ):
            raise RegistrationError("fhir_user must be a reference like Practitioner/7 or Patient/5")
        user = LocalUser(
            username, hash_secret(password), name, fhir_user, tuple(patients), created_at=datetime.now(UTC)
        )
        self.store.add_user(user)
        return user

    # client registry (exposed by the CLI and the admin API) -------------------------------------------

    def add_client(
        self, reg: ClientRegistration, *, with_secret: bool = False
    ) -> tuple[ClientRegistration, str | None]:
        """Register a client. For ``client_secret_basic`` (or ``with_secret``) a secret is generated and returned
        ONCE; only its hash is stored."""
        secret = None
        if reg.auth_method == "client_secret_basic" or with_secret:
            secret = secrets.token_urlsafe(32)
            reg = replace(reg, secret_hash=hash_secret(secret))
        stored = self.store.add_client(reg.validate())
        return stored, secret

    def import_clients(self, entries: Sequence[Mapping[str, Any]]) -> list[tuple[str, str]]:
        """Load registrations declaratively (create or update each): [(client_id, "created" | "updated")]. All
        entries are validated before any is written."""
        if not isinstance(entries, Sequence) or isinstance(entries, str | bytes):
            raise RegistrationError("the import file must hold a JSON list of registrations (or {'clients': [...]})")
        regs = [registration_from_json(e) for e in entries]
        seen: set[str] = set()
        for reg in regs:
            if reg.client_id in seen:
                raise RegistrationError(f"client {reg.client_id} appears twice in the import")
            seen.add(reg.client_id)
            if reg.auth_method == "client_secret_basic":
                raise RegistrationError(
                    f"client {reg.client_id}: secrets are not imported; add it with 'clients add' to get a secret"
                )
        results = []
        for reg in regs:
            _, created = self.store.upsert_client(reg)
            results.append((reg.client_id, "created" if created else "updated"))
        return results

    def list_clients(self) -> list[ClientRegistration]:
        return self.store.list_clients()

    def set_client_disabled(self, client_id: str, disabled: bool = True) -> None:
        if not self.store.set_client_disabled(client_id, disabled):
            raise RegistrationError(f"client {client_id} is not registered")
        if disabled:
            self.store.revoke_client_grants(client_id)  # refresh tokens die with the client

    def rotate_client(
        self, client_id: str, *, jwks: dict[str, Any] | None = None, jwks_uri: str | None = None
    ) -> str | None:
        """New credentials: a fresh secret (returned once) for a secret client, new public keys for a
        private_key_jwt client."""
        reg = self.store.get_client(client_id)
        if reg is None:
            raise RegistrationError(f"client {client_id} is not registered")
        if reg.auth_method == "client_secret_basic":
            secret = secrets.token_urlsafe(32)
            self.store.rotate_client_credentials(client_id, secret_hash=hash_secret(secret))
            return secret
        if jwks is None and jwks_uri is None:
            raise RegistrationError(f"client {client_id} uses private_key_jwt: give the new jwks or jwks_uri")
        replace(reg, jwks=jwks or reg.jwks, jwks_uri=jwks_uri or reg.jwks_uri).validate()
        self.store.rotate_client_credentials(client_id, jwks=jwks, jwks_uri=jwks_uri)
        return None

    def mint_token(
        self,
        client_id: str,
        scope: str,
        urls: ServerUrls,
        *,
        patient: str | None = None,
        lifetime: int | None = None,
    ) -> dict[str, Any]:
        """Operator command: a token for ``client_id`` with ``scope`` narrowed to its registration (no client
        authentication: whoever runs this already holds the database)."""
        reg = self.store.get_client(client_id)
        if reg is None:
            raise RegistrationError(f"client {client_id} is not registered")
        if reg.disabled:
            raise RegistrationError(f"client {client_id} is disabled")
        try:
            granted = narrow(scope, reg.scopes)
        except ScopeError as exc:
            raise RegistrationError(str(exc)) from None
        if not granted.grants:
            raise RegistrationError(f"none of {scope!r} is within the scopes client {client_id} is registered for")
        bound = reg.patient
        if bound and patient and patient != bound:
            raise RegistrationError(f"client {client_id} is bound to patient {bound}")
        return self.issue_access_token(
            reg, granted, urls=urls, patient=bound or patient, fixed_patient=bool(bound), lifetime=lifetime
        )

    def scopes_supported(self) -> list[str]:
        return sorted(CONTEXT_SCOPES) + [
            "system/*.cruds", "system/*.rs", "user/*.cruds", "user/*.rs", "patient/*.cruds", "patient/*.rs",
            "system/*.read", "user/*.read", "patient/*.read", "system/*.write", "user/*.write", "patient/*.write",
        ]  # fmt: skip


def _describe_claims_error(exc: JoseError) -> str:
    claim = getattr(exc, "claim", None)
    if type(exc).__name__ == "MissingClaimError":
        return f"the required claim {claim} is missing"
    text = {
        "exp": "the token has expired",
        "nbf": "the token is not valid yet",
        "iat": "the token was issued in the future",
        "iss": "the token was issued by another issuer",
        "aud": "the token was issued for another audience",
    }.get(str(claim))
    return text or f"claim {claim} rejected"


def capability_security(urls: ServerUrls) -> dict[str, Any]:
    """``CapabilityStatement.rest.security`` for SMART on FHIR: the SMART-on-FHIR service coding and the
    oauth-uris extension (http://hl7.org/fhir/smart-app-launch/StructureDefinition/oauth-uris)."""
    return {
        "cors": True,
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ],
                "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
            }
        ],
        "extension": [
            {
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [
                    {"url": "token", "valueUri": urls.token},
                    {"url": "authorize", "valueUri": urls.authorize},
                    {"url": "introspect", "valueUri": urls.introspect},
                    {"url": "revoke", "valueUri": urls.revoke},
                ],
            }
        ],
    }


def parse_external_issuers(raw: str) -> tuple[ExternalIssuer, ...]:
    """INTERLACE_EXTERNAL_ISSUERS: a JSON list of {issuer, jwks_uri, audience?, scope_claim?, algorithms?}."""
    if not raw.strip():
        return ()
    data = orjson.loads(raw)
    if not isinstance(data, list):
        raise ValueError("expected a JSON list of {issuer, jwks_uri, audience, scope_claim, algorithms}")
    return tuple(ExternalIssuer.from_json(d) for d in data)


def urls_from(issuer: str, fhir_base: str) -> ServerUrls:
    """ServerUrls with trailing slashes removed; ``issuer`` defaults to the scheme://host of ``fhir_base``."""
    fhir_base = fhir_base.rstrip("/")
    if not issuer:
        parts = urlsplit(fhir_base)
        path = parts.path[: -len("/fhir")] if parts.path.endswith("/fhir") else parts.path
        issuer = f"{parts.scheme}://{parts.netloc}{path}"
    return ServerUrls(issuer=issuer.rstrip("/"), fhir_base=fhir_base)
