"""Fetch a JWK Set over HTTP(S): a client's registered ``jwks_uri``, or an external issuer's JWKS.

Bounded (timeout, size, no redirects to elsewhere) because the URL comes from a registration; caching lives in
``app.services.oauth`` so that it is the same for every fetcher.
"""

from __future__ import annotations

from typing import Any

import orjson
import requests

__all__ = ["HttpJwksFetcher", "JwksFetchError"]


class JwksFetchError(RuntimeError):
    """The JWK Set could not be fetched or is not a JWK Set (the message names the URL, never a key)."""


class HttpJwksFetcher:
    def __init__(self, *, timeout: float = 5.0, max_bytes: int = 256 * 1024) -> None:
        self._timeout = timeout
        self._max_bytes = max_bytes
        self._session = requests.Session()

    def __call__(self, url: str) -> dict[str, Any]:
        try:
            with self._session.get(
                url, timeout=self._timeout, allow_redirects=False, stream=True, headers={"Accept": "application/json"}
            ) as response:
                if response.status_code != 200:
                    raise JwksFetchError(f"{url}: HTTP {response.status_code}")
                body = response.raw.read(self._max_bytes + 1, decode_content=True)
        except requests.RequestException as exc:
            raise JwksFetchError(f"{url}: {type(exc).__name__}") from None
        if len(body) > self._max_bytes:
            raise JwksFetchError(f"{url}: larger than {self._max_bytes} bytes")
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise JwksFetchError(f"{url}: not JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
            raise JwksFetchError(f"{url}: not a JWK Set")
        return data

    def close(self) -> None:
        self._session.close()
