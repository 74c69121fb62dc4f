"""The authentication gate in front of the FHIR API.

Until SMART on FHIR token validation lands, "auth on" means closed: every FHIR route except the
CapabilityStatement (which clients need to discover how to authenticate) answers 401. "Auth off" is for local
development only and is announced loudly once, at app creation.
"""

from __future__ import annotations

import logging

from flask import Blueprint, request

from app.config import Settings
from app.fhir.errors import Unauthorized

log = logging.getLogger("interlace.api.protect")

REALM = 'Bearer realm="interlace"'
OPEN_PATHS = frozenset({"metadata", ".well-known/smart-configuration"})


def install(blueprint: Blueprint, settings: Settings, *, prefix: str = "/fhir") -> None:
    """Guard every request to ``blueprint`` according to ``settings.auth``."""
    if not settings.auth:
        log.warning(
            "INTERLACE_AUTH=off: %s accepts requests WITHOUT authentication. "
            "Use this for local development only; never expose it to real patient data.",
            prefix,
        )
        return

    def require_authentication() -> None:
        relative = request.path[len(prefix) :].strip("/") if request.path.startswith(prefix) else request.path
        if relative in OPEN_PATHS:
            return
        raise Unauthorized(
            "Authentication is required: this server does not accept tokens yet (SMART on FHIR is not enabled). "
            "For local development, set INTERLACE_AUTH=off to open the FHIR API.",
            headers={"WWW-Authenticate": REALM},
        )

    blueprint.before_request(require_authentication)
