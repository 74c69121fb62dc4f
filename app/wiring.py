"""The composition root: the one module that picks adapters (and the only importer of ``app.adapters``)."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any

from app.adapters.sql_store import SqlStore
from app.config import Settings
from app.fhir.indexing import default_indexer
from app.fhir.registry import default_registry
from app.fhir.store import ResourceStore
from app.services.rest import FhirRouter

if TYPE_CHECKING:
    from app.services.ingest import Hl7Ingest


@dataclass
class Services:
    settings: Settings
    store: ResourceStore
    registry: Any
    router: FhirRouter
    auth: Any = None  # AuthServices when INTERLACE_AUTH is on (see build_auth)

    def close(self) -> None:
        if self.auth is not None:
            self.auth.close()  # flushes the audit trail into the store: before the store closes
        self.store.close()
        if not self.settings.redis_url:  # an embedded Redis this process started for these settings
            from app.adapters.redis_conn import stop_embedded_redis

            stop_embedded_redis(self.settings.data_dir)


def _version() -> str:
    try:
        return metadata.version("interlace")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def build_services(settings: Settings) -> Services:
    """Build the store, search registry and FHIR router that ``settings`` describe."""
    url = settings.effective_database_url
    if url.startswith("sqlite") and not settings.data_dir.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    store = SqlStore(url, default_indexer(), pool_size=settings.db_pool_size)
    registry = default_registry()
    router = FhirRouter(
        store,
        registry,
        default_count=settings.default_count,
        max_count=settings.max_count,
        software_version=_version(),
    )
    return Services(settings=settings, store=store, registry=registry, router=router)


# ---------------------------------------------------------------------------------------------- HL7v2 ingest
# (owned by the ingest pipeline; kept apart so the REST wiring above stays untouched)


def build_ingest(settings: Settings, services: Services) -> Hl7Ingest:
    """The HL7v2 ingest use case (``app.services.ingest.Hl7Ingest``) on the message store of ``settings``'s
    database, committing through ``services.router``. The caller closes it with ``ingest.messages.close()``."""
    from app.adapters.message_store import SqlMessageStore
    from app.services.ingest import Hl7Ingest

    messages = SqlMessageStore(settings.effective_database_url, pool_size=settings.db_pool_size)
    return Hl7Ingest(messages, services.router)


# ---------------------------------------------------------------------------------------------- event backbone
# (owned by the event backbone: outbox relay, Redis Streams consumers, ERP projection)


@dataclass
class EventBackbone:
    """The outbox, the Redis bus and the consumers ``settings`` describe. ``erp`` is None while Odoo is not
    configured (INTERLACE_ODOO_URL unset): the relay still runs and the ``erp`` group catches up once it is."""

    settings: Settings
    services: Services
    bus: Any  # app.adapters.redis_bus.RedisEventBus
    outbox: Any  # app.adapters.outbox_sql.SqlOutbox
    states: Any  # app.adapters.outbox_sql.SqlProjectionStates
    erp: Any = None  # app.services.erp_sync.ErpSync
    gateway: Any = None

    @property
    def handlers(self) -> list[Any]:
        return [h for h in (self.erp,) if h is not None]

    def close(self) -> None:
        self.bus.redis.close()


def build_odoo_gateway(settings: Settings) -> Any:
    """An ``OdooGateway`` for ``settings`` (None when INTERLACE_ODOO_URL is unset). The key comes from the
    environment or from INTERLACE_ODOO_API_KEY_FILE; it is never logged."""
    if not settings.odoo_url:
        return None
    from pathlib import Path

    from app.adapters.odoo_gateway import OdooGateway
    from app.config import parse_pairs

    key = settings.odoo_api_key or Path(settings.odoo_api_key_file).read_text(encoding="utf-8").strip()
    taxes: dict[str, int | str] = {
        k: int(v) if v.isdigit() else v for k, v in parse_pairs("ODOO_TAX_MAP", settings.odoo_tax_map).items()
    }
    return OdooGateway(
        settings.odoo_url,
        settings.odoo_db,
        settings.odoo_login,
        key,
        module=settings.odoo_module,
        sale_journal_code=settings.odoo_sale_journal,
        payment_journal_code=settings.odoo_payment_journal,
        tax_map=taxes,
        account_map=parse_pairs("ODOO_ACCOUNT_MAP", settings.odoo_account_map),
        timeout=float(settings.odoo_timeout),
        odoo_version=settings.odoo_version,
        payment_lease=float(settings.odoo_payment_lease),
    )


def build_events(settings: Settings, services: Services, *, gateway: Any = None) -> EventBackbone:
    """The event backbone on ``services.store``'s database and ``settings``'s Redis. ``gateway`` overrides the
    ERP gateway built from settings (tests, benchmarks)."""
    from app.adapters.outbox_sql import SqlOutbox, SqlProjectionStates
    from app.adapters.redis_bus import BusConfig, RedisEventBus
    from app.adapters.redis_conn import connect_redis
    from app.billing.fhir_mapping import DEFAULT_CODE_SYSTEMS, MappingOptions
    from app.config import parse_pairs
    from app.services.erp_sync import ErpSync, ErpSyncOptions

    config = BusConfig(
        prefix=settings.events_prefix,
        max_attempts=settings.events_max_attempts,
        wait_max_attempts=settings.events_wait_max_attempts,
        backoff_ms=settings.events_backoff_ms,
        backoff_max_ms=settings.events_backoff_max_ms,
        claim_idle_ms=settings.events_claim_idle_ms,
        lock_ms=settings.events_lock_ms,
        stream_maxlen=settings.events_stream_maxlen,
    )
    bus = RedisEventBus(connect_redis(settings), config)
    outbox = SqlOutbox(services.store)
    states = SqlProjectionStates(services.store)
    gateway = gateway if gateway is not None else build_odoo_gateway(settings)
    erp = None
    if gateway is not None:
        systems = {**DEFAULT_CODE_SYSTEMS, **parse_pairs("ERP_CODE_SYSTEMS", settings.erp_code_systems)}
        options = ErpSyncOptions(
            mapping=MappingOptions(code_systems=systems),
            bill_claims=settings.erp_bill_claims,
            bill_charge_items=settings.erp_bill_charge_items,
        )
        erp = ErpSync(services.store, gateway, states, options, registry=services.registry)
    return EventBackbone(settings, services, bus, outbox, states, erp, gateway)


# ---------------------------------------------------------------------------------------------- SMART on FHIR
# (owned by auth enforcement: the authorization server, the rate limiter and the audit trail)


def build_oauth(settings: Settings, redis_client: Any = None) -> Any:
    """The ``OAuthService`` (authorization server + token validation) on ``settings``'s database and Redis."""
    from app.adapters.auth_store import SqlAuthStore
    from app.adapters.jwks_http import HttpJwksFetcher
    from app.adapters.redis_auth import RedisReplayCache
    from app.adapters.redis_conn import connect_redis
    from app.services.oauth import OAuthConfig, OAuthService

    return OAuthService(
        SqlAuthStore(settings.effective_database_url, pool_size=settings.db_pool_size),
        RedisReplayCache(redis_client if redis_client is not None else connect_redis(settings)),
        HttpJwksFetcher(),
        OAuthConfig.from_settings(settings),
    )


