"""One error form for the whole server: an OperationOutcome carried by a typed exception.

The HTTP status lives on the exception type (never guessed from text), the issue code follows
http://hl7.org/fhir/valueset-issue-type.html, and a stable Interlace code (``details.coding``) lets
clients and tests match errors without parsing diagnostics.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

ERROR_CODE_SYSTEM = "https://interlace.dev/fhir/CodeSystem/error-code"


@dataclass(frozen=True)
class Issue:
    """One OperationOutcome.issue."""

    code: str
    diagnostics: str
    severity: str = "error"
    expression: tuple[str, ...] = ()
    details_code: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code}
        if self.details_code:
            out["details"] = {
                "coding": [{"system": ERROR_CODE_SYSTEM, "code": self.details_code}],
                "text": self.diagnostics,
            }
        out["diagnostics"] = self.diagnostics
        if self.expression:
            out["expression"] = list(self.expression)
        return out


def operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def informational(text: str, code: str = "informational") -> dict[str, Any]:
    return operation_outcome([Issue(code=code, diagnostics=text, severity="information")])


class FhirError(Exception):
    """Root of every error that becomes an OperationOutcome. Subclasses fix the HTTP status."""

    status: int = 500
    issue_code: str = "exception"
    details_code: str = "internal-error"

    def __init__(
        self,
        diagnostics: str,
        *,
        expression: Sequence[str] = (),
        issue_code: str | None = None,
        details_code: str | None = None,
        issues: Sequence[Issue] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.diagnostics = diagnostics
        if issue_code:
            self.issue_code = issue_code
        if details_code:
            self.details_code = details_code
        self.headers: dict[str, str] = dict(headers or {})
        self.issues: list[Issue] = (
            list(issues)
            if issues
            else [
                Issue(
                    code=self.issue_code,
                    diagnostics=diagnostics,
                    expression=tuple(expression),
                    details_code=self.details_code,
                )
            ]
        )

    def to_outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


class BadRequest(FhirError):
    status = 400
    issue_code = "invalid"
    details_code = "bad-request"


class InvalidResource(FhirError):
    """The body is not a valid R4 resource (structure or datatype); issues carry element paths."""

    status = 400
    issue_code = "structure"
    details_code = "invalid-resource"


class UnprocessableEntity(FhirError):
    """Syntactically fine, but violates a business rule (e.g. id mismatch, unsupported type)."""

    status = 422
    issue_code = "processing"
    details_code = "unprocessable"


class Unauthorized(FhirError):
    status = 401
    issue_code = "login"
    details_code = "unauthorized"


class Forbidden(FhirError):
    status = 403
    issue_code = "forbidden"
    details_code = "forbidden"


class NotFound(FhirError):
    status = 404
    issue_code = "not-found"
    details_code = "not-found"


class MethodNotAllowed(FhirError):
    status = 405
    issue_code = "not-supported"
    details_code = "method-not-allowed"


class NotAcceptable(FhirError):
    status = 406
    issue_code = "not-supported"
    details_code = "not-acceptable"


class Conflict(FhirError):
    status = 409
    issue_code = "conflict"
    details_code = "conflict"


class Gone(FhirError):
    status = 410
    issue_code = "deleted"
    details_code = "gone"


class PreconditionFailed(FhirError):
    """If-Match mismatch, or a conditional interaction matching more than one resource."""

    status = 412
    issue_code = "conflict"
    details_code = "precondition-failed"


class UnsupportedMediaType(FhirError):
    status = 415
    issue_code = "not-supported"
    details_code = "unsupported-media-type"


class TooManyRequests(FhirError):
    status = 429
    issue_code = "throttled"
    details_code = "too-many-requests"


class NotImplementedInteraction(FhirError):
    status = 501
    issue_code = "not-supported"
    details_code = "not-implemented"


class StoreUnavailable(FhirError):
    status = 503
    issue_code = "transient"
    details_code = "store-unavailable"


@dataclass
class Warnings:
    """Non-fatal issues collected while serving a request (e.g. ignored search params under lenient handling)."""

    issues: list[Issue] = field(default_factory=list)

    def add(self, diagnostics: str, code: str = "not-supported", expression: Sequence[str] = ()) -> None:
        self.issues.append(Issue(code=code, diagnostics=diagnostics, severity="warning", expression=tuple(expression)))

    def outcome(self) -> dict[str, Any] | None:
        return operation_outcome(self.issues) if self.issues else None
