"""Interlace: a FHIR-native interoperability facade server."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

    from app.config import Settings

API_VERSION = "0.1.0"
MAX_BODY_BYTES = 64 * 1024 * 1024  # a large transaction Bundle; werkzeug answers 413 beyond


class _Lazy:
    """Builds its object on first attribute access (for services that connect to something at construction)."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._target: Any = None
        self._lock = threading.Lock()

    @property
    def built(self) -> bool:
        return self._target is not None

    def __getattr__(self, name: str) -> Any:
        if self._target is None:
            with self._lock:
                if self._target is None:
                    self._target = self._factory()
        return getattr(self._target, name)


def create_app(settings: Settings | None = None, **overrides: Any) -> Flask:
    """The Flask application: FHIR API at ``/fhir``, OpenAPI at ``/openapi.json``, OperationOutcome errors.

    ``settings`` default to the environment (``app.config.load_settings``); ``overrides`` replace single fields
    (``create_app(auth=False, database_url=...)``). The built services are in ``app.extensions["interlace"]``.
    """
    # Imported here so that ``import app`` (e.g. by the CLI or the MLLP listener) stays cheap.
    from flask import Flask

    from app.api import erp, fhir_rest, hl7v2
    from app.api import errors as api_errors
    from app.api.admin_gate import require_system_scope
    from app.config import load_settings
    from app.wiring import build_events, build_ingest, build_services

    settings = settings if settings is not None else load_settings()
    if overrides:
        settings = settings.with_overrides(**overrides)
    app = Flask(__name__)
    app.config.update(
        API_TITLE="Interlace FHIR API",
        API_VERSION=API_VERSION,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
    )
    services = build_services(settings)
    app.extensions["interlace"] = services
    api = api_errors.FhirApi(app)
    gate = admin_gate = None
    if settings.auth:  # SMART on FHIR: bearer tokens, scopes enforced by the router, audit, rate limits
        from app.api import access_gate, admin_clients, smart
        from app.wiring import build_auth

        auth = services.auth = build_auth(settings, services)
        api.register_blueprint(smart.create_blueprint(auth.oauth, settings))

        def gate(blp: Any) -> None:
            access_gate.install(blp, auth.oauth, settings, limiter=auth.limiter, audit=auth.audit)

        def admin_gate(blp: Any, prefix: str) -> None:
            access_gate.install(blp, auth.oauth, settings, limiter=auth.limiter, audit=auth.audit, prefix=prefix)
            require_system_scope(blp, prefix)

        # the client registry's admin API: same gate as /hl7v2 and /erp, changes audited
        api.register_blueprint(admin_clients.create_blueprint(auth.oauth, gate=admin_gate, audit=auth.audit))

    api.register_blueprint(fhir_rest.create_blueprint(services.router, settings, gate=gate))
    ingest = build_ingest(settings, services)
    app.extensions["interlace.ingest"] = ingest
    api.register_blueprint(hl7v2.create_blueprint(ingest, settings, gate=admin_gate))
    # the event backbone connects to Redis: built on the first /erp request, not for every app
    events = _Lazy(lambda: build_events(settings, services))
    app.extensions["interlace.events"] = events
    api.register_blueprint(erp.create_blueprint(events, settings, gate=admin_gate))
    api_errors.register_error_handlers(app)
    return app
