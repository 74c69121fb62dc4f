"""Bundle builders: searchset, history, transaction-response and batch-response (http://hl7.org/fhir/R4/bundle.html).

Speed: a stored resource is already the JSON we serve, so by default (``splice=True``) an entry's ``resource`` is
an ``orjson.Fragment`` wrapping ``StoredResource.content``: the builders return dicts, and ``dumps(bundle)``
(orjson) splices the stored bytes in without parsing and re-serialising them. Pass ``splice=False`` for plain
dicts (tests, code that inspects entries). Only ``_summary``/``_elements`` subsetting parses a resource.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from functools import cache
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import orjson

from app.fhir.errors import FhirError, Issue, operation_outcome
from app.fhir.model import model_class
from app.fhir.query import SearchQuery
from app.fhir.store import HistoryPage, SearchPage, StoredResource

SUBSETTED: dict[str, str] = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "Resource encoded in summary mode",
}
_ALWAYS_KEPT = ("resourceType", "id", "meta")


def dumps(bundle: dict[str, Any], *, pretty: bool = False) -> bytes:
    """Serialise a bundle built here (orjson understands the spliced ``orjson.Fragment`` resources)."""
    return orjson.dumps(bundle, option=orjson.OPT_INDENT_2 if pretty else 0)


def instant(dt: datetime) -> str:
    """A FHIR instant in UTC with millisecond precision (``2024-05-01T10:00:00.123Z``)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_line(status: int) -> str:
    """``201`` -> ``201 Created`` (Bundle.entry.response.status)."""
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _full_url(base_url: str, stored: StoredResource) -> str:
    return f"{base_url.rstrip('/')}/{stored.resource_type}/{stored.id}"


def _resource(stored: StoredResource, splice: bool) -> Any:
    assert stored.content is not None
    return orjson.Fragment(stored.content) if splice else orjson.loads(stored.content)


def entry_for(stored: StoredResource, base_url: str, *, mode: str | None = None, splice: bool = True) -> dict[str, Any]:
    """``{"fullUrl", "resource"[, "search": {"mode"}]}`` for one stored (non-deleted) version."""
    entry: dict[str, Any] = {"fullUrl": _full_url(base_url, stored), "resource": _resource(stored, splice)}
    if mode:
        entry["search"] = {"mode": mode}
    return entry


# ---------------------------------------------------------------- _summary / _elements


@cache
def _element_info(resource_type: str) -> tuple[frozenset[str], frozenset[str], dict[str, str]]:
    """(summary elements, mandatory elements, choice element -> choice name) from the R4B model."""
    cls = model_class(resource_type)
    if cls is None:
        return frozenset(), frozenset(), {}
    summary = frozenset(cls.summary_elements_sequence())  # type: ignore[attr-defined]
    mandatory: set[str] = set()
    choices: dict[str, str] = {}
    for name, f in cls.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        alias = f.alias or name
        if extra.get("one_of_many"):
            choices[alias] = str(extra["one_of_many"])
        if extra.get("element_property") and (
            f.is_required() or extra.get("element_required") or extra.get("one_of_many_required")
        ):
            mandatory.add(alias)
    return summary, frozenset(mandatory), choices


def _keep(resource: dict[str, Any], wanted: Iterable[str]) -> dict[str, Any]:
    """The top-level elements in ``wanted`` (choice names like ``value`` keep ``valueQuantity``; a primitive's
    ``_x`` extension element follows ``x``)."""
    wanted = set(wanted)
    _, _, choices = _element_info(str(resource.get("resourceType", "")))
    out: dict[str, Any] = {}
    for key, value in resource.items():
        name = key[1:] if key.startswith("_") else key
        if name in wanted or choices.get(name) in wanted or key in _ALWAYS_KEPT:
            out[key] = value
    return out


