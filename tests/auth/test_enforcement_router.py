"""Enforcement lives in the router, not the web edge: a ``FhirRequest`` carrying an ``AuthContext`` is checked the
same way whoever built it (HTTP, a batch entry, a future MLLP query); one without (INTERLACE_AUTH=off, HL7v2
ingest) is not subject to scopes. No Flask here."""

from __future__ import annotations

import orjson

from app.auth.context import AuthContext
from app.fhir.registry import default_registry
from app.services.rest import FhirRequest, FhirRouter

from .enforcement_support import SEED


def _router(store) -> FhirRouter:
    with store.session(write=True) as s:
        for resource in SEED:
            s.update(dict(resource))
    return FhirRouter(store, default_registry())


def _ctx(scope: str, patient: str | None = None) -> AuthContext:
    claims = {"client_id": "unit", "scope": scope, "exp": 2**31}
    if patient:
        claims["patient"] = patient
    return AuthContext.from_claims(claims)


def test_a_request_without_auth_context_is_not_subject_to_scopes(store) -> None:
    router = _router(store)
    assert router.handle(FhirRequest("GET", "Observation/o2")).status == 200


def test_the_router_confines_a_patient_context_without_any_web_framework(store) -> None:
    router = _router(store)
    ctx = _ctx("patient/*.rs", "p1")
    assert router.handle(FhirRequest("GET", "Observation/o2", auth=ctx)).status == 404
    assert router.handle(FhirRequest("GET", "Observation/o1", auth=ctx)).status == 200
    page = orjson.loads(orjson.dumps(router.handle(FhirRequest("GET", "Observation", auth=ctx)).body))
    assert {e["resource"]["id"] for e in page["entry"]} == {"o1", "o3", "o4"}
    assert router.handle(FhirRequest("DELETE", "Observation/o1", auth=ctx)).status == 403


def test_every_decision_reaches_the_audit_hook(store) -> None:
    router = _router(store)
    seen: list[tuple[str, int]] = []
    router.audit = lambda req, resp: seen.append((req.path, resp.status))
    ctx = _ctx("system/Observation.rs")
    router.handle(FhirRequest("GET", "Observation/o1", auth=ctx))
    router.handle(FhirRequest("GET", "Patient/p1", auth=ctx))
    router.handle(FhirRequest("GET", "Patient/p1"))  # no auth context: nothing to audit
    assert seen == [("Observation/o1", 200), ("Patient/p1", 403)]
