"""The HTTP edge of the FHIR RESTful API: Flask request -> ``FhirRequest`` -> ``FhirRouter`` -> Flask response.

Everything FHIR happens in ``app.services.rest``; this module only does what needs HTTP: content negotiation
(``Accept``/``_format``: JSON only, else 406), the request ``Content-Type`` (else 415), ``_pretty``, the base URL,
and writing the router's status/headers/body back. Query parameters are handed over raw
(``request.args.to_dict(flat=False)``): flask-smorest query schemas cannot express repeated and modified FHIR
search parameters. The routes are spelled out (rather than one catch-all) so the OpenAPI document lists them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from flask import Response, g, request
from flask_smorest import Blueprint

from app.config import Settings
from app.fhir.errors import NotAcceptable, UnsupportedMediaType
from app.services.rest import FhirRequest, FhirResponse, FhirRouter

PREFIX = "/fhir"
FHIR_JSON = "application/fhir+json"
JSON_TYPES = frozenset({"application/fhir+json", "application/json", "application/json+fhir", "text/json"})
_FORMAT_JSON = JSON_TYPES | {"json"}
FORM = "application/x-www-form-urlencoded"
JSON_PATCH = "application/json-patch+json"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_COMMON_ACCEPT = {
    "application/fhir+json": FHIR_JSON,
    "application/json": "application/json",
    "*/*": FHIR_JSON,
    "application/fhir+json, application/json": FHIR_JSON,
    "application/json, */*": "application/json",
}


def _media_type(value: str | None) -> str:
    return (value or "").split(";", 1)[0].strip().lower()


def negotiate() -> str:
    """The response media type; NotAcceptable (406) when the client wants only something other than JSON."""
    fmt = request.args.get("_format")
    if fmt is not None:
        # an unencoded "+" in a query string arrives as a space
        wanted = _media_type(fmt).replace(" ", "+")
        if wanted in _FORMAT_JSON:
            return "application/json" if wanted == "application/json" else FHIR_JSON
        raise NotAcceptable(f"_format={fmt!r} is not supported: this server speaks JSON only (_format=json)")
    raw_accept = request.headers.get("Accept")
    if not raw_accept:
        return FHIR_JSON
    fast = _COMMON_ACCEPT.get(raw_accept)
    if fast is not None:  # skip parsing the usual exact values: read-by-id is the hot path
        return fast
    chosen = _best_json(raw_accept)
    if chosen is None:
        raise NotAcceptable(
            f"Accept {raw_accept!r} cannot be met: this server speaks FHIR R4 (fhirVersion=4.0) "
            "as application/fhir+json only"
        )
    return chosen


def _best_json(accept: str) -> str | None:
    """The JSON media type to answer with, or None. Parameters such as ``fhirVersion`` are honoured (only 4.0),
    never a reason to refuse (werkzeug's matcher refuses ``application/fhir+json; fhirVersion=4.0``)."""
    best: tuple[float, str] | None = None
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        media = media.lower()
        q = 1.0
        version_ok = True
        for param in params:
            name, _, value = param.partition("=")
            name = name.strip().lower()
            value = value.strip().strip('"')
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
            elif name == "fhirversion":
                version_ok = value in ("4.0", "4.0.1")
        if q <= 0 or not version_ok:
            continue
        if media in JSON_TYPES:
            answer = "application/json" if media in ("application/json", "text/json") else FHIR_JSON
        elif media in ("*/*", "application/*"):
            answer = FHIR_JSON
        else:
            continue
        if best is None or q > best[0]:
            best = (q, answer)
    return best[1] if best else None


def check_content_type(method: str, relative: str, body: bytes) -> None:
    """415 for a body in a media type the interaction does not take."""
    if method not in _BODY_METHODS or not body:
        return
    media = _media_type(request.headers.get("Content-Type"))
    if method == "PATCH":
        if media == JSON_PATCH:
            return
        raise UnsupportedMediaType(f"PATCH needs Content-Type {JSON_PATCH}; got {media or 'none'}")
    if media in JSON_TYPES:
        return
    if method == "POST" and media == FORM and (relative.endswith("_search") or relative.strip("/") == ""):
        return
    raise UnsupportedMediaType(
        f"Content-Type {media or 'none'} is not supported: send application/fhir+json (or application/json)"
    )


_BASE_CACHE: dict[tuple[str, str, str], str] = {}


def _request_base_url() -> str:
    """``scheme://host[/script_root]/fhir`` from the WSGI environ (cheaper than ``request.root_url``)."""
    env = request.environ
    key = (env.get("wsgi.url_scheme", "http"), request.host, env.get("SCRIPT_NAME", ""))
    base = _BASE_CACHE.get(key)
    if base is None:
        base = request.root_url.rstrip("/") + PREFIX
        if len(_BASE_CACHE) < 64:  # Host comes from the client: bound the cache
            _BASE_CACHE[key] = base
    return base


def write_response(result: FhirResponse, media_type: str, pretty: bool) -> Response:
    body = result.body
    if body is None:
        data = b""
    elif isinstance(body, bytes):
        data = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2) if pretty else body
    else:
        data = orjson.dumps(body)  # bundles may splice stored bytes in as orjson.Fragment
        if pretty:
            data = orjson.dumps(orjson.loads(data), option=orjson.OPT_INDENT_2)
    if body is None:
        response = Response(data, status=result.status, headers=result.headers)
        response.headers.pop("Content-Type", None)  # werkzeug's text/html default would be a lie
        return response
    return Response(data, status=result.status, headers=result.headers, content_type=f"{media_type}; charset=utf-8")


