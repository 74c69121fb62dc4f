"""Fixtures for the authorization server: a migrated auth store on every backend, a Redis replay cache under a
unique key prefix, the OAuth service, and client key pairs (RSA for RS384, EC P-384 for ES384)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
from authlib.oauth2.rfc7523.assertion import private_key_jwt_sign
from flask import Flask
from joserfc.jwk import ECKey, Key, RSAKey
from werkzeug.serving import make_server

from app import create_app
from app.adapters.auth_store import SqlAuthStore
from app.adapters.jwks_http import HttpJwksFetcher
from app.adapters.redis_auth import RedisReplayCache
from app.adapters.sql_store import upgrade_database
from app.auth.clients import ClientRegistration
from app.config import Settings
from app.services.oauth import ASSERTION_TYPE, OAuthConfig, OAuthService, TokenHttpRequest, urls_from

REDIS_URL = os.environ.get("INTERLACE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
URLS = urls_from("", "http://localhost/fhir")


@pytest.fixture
def redis_client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"interlace-test-auth:{uuid.uuid4().hex}:"
    client.test_prefix = prefix  # type: ignore[attr-defined]
    yield client
    for key in client.scan_iter(match=prefix + "*"):
        client.delete(key)
    client.close()


@pytest.fixture
def replay(redis_client: redis.Redis) -> RedisReplayCache:
    return RedisReplayCache(redis_client, prefix=redis_client.test_prefix)  # type: ignore[attr-defined]


@pytest.fixture
def auth_store(database_url: str) -> Iterator[SqlAuthStore]:
    upgrade_database(database_url)
    store = SqlAuthStore(database_url)
    yield store
    store.close()


@pytest.fixture
def fetcher() -> Iterator[HttpJwksFetcher]:
    f = HttpJwksFetcher(timeout=5)
    yield f
    f.close()


@pytest.fixture
def oauth(auth_store: SqlAuthStore, replay: RedisReplayCache, fetcher: HttpJwksFetcher) -> OAuthService:
    return OAuthService(auth_store, replay, fetcher, OAuthConfig(key_secret="test-only-key-secret"))


def new_rsa() -> RSAKey:
    key = RSAKey.generate_key(2048, private=True)
    key.ensure_kid()
    return key


def new_ec() -> ECKey:
    key = ECKey.generate_key("P-384", private=True)
    key.ensure_kid()
    return key


@pytest.fixture(scope="session")
def rsa_key() -> RSAKey:
    return new_rsa()


@pytest.fixture(scope="session")
def ec_key() -> ECKey:
    return new_ec()


def public_jwks(*keys: Key) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False) for k in keys]}


def backend_client(client_id: str, *keys: Key, scopes: str = "system/*.rs", **kw: Any) -> ClientRegistration:
    return ClientRegistration(client_id=client_id, scopes=scopes, jwks=public_jwks(*keys), **kw)


def assertion(
    key: Key,
    client_id: str,
    *,
    alg: str = "RS384",
    aud: str | None = None,
    header: dict[str, Any] | None = None,
    claims: dict[str, Any] | None = None,
    expires_in: int = 240,
) -> str:
    """A client assertion as authlib's PrivateKeyJWT signs it (iss = sub = client_id, jti, exp)."""
    head = {"kid": key.kid} if header is None else header
    return private_key_jwt_sign(
        key, client_id, aud or URLS.token, alg=alg, header=dict(head), claims=dict(claims or {}), expires_in=expires_in
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def unsigned_jwt(header: dict[str, Any], claims: dict[str, Any]) -> str:
    """alg none: header.payload. (empty signature)."""
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."


def hs256_jwt(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """An HMAC-signed JWT -- the classic attack signs with the server's or client's *public* key as the secret."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    mac = hmac.new(secret, signing_input.encode("ascii"), hashlib.sha256).digest()
    return f"{signing_input}.{b64(mac)}"


def token_request(
    form: dict[str, str], headers: dict[str, str] | None = None, url: str | None = None
) -> TokenHttpRequest:
    return TokenHttpRequest("POST", url or URLS.token, {k: [v] for k, v in form.items()}, headers or {})


def backend_form(client_assertion: str, scope: str = "system/*.rs", **extra: str) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": client_assertion,
        **extra,
    }


def now() -> int:
    return int(time.time())


class _JwksHandler(BaseHTTPRequestHandler):
    jwks: dict[str, Any] = {"keys": []}
    hits = 0

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        type(self).hits += 1
        body = json.dumps(self.jwks).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def jwks_server() -> Iterator[tuple[str, type[_JwksHandler]]]:
    handler = type("Handler", (_JwksHandler,), {"jwks": {"keys": []}, "hits": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/jwks.json", handler
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def http_oauth(tmp_path: Path, redis_client: redis.Redis) -> Iterator[tuple[Flask, OAuthService]]:
    """create_app with auth on (it registers the SMART blueprint and the bearer gate itself) and its OAuthService
    (SQLite: HTTP behaviour only)."""
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'i.db'}",
        auth=True,
        signing_alg="ES256",
        redis_url=REDIS_URL,
    )
    upgrade_database(settings.effective_database_url)
    app = create_app(settings)
    yield app, app.extensions["interlace"].auth.oauth
    app.extensions["interlace"].close()


@pytest.fixture
def client(http_oauth):
    return http_oauth[0].test_client()


@pytest.fixture
def live_url(http_oauth) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, http_oauth[0], threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(5)
