"""Per-client rate limits: a token bucket per OAuth client, refilled at its registered ``rate_limit`` (requests
per minute, burst = one minute's worth). The bucket itself lives in Redis (``app.adapters.redis_ratelimit``) so
every worker process shares it; the registration is looked up once per ``ttl`` seconds per client."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from app.fhir.errors import TooManyRequests

__all__ = ["ClientRateLimiter", "TokenBucket"]


class TokenBucket(Protocol):
    def take(self, key: str, per_second: float, burst: int) -> float:
        """Take one token; 0.0 when granted, else the seconds until one is available."""
        ...


class ClientRateLimiter:
    """``check(client_id)`` raises TooManyRequests (429 + Retry-After) when the client is over its limit.
    ``rate_of(client_id)`` gives the registered requests per minute (None: unlimited)."""

    def __init__(
        self,
        bucket: TokenBucket,
        rate_of: Callable[[str], int | None],
        *,
        default_per_minute: int | None = None,
        ttl: float = 30.0,
    ) -> None:
        self.bucket = bucket
        self._rate_of = rate_of
        self.default = default_per_minute
        self.ttl = ttl
        self._rates: dict[str, tuple[int | None, float]] = {}
        self._lock = threading.Lock()

    def _rate(self, client_id: str) -> int | None:
        now = time.monotonic()
        cached = self._rates.get(client_id)
        if cached is not None and now - cached[1] < self.ttl:
            return cached[0]
        rate = self._rate_of(client_id)
        rate = rate if rate is not None else self.default
        with self._lock:
            if len(self._rates) > 10_000:
                self._rates.clear()
            self._rates[client_id] = (rate, now)
        return rate

    def check(self, client_id: str) -> None:
        per_minute = self._rate(client_id)
        if not per_minute:
            return
        wait = self.bucket.take(client_id, per_minute / 60.0, per_minute)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise TooManyRequests(
                f"Rate limit of {per_minute} requests per minute exceeded for this client; retry in {retry} s",
                headers={"Retry-After": str(retry)},
            )


def registration_rate(get_client: Callable[[str], Any]) -> Callable[[str], int | None]:
    """``rate_of`` from an auth store's ``get_client`` (a ClientRegistration with ``rate_limit``)."""

    def rate_of(client_id: str) -> int | None:
        reg = get_client(client_id)
        return getattr(reg, "rate_limit", None) if reg is not None else None

    return rate_of
