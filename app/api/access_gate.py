"""The FHIR API's front door when INTERLACE_AUTH is on: bearer token -> ``AuthContext`` -> rate limit.

Each request to the FHIR blueprint (but the public paths: ``metadata`` and SMART discovery) must carry a valid
access token (``app.services.oauth.OAuthService.validate_access_token``): otherwise 401 with an OperationOutcome
and ``WWW-Authenticate: Bearer realm="interlace"`` (plus ``error="invalid_token"`` when a token was sent but is
bad). Then the client's token bucket is charged: 429 with ``Retry-After`` when empty. The context goes on
``flask.g.auth``; ``app.api.fhir_rest`` hands it to the router in ``FhirRequest.auth``, and the router enforces
the scopes (403) -- the edge never decides what a scope allows. Refusals here are audited like the router's.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, request

from app.api import smart
from app.config import Settings
from app.fhir.errors import FhirError, TooManyRequests, Unauthorized
from app.services.audit import audit_event
from app.services.oauth import OAuthService

__all__ = ["install"]


def install(
    blueprint: Blueprint,
    oauth: OAuthService,
    settings: Settings,
    *,
    limiter: Any = None,
    audit: Any = None,
    prefix: str = "/fhir",
) -> None:
    """Guard ``blueprint``: ``limiter`` is a ``ClientRateLimiter`` (None: no limits), ``audit`` an
    ``AuditTrail`` (None: refusals at the edge are not recorded)."""

    def refuse(exc: FhirError, client_id: str = "", subject: str = "") -> FhirError:
        if audit is not None:
            relative = request.path[len(prefix) :].lstrip("/")
            audit.add(
                audit_event(
                    client_id=client_id,
                    subject=subject,
                    fhir_user=None,
                    method=request.method,
                    path=relative,
                    query=request.args.to_dict(flat=False),
                    status=exc.status,
                    reason=exc.diagnostics,
                )
            )
        return exc

    urls_by_root: dict[str, Any] = {}  # ServerUrls per request root (from Host when no base URL is configured)

    def server_urls() -> Any:
        root = request.root_url
        urls = urls_by_root.get(root)
        if urls is None:
            urls = smart.request_urls(settings)
            if len(urls_by_root) < 64:  # Host comes from the client: bound the cache
                urls_by_root[root] = urls
        return urls

    def authenticate() -> None:
        relative = request.path[len(prefix) :].strip("/") if request.path.startswith(prefix) else request.path
        if relative in smart.PUBLIC_FHIR_PATHS:
            return
        token = smart.bearer_token()
        if token is None:
            raise refuse(
                Unauthorized(
                    "Authentication is required: send an OAuth 2.0 access token (Authorization: Bearer <token>); "
                    "see /.well-known/smart-configuration",
                    headers={"WWW-Authenticate": f'Bearer realm="{smart.REALM}"'},
                )
            )
        try:
            auth = oauth.validate_access_token(token, server_urls())
        except Unauthorized as exc:
            raise refuse(exc) from None
        if limiter is not None:
            try:
                limiter.check(auth.client_id)
            except TooManyRequests as exc:
                raise refuse(exc, auth.client_id, auth.subject) from None
        g.auth = auth

    blueprint.before_request(authenticate)
