"""The storage port: what the REST service needs from a resource store.

One method per primitive interaction, like Medplum's FhirRepository; the conditional variants
(If-None-Exist, conditional update/delete) are built once in ``app.services.rest`` on top of
``search`` + ``lock`` inside one write session, so every adapter gets them for free and they hold
under concurrency as long as ``lock`` serialises holders of the same key.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

import orjson

from app.fhir.query import IndexEntry, SearchQuery


@dataclass(frozen=True)
class StoredResource:
    """One version of a resource as stored. ``content`` is the JSON served as-is (meta already set)."""

    resource_type: str
    id: str
    version_id: int
    last_updated: datetime  # timezone-aware, UTC
    deleted: bool = False
    content: bytes | None = None  # None for a deletion marker
    method: str = "PUT"  # POST / PUT / PATCH / DELETE: how this version came to be (history entries)

    def as_dict(self) -> dict[str, Any]:
        if self.content is None:
            raise ValueError(f"{self.resource_type}/{self.id}/_history/{self.version_id} is a deletion")
        return orjson.loads(self.content)

    @property
    def etag(self) -> str:
        return f'W/"{self.version_id}"'

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.id}"


@dataclass
class SearchPage:
    matches: list[StoredResource]
    included: list[StoredResource] = field(default_factory=list)
    total: int | None = None
    next_cursor: str | None = None
    prev_cursor: str | None = None


@dataclass
class HistoryPage:
    entries: list[StoredResource]  # newest first
    total: int | None = None
    next_cursor: str | None = None
    prev_cursor: str | None = None


class Indexer(Protocol):
    """Computes the search index rows of a resource (``app.fhir.indexing``)."""

    def index(self, resource: dict[str, Any]) -> list[IndexEntry]: ...


class StoreSession(Protocol):
    """Operations inside one database transaction. Raises ``app.fhir.errors`` types only."""

    def read(self, resource_type: str, id: str) -> StoredResource:
        """Current version. NotFound if never existed, Gone if its current version is a deletion."""
        ...

    def vread(self, resource_type: str, id: str, version_id: int) -> StoredResource:
        """One version (a deletion version is returned with deleted=True). NotFound if absent."""
        ...

    def create(self, resource: dict[str, Any], *, id: str | None = None) -> StoredResource:
        """Store a new resource: id assigned (uuid4) unless given, meta.versionId/lastUpdated set,
        history row and index rows written. ``resource`` has already been validated."""
        ...

    def update(
        self, resource: dict[str, Any], *, if_match: int | None = None, method: str = "PUT"
    ) -> tuple[StoredResource, bool]:
        """Store a new version of ``resource["id"]``; creates it if absent (update-as-create).
        Returns (stored, created). PreconditionFailed if ``if_match`` is not the current version."""
        ...

    def delete(self, resource_type: str, id: str, *, if_match: int | None = None) -> StoredResource | None:
        """Write a deletion version. Returns it, or None when there was nothing to delete."""
        ...

    def history(
        self,
        *,
        resource_type: str | None = None,
        id: str | None = None,
        since: datetime | None = None,
        at: datetime | None = None,
        count: int = 20,
        cursor: str | None = None,
    ) -> HistoryPage: ...

    def search(self, query: SearchQuery) -> SearchPage: ...

    def lock(self, key: str) -> None:
        """Serialise this session with every other session holding the same key, until commit/rollback."""
        ...


class ResourceStore(Protocol):
    def session(self, *, write: bool = False) -> AbstractContextManager[StoreSession]:
        """A transaction: committed when the block exits normally, rolled back on exception."""
        ...

    def close(self) -> None: ...


def iter_pages(session: StoreSession, query: SearchQuery) -> Iterator[StoredResource]:
    """Every match of ``query``, following cursors (for operations that need the whole result)."""
    from dataclasses import replace

    page = session.search(query)
    yield from page.matches
    while page.next_cursor:
        page = session.search(replace(query, cursor=page.next_cursor))
        yield from page.matches