def _mark_subsetted(resource: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    tags = list(meta.get("tag") or [])
    if not any(t.get("system") == SUBSETTED["system"] and t.get("code") == SUBSETTED["code"] for t in tags):
        tags.append(dict(SUBSETTED))
    meta["tag"] = tags
    resource["meta"] = meta
    return resource


def subset(resource: dict[str, Any], *, summary: str | None = None, elements: Sequence[str] = ()) -> dict[str, Any]:
    """Apply ``_summary`` (true/text/data) or ``_elements`` to one resource; adds the SUBSETTED tag when anything
    may have been left out. ``_summary=false``/None with no elements returns the resource unchanged."""
    rtype = str(resource.get("resourceType", ""))
    summary_elements, mandatory, _ = _element_info(rtype)
    if summary == "true":
        out = _keep(resource, summary_elements | mandatory)
    elif summary == "text":
        out = _keep(resource, {"text"} | mandatory)
    elif summary == "data":
        out = {k: v for k, v in resource.items() if k != "text"}
    elif elements:
        out = _keep(resource, set(elements) | mandatory)
    else:
        return resource
    return _mark_subsetted(out)


def _needs_subset(query: SearchQuery) -> bool:
    return query.summary in ("true", "text", "data") or (bool(query.elements) and query.summary != "false")


# ---------------------------------------------------------------- links


def _link(base: str, canonical: str, params: Sequence[tuple[str, str]]) -> str:
    extra = "&".join(f"{k}={quote(v, safe='')}" for k, v in params)
    query = "&".join(p for p in (canonical, extra) if p)
    return f"{base}?{query}" if query else base


def with_cursor(link: str, cursor: str | None) -> str:
    """``link`` with its ``_cursor`` parameter replaced (or removed when ``cursor`` is None)."""
    parts = urlsplit(link)
    params = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "_cursor"]
    if cursor:
        params.append(("_cursor", cursor))
    return urlunsplit(parts._replace(query=urlencode(params, safe=":/|,*$")))


def _bundle(bundle_type: str, bundle_id: str | None, now: datetime | None) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "id": bundle_id or str(uuid.uuid4()),
        "meta": {"lastUpdated": instant(now or datetime.now(UTC))},
        "type": bundle_type,
    }


# ---------------------------------------------------------------- searchset