def create_blueprint(
    router: FhirRouter, settings: Settings, *, gate: Callable[[Blueprint], None] | None = None
) -> Blueprint:
    """A fresh blueprint per app (the auth gate is installed on it), serving ``router`` at ``/fhir``. ``gate``
    installs the token gate (``app.api.access_gate``); without it, ``app.api.protect``'s closed/open gate."""
    from app.api import protect

    blp = Blueprint("fhir", __name__, url_prefix=PREFIX, description="FHIR R4 RESTful API (application/fhir+json)")
    configured_base = settings.base_url.rstrip("/")

    def serve(**_: Any) -> Response:
        media_type = negotiate()
        path = request.path[len(PREFIX) :].lstrip("/")
        # HEAD is answered as GET: werkzeug drops the body of a HEAD response
        method = "GET" if request.method == "HEAD" else request.method
        body = request.get_data(cache=False) if method in _BODY_METHODS else b""
        check_content_type(method, path, body)
        query = request.args.to_dict(flat=False)
        pretty = query.get("_pretty", ["false"])[-1].lower() == "true"
        base_url = configured_base or _request_base_url()
        result = router.handle(
            FhirRequest(
                method=method,
                path=path,
                query=query,
                headers=request.headers,  # werkzeug's are case-insensitive already
                body=body,
                base_url=base_url,
                auth=g.get("auth"),  # the caller's AuthContext, left by the gate; None with INTERLACE_AUTH=off
            )
        )
        return write_response(result, media_type, pretty)

    def route(rule: str, endpoint: str, methods: list[str], doc: str) -> None:
        def view(**kwargs: Any) -> Response:
            return serve(**kwargs)

        view.__name__ = endpoint
        view.__doc__ = doc
        blp.add_url_rule(rule, endpoint, view, methods=methods, strict_slashes=False)

    route("/metadata", "capabilities", ["GET"], "CapabilityStatement (capabilities interaction)")
    route("/", "system", ["GET", "POST"], "System search (GET) or a batch/transaction Bundle (POST)")
    route("/_search", "system_search", ["POST"], "System search with a form body")
    route("/_history", "history_system", ["GET"], "History of every resource (_since, _at, _count)")
    route(
        "/<rtype>",
        "type",
        ["GET", "POST", "PUT", "DELETE", "PATCH"],
        "Search (GET), create or conditional create with If-None-Exist (POST), conditional update (PUT ?criteria), "
        "conditional delete (DELETE ?criteria), conditional patch (PATCH ?criteria)",
    )
    route("/<rtype>/_search", "search_type", ["GET", "POST"], "Search with the parameters in a form body")
    route("/<rtype>/_history", "history_type", ["GET"], "History of every resource of a type")
    route(
        "/<rtype>/<rid>",
        "instance",
        ["GET", "PUT", "DELETE", "PATCH"],
        "Read (GET; If-None-Match / If-Modified-Since), update or update-as-create (PUT; If-Match), "
        "delete (DELETE), JSON Patch (PATCH)",
    )
    route("/<rtype>/<rid>/_history", "history_instance", ["GET"], "History of one resource")
    route("/<rtype>/<rid>/_history/<vid>", "vread", ["GET"], "One version of a resource (vread)")
    route("/<path:rest>", "other", ["GET", "POST", "PUT", "DELETE", "PATCH"], "Anything else: 404/405/501")

    if gate is not None:
        gate(blp)
    else:
        protect.install(blp, settings, prefix=PREFIX)
    return blp
