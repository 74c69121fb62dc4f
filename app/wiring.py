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

    def close(self) -> None:
        self.store.close()


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