@dataclass
class AuthServices:
    """What enforcement needs at the edge: token validation, per-client rate limits, the audit trail."""

    oauth: Any  # app.services.oauth.OAuthService
    limiter: Any  # app.services.ratelimit.ClientRateLimiter
    audit: Any  # app.services.audit.AuditTrail
    redis: Any

    def close(self) -> None:
        self.audit.close()
        self.oauth.close()
        self.redis.close()


def build_auth(settings: Settings, services: Services) -> AuthServices:
    """OAuth, rate limiter and audit trail for ``settings`` (INTERLACE_AUTH on), hooked into ``services.router``:
    the router records every decision and advertises SMART in the CapabilityStatement's ``rest.security``."""
    from app.adapters.redis_conn import connect_redis
    from app.adapters.redis_ratelimit import RedisTokenBucket
    from app.services.audit import AuditTrail
    from app.services.oauth import capability_security, urls_from
    from app.services.ratelimit import ClientRateLimiter, registration_rate

    redis_client = connect_redis(settings)
    oauth = build_oauth(settings, redis_client)
    limiter = ClientRateLimiter(RedisTokenBucket(redis_client), registration_rate(oauth.store.get_client))
    audit = AuditTrail(services.store, interval=settings.audit_flush_ms / 1000)
    services.router.audit = audit.record
    services.router.security = lambda base_url: capability_security(urls_from(settings.issuer, base_url))
    return AuthServices(oauth, limiter, audit, redis_client)
