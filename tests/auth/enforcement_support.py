"""Fixtures for the scope-enforcement tests: ``create_app`` with INTERLACE_AUTH on over every store backend, the
real Redis, seeded resources of two patients, and tokens minted through the app's own ``OAuthService``."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from flask import Flask
from joserfc.jwk import RSAKey

from app import create_app
from app.adapters.sql_store import upgrade_database
from app.auth.clients import ClientRegistration
from app.config import Settings
from app.services.oauth import urls_from

from .conftest import REDIS_URL, public_jwks

BASE = "http://localhost/fhir"
URLS = urls_from("", BASE)
LAB = "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
VITALS = "http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"
FHIR_JSON = "application/fhir+json"


def observation(oid: str, subject: str, category: str = "laboratory", code: str = "1234-5", **extra: Any) -> dict:
    return {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": subject},
        **extra,
    }


# p1 is "our" patient, p2 another one. o4 is in p1's compartment only through performer (subject is p2): the
# classic leak through _include=Observation:subject or a chain on subject.
SEED: list[dict[str, Any]] = [
    {"resourceType": "Patient", "id": "p1", "name": [{"family": "Ours"}]},
    {"resourceType": "Patient", "id": "p2", "name": [{"family": "Other"}]},
    {"resourceType": "Practitioner", "id": "dr1", "name": [{"family": "Doc"}]},
    observation("o1", "Patient/p1", identifier=[{"system": "urn:obs", "value": "o1"}]),
    observation("o2", "Patient/p2", code="9999-9", identifier=[{"system": "urn:obs", "value": "o2"}]),
    observation("o3", "Patient/p1", category="vital-signs", performer=[{"reference": "Practitioner/dr1"}]),
    observation("o4", "Patient/p2", code="7777-7", performer=[{"reference": "Patient/p1"}]),
    {"resourceType": "Encounter", "id": "e2", "status": "finished", "class": {"code": "AMB"},
     "subject": {"reference": "Patient/p2"}},
]  # fmt: skip


class Secure:
    """The app, its services and helpers to mint tokens and call the API with them."""

    def __init__(self, app: Flask, rsa_key: RSAKey) -> None:
        self.app = app
        self.client = app.test_client()
        self.services = app.extensions["interlace"]
        self.auth = self.services.auth
        self.oauth = self.auth.oauth
        self.key = rsa_key
        self.suffix = uuid.uuid4().hex[:8]  # Redis (rate limits) is shared with other runs: unique client ids

    def register(self, name: str, scopes: str, **kw: Any) -> str:
        client_id = f"{name}-{self.suffix}"
        self.oauth.add_client(ClientRegistration(client_id=client_id, scopes=scopes, jwks=public_jwks(self.key), **kw))
        return client_id

    def token(self, scopes: str, *, patient: str | None = None, name: str | None = None, **kw: Any) -> str:
        client_id = self.register(name or f"app{uuid.uuid4().hex[:6]}", scopes, **kw)
        return self.oauth.mint_token(client_id, scopes, URLS, patient=patient)["access_token"]

    def call(self, token: str | None, method: str, path: str, body: Any = None, **headers: str) -> Any:
        hdrs = {"Accept": FHIR_JSON, **headers}
        if token is not None:
            hdrs["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else orjson.dumps(body)
            hdrs.setdefault("Content-Type", FHIR_JSON)
        return self.client.open(f"/fhir/{path.lstrip('/')}", method=method, data=data, headers=hdrs)

    def audit_events(self) -> list[dict[str, Any]]:
        self.auth.audit.flush()
        with self.services.store.session() as s:
            from app.fhir.search import parse_search

            query = parse_search(("AuditEvent",), {"_count": ["1000"]}, self.services.registry)
            return [m.as_dict() for m in s.search(query).matches]

    def exists(self, reference: str) -> bool:
        rtype, rid = reference.split("/")
        with self.services.store.session() as s:
            try:
                s.read(rtype, rid)
            except Exception:
                return False
        return True


def ids(response: Any, mode: str | None = None) -> set[str]:
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json(force=True)
    out = set()
    for e in body.get("entry", []):
        if mode is None or e.get("search", {}).get("mode") == mode:
            r = e["resource"]
            out.add(f"{r['resourceType']}/{r['id']}")
    return out


@pytest.fixture
def secure(database_url: str, tmp_path: Path, rsa_key: RSAKey) -> Iterator[Secure]:
    settings = Settings(
        data_dir=tmp_path / "data", database_url=database_url, auth=True, redis_url=REDIS_URL, base_url=BASE
    )
    upgrade_database(settings.effective_database_url)
    app = create_app(settings)
    app.config["TESTING"] = True
    with app.extensions["interlace"].store.session(write=True) as s:
        for resource in SEED:
            s.update(dict(resource))
    yield Secure(app, rsa_key)
    app.extensions["interlace.ingest"].messages.close()
    app.extensions["interlace"].close()


@pytest.fixture
def patient_token(secure: Secure) -> Callable[..., str]:
    def make(scopes: str = "patient/*.rs", patient: str = "p1", **kw: Any) -> str:
        return secure.token(scopes, patient=patient, **kw)

    return make
