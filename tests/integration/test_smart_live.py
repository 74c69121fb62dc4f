"""The real server process with INTERLACE_AUTH on, driven by real clients: authlib's OAuth2 client obtains a SMART
Backend Services token (private_key_jwt, RS384, a generated key pair, assertion exp <= 5 min), and SMART's
``fhirclient`` uses it against the FHIR API -- discovering the token endpoint from the CapabilityStatement."""

from __future__ import annotations

import time
import uuid

import pytest
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from fhirclient import client as fhir_client
from fhirclient.models.observation import Observation
from fhirclient.models.patient import Patient
from fhirclient.server import FHIRNotFoundException, FHIRPermissionDeniedException
from joserfc.jwk import RSAKey

from app.adapters.auth_store import SqlAuthStore
from app.auth.clients import ClientRegistration
from app.config import Settings

pytestmark = pytest.mark.slow


def _register(server, scopes: str, key: RSAKey, **kw) -> str:
    client_id = f"live-{uuid.uuid4().hex[:8]}"
    store = SqlAuthStore(Settings(data_dir=server.data_dir).effective_database_url)
    try:
        jwks = {"keys": [key.as_dict(private=False)]}
        store.add_client(ClientRegistration(client_id=client_id, scopes=scopes, jwks=jwks, **kw).validate())
    finally:
        store.close()
    return client_id


def _backend_token(server, client_id: str, key: RSAKey, scope: str) -> dict:
    token_url = server.root_url.rstrip("/") + "/auth/token"
    auth = PrivateKeyJWT(
        token_url, alg="RS384", headers={"kid": key.kid}, claims={"exp": int(time.time()) + 240}
    )  # authlib's default exp is now + 3600: SMART allows 5 minutes at most, and the server refuses more
    with OAuth2Session(client_id, key.as_dict(private=True), token_endpoint_auth_method=auth, scope=scope) as s:
        return s.fetch_token(token_url, grant_type="client_credentials")


def _fhirclient(server, client_id: str, access_token: str) -> fhir_client.FHIRClient:
    smart = fhir_client.FHIRClient(settings={"app_id": client_id, "api_base": server.url + "/"})
    smart.server.get_capability()  # reads rest.security: SMART oauth-uris -> an OAuth2 auth object
    assert smart.server.auth is not None and smart.server.auth.auth_type == "oauth2"
    smart.server.auth.access_token = access_token
    return smart


def test_backend_services_token_drives_fhirclient_and_scopes_hold(start_server) -> None:
    server = start_server(auth=True)
    key = RSAKey.generate_key(2048, private=True)
    key.ensure_kid()

    # without a token the server says 401 (fhirclient raises on it)
    anonymous = fhir_client.FHIRClient(settings={"app_id": "anon", "api_base": server.url + "/"})
    with pytest.raises(Exception, match="401|Unauthorized|unauthorized"):
        Patient.read("nope", anonymous.server)

    admin_id = _register(server, "system/*.cruds", key)
    token = _backend_token(server, admin_id, key, "system/*.cruds")
    assert token["token_type"].lower() == "bearer" and token["expires_in"] <= 300
    admin = _fhirclient(server, admin_id, token["access_token"])

    ours = Patient({"name": [{"family": "Ours"}]})
    ours_id = ours.create(admin.server)["id"]
    other = Patient({"name": [{"family": "Other"}]})
    other_id = other.create(admin.server)["id"]
    for pid in (ours_id, other_id):
        obs = Observation(
            {"status": "final", "code": {"text": "x"}, "subject": {"reference": f"Patient/{pid}"}}, strict=False
        )
        obs.create(admin.server)
    assert Patient.read(ours_id, admin.server).name[0].family == "Ours"

    # a client bound to one patient: every scope confined to that compartment
    bound_id = _register(server, "system/*.rs", key, patient=ours_id)
    bound_token = _backend_token(server, bound_id, key, "system/*.rs")
    assert bound_token.get("patient") == ours_id
    bound = _fhirclient(server, bound_id, bound_token["access_token"])
    assert Patient.read(ours_id, bound.server).id == ours_id
    with pytest.raises(FHIRNotFoundException):
        Patient.read(other_id, bound.server)
    found = list(Observation.where(struct={}).perform_resources_iter(bound.server))
    assert [o.subject.reference for o in found] == [f"Patient/{ours_id}"]
    with pytest.raises(FHIRPermissionDeniedException):  # .rs: no create
        Patient({"name": [{"family": "New"}]}).create(bound.server)


def test_audit_events_queued_in_a_worker_are_stored_when_the_server_stops(start_server) -> None:
    """The audit trail batches writes in the background; gunicorn's worker_exit hook flushes it on SIGTERM."""
    import requests
    import sqlalchemy as sa

    server = start_server(auth=True, env={"INTERLACE_AUDIT_FLUSH_MS": "600000"})  # only the exit hook writes
    key = RSAKey.generate_key(2048, private=True)
    key.ensure_kid()
    client_id = _register(server, "system/Patient.rs", key)
    token = _backend_token(server, client_id, key, "system/Patient.rs")["access_token"]
    marker = f"audit-{uuid.uuid4().hex[:8]}"
    r = requests.get(f"{server.url}/Patient/{marker}", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert r.status_code == 404
    assert server.stop() == 0  # the read's AuditEvent is still queued in the worker

    engine = sa.create_engine(Settings(data_dir=server.data_dir).effective_database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT content FROM resource WHERE resource_type = 'AuditEvent'")).fetchall()
    finally:
        engine.dispose()
    assert any(marker.encode() in bytes(row[0]) for row in rows)
