"""The client registry's admin API at ``/admin/clients`` (the HTTP twin of ``interlace clients ...``).

- ``GET /admin/clients``: every registration (public views: never a secret or its hash)
- ``GET /admin/clients/<id>``: one registration
- ``POST /admin/clients``: register one client (the import file's entry format); ``201`` + ``Location``. A
  ``client_secret_basic`` client gets a generated ``client_secret`` in this response only.
- ``PUT /admin/clients/<id>``: create (``201``) or update (``200``) declaratively; an update keeps the secret, the
  disabled flag and ``created_at``
- ``POST /admin/clients/$import``: a list of registrations (or ``{"clients": [...]}``), all validated first
- ``POST /admin/clients/<id>/$disable`` | ``$enable``: a disabled client gets no new tokens and its refresh tokens
  are revoked
- ``POST /admin/clients/<id>/$rotate``: a new secret (shown once) or, for ``private_key_jwt``, the new ``jwks`` /
  ``jwks_uri`` from the body

Gate (``app.api.admin_gate``): a valid bearer token whose grants cover every resource type at system level --
``system/*.rs`` (v1 ``system/*.read``) to read the registry, ``system/*.cu`` (v1 ``system/*.write``) to change it;
patient- and user-level tokens never pass. Every authenticated request (allowed or refused) becomes an AuditEvent
naming the caller and the client(s) it touched; request bodies and secrets are never recorded nor logged.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from typing import Any

import orjson
from flask import Response, g, request
from flask_smorest import Blueprint

from app.auth.clients import ClientRegistration, RegistrationError, hash_secret, registration_from_json
from app.fhir.errors import BadRequest, Conflict, NotFound
from app.services.audit import CLIENT_SYSTEM, audit_event
from app.services.oauth import OAuthService

__all__ = ["ADMIN_ACTION_SYSTEM", "PREFIX", "create_blueprint"]

PREFIX = "/admin/clients"
JSON = "application/json"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # responses may carry a secret
ADMIN_ACTION_SYSTEM = "urn:interlace:admin-action"
_INTERACTION_SYSTEM = "http://hl7.org/fhir/restful-interaction"
# admin action -> (restful-interaction code, AuditEvent.action)
_ACTIONS = {
    "list": ("search-type", "E"),
    "read": ("read", "R"),
    "create": ("create", "C"),
    "update": ("update", "U"),
    "import": ("operation", "E"),
    "disable": ("operation", "U"),
    "enable": ("operation", "U"),
    "rotate": ("operation", "U"),
}
_ROTATE_FIELDS = frozenset({"jwks", "jwks_uri"})


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status=status, headers={**NO_STORE, **(headers or {})}, content_type=JSON)


def _location(client_id: str) -> str:
    # client ids are limited to unreserved URL characters (app.auth.clients): no quoting needed
    return f"{request.root_url.rstrip('/')}{PREFIX}/{client_id}"


def _body(*, optional: bool = False) -> Any:
    """The request's JSON body (None when ``optional`` and there is none)."""
    if optional and not request.get_data(cache=True).strip():
        return None
    media = (request.mimetype or "").lower()
    if media not in (JSON, "application/fhir+json"):
        raise BadRequest(f"send the body as {JSON}")
    data = request.get_json(silent=True)
    if data is None:
        raise BadRequest("the body is not valid JSON")
    return data


@contextmanager
def _registry_errors() -> Iterator[None]:
    """RegistrationError -> 404 (unknown client), 409 (client_id taken) or 400 (anything else), message kept."""
    try:
        yield
    except RegistrationError as exc:
        text = str(exc)
        if text.endswith("is not registered"):
            raise NotFound(text) from None
        if text.endswith("is already registered"):
            raise Conflict(text) from None
        raise BadRequest(text) from None


def _with_secret(reg: ClientRegistration, secret: str | None) -> dict[str, Any]:
    view = reg.public_view()
    if secret is not None:
        view["client_secret"] = secret  # this response is the only place it ever appears
    return view


def _touch(action: str, *client_ids: str) -> None:
    """What the audit hook records for this request."""
    g.admin_action = action
    g.admin_clients = list(client_ids)


