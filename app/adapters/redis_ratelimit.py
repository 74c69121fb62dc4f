"""A token bucket in Redis, shared by every worker: one Lua script per request (atomic read-refill-take), timed
by the Redis server's clock so workers with skewed clocks agree."""

from __future__ import annotations

import redis

from app.fhir.errors import StoreUnavailable

__all__ = ["RedisTokenBucket"]

_SCRIPT = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local data = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(data[1]) or burst
local ts = tonumber(data[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local wait = 0
if tokens >= 1 then tokens = tokens - 1 else wait = (1 - tokens) / rate end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return tostring(wait)
"""


class RedisTokenBucket:
    def __init__(self, client: redis.Redis, *, prefix: str = "interlace:ratelimit:") -> None:
        self._redis = client
        self._prefix = prefix
        self._script = client.register_script(_SCRIPT)

    def take(self, key: str, per_second: float, burst: int) -> float:
        try:
            wait = self._script(keys=[f"{self._prefix}{key}"], args=[repr(per_second), burst])
        except redis.RedisError as exc:
            raise StoreUnavailable("the rate limiter is unavailable; retry later") from exc
        return float(wait)