def ignored_outcome(query: SearchQuery, outcome: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The OperationOutcome reporting parameters dropped under lenient handling (merged into ``outcome``)."""
    issues = [
        Issue(
            code="not-supported",
            severity="warning",
            diagnostics=f"search parameter {name!r} is not supported and was ignored",
            expression=(name,),
        ).to_json()
        for name in query.ignored
    ]
    if outcome is None and not issues:
        return None
    merged = dict(outcome) if outcome else operation_outcome([])
    merged["issue"] = list(merged.get("issue", [])) + issues
    return merged


def searchset(
    page: SearchPage,
    query: SearchQuery,
    base_url: str,
    *,
    resource_type_path: str = "",
    outcome: dict[str, Any] | None = None,
    splice: bool = True,
    bundle_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A searchset Bundle for one page.

    ``resource_type_path`` is the path of the search under ``base_url`` (``"Patient"``; ``""`` for a system
    search). Links are built from ``query.canonical`` plus ``_count`` and the page cursors, so a client following
    ``next`` repeats the same criteria. ``outcome`` (and parameters dropped under lenient handling) becomes an
    entry with ``search.mode = outcome``.
    """
    base = base_url.rstrip("/")
    path = f"{base}/{resource_type_path.strip('/')}" if resource_type_path.strip("/") else base
    bundle = _bundle("searchset", bundle_id, now)
    if page.total is not None and query.total != "none":
        bundle["total"] = page.total
    count_param = [("_count", str(query.count))]
    links = [{"relation": "self", "url": _link(path, query.canonical, [*count_param, *_cursor(query.cursor)])}]
    if page.next_cursor:
        links.append(
            {"relation": "next", "url": _link(path, query.canonical, [*count_param, *_cursor(page.next_cursor)])}
        )
    if page.prev_cursor:
        links.append(
            {"relation": "previous", "url": _link(path, query.canonical, [*count_param, *_cursor(page.prev_cursor)])}
        )
    bundle["link"] = links

    entries: list[dict[str, Any]] = []
    if query.summary != "count":
        transform = _needs_subset(query)
        seen: set[tuple[str, str]] = set()
        for mode, items in (("match", page.matches), ("include", page.included)):
            for stored in items:
                key = (stored.resource_type, stored.id)
                if stored.content is None or key in seen:
                    continue
                seen.add(key)
                if transform:
                    resource = subset(stored.as_dict(), summary=query.summary, elements=query.elements)
                    entries.append({"fullUrl": _full_url(base, stored), "resource": resource, "search": {"mode": mode}})
                else:
                    entries.append(entry_for(stored, base, mode=mode, splice=splice))
    warnings = ignored_outcome(query, outcome)
    if warnings is not None:
        entries.append({"resource": warnings, "search": {"mode": "outcome"}})
    if entries:
        bundle["entry"] = entries
    return bundle


def _cursor(cursor: str | None) -> list[tuple[str, str]]:
    return [("_cursor", cursor)] if cursor else []


# ---------------------------------------------------------------- history


def _history_request(stored: StoredResource) -> dict[str, str]:
    method = stored.method.upper() if stored.method else "PUT"
    if stored.deleted:
        method = "DELETE"
    url = stored.resource_type if method == "POST" else f"{stored.resource_type}/{stored.id}"
    return {"method": method, "url": url}


def _history_status(stored: StoredResource, method: str) -> int:
    if stored.deleted or method == "DELETE":
        return 204
    if method == "POST" or stored.version_id == 1:
        return 201
    return 200


def history_bundle(
    page: HistoryPage,
    base_url: str,
    self_link: str,
    *,
    splice: bool = True,
    bundle_id: str | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """A history Bundle: newest first, each entry with ``request`` (method/url) and ``response`` (status, etag,
    lastModified); deletions carry no resource. ``next``/``previous`` links are ``self_link`` with ``_cursor``."""
    base = base_url.rstrip("/")
    bundle = _bundle("history", bundle_id, now)
    if page.total is not None:
        bundle["total"] = page.total
    links = [{"relation": "self", "url": self_link}]
    if page.next_cursor:
        links.append({"relation": "next", "url": with_cursor(self_link, page.next_cursor)})
    if page.prev_cursor:
        links.append({"relation": "previous", "url": with_cursor(self_link, page.prev_cursor)})
    bundle["link"] = links
    entries: list[dict[str, Any]] = []
    for stored in page.entries:
        request = _history_request(stored)
        entry: dict[str, Any] = {"fullUrl": _full_url(base, stored)}
        if not stored.deleted and stored.content is not None:
            entry["resource"] = _resource(stored, splice)
        entry["request"] = request
        entry["response"] = {
            "status": status_line(_history_status(stored, request["method"])),
            "etag": stored.etag,
            "lastModified": instant(stored.last_updated),
        }
        entries.append(entry)
    if entries:
        bundle["entry"] = entries
    return bundle


# ---------------------------------------------------------------- transaction / batch responses


def response_entry(
    status: int,
    *,
    stored: StoredResource | None = None,
    base_url: str = "",
    resource: dict[str, Any] | None = None,
    include_resource: bool = True,
    outcome: dict[str, Any] | None = None,
    location: bool | None = None,
    splice: bool = True,
) -> dict[str, Any]:
    """One transaction/batch response entry.

    With ``stored``: fullUrl, ``response.location`` (``Type/id/_history/v``, for 201 by default), etag and
    lastModified, and the resource unless ``include_resource`` is False (``Prefer: return=minimal``) or the version
    is a deletion. ``resource`` overrides the body (e.g. a searchset Bundle for a GET entry).
    """
    entry: dict[str, Any] = {}
    response: dict[str, Any] = {"status": status_line(status)}
    if stored is not None:
        base = base_url.rstrip("/")
        entry["fullUrl"] = _full_url(base, stored)
        if location if location is not None else status == 201:
            response["location"] = f"{stored.resource_type}/{stored.id}/_history/{stored.version_id}"
        response["etag"] = stored.etag
        response["lastModified"] = instant(stored.last_updated)
        if include_resource and resource is None and not stored.deleted and stored.content is not None:
            entry["resource"] = _resource(stored, splice)
    if resource is not None and include_resource:
        entry["resource"] = resource
    if outcome is not None:
        response["outcome"] = outcome
    entry["response"] = response
    return entry


def error_entry(error: FhirError) -> dict[str, Any]:
    """A batch entry for a failed request: its status and OperationOutcome."""
    return {"response": {"status": status_line(error.status), "outcome": error.to_outcome()}}


def transaction_response(
    entries: Sequence[dict[str, Any]], *, bundle_id: str | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """``entries`` in the order of the request's entries (R4: the response matches the request entry by entry)."""
    bundle = _bundle("transaction-response", bundle_id, now)
    if entries:
        bundle["entry"] = list(entries)
    return bundle


def batch_response(
    entries: Sequence[dict[str, Any]], *, bundle_id: str | None = None, now: datetime | None = None
) -> dict[str, Any]:
    bundle = _bundle("batch-response", bundle_id, now)
    if entries:
        bundle["entry"] = list(entries)
    return bundle