def create_blueprint(
    oauth: OAuthService,
    *,
    gate: Callable[[Blueprint, str], None] | None = None,
    audit: Any = None,
) -> Blueprint:
    """A fresh blueprint per app serving ``oauth``'s client registry. ``gate(blueprint, prefix)`` installs the token
    gate and the system-scope check (create_app passes its admin gate); ``audit`` is an ``AuditTrail``."""
    blp = Blueprint("admin_clients", __name__, url_prefix=PREFIX, description="Admin API of the OAuth client registry")
    if gate is not None:
        gate(blp, PREFIX)

    def existing(client_id: str) -> ClientRegistration:
        reg = oauth.store.get_client(client_id)
        if reg is None:
            raise NotFound(f"client {client_id} is not registered")
        return reg

    def list_clients() -> Response:
        """Every registered client (public views: no secret)."""
        _touch("list")
        return _json({"clients": [c.public_view() for c in oauth.list_clients()]})

    def read_client(client_id: str) -> Response:
        """One registered client (public view)."""
        _touch("read", client_id)
        return _json(existing(client_id).public_view())

    def create_client() -> Response:
        """Register one client; a client_secret_basic client's secret is in this response only."""
        data = _body()
        if not isinstance(data, dict):
            raise BadRequest("send one registration as a JSON object")
        if isinstance(data.get("client_id"), str):
            _touch("create", data["client_id"])
        with _registry_errors():
            reg = registration_from_json(data)
            stored, secret = oauth.add_client(reg)
        return _json(_with_secret(stored, secret), 201, {"Location": _location(stored.client_id)})

    def put_client(client_id: str) -> Response:
        """Create or update a client declaratively (an update keeps its secret and disabled flag)."""
        _touch("update", client_id)
        data = _body()
        if not isinstance(data, dict):
            raise BadRequest("send one registration as a JSON object")
        if data.setdefault("client_id", client_id) != client_id:
            raise BadRequest(f"the body's client_id {data['client_id']!r} is not the one in the URL ({client_id})")
        with _registry_errors():
            reg = registration_from_json(data)
            old = oauth.store.get_client(client_id)
            if old is None:
                g.admin_action = "create"
                stored, secret = oauth.add_client(reg)
                return _json(_with_secret(stored, secret), 201, {"Location": _location(client_id)})
            secret = None
            if reg.auth_method == "client_secret_basic" and not old.secret_hash:
                # switched to client_secret_basic: it needs a secret, issued once like on create
                secret = secrets.token_urlsafe(32)
                reg = replace(reg, secret_hash=hash_secret(secret))
            stored, _ = oauth.store.upsert_client(reg)
        return _json(_with_secret(stored, secret))

    def import_clients() -> Response:
        """Create or update many clients (a list, or {"clients": [...]}); none is written if one is invalid."""
        _touch("import")
        data = _body()
        if isinstance(data, dict) and isinstance(data.get("clients"), list):
            data = data["clients"]
        if not isinstance(data, list) or not all(isinstance(e, dict) for e in data):
            raise BadRequest('send a JSON list of registrations (or {"clients": [...]})')
        with _registry_errors():
            results = oauth.import_clients(data)
        _touch("import", *(client_id for client_id, _ in results))
        return _json({"results": [{"client_id": cid, "result": outcome} for cid, outcome in results]})

    def disable_client(client_id: str) -> Response:
        """No new tokens for this client; its refresh tokens are revoked."""
        _touch("disable", client_id)
        with _registry_errors():
            oauth.set_client_disabled(client_id, True)
        return _json(existing(client_id).public_view())

    def enable_client(client_id: str) -> Response:
        """Let a disabled client get tokens again."""
        _touch("enable", client_id)
        with _registry_errors():
            oauth.set_client_disabled(client_id, False)
        return _json(existing(client_id).public_view())

    def rotate_client(client_id: str) -> Response:
        """New credentials: a new secret (in this response only), or the body's new jwks / jwks_uri."""
        _touch("rotate", client_id)
        data = _body(optional=True) or {}
        if not isinstance(data, dict) or set(data) - _ROTATE_FIELDS:
            raise BadRequest('the body of $rotate is empty or {"jwks": {...}} and/or {"jwks_uri": "https://..."}')
        jwks, jwks_uri = data.get("jwks"), data.get("jwks_uri")
        if not isinstance(jwks, dict | None) or not isinstance(jwks_uri, str | None):
            raise BadRequest("jwks must be a JWK Set object and jwks_uri a string")
        reg = existing(client_id)
        if reg.auth_method == "client_secret_basic" and data:
            raise BadRequest(f"client {client_id} uses client_secret_basic: $rotate issues a new secret, send no body")
        with _registry_errors():
            secret = oauth.rotate_client(client_id, jwks=jwks, jwks_uri=jwks_uri)
        return _json(_with_secret(existing(client_id), secret))

    def record(response: Response) -> Response:
        """One AuditEvent per authenticated request: caller, action, client(s) touched, outcome (no body)."""
        auth = g.get("auth")
        if audit is None or auth is None:  # 401s are recorded by the token gate itself
            return response
        action = g.get("admin_action") or _action_of(request.method, request.path)
        interaction, action_code = _ACTIONS[action]
        reason = ""
        if response.status_code >= 400:
            try:
                reason = str(orjson.loads(response.get_data())["issue"][0].get("diagnostics", ""))
            except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
                reason = ""
        event = audit_event(
            client_id=auth.client_id,
            subject=auth.subject,
            fhir_user=auth.fhir_user,
            method=request.method,
            path="",
            query={},
            status=response.status_code,
            reason=reason,
        )
        event["subtype"] = [
            {"system": _INTERACTION_SYSTEM, "code": interaction},
            {"system": ADMIN_ACTION_SYSTEM, "code": f"client-{action}"},
        ]
        event["action"] = action_code
        touched = g.get("admin_clients") or ([request.view_args["client_id"]] if request.view_args else [])
        entities = [
            {"what": {"identifier": {"system": CLIENT_SYSTEM, "value": cid}}, "name": cid} for cid in touched if cid
        ]
        if entities:
            event["entity"] = entities
        else:
            event.pop("entity", None)
        audit.add(event)
        return response

    blp.after_request(record)

    for rule, endpoint, view, methods in (
        ("", "list", list_clients, ["GET"]),
        ("", "create", create_client, ["POST"]),
        ("/$import", "import", import_clients, ["POST"]),
        ("/<client_id>", "read", read_client, ["GET"]),
        ("/<client_id>", "put", put_client, ["PUT"]),
        ("/<client_id>/$disable", "disable", disable_client, ["POST"]),
        ("/<client_id>/$enable", "enable", enable_client, ["POST"]),
        ("/<client_id>/$rotate", "rotate", rotate_client, ["POST"]),
    ):
        blp.add_url_rule(rule, endpoint, view, methods=methods)
    return blp


def _action_of(method: str, path: str) -> str:
    """The admin action of a request refused before its view ran (e.g. 403 from the scope check)."""
    last = path.rstrip("/").rsplit("/", 1)[-1]
    if last.startswith("$") and last[1:] in _ACTIONS:
        return last[1:]
    if method in ("GET", "HEAD"):
        return "list" if path.rstrip("/") == PREFIX else "read"
    return "update" if method == "PUT" else "create"
