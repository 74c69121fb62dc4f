"""The FHIR RESTful API as a plain function of a request: no web framework inside.

Like Medplum's fhir-router, ``FhirRouter.handle(FhirRequest) -> FhirResponse`` maps a method, a path relative
to the FHIR base, a query multidict, headers and body bytes to a status, headers and a body. The Flask edge
(``app.api.fhir_rest``) only translates HTTP to and from these objects, so every interaction here can be
tested without a server, and batch/transaction entries reuse the same handlers.

Handlers are named after the interactions of https://hl7.org/fhir/R4/http.html. Errors are ``app.fhir.errors``
types only; ``handle`` turns them into OperationOutcome responses.

Conditional create/update/delete/patch are written once here, on top of ``StoreSession.search`` and
``StoreSession.lock``: the lock on ``Type?<canonical criteria>`` is taken *before* searching, inside the write
session that then writes, so concurrent identical conditional requests are serialised and cannot both create.
"""

from __future__ import annotations

import logging
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import orjson

from app.auth.scopes import Interaction
from app.fhir import bundle as fhir_bundle
from app.fhir import model as fhir_model
from app.fhir import patch as fhir_patch
from app.fhir import search as fhir_search
from app.fhir.capability import SYSTEM_INTERACTIONS, TYPE_INTERACTIONS, capability_statement
from app.fhir.errors import (
    BadRequest,
    FhirError,
    Forbidden,
    Gone,
    MethodNotAllowed,
    NotFound,
    NotImplementedInteraction,
    PreconditionFailed,
    UnsupportedMediaType,
    informational,
)
from app.fhir.query import IdClause, SearchQuery
from app.fhir.store import ResourceStore, StoredResource, StoreSession, iter_pages
from app.fhir.values import parse_date_range
from app.services.access import AccessGuard

log = logging.getLogger("interlace.rest")

JSON_PATCH = "application/json-patch+json"
FORM = "application/x-www-form-urlencoded"
# Parameters about the HTTP exchange, not the search: the edge handles them, the search parser never sees them.
_HTTP_PARAMS = frozenset({"_format", "_pretty"})
CURSOR_PARAM = "_cursor"


# ---------------------------------------------------------------------------------------------- request/response


class Headers(Mapping[str, str]):
    """Case-insensitive, read-only header map (HTTP header names are case-insensitive)."""

    __slots__ = ("_d",)

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] | None = None) -> None:
        pairs = items.items() if isinstance(items, Mapping) else (items or ())
        self._d: dict[str, str] = {k.lower(): v for k, v in pairs}

    def __getitem__(self, key: str) -> str:
        return self._d[key.lower()]

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return self._d.get(key.lower(), default)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key.lower() in self._d

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __repr__(self) -> str:
        return f"Headers({self._d!r})"


@dataclass
class FhirRequest:
    """One FHIR interaction request. ``path`` is relative to the FHIR base (``Patient/1``, ``metadata``, ``""``)."""

    method: str
    path: str
    query: dict[str, list[str]] = field(default_factory=dict)
    # any case-insensitive mapping (``Headers``, werkzeug's ``EnvironHeaders``); a plain dict is wrapped
    headers: Mapping[str, str] = field(default_factory=Headers)
    body: bytes = b""
    base_url: str = ""
    # A body that is already parsed (batch/transaction entries): skips decoding, still validated.
    resource: dict[str, Any] | None = None
    # The caller (``app.auth.context.AuthContext``) whose scopes every interaction is checked against; None when
    # the request is not subject to scopes (INTERLACE_AUTH=off, HL7v2 ingest).
    auth: Any = None

    def __post_init__(self) -> None:
        if isinstance(self.headers, dict):
            self.headers = Headers(self.headers)
        self.method = self.method.upper()


