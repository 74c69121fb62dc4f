"""The gate of the operator endpoints outside ``/fhir`` (``/hl7v2``, ``/erp``): a valid bearer token (the same
validation, rate limit and audit as the FHIR API) whose grants cover every resource type at system level.

Reading message stores and projection states needs ``system/*.rs`` (v1: ``system/*.read``); feeding messages,
reprocessing and replaying need ``system/*.cu`` (v1: ``system/*.write``), because they create and update
resources of any type. Patient- and user-level tokens never pass: these endpoints are not confined to a patient.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Blueprint, g, request

from app.auth.scopes import permitting_grants
from app.fhir.errors import Forbidden

Gate = Callable[[Blueprint, str], None]

_READ_METHODS = frozenset({"GET", "HEAD"})


def require_system_scope(blueprint: Blueprint, prefix: str) -> None:
    """After the token gate: refuse (403) a token without ``system/*`` read (GET) or write (POST) permission."""

    def check() -> None:
        auth = g.get("auth")
        if auth is None:  # INTERLACE_AUTH=off
            return
        letters = "rs" if request.method in _READ_METHODS else "cu"
        if not permitting_grants(auth.grants, "operation", "*", access=letters, contexts=("system",)):
            raise Forbidden(
                f"{request.method} {prefix} needs a system-level token for every resource type "
                f"(scope system/*.{letters}); the token grants: {auth.scope or '(no resource scopes)'}"
            )

    blueprint.before_request(check)
