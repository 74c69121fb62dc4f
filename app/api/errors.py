"""The one place where failures become HTTP responses: always an OperationOutcome as application/fhir+json.

- ``FhirError`` (any subclass): its own status, issues and headers.
- werkzeug ``HTTPException`` (404 for an unknown route, 405, 413 ...): an OperationOutcome with the same status.
- anything else: 500, logged with the route and the traceback but never the request body or the exception
  message (both may carry PHI).
"""

from __future__ import annotations

import logging
import traceback

import orjson
from flask import Flask, Response, request
from flask_smorest import Api
from werkzeug.exceptions import HTTPException

from app.fhir.errors import FhirError, Issue, operation_outcome

log = logging.getLogger("interlace.api")

FHIR_JSON = "application/fhir+json; charset=utf-8"

# werkzeug status -> (issue code, Interlace details code)
_HTTP_ISSUES: dict[int, tuple[str, str]] = {
    400: ("invalid", "bad-request"),
    401: ("login", "unauthorized"),
    403: ("forbidden", "forbidden"),
    404: ("not-found", "not-found"),
    405: ("not-supported", "method-not-allowed"),
    406: ("not-supported", "not-acceptable"),
    409: ("conflict", "conflict"),
    410: ("deleted", "gone"),
    412: ("conflict", "precondition-failed"),
    413: ("too-costly", "too-large"),
    415: ("not-supported", "unsupported-media-type"),
    429: ("throttled", "too-many-requests"),
}


def outcome_response(status: int, outcome: dict, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(outcome), status=status, headers=headers, content_type=FHIR_JSON)


def fhir_error_response(exc: FhirError) -> Response:
    return outcome_response(exc.status, exc.to_outcome(), exc.headers)


def http_exception_response(exc: HTTPException) -> Response:
    status = exc.code or 500
    code, details = _HTTP_ISSUES.get(status, ("exception", "http-error"))
    text = exc.description or exc.name
    headers = {k: v for k, v in exc.get_headers() if k.lower() in ("allow", "retry-after", "www-authenticate")}
    issue = Issue(code=code, diagnostics=f"{exc.name}: {text}", details_code=details)
    return outcome_response(status, operation_outcome([issue]), headers)


def unexpected_error_response(exc: BaseException) -> Response:
    # The message of an unexpected exception may quote request data (PHI): log frames and type only.
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("unhandled %s on %s %s\n%s", type(exc).__name__, request.method, request.path, frames.rstrip())
    issue = Issue(
        code="exception",
        diagnostics="An unexpected error occurred on the server; it has been logged",
        details_code="internal-error",
    )
    return outcome_response(500, operation_outcome([issue]))


class FhirApi(Api):
    """flask-smorest's Api with its one error hook answering OperationOutcomes instead of its JSON payload."""

    def handle_http_exception(self, error: HTTPException) -> Response:  # type: ignore[override]
        original = getattr(error, "original_exception", None)
        if original is not None and not isinstance(original, HTTPException):
            return unexpected_error_response(original)
        return http_exception_response(error)


def register_error_handlers(app: Flask) -> None:
    """FhirError and unexpected exceptions; werkzeug's HTTPExceptions go through ``FhirApi.handle_http_exception``."""
    app.register_error_handler(FhirError, fhir_error_response)
    app.register_error_handler(Exception, unexpected_error_response)