@dataclass
class FhirResponse:
    """``body`` is a JSON-ready dict, already-serialised JSON bytes (served as-is), or None (no body)."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | bytes | None = None

    def json(self) -> dict[str, Any] | None:
        if self.body is None or isinstance(self.body, dict):
            return self.body
        return orjson.loads(self.body)


def error_response(exc: FhirError) -> FhirResponse:
    return FhirResponse(exc.status, dict(exc.headers), exc.to_outcome())


# ---------------------------------------------------------------------------------------------- small helpers


_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(dt: datetime) -> str:
    """RFC 7231 IMF-fixdate, e.g. ``Tue, 01 Dec 2026 20:00:00 GMT`` (locale-free; on every read, so kept cheap)."""
    u = dt.astimezone(UTC) if dt.tzinfo is not UTC else dt
    return (
        f"{_DAYS[u.weekday()]}, {u.day:02d} {_MONTHS[u.month - 1]} {u.year:04d} "
        f"{u.hour:02d}:{u.minute:02d}:{u.second:02d} GMT"
    )


def parse_etag(value: str, header: str = "If-Match") -> int:
    """``W/"3"``, ``"3"`` or ``3`` -> 3."""
    raw = value.strip()
    if raw.startswith(("W/", "w/")):
        raw = raw[2:]
    raw = raw.strip().strip('"')
    if not raw.isdigit():
        raise BadRequest(f'{header}: expected a version ETag like W/"3", got {value!r}')
    return int(raw)


def parse_prefer(value: str | None) -> dict[str, str]:
    """``return=minimal, handling=lenient`` -> {"return": "minimal", "handling": "lenient"}."""
    out: dict[str, str] = {}
    if not value:
        return out
    for part in value.replace(";", ",").split(","):
        name, _, val = part.strip().partition("=")
        if name:
            out[name.strip().lower()] = val.strip().strip('"').lower()
    return out


def parse_query_string(qs: str) -> dict[str, list[str]]:
    return parse_qs(qs, keep_blank_values=True)


def _media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _parse_instant(name: str, value: str) -> datetime:
    try:
        low, _ = parse_date_range(value)
    except ValueError:
        raise BadRequest(f"{name}={value!r}: expected a FHIR instant such as 2024-01-31T12:00:00Z") from None
    return low.replace(tzinfo=UTC)


def _single(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise BadRequest(f"{name} may appear only once")
    return values[0]


def _with_expression(exc: FhirError, prefix: str) -> FhirError:
    """Point every error issue at the entry ``prefix`` (``Bundle.entry[3]``): the bare entry path first, then each
    original expression re-rooted under it (``Patient.active`` -> ``Bundle.entry[3].resource.active``)."""

    def reroot(expression: str) -> str:
        if expression.startswith("Bundle.entry["):
            return expression
        head, dot, rest = expression.partition(".")
        if head[:1].isupper():  # rooted at the resource type
            return f"{prefix}.resource{dot}{rest}"
        return f"{prefix}.{expression}"

    issues = []
    for issue in exc.issues:
        if issue.severity in ("error", "fatal"):
            rerooted = tuple(reroot(e) for e in issue.expression)
            issue = replace(issue, expression=(prefix, *(e for e in rerooted if e != prefix)))
        issues.append(issue)
    exc.issues = issues
    return exc


def _walk_strings(node: Any, fn: Callable[[str, str], str | None], key: str = "") -> Any:
    """Rebuild ``node`` with every string value passed through ``fn(key, value)`` (None keeps it)."""
    if isinstance(node, dict):
        return {k: _walk_strings(v, fn, k) for k, v in node.items()}
    if isinstance(node, list):
        return [_walk_strings(v, fn, key) for v in node]
    if isinstance(node, str):
        new = fn(key, node)
        return node if new is None else new
    return node


def _version_headers(stored: StoredResource, base_url: str, *, location: bool = False) -> dict[str, str]:
    headers = {"ETag": stored.etag, "Last-Modified": http_date(stored.last_updated)}
    if location:
        url = f"{base_url}/{stored.resource_type}/{stored.id}/_history/{stored.version_id}"
        headers["Location"] = url
        headers["Content-Location"] = url
    return headers


# ---------------------------------------------------------------------------------------------- the router


@dataclass
class _Entry:
    """One batch/transaction entry, decoded."""

    index: int
    method: str
    url: str
    request: FhirRequest
    full_url: str | None = None
    resource: dict[str, Any] | None = None
    resource_type: str | None = None
    id: str | None = None
    conditional: dict[str, list[str]] | None = None  # PUT/DELETE/PATCH Type?criteria
    # transaction identity resolution
    existing: StoredResource | None = None  # conditional create/update that matched
    assigned_id: str | None = None
    # transaction: ("Type?criteria", its matches) of a conditional create/update, resolved with the others
    prefetched: tuple[str, list[StoredResource]] | None = None

    @property
    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"


_METHOD_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


# (router, request, resource type or None, id or None, session or None) -> response
OperationHandler = Callable[["FhirRouter", FhirRequest, str | None, str | None, StoreSession | None], FhirResponse]


@dataclass(frozen=True)
class Operation:
    """An extended operation (https://hl7.org/fhir/R4/operations.html). Register it in ``FhirRouter.operations``
    under ``(resource_type or None, name)``; the CapabilityStatement lists it from there."""

    name: str  # without "$"
    handler: OperationHandler
    definition: str  # canonical url of its OperationDefinition
    type_level: bool = True  # [base]/Type/$name (or [base]/$name when registered under None)
    instance_level: bool = False  # [base]/Type/id/$name
    methods: frozenset[str] = frozenset({"GET", "POST"})

    def capability(self) -> dict[str, str]:
        return {"name": self.name, "definition": self.definition}


def default_operations() -> dict[tuple[str | None, str], Operation]:
    """The operations Interlace serves (imported here: their handlers import this module)."""
    from app.services.operations import default_operations as defaults

    return dict(defaults())


class FhirRouter:
    """Serves the FHIR RESTful API over a ``ResourceStore``."""

    def __init__(
        self,
        store: ResourceStore,
        registry: Any,
        *,
        default_count: int = 20,
        max_count: int = 1000,
        software_version: str = "0.1.0",
        operations: Mapping[tuple[str | None, str], Operation] | None = None,
    ) -> None:
        self.store = store
        # extended operations by (resource type or None for system level, name without "$")
        self.operations: dict[tuple[str | None, str], Operation] = dict(
            default_operations() if operations is None else operations
        )
        self.software_version = software_version
        self.registry = registry
        self.default_count = default_count
        self.max_count = max_count
        self.resource_types: frozenset[str] = frozenset(registry.resource_types)
        self._all_types: tuple[str, ...] = tuple(sorted(self.resource_types))
        self._capabilities: dict[str, dict[str, Any]] = {}
        # Stores may serve read/vread/search outside a session on a cheaper path (SqlStore: one autocommit
        # statement, no BEGIN/COMMIT); they are used whenever the interaction is not part of a batch/transaction.
        self._store_read: Callable[[str, str], StoredResource] | None = getattr(store, "read", None)
        self._store_vread: Callable[[str, str, int], StoredResource] | None = getattr(store, "vread", None)
        self._store_search: Callable[[Any], Any] | None = getattr(store, "search", None)
        # scope enforcement (app.services.access); ``audit`` records each decision, ``security`` is the
        # CapabilityStatement.rest.security for a base URL (set by the composition root when auth is on)
        self.guard = AccessGuard(registry)
        self.audit: Callable[[FhirRequest, FhirResponse], None] | None = None
        self.security: Callable[[str], dict[str, Any]] | None = None

    # ------------------------------------------------------------------ entry point

    def handle(self, req: FhirRequest) -> FhirResponse:
        """Serve one request; every FhirError becomes an OperationOutcome response."""
        try:
            response = self._dispatch(req, None)
        except FhirError as exc:
            response = error_response(exc)
        if req.auth is not None and self.audit is not None:
            self.audit(req, response)
        return response

    def _dispatch(self, req: FhirRequest, session: StoreSession | None) -> FhirResponse:
        parts = [p for p in req.path.strip("/").split("/") if p] if req.path else []
        method = req.method
        n = len(parts)
        if n == 0:
            if method == "GET":
                return self.search_system(req, session)
            if method == "POST":
                if session is not None:
                    raise BadRequest("A batch or transaction cannot be nested inside another")
                return self.batch_or_transaction(req)
            raise MethodNotAllowed(f"{method} is not allowed on the server base")
        head = parts[0]
        if head == "metadata":
            if n == 1 and method == "GET":
                return self.capabilities(req)
            raise MethodNotAllowed(f"{method} /{req.path.strip('/')} is not allowed")
        if head == "_history":
            if n == 1 and method == "GET":
                return self.history_system(req, session)
            raise MethodNotAllowed(f"{method} /_history is not allowed")
        if head == "_search" and n == 1 and method == "POST":
            return self.search_system(req, session)
        if head.startswith("$") or (n > 1 and parts[-1].startswith("$")):
            return self.operation(req, parts, session)
        rtype = self._check_type(head)
        if n == 1:
            if method == "GET":
                return self.search_type(req, rtype, session)
            if method == "POST":
                return self.create(req, rtype, session)
            if method == "PUT":
                return self.conditional_update(req, rtype, session)
            if method == "DELETE":
                return self.conditional_delete(req, rtype, session)
            if method == "PATCH":
                return self.conditional_patch(req, rtype, session)
            raise MethodNotAllowed(f"{method} is not allowed on {rtype}")
        second = parts[1]
        if n == 2 and second == "_search":
            if method in ("POST", "GET"):
                return self.search_type(req, rtype, session)
            raise MethodNotAllowed(f"{method} is not allowed on {rtype}/_search")
        if n == 2 and second == "_history":
            if method == "GET":
                return self.history_type(req, rtype, session)
            raise MethodNotAllowed(f"{method} is not allowed on {rtype}/_history")
        rid = second
        if n == 2:
            if method in ("GET", "HEAD"):
                return self.read(req, rtype, rid, session)
            if method == "PUT":
                return self.update(req, rtype, rid, session)
            if method == "DELETE":
                return self.delete(req, rtype, rid, session)
            if method == "PATCH":
                return self.patch(req, rtype, rid, session)
            raise MethodNotAllowed(f"{method} is not allowed on {rtype}/{rid}")
        if parts[2] == "_history":
            if n == 3 and method == "GET":
                return self.history_instance(req, rtype, rid, session)
            if n == 4 and method in ("GET", "HEAD"):
                return self.vread(req, rtype, rid, parts[3], session)
            raise MethodNotAllowed(f"{method} is not allowed on {req.path}")
        raise NotFound(f"No FHIR interaction at {req.path!r}")

    def _check_type(self, rtype: str) -> str:
        if rtype in self.resource_types:
            return rtype
        if rtype in fhir_model.R4_RESOURCE_TYPES:
            raise NotFound(
                f"Resource type {rtype} exists in FHIR R4 but not in R4B, whose models Interlace uses; "
                "it is not supported",
                details_code="unsupported-resource-type",
            )
        raise NotFound(f"Unknown resource type {rtype}", details_code="unknown-resource-type")

    def _session(self, session: StoreSession | None, *, write: bool) -> AbstractContextManager[StoreSession]:
        return nullcontext(session) if session is not None else self.store.session(write=write)

    # ------------------------------------------------------------------ body handling

    def _body_resource(self, req: FhirRequest, rtype: str) -> dict[str, Any]:
        """The validated resource in the request body (a copy we may change); its type must be the URL's."""
        raw: Any = req.resource
        if raw is None:
            if not req.body or not req.body.strip():
                raise BadRequest("The request body is empty; a FHIR resource is required")
            raw = req.body
        return dict(fhir_model.parse_resource(raw, expected_type=rtype))

    def _respond_with(
        self, req: FhirRequest, stored: StoredResource, status: int, *, location: bool = True
    ) -> FhirResponse:
        """Response for create/update/patch, honouring ``Prefer: return=``."""
        headers = _version_headers(stored, req.base_url, location=location)
        pref = parse_prefer(req.headers.get("prefer")).get("return", "representation")
        if pref == "minimal":
            return FhirResponse(status, headers, None)
        if pref == "operationoutcome":
            verb = "Created" if status == 201 else "Updated"
            return FhirResponse(
                status, headers, informational(f"{verb} {stored.reference}/_history/{stored.version_id}")
            )
        return FhirResponse(status, headers, stored.content)

    def _if_match(self, req: FhirRequest) -> int | None:
        value = req.headers.get("if-match")
        return parse_etag(value) if value else None

    # ------------------------------------------------------------------ capabilities

    def capabilities(self, req: FhirRequest) -> FhirResponse:
        """https://hl7.org/fhir/R4/http.html#capabilities -- generated from the registry, cached per base URL."""
        cached = self._capabilities.get(req.base_url)
        if cached is None:
            cached = capability_statement(
                self.registry,
                base_url=req.base_url,
                software_version=self.software_version,
                interactions=TYPE_INTERACTIONS,
                system_interactions=SYSTEM_INTERACTIONS,
                conditional_create=True,
                conditional_update=True,
                conditional_delete="multiple",
                operations=[op.capability() for (rtype, _), op in sorted(self.operations.items()) if rtype is None],
                resource_operations=self._resource_operations(),
            )
            if self.security is not None:
                cached["rest"][0]["security"] = self.security(req.base_url)
            if len(self._capabilities) >= 8:  # the base URL may come from the Host header: bound the cache
                self._capabilities.clear()
            self._capabilities[req.base_url] = cached
        return FhirResponse(200, {}, cached)

    def _resource_operations(self) -> dict[str, list[dict[str, str]]]:
        out: dict[str, list[dict[str, str]]] = {}
        for (rtype, _), op in sorted(self.operations.items(), key=lambda kv: (kv[0][0] or "", kv[0][1])):
            if rtype is not None:
                out.setdefault(rtype, []).append(op.capability())
        return out

    # ------------------------------------------------------------------ operations

    def operation(self, req: FhirRequest, parts: list[str], session: StoreSession | None = None) -> FhirResponse:
        """https://hl7.org/fhir/R4/operations.html -- ``[base]/$op``, ``[base]/Type/$op``, ``[base]/Type/id/$op``,
        looked up in ``self.operations`` by (type or None, name)."""
        n = len(parts)
        name = parts[-1]
        if not name.startswith("$") or n > 3:
            raise NotFound(f"No FHIR interaction at {req.path!r}")
        rtype = self._check_type(parts[0]) if n > 1 else None
        rid = parts[1] if n == 3 else None
        op = self.operations.get((rtype, name[1:]))
        if op is None:
            raise NotImplementedInteraction(f"Operation {name} is not supported" + (f" on {rtype}" if rtype else ""))
        if (rid is not None and not op.instance_level) or (rid is None and rtype is not None and not op.type_level):
            level = "an instance" if rid is not None else "the type"
            raise NotFound(f"Operation {name} cannot be invoked on {level}", details_code="operation-level")
        if req.method not in op.methods:
            raise MethodNotAllowed(f"{req.method} is not allowed for {name}")
        if req.auth is not None:
            self.guard.require_operation(req.auth, op.name, rtype, getattr(op, "access", "r"))
        return op.handler(self, req, rtype, rid, session)

    # ------------------------------------------------------------------ instance level

    def read(self, req: FhirRequest, rtype: str, rid: str, session: StoreSession | None = None) -> FhirResponse:
        """https://hl7.org/fhir/R4/http.html#read -- content bytes are served exactly as stored."""
        if req.auth is not None:
            decision = self.guard.require(req.auth, Interaction.READ, rtype)
            if not decision.unrestricted and not self.guard.is_own_patient(decision, rtype, rid):
                return self._conditional_read(req, self._confined_one(session, req, decision, rtype, rid))
        if session is None and self._store_read is not None:
            return self._conditional_read(req, self._store_read(rtype, rid))
        with self._session(session, write=False) as s:
            stored = s.read(rtype, rid)
        return self._conditional_read(req, stored)

    def vread(
        self, req: FhirRequest, rtype: str, rid: str, vid: str, session: StoreSession | None = None
    ) -> FhirResponse:
        """https://hl7.org/fhir/R4/http.html#vread"""
        if not vid.isdigit():
            raise NotFound(f"{rtype}/{rid} has no version {vid!r}")
        decision = None
        if req.auth is not None:
            decision = self.guard.require(req.auth, Interaction.VREAD, rtype)
            if decision.unrestricted:
                decision = None
            else:
                self._confined_one(session, req, decision, rtype, rid)
        if session is None and self._store_vread is not None:
            stored = self._store_vread(rtype, rid, int(vid))
        else:
            with self._session(session, write=False) as s:
                stored = s.vread(rtype, rid, int(vid))
        if decision is not None and not stored.deleted and not self.guard.admits(decision, stored.as_dict()):
            raise NotFound(f"{rtype}/{rid}/_history/{vid} is not known")
        if stored.deleted:
            raise Gone(
                f"{rtype}/{rid}/_history/{vid} is a deletion",
                headers={"ETag": stored.etag, "Last-Modified": http_date(stored.last_updated)},
            )
        response = self._conditional_read(req, stored)
        response.headers["Content-Location"] = f"{req.base_url}/{rtype}/{rid}/_history/{stored.version_id}"
        return response

    def _conditional_read(self, req: FhirRequest, stored: StoredResource) -> FhirResponse:
        """https://hl7.org/fhir/R4/http.html#cread -- If-None-Match / If-Modified-Since -> 304."""
        headers = {"ETag": stored.etag, "Last-Modified": http_date(stored.last_updated)}
        h = req.headers
        inm = h.get("if-none-match")
        if inm is not None:
            tags = {t.strip() for t in inm.split(",")}
            if "*" in tags or any(_same_version(t, stored.version_id) for t in tags):
                return FhirResponse(304, headers, None)
        else:
            ims = h.get("if-modified-since")
            if ims:
                try:
                    since = parsedate_to_datetime(ims)
                except (TypeError, ValueError):
                    since = None
                if since is not None:
                    if since.tzinfo is None:
                        since = since.replace(tzinfo=UTC)
                    if stored.last_updated.replace(microsecond=0) <= since:
                        return FhirResponse(304, headers, None)
        if req.method == "HEAD":
            return FhirResponse(200, headers, None)
        return FhirResponse(200, headers, stored.content)

    # ------------------------------------------------------------------ scope confinement

    def _confined_one(
        self, session: StoreSession | None, req: FhirRequest, decision: Any, rtype: str, rid: str
    ) -> StoredResource:
        """``rtype/rid`` when it is inside ``decision``'s paths (a narrowed ``_id`` search, run before anything is
        read); NotFound otherwise -- the same answer whether it is elsewhere or nowhere."""
        clause = self.guard.confine(decision, rtype)
        clauses = (IdClause((rid,)),) if clause is None else (IdClause((rid,)), clause)
        query = SearchQuery((rtype,), clauses, count=1, total="none", canonical=f"_id={rid}")
        if session is None and self._store_search is not None:
            page = self._store_search(query)
        else:
            with self._session(session, write=False) as s:
                page = s.search(query)
        if not page.matches:
            raise NotFound(f"{rtype}/{rid} is not known")
        return page.matches[0]

    def _check_write(self, req: FhirRequest, interaction: Interaction, resource: dict[str, Any]) -> Any:
        """The decision for writing ``resource``; Forbidden when the content would land outside the token's
        compartment or granular constraints."""
        if req.auth is None:
            return None
        decision = self.guard.require(req.auth, interaction, str(resource.get("resourceType")))
        if not decision.unrestricted and not self.guard.admits(decision, resource):
            raise Forbidden(
                f"The {resource.get('resourceType')} would be outside what the token may write "
                f"({req.auth.scope}): it must reference the patient in context / match the scope's constraints"
            )
        return decision

    def _require(self, req: FhirRequest, interaction: Interaction, rtype: str) -> Any:
        """The decision when it restricts (None when there is no auth or it is unrestricted)."""
        if req.auth is None:
            return None
        decision = self.guard.require(req.auth, interaction, rtype)
        return None if decision.unrestricted else decision

    def update(self, req: FhirRequest, rtype: str, rid: str, session: StoreSession | None = None) -> FhirResponse:
        """https://hl7.org/fhir/R4/http.html#update -- also update-as-create with a client-chosen id."""
        resource = self._body_resource(req, rtype)
        body_id = resource.get("id")
        if body_id is None:
            raise BadRequest(
                f"The body has no id; PUT {rtype}/{rid} needs id {rid!r} in the resource", expression=("id",)
            )
        if body_id != rid:
            raise BadRequest(
                f"The body's id {body_id!r} does not match the URL's id {rid!r}", expression=(f"{rtype}.id",)
            )
        if_match = self._if_match(req)
        decision = self._require(req, Interaction.UPDATE, rtype)
        self._check_write(req, Interaction.UPDATE, resource)
        with self._session(session, write=True) as s:
            if decision is not None:  # a confined token updates only what is in its compartment (no update-as-create)
                self._confined_one(s, req, decision, rtype, rid)
            stored, created = s.update(resource, if_match=if_match)
        return self._respond_with(req, stored, 201 if created else 200)

    def delete(self, req: FhirRequest, rtype: str, rid: str, session: StoreSession | None = None) -> FhirResponse:
        """https://hl7.org/fhir/R4/http.html#delete -- later reads answer 410 Gone."""
        if_match = self._if_match(req)
        decision = self._require(req, Interaction.DELETE, rtype)
        with self._session(session, write=True) as s:
            if decision is not None:
                self._confined_one(s, req, decision, rtype, rid)
            deleted = s.delete(rtype, rid, if_match=if_match)
        return self._deleted_response(req, [deleted] if deleted else [], f"{rtype}/{rid}")

    def _deleted_response(self, req: FhirRequest, deleted: list[StoredResource], what: str) -> FhirResponse:
        headers: dict[str, str] = {}
        if len(deleted) == 1:
            headers["ETag"] = deleted[0].etag
        if parse_prefer(req.headers.get("prefer")).get("return") == "minimal":
            return FhirResponse(204, headers, None)
        if not deleted:
            text = f"Nothing to delete: {what} matched no current resource"
        elif len(deleted) == 1:
            text = f"Deleted {deleted[0].reference}"
        else:
            text = f"Deleted {len(deleted)} resources matching {what}"
        return FhirResponse(200, headers, informational(text))

    def patch(self, req: FhirRequest, rtype: str, rid: str, session: StoreSession | None = None) -> FhirResponse:
        """https://hl7.org/fhir/R4/http.html#patch -- JSON Patch (RFC 6902)."""
        operations = self._patch_document(req)
        if_match = self._if_match(req)
        decision = self._require(req, Interaction.PATCH, rtype)
        with self._session(session, write=True) as s:
            current = s.read(rtype, rid) if decision is None else self._confined_one(s, req, decision, rtype, rid)
            stored = self._apply_patch(s, current, operations, if_match, req)
        return self._respond_with(req, stored, 200)

    def _patch_document(self, req: FhirRequest) -> Any:
        """The JSON Patch operations: the body, or a transaction entry's Binary."""
        if req.resource is not None:
            return _patch_from_entry_resource(req.resource)
        media = _media_type(req.headers.get("content-type"))
        if media and media != JSON_PATCH:
            raise UnsupportedMediaType(
                f"PATCH needs Content-Type {JSON_PATCH} (JSON Patch); {media} is not supported "
                "(FHIRPath Patch is not implemented)"
            )
        return req.body or b""

    def _apply_patch(
        self, s: StoreSession, current: StoredResource, operations: Any, if_match: int | None, req: FhirRequest
    ) -> StoredResource:
        if if_match is not None and if_match != current.version_id:
            raise PreconditionFailed(
                f'If-Match W/"{if_match}" does not match the current version {current.etag} of {current.reference}'
            )
        # apply_patch validates the result and refuses changes of resourceType/id
        patched = fhir_patch.apply_patch(current.as_dict(), operations)
        self._check_write(req, Interaction.PATCH, patched)  # a patch must not move a resource out of reach
        stored, _ = s.update(patched, if_match=current.version_id, method="PATCH")
        return stored

    # ------------------------------------------------------------------ type level

    def create(self, req: FhirRequest, rtype: str, session: StoreSession | None = None) -> FhirResponse:
        """https://hl7.org/fhir/R4/http.html#create and #ccreate (``If-None-Exist``)."""
        resource = self._body_resource(req, rtype)
        resource.pop("id", None)  # the server assigns the id of a created resource
        if_none_exist = req.headers.get("if-none-exist")
        self._check_write(req, Interaction.CREATE, resource)
        with self._session(session, write=True) as s:
            if if_none_exist:
                matches = self._conditional_matches(
                    s, rtype, _criteria(if_none_exist, rtype), "If-None-Exist", base_url=req.base_url, auth=req.auth
                )
                if len(matches) == 1:
                    return self._respond_with(req, matches[0], 200)
            stored = s.create(resource)
        return self._respond_with(req, stored, 201)

    def _conditional_query(
        self, rtype: str, criteria: dict[str, list[str]], what: str, *, limit: int = 2, base_url: str = ""
    ) -> Any:
        """The search behind a conditional interaction (its ``canonical`` string is the lock key)."""
        criteria = {k: v for k, v in criteria.items() if k not in _HTTP_PARAMS}
        if not criteria:
            raise BadRequest(f"{what} needs search criteria (e.g. identifier=system|value)")
        query = fhir_search.parse_search(
            (rtype,),
            criteria,
            self.registry,
            lenient=False,
            default_count=min(limit, self.max_count),
            max_count=self.max_count,
            base_url=base_url,
        )
        return replace(query, count=limit, cursor=None, includes=(), sort=())

    def _conditional_matches(
        self,
        s: StoreSession,
        rtype: str,
        criteria: dict[str, list[str]],
        what: str,
        *,
        limit: int = 2,
        base_url: str = "",
        auth: Any = None,
    ) -> list[StoredResource]:
        """Lock ``Type?criteria`` then search: up to ``limit`` matches; PreconditionFailed if more than one
        when ``limit`` is 2 (the single-match interactions)."""
        query = self._conditional_query(rtype, criteria, what, limit=limit, base_url=base_url)
        s.lock(f"{rtype}?{query.canonical}")
        if auth is not None:  # conditional interactions search first: only inside what the token may search
            query = self.guard.narrow_search(auth, query)
        if limit > 2:
            return list(iter_pages(s, query))
        matches = s.search(query).matches
        if len(matches) > 1:
            raise PreconditionFailed(f"{what} criteria {rtype}?{query.canonical} matched more than one resource")
        return matches

    def conditional_update(self, req: FhirRequest, rtype: str, session: StoreSession | None = None) -> FhirResponse:
        """https://hl7.org/fhir/R4/http.html#cond-update -- ``PUT Type?criteria``."""
        if not req.query:
            raise MethodNotAllowed(f"PUT {rtype} needs an id (PUT {rtype}/id) or search criteria (PUT {rtype}?...)")
        resource = self._body_resource(req, rtype)
        if_match = self._if_match(req)
        confined = self._check_write(req, Interaction.UPDATE, resource)
        with self._session(session, write=True) as s:
            matches = self._conditional_matches(
                s, rtype, req.query, "Conditional update", base_url=req.base_url, auth=req.auth
            )
            body_id = resource.get("id")
            if not matches and req.auth is not None:  # no match means a create: that needs "c" too
                self._check_write(req, Interaction.CREATE, resource)
                if body_id is not None and confined is not None and not confined.unrestricted:
                    raise Forbidden("A token confined to a compartment cannot create with a client-chosen id")
            if matches:
                found = matches[0]
                if body_id is not None and body_id != found.id:
                    raise BadRequest(
                        f"The body's id {body_id!r} differs from {found.reference}, the resource the criteria matched",
                        expression=(f"{rtype}.id",),
                    )
                resource["id"] = found.id
                stored, created = s.update(resource, if_match=if_match)
            elif body_id is not None:
                stored, created = s.update(resource, if_match=if_match)
            else:
                stored, created = s.create(resource), True
        return self._respond_with(req, stored, 201 if created else 200)

    def conditional_delete(self, req: FhirRequest, rtype: str, session: StoreSession | None = None) -> FhirResponse:
        """https://hl7.org/fhir/R4/http.html#cdelete -- deletes every match (single and multiple)."""
        if not req.query:
            raise MethodNotAllowed(f"DELETE {rtype} needs an id or search criteria; deleting a whole type is refused")
        self._require(req, Interaction.DELETE, rtype)
        if_match = self._if_match(req)
        with self._session(session, write=True) as s:
            matches = self._conditional_matches(
                s, rtype, req.query, "Conditional delete", limit=self.max_count, base_url=req.base_url, auth=req.auth
            )
            if if_match is not None and len(matches) > 1:
                raise PreconditionFailed("If-Match cannot apply to a conditional delete that matches several resources")
            deleted = [d for m in matches if (d := s.delete(rtype, m.id, if_match=if_match)) is not None]
        criteria = "&".join(f"{k}={v}" for k, vs in req.query.items() for v in vs)
        return self._deleted_response(req, deleted, f"{rtype}?{criteria}")

    def conditional_patch(self, req: FhirRequest, rtype: str, session: StoreSession | None = None) -> FhirResponse:
        """https://hl7.org/fhir/R4/http.html#patch -- ``PATCH Type?criteria`` (exactly one match)."""
        if not req.query:
            raise MethodNotAllowed(f"PATCH {rtype} needs an id or search criteria")
        operations = self._patch_document(req)
        if_match = self._if_match(req)
        self._require(req, Interaction.PATCH, rtype)
        with self._session(session, write=True) as s:
            matches = self._conditional_matches(
                s, rtype, req.query, "Conditional patch", base_url=req.base_url, auth=req.auth
            )
            if not matches:
                raise NotFound(f"Conditional patch: no {rtype} matches the criteria")
            stored = self._apply_patch(s, matches[0], operations, if_match, req)
        return self._respond_with(req, stored, 200)

    # ------------------------------------------------------------------ search

    def _search_params(self, req: FhirRequest) -> dict[str, list[str]]:
        params = {k: list(v) for k, v in req.query.items() if k not in _HTTP_PARAMS}
        if req.method == "POST":
            media = _media_type(req.headers.get("content-type"))
            if req.body and req.body.strip():
                if media != FORM:
                    raise UnsupportedMediaType(f"POST _search needs Content-Type {FORM}, not {media or 'none'}")
                for k, vs in parse_query_string(req.body.decode("utf-8", "replace")).items():
                    if k not in _HTTP_PARAMS:
                        params.setdefault(k, []).extend(vs)
        return params

    def _parse_search(self, req: FhirRequest, types: tuple[str, ...]) -> tuple[Any, bool]:
        handling = parse_prefer(req.headers.get("prefer")).get("handling", "strict")
        lenient = handling == "lenient"
        query = fhir_search.parse_search(
            types,
            self._search_params(req),
            self.registry,
            lenient=lenient,
            default_count=self.default_count,
            max_count=self.max_count,
            base_url=req.base_url,
        )
        return query, lenient

    def search_type(self, req: FhirRequest, rtype: str, session: StoreSession | None = None) -> FhirResponse:
        """https://hl7.org/fhir/R4/http.html#search -- ``GET Type?`` and ``POST Type/_search``."""
        query, _ = self._parse_search(req, (rtype,))
        if req.auth is not None:
            query = self.guard.narrow_search(req.auth, query)
        return self._run_search(req, query, session, rtype)

    def search_system(self, req: FhirRequest, session: StoreSession | None = None) -> FhirResponse:
        """https://hl7.org/fhir/R4/http.html#search -- system level ``GET [base]?``."""
        query, _ = self._parse_search(req, self._all_types)
        if req.auth is not None:
            explicit = "_type" in req.query or (req.method == "POST" and b"_type=" in (req.body or b""))
            query = self.guard.narrow_search(
                req.auth, query, interaction=Interaction.SEARCH_SYSTEM, explicit_types=explicit
            )
        return self._run_search(req, query, session, "")

    def _run_search(self, req: FhirRequest, query: Any, session: StoreSession | None, path: str) -> FhirResponse:
        if session is None and self._store_search is not None:
            page = self._store_search(query)
        else:
            with self._session(session, write=False) as s:
                page = s.search(query)
        if req.auth is not None and page.included:
            page.included = self.guard.filter_included(req.auth, page.included)
        # parameters ignored under lenient handling are reported by the bundle as a search.mode=outcome entry
        return FhirResponse(200, {}, fhir_bundle.searchset(page, query, req.base_url, resource_type_path=path))

    # ------------------------------------------------------------------ history

    def _history(
        self,
        req: FhirRequest,
        session: StoreSession | None,
        *,
        resource_type: str | None = None,
        id: str | None = None,
    ) -> FhirResponse:
        q = req.query
        decision = self._check_history(req, session, resource_type, id)
        since = _single(q, "_since")
        at = _single(q, "_at")
        count_raw = _single(q, "_count")
        cursor = _single(q, CURSOR_PARAM)
        count = self.default_count
        if count_raw is not None:
            if not count_raw.isdigit():
                raise BadRequest(f"_count={count_raw!r}: expected a whole number")
            count = min(int(count_raw), self.max_count)
        with self._session(session, write=False) as s:
            page = s.history(
                resource_type=resource_type,
                id=id,
                since=_parse_instant("_since", since) if since else None,
                at=_parse_instant("_at", at) if at else None,
                count=count,
                cursor=cursor,
            )
            if resource_type and id and not page.entries:
                s.vread(resource_type, id, 1)  # NotFound when the resource never existed
        if decision is not None:  # instance history of a confined token: only the versions that were in reach
            page.entries = [e for e in page.entries if e.deleted or self.guard.admits(decision, e.as_dict())]
        path = "/".join(p for p in (resource_type, id) if p)
        self_params = [(k, v) for k in ("_since", "_at", "_count") for v in q.get(k, [])]
        self_link = f"{req.base_url}/{path + '/' if path else ''}_history"
        if self_params:
            self_link += "?" + urlencode(self_params)
        return FhirResponse(200, {}, fhir_bundle.history_bundle(page, req.base_url, self_link))

    def _check_history(self, req: FhirRequest, session: StoreSession | None, rtype: str | None, rid: str | None) -> Any:
        """Scope checks for history; the decision to filter instance versions with (None: no filtering). Type and
        system history are not searches and cannot be narrowed: a confined token is refused them."""
        if req.auth is None:
            return None
        if rtype is not None and rid is not None:
            decision = self.guard.require(req.auth, Interaction.HISTORY_INSTANCE, rtype)
            if decision.unrestricted:
                return None
            self._confined_one(session, req, decision, rtype, rid)
            return decision
        interaction = Interaction.HISTORY_TYPE if rtype is not None else Interaction.HISTORY_SYSTEM
        for t in (rtype,) if rtype is not None else self._all_types:
            decision = self.guard.require(req.auth, interaction, t)
            if not decision.unrestricted:
                raise Forbidden(
                    f"_history of {t} cannot be confined to what the token may see ({req.auth.scope}); "
                    "use search, or the history of one resource"
                )
        return None

    def history_instance(
        self, req: FhirRequest, rtype: str, rid: str, session: StoreSession | None = None
    ) -> FhirResponse:
        """https://hl7.org/fhir/R4/http.html#history -- ``GET Type/id/_history``."""
        return self._history(req, session, resource_type=rtype, id=rid)

    def history_type(self, req: FhirRequest, rtype: str, session: StoreSession | None = None) -> FhirResponse:
        """https://hl7.org/fhir/R4/http.html#history -- ``GET Type/_history``."""
        return self._history(req, session, resource_type=rtype)

    def history_system(self, req: FhirRequest, session: StoreSession | None = None) -> FhirResponse:
        """https://hl7.org/fhir/R4/http.html#history -- ``GET /_history``."""
        return self._history(req, session)

    # ------------------------------------------------------------------ batch / transaction

    def batch_or_transaction(self, req: FhirRequest) -> FhirResponse:
        """https://hl7.org/fhir/R4/http.html#transaction -- ``POST [base]`` with a batch or transaction Bundle."""
        media = _media_type(req.headers.get("content-type"))
        if req.resource is None and media == FORM:
            return self.search_system(req)
        if req.resource is not None:
            bundle = req.resource
        else:
            try:
                bundle = orjson.loads(req.body or b"")
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"The request body is not valid JSON: {exc}") from None
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise BadRequest("POST to the server base needs a Bundle of type batch or transaction")
        kind = bundle.get("type")
        if kind not in ("batch", "transaction"):
            raise BadRequest(f"Bundle.type must be batch or transaction, not {kind!r}", expression=("Bundle.type",))
        entries = bundle.get("entry") or []
        if not isinstance(entries, list):
            raise BadRequest("Bundle.entry must be an array", expression=("Bundle.entry",))
        if kind == "batch":
            return self.batch(req, entries)
        return self.transaction(req, entries)

    def _decode_entry(self, req: FhirRequest, index: int, raw: Any) -> _Entry:
        where = f"Bundle.entry[{index}]"
        if not isinstance(raw, dict):
            raise BadRequest("A Bundle entry must be an object", expression=(where,))
        request = raw.get("request")
        if not isinstance(request, dict) or not request.get("method") or not request.get("url"):
            raise BadRequest("Each entry needs request.method and request.url", expression=(f"{where}.request",))
        method = str(request["method"]).upper()
        if method not in _METHOD_ORDER:
            raise BadRequest(f"Unsupported request.method {method}", expression=(f"{where}.request.method",))
        url = str(request["url"])
        base = req.base_url.rstrip("/")
        if base and url.startswith(base + "/"):
            url = url[len(base) + 1 :]
        split = urlsplit(url)
        if split.scheme:
            raise BadRequest(f"request.url {url!r} is not on this server", expression=(f"{where}.request.url",))
        path = split.path.strip("/")
        query = parse_query_string(split.query)
        headers: dict[str, str] = {}
        for field_name, header in (
            ("ifMatch", "If-Match"),
            ("ifNoneMatch", "If-None-Match"),
            ("ifNoneExist", "If-None-Exist"),
            ("ifModifiedSince", "If-Modified-Since"),
        ):
            if request.get(field_name):
                headers[header] = str(request[field_name])
        prefer = req.headers.get("prefer")
        if prefer:
            headers["Prefer"] = prefer
        resource = raw.get("resource")
        if resource is not None and not isinstance(resource, dict):
            raise BadRequest("entry.resource must be a resource object", expression=(f"{where}.resource",))
        if method in ("POST", "PUT") and resource is None:
            raise BadRequest(f"A {method} entry needs a resource", expression=(f"{where}.resource",))
        parts = [p for p in path.split("/") if p]
        if not parts and method == "POST":
            raise BadRequest("A batch or transaction cannot be nested in another", expression=(f"{where}.request.url",))
        entry = _Entry(
            index=index,
            method=method,
            url=url,
            full_url=raw.get("fullUrl"),
            resource=resource,
            request=FhirRequest(
                method=method,
                path=path,
                query=query,
                headers=Headers(headers),
                base_url=req.base_url,
                resource=resource,
                auth=req.auth,
            ),
        )
        if parts and not parts[0].startswith(("$", "_")) and parts[0] != "metadata":
            entry.resource_type = parts[0]
            if len(parts) >= 2 and not parts[1].startswith("_"):
                entry.id = parts[1]
            elif len(parts) == 1 and method in ("PUT", "DELETE", "PATCH"):
                entry.conditional = query
        return entry

    def batch(self, req: FhirRequest, raw_entries: list[Any]) -> FhirResponse:
        """Each entry on its own (own session); failures are reported per entry, never abort the rest."""
        out: list[dict[str, Any]] = []
        for i, raw in enumerate(raw_entries):
            try:
                entry = self._decode_entry(req, i, raw)
                response = self.handle(entry.request)
            except FhirError as exc:
                response = error_response(exc)
            except Exception as exc:  # one broken entry must not sink the others; no message logged (PHI)
                log.error("unhandled %s in batch entry %d\n%s", type(exc).__name__, i, _frames(exc))
                response = error_response(FhirError(f"Bundle.entry[{i}] failed with an unexpected server error"))
            out.append(_response_entry(response, req.base_url))
        return FhirResponse(200, {}, fhir_bundle.batch_response(out))

    def transaction(self, req: FhirRequest, raw_entries: list[Any]) -> FhirResponse:
        """All or nothing in ONE write session, in the spec's order: DELETE, POST, PUT/PATCH, GET.

        Every fullUrl of a created/updated entry (``urn:uuid:``, ``urn:oid:`` or absolute) is mapped to its final
        ``Type/id`` before anything is written, and every matching reference inside every resource is rewritten;
        conditional references (``Patient?identifier=x``) are resolved by search. Any error fails the whole
        transaction with that entry's OperationOutcome, naming ``Bundle.entry[i]``.
        """
        entries = []
        for i, raw in enumerate(raw_entries):
            try:
                entries.append(self._decode_entry(req, i, raw))
            except FhirError as exc:
                raise _with_expression(exc, f"Bundle.entry[{i}]") from None
        targets: dict[str, int] = {}
        for e in entries:  # R4: a resource may be touched by only one write entry of a transaction
            if e.method in ("PUT", "DELETE", "PATCH") and e.resource_type and e.id:
                key = f"{e.resource_type}/{e.id}"
                if key in targets:
                    raise BadRequest(
                        f"{key} is the target of both Bundle.entry[{targets[key]}] and Bundle.entry[{e.index}]",
                        expression=(e.where,),
                    )
                targets[key] = e.index
        results: dict[int, FhirResponse] = {}
        ordered = sorted(entries, key=lambda e: (_METHOD_ORDER[e.method], e.index))
        with self.store.session(write=True) as s:
            ref_map: dict[str, str] = {}
            for e in ordered:
                if e.method == "DELETE":
                    results[e.index] = self._in_entry(e, lambda e=e: self._dispatch(e.request, s))
            self._prefetch_conditionals(s, ordered)
            for e in ordered:
                if e.method in ("POST", "PUT"):
                    self._in_entry(e, lambda e=e: self._resolve_identity(s, e, ref_map))
            for e in ordered:
                if e.resource is not None and e.method in ("POST", "PUT"):
                    resource = e.resource
                    e.resource = self._in_entry(
                        e, lambda r=resource: self._rewrite_references(s, r, ref_map, req.base_url, req.auth)
                    )
                    e.request.resource = e.resource
            for e in ordered:
                if e.method in ("POST", "PUT", "PATCH"):
                    results[e.index] = self._in_entry(e, lambda e=e: self._transaction_write(s, e))
            for e in ordered:
                if e.method in ("GET", "HEAD"):
                    results[e.index] = self._in_entry(e, lambda e=e: self._dispatch(e.request, s))
        out = [_response_entry(results[e.index], req.base_url) for e in entries]
        return FhirResponse(200, {}, fhir_bundle.transaction_response(out))

    @staticmethod
    def _in_entry(e: _Entry, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except FhirError as exc:
            raise _with_expression(exc, e.where) from None

    def _prefetch_conditionals(self, s: StoreSession, entries: list[_Entry]) -> None:
        """Resolve the conditional creates/updates of a transaction together, in a few round trips instead of a
        lock and a search per entry: one batched search without locks, then the criteria that matched nothing are
        locked (all at once, in a fixed order: no deadlock between transactions) and searched again.

        Criteria that already match need no lock: nothing is created for them, and an update of the match is
        ordered by the store's version check like any update. Only "no match, so create" must hold the lock from
        its search to the commit -- so messages that share reference data (Practitioner, Organization, Location)
        no longer serialise on it. Entries this cannot prepare (criteria that do not parse, a caller whose token
        narrows searches) are left to ``_resolve_identity``'s per-entry path, which reports their errors.
        """
        pending: list[tuple[_Entry, Any]] = []
        for e in entries:
            rtype = e.resource_type
            if rtype is None or e.id is not None or e.request.auth is not None or rtype not in self.resource_types:
                continue
            try:
                base_url = e.request.base_url
                if e.method == "POST" and e.request.headers.get("if-none-exist"):
                    criteria = _criteria(e.request.headers["if-none-exist"], rtype)
                    pending.append((e, self._conditional_query(rtype, criteria, "ifNoneExist", base_url=base_url)))
                elif e.method == "PUT" and e.conditional:
                    query = self._conditional_query(rtype, e.conditional, "Conditional update", base_url=base_url)
                    pending.append((e, query))
            except FhirError:
                continue
        if not pending:
            return
        search_many = getattr(s, "search_many", None)

        def run(batch: list[tuple[_Entry, Any]]) -> None:
            queries = [q for _, q in batch]
            found = search_many(queries) if search_many is not None else [s.search(q).matches for q in queries]
            for (e, q), matches in zip(batch, found, strict=True):
                e.prefetched = (f"{e.resource_type}?{q.canonical}", list(matches))

        try:
            run(pending)
            misses = [(e, q) for e, q in pending if e.prefetched is not None and not e.prefetched[1]]
            if misses:
                keys = sorted({f"{e.resource_type}?{q.canonical}" for e, q in misses})
                lock_many = getattr(s, "lock_many", None)
                if lock_many is not None:
                    lock_many(keys)
                else:
                    for key in keys:
                        s.lock(key)
                run(misses)
        except FhirError as exc:
            if exc.status >= 500:
                raise
            # a search the store refuses (raised before anything ran): the per-entry path reports it on its entry
            for e, _ in pending:
                e.prefetched = None

    @staticmethod
    def _prefetched(e: _Entry, what: str) -> list[StoredResource] | None:
        """The matches ``_prefetch_conditionals`` found for ``e`` (None: not prefetched)."""
        if e.prefetched is None:
            return None
        key, matches = e.prefetched
        if len(matches) > 1:
            raise PreconditionFailed(f"{what} criteria {key} matched more than one resource")
        return matches

    def _resolve_identity(self, s: StoreSession, e: _Entry, ref_map: dict[str, str]) -> None:
        """Decide the final ``Type/id`` of a POST/PUT entry (searching for conditional ones) before any write."""
        rtype = e.resource_type
        if rtype is None:
            raise BadRequest(f"{e.method} {e.url!r} does not name a resource type")
        self._check_type(rtype)
        if not isinstance(e.resource, dict) or e.resource.get("resourceType") != rtype:
            raise BadRequest(f"entry.resource is not a {rtype}", expression=(f"{e.where}.resource",))
        if e.method == "POST":
            if e.id is not None:
                raise BadRequest(f"POST {e.url!r}: create goes to the type URL, not an instance URL")
            self._require(e.request, Interaction.CREATE, rtype)  # the content is checked once references resolve
            condition = e.request.headers.get("if-none-exist")
            if condition:
                matches = self._prefetched(e, "ifNoneExist")
                if matches is None:
                    matches = self._conditional_matches(
                        s,
                        rtype,
                        _criteria(condition, rtype),
                        "ifNoneExist",
                        base_url=e.request.base_url,
                        auth=e.request.auth,
                    )
                if matches:
                    e.existing = matches[0]
            if e.existing is None:
                e.assigned_id = str(uuid.uuid4())
            target = e.existing.reference if e.existing else f"{rtype}/{e.assigned_id}"
        else:  # PUT
            if e.id is not None:
                target = f"{rtype}/{e.id}"
            elif e.conditional:
                confined = self._require(e.request, Interaction.UPDATE, rtype)
                if confined is not None:
                    self._require(e.request, Interaction.CREATE, rtype)
                matches = self._prefetched(e, "Conditional update")
                if matches is None:
                    matches = self._conditional_matches(
                        s, rtype, e.conditional, "Conditional update", base_url=e.request.base_url, auth=e.request.auth
                    )
                if not matches and confined is not None and e.resource.get("id"):
                    raise Forbidden("A token confined to a compartment cannot create with a client-chosen id")
                if matches:
                    e.existing = matches[0]
                    target = matches[0].reference
                else:
                    body_id = e.resource.get("id")
                    e.assigned_id = body_id if isinstance(body_id, str) and body_id else str(uuid.uuid4())
                    target = f"{rtype}/{e.assigned_id}"
            else:
                raise BadRequest(f"PUT {e.url!r} needs an id or search criteria")
        if e.full_url:
            if e.full_url in ref_map and ref_map[e.full_url] != target:
                raise BadRequest(f"fullUrl {e.full_url} appears more than once", expression=(f"{e.where}.fullUrl",))
            ref_map[e.full_url] = target
            # an absolute fullUrl on this server is also what relative references in the bundle resolve to
            relative = fhir_model.local_reference(e.full_url, e.request.base_url)
            if relative != e.full_url and relative != target:
                ref_map.setdefault(relative, target)

    def _rewrite_references(
        self, s: StoreSession, resource: dict[str, Any], ref_map: dict[str, str], base_url: str = "", auth: Any = None
    ) -> dict:
        conditional: dict[str, str] = {}

        def rewrite(key: str, value: str) -> str | None:
            if key == "div":  # narrative: <a href="urn:uuid:..."> and <img src="urn:uuid:...">
                if "urn:" not in value and not ref_map:
                    return None
                for old, new in ref_map.items():
                    if old in value:
                        value = value.replace(f'"{old}"', f'"{new}"')
                return value
            mapped = ref_map.get(value)
            if mapped is not None:
                return mapped
            if key != "reference":
                return None
            if value.startswith(("urn:uuid:", "urn:oid:")):
                raise BadRequest(f"Reference {value} does not match the fullUrl of any entry in the transaction")
            head, sep, criteria = value.partition("?")
            if sep and "/" not in head and head:
                if value not in conditional:
                    rtype = self._check_type(head)
                    matches = self._conditional_matches(
                        s, rtype, parse_query_string(criteria), "Conditional reference", base_url=base_url, auth=auth
                    )
                    if not matches:
                        raise NotFound(f"Conditional reference {value} matched no resource")
                    conditional[value] = matches[0].reference
                return conditional[value]
            return None

        return _walk_strings(resource, rewrite)

    def _transaction_write(self, s: StoreSession, e: _Entry) -> FhirResponse:
        req = e.request
        if e.method == "PATCH":
            return self._dispatch(req, s)
        assert e.resource_type is not None and e.resource is not None
        rtype = e.resource_type
        if e.existing is not None and e.method == "POST":
            return self._respond_with(req, e.existing, 200)
        if e.method == "PUT" and e.id is not None:  # a plain update (validates the body itself: parse it once)
            return self.update(req, rtype, e.id, s)
        if e.method == "PUT" and req.auth is None and _unchanged(e.existing, e.resource, req):
            # A conditional update with exactly what is stored (a resend, an A08 repeating the same data): no new
            # version, no index rewrite, no change event; the current version is the answer. The stored content was
            # validated when it was written, so this needs no validation either.
            return self._respond_with(req, e.existing, 200)  # type: ignore[arg-type]
        resource = self._body_resource(req, rtype)
        self._check_write(req, Interaction.CREATE if e.method == "POST" else Interaction.UPDATE, resource)
        if e.method == "POST":
            resource.pop("id", None)
            return self._respond_with(req, s.create(resource, id=e.assigned_id), 201)
        # PUT: a conditional update whose target was resolved above
        body_id = resource.get("id")
        target = e.existing.id if e.existing is not None else e.assigned_id
        if e.existing is not None and body_id is not None and body_id != target:
            raise BadRequest(
                f"The body's id {body_id!r} differs from {rtype}/{target}, the resource the criteria matched",
                expression=(f"{rtype}.id",),
            )
        resource["id"] = target
        if e.existing is None and body_id is None:
            return self._respond_with(req, s.create(resource, id=target), 201)
        stored, created = s.update(resource, if_match=self._if_match(req))
        return self._respond_with(req, stored, 201 if created else 200)


# ---------------------------------------------------------------------------------------------- module helpers


def _unchanged(existing: StoredResource | None, body: dict[str, Any], req: FhirRequest) -> bool:
    """Whether writing ``body`` over ``existing`` would store the same resource: equal but for the server's meta
    (versionId, lastUpdated). Never with If-Match, whose version check must still apply."""
    if existing is None or existing.deleted or existing.content is None or req.headers.get("if-match"):
        return False
    if body.get("id") not in (None, existing.id):
        return False  # the write path reports the id mismatch
    stored = orjson.loads(existing.content)

    def meta(doc: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in (doc.get("meta") or {}).items() if k not in ("versionId", "lastUpdated")}

    def rest(doc: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in doc.items() if k not in ("id", "meta")}

    return rest(stored) == rest(body) and meta(stored) == meta(body)


def _same_version(tag: str, version_id: int) -> bool:
    try:
        return parse_etag(tag, "If-None-Match") == version_id
    except BadRequest:
        return False


def _criteria(value: str, rtype: str) -> dict[str, list[str]]:
    """``If-None-Exist`` holds ``identifier=x`` (or, from some clients, ``Patient?identifier=x``)."""
    value = value.strip()
    if "?" in value:
        head, _, value = value.partition("?")
        if head and head.strip("/") != rtype:
            raise BadRequest(f"If-None-Exist criteria are for {head}, not {rtype}")
    return parse_query_string(value)


def _patch_from_entry_resource(resource: dict[str, Any]) -> Any:
    """A transaction PATCH entry carries the JSON Patch as a Binary (base64 ``data``)."""
    import base64

    if resource.get("resourceType") == "Binary" and resource.get("data"):
        content_type = _media_type(resource.get("contentType"))
        if content_type and content_type != JSON_PATCH:
            raise UnsupportedMediaType(f"A PATCH entry's Binary must be {JSON_PATCH}, not {content_type}")
        try:
            return orjson.loads(base64.b64decode(resource["data"]))
        except (ValueError, orjson.JSONDecodeError) as exc:
            raise BadRequest(f"The PATCH entry's Binary does not hold a JSON Patch: {exc}") from None
    if resource.get("resourceType") == "Parameters":
        raise UnsupportedMediaType("FHIRPath Patch (Parameters) is not supported; send JSON Patch in a Binary")
    raise BadRequest("A PATCH entry needs its JSON Patch as a Binary resource")


def _frames(exc: BaseException) -> str:
    """The traceback frames without the exception message (which may quote resource content)."""
    return "".join(traceback.format_tb(exc.__traceback__)).rstrip()


def _response_entry(response: FhirResponse, base_url: str) -> dict[str, Any]:
    """A batch/transaction-response entry from the response the request would have had on its own."""
    h = response.headers
    out: dict[str, Any] = {"status": fhir_bundle.status_line(response.status)}
    entry: dict[str, Any] = {}
    location = h.get("Location")
    if location:
        entry["fullUrl"] = location.split("/_history/")[0]
        out["location"] = fhir_model.local_reference(location, base_url)
    if "ETag" in h:
        out["etag"] = h["ETag"]
    if "Last-Modified" in h:
        out["lastModified"] = fhir_bundle.instant(parsedate_to_datetime(h["Last-Modified"]))
    body = response.body
    if isinstance(body, bytes):  # a stored resource: spliced into the bundle as-is
        entry["resource"] = orjson.Fragment(body)
    elif body is not None:
        if response.status >= 400 or body.get("resourceType") == "OperationOutcome":
            out["outcome"] = body
        else:
            entry["resource"] = body
    entry["response"] = out
    return entry


__all__ = [
    "FhirRequest",
    "FhirResponse",
    "FhirRouter",
    "Headers",
    "Operation",
    "error_response",
    "http_date",
    "parse_etag",
    "parse_prefer",
]
