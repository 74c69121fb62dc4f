"""Redis for the authorization server: the client-assertion ``jti`` replay cache.

RFC 7523 / SMART Backend Services: an assertion's ``jti`` must not be accepted twice while the assertion could
still be valid. ``SET key 1 NX EXAT exp`` is atomic across every worker process: exactly one caller wins.
"""

from __future__ import annotations

import time

import redis

from app.fhir.errors import StoreUnavailable

__all__ = ["RedisReplayCache"]


class RedisReplayCache:
    """``first_use(issuer, jti, expires_at)`` is True once per (issuer, jti), until ``expires_at`` has passed."""

    def __init__(self, client: redis.Redis, *, prefix: str = "interlace:auth:jti:", min_ttl: int = 60) -> None:
        self._redis = client
        self._prefix = prefix
        self._min_ttl = min_ttl  # keep a key at least this long: covers the clock-skew leeway on exp

    def first_use(self, issuer: str, jti: str, expires_at: int) -> bool:
        ttl = max(int(expires_at - time.time()) + self._min_ttl, self._min_ttl)
        key = f"{self._prefix}{len(issuer)}:{issuer}:{jti}"  # length prefix: no ambiguity between iss and jti
        try:
            return bool(self._redis.set(key, b"1", nx=True, ex=ttl))
        except redis.RedisError as exc:
            # Fail closed: without the replay check an assertion could be replayed.
            raise StoreUnavailable("the replay cache is unavailable; retry later") from exc
