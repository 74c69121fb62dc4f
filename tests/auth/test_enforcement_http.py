"""Scope enforcement over HTTP (create_app with INTERLACE_AUTH on, every store backend): each interaction allowed
or refused by the granted scopes, the token-abuse negative list, 401/403/429 answers, audit events."""

from __future__ import annotations

import time
import uuid

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from .conftest import assertion, backend_form, hs256_jwt, new_rsa, unsigned_jwt
from .enforcement_support import BASE, URLS, Secure, ids, observation, secure  # noqa: F401

JSON_PATCH = {"Content-Type": "application/json-patch+json"}
PATCH = b'[{"op": "replace", "path": "/status", "value": "amended"}]'


def _outcome(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == code
    return body


# ------------------------------------------------------------------------------------------ per interaction

READ_ONLY = [
    ("GET", "Observation/o1", None, {}, 200),
    ("GET", "Observation/o1/_history/1", None, {}, 200),
    ("GET", "Observation/o1/_history", None, {}, 200),
    ("GET", "Observation?code=1234-5", None, {}, 200),
    ("GET", "Observation/_history", None, {}, 200),
    ("POST", "Observation", observation("n", "Patient/p1"), {}, 403),
    ("PUT", "Observation/o1", observation("o1", "Patient/p1"), {}, 403),
    ("PATCH", "Observation/o1", PATCH, JSON_PATCH, 403),
    ("DELETE", "Observation/o1", None, {}, 403),
    ("DELETE", "Observation?identifier=urn:obs|o1", None, {}, 403),
    ("GET", "Patient/p1", None, {}, 403),
    ("GET", "Patient", None, {}, 403),
    ("GET", "_history", None, {}, 403),
    ("GET", "?_type=Patient", None, {}, 403),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status"), READ_ONLY)
def test_a_read_search_scope_allows_reads_and_refuses_writes(
    secure: Secure,  # noqa: F811
    method: str,
    path: str,
    body,
    headers,
    status: int,
) -> None:
    tok = secure.token("system/Observation.rs")
    response = secure.call(tok, method, path, body, **headers)
    assert response.status_code == status, response.get_data(as_text=True)
    if status == 403:
        _outcome(response, 403, "forbidden")


WRITE_ONLY = [
    ("POST", "Observation", observation("n", "Patient/p1"), {}, 201),
    ("PUT", "Observation/o1", observation("o1", "Patient/p1"), {}, 200),
    ("DELETE", "Observation/o3", None, {}, 200),
    ("GET", "Observation/o1", None, {}, 403),
    ("GET", "Observation", None, {}, 403),
    ("PATCH", "Observation/o1", PATCH, JSON_PATCH, 200),
    # conditional interactions search first: they need "s" as well
    ("DELETE", "Observation?identifier=urn:obs|o1", None, {}, 403),
    ("PUT", "Observation?identifier=urn:obs|o1", observation("o1", "Patient/p1"), {}, 403),
]


@pytest.mark.parametrize(("method", "path", "body", "headers", "status"), WRITE_ONLY)
def test_a_v1_write_scope_allows_writes_and_refuses_reads_and_conditionals(
    secure: Secure,  # noqa: F811
    method: str,
    path: str,
    body,
    headers,
    status: int,
) -> None:
    tok = secure.token("system/Observation.write")
    response = secure.call(tok, method, path, body, **headers)
    assert response.status_code == status, response.get_data(as_text=True)


def test_conditional_create_needs_search_too(secure: Secure) -> None:  # noqa: F811
    tok = secure.token("system/Observation.c")
    response = secure.call(
        tok, "POST", "Observation", observation("n", "Patient/p1"), **{"If-None-Exist": "identifier=urn:obs|o1"}
    )
    _outcome(response, 403, "forbidden")
    both = secure.token("system/Observation.crs")
    response = secure.call(
        both, "POST", "Observation", observation("n", "Patient/p1"), **{"If-None-Exist": "identifier=urn:obs|o1"}
    )
    assert response.status_code == 200  # matched o1: nothing created


def test_every_batch_entry_is_checked(secure: Secure) -> None:  # noqa: F811
    tok = secure.token("system/Observation.rs")
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": "Observation/o1"}},
            {"request": {"method": "GET", "url": "Patient/p1"}},
            {"request": {"method": "POST", "url": "Observation"}, "resource": observation("x", "Patient/p1")},
        ],
    }
    body = secure.call(tok, "POST", "", bundle).get_json(force=True)
    assert [e["response"]["status"].split()[0] for e in body["entry"]] == ["200", "403", "403"]


def test_a_transaction_with_one_forbidden_entry_writes_nothing(secure: Secure) -> None:  # noqa: F811
    tok = secure.token("system/Observation.cruds")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"request": {"method": "PUT", "url": "Observation/t1"}, "resource": observation("t1", "Patient/p1")},
            {"request": {"method": "PUT", "url": "Patient/p9"}, "resource": {"resourceType": "Patient", "id": "p9"}},
        ],
    }
    _outcome(secure.call(tok, "POST", "", bundle), 403, "forbidden")
    assert not secure.exists("Observation/t1")


def test_metadata_is_public_and_advertises_smart(secure: Secure) -> None:  # noqa: F811
    response = secure.call(None, "GET", "metadata")
    assert response.status_code == 200
    security = response.get_json(force=True)["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris["token"].endswith("/auth/token")


def test_smart_configuration_is_served(secure: Secure) -> None:  # noqa: F811
    response = secure.client.get("/.well-known/smart-configuration")
    assert response.status_code == 200
    assert "S256" in response.get_json()["code_challenge_methods_supported"]


# ------------------------------------------------------------------------------------------ the negative list


def _claims(**over) -> dict:
    now = int(time.time())
    claims = {
        "iss": URLS.issuer,
        "aud": BASE,
        "sub": "nobody",
        "client_id": "nobody",
        "iat": now,
        "nbf": now,
        "exp": now + 120,
        "jti": uuid.uuid4().hex,
        "scope": "system/*.cruds",
    }
    claims.update(over)
    return claims


def _signed(secure: Secure, claims: dict, key=None) -> str:  # noqa: F811
    record, private = secure.oauth.keys.active()
    header = {"alg": record.alg, "typ": "at+jwt", "kid": record.kid}
    if key is not None:
        return jwt.encode(header | {"alg": "RS256"}, claims, key, algorithms=["RS256"])
    return jwt.encode(header, claims, private, algorithms=[record.alg])


def forged(secure: Secure, kind: str) -> str:  # noqa: F811
    record, _ = secure.oauth.keys.active()
    if kind == "alg-none":
        return unsigned_jwt({"alg": "none", "typ": "at+jwt", "kid": record.kid}, _claims())
    if kind == "hs256-with-public-key":
        public = secure.oauth.jwks()["keys"][0]
        pem = RSAKey.import_key(public).as_pem(private=False) if public["kty"] == "RSA" else str(public).encode()
        return hs256_jwt({"alg": "HS256", "typ": "at+jwt", "kid": record.kid}, _claims(), pem)
    if kind == "wrong-key":
        return _signed(secure, _claims(), new_rsa())
    if kind == "expired":
        return _signed(secure, _claims(exp=int(time.time()) - 600, iat=int(time.time()) - 900))
    if kind == "not-yet-valid":
        return _signed(secure, _claims(nbf=int(time.time()) + 600))
    if kind == "wrong-aud":
        return _signed(secure, _claims(aud="https://elsewhere.example/fhir"))
    if kind == "wrong-iss":
        return _signed(secure, _claims(iss="https://idp.evil.example"))
    if kind == "tampered":
        good = secure.token("system/Observation.rs")
        head, payload, sig = good.split(".")
        import base64
        import json

        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        claims["scope"] = "system/*.cruds"
        evil = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
        return f"{head}.{evil}.{sig}"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "alg-none",
        "hs256-with-public-key",
        "wrong-key",
        "expired",
        "not-yet-valid",
        "wrong-aud",
        "wrong-iss",
        "tampered",
    ],
)
def test_abused_tokens_are_401_invalid_token(secure: Secure, kind: str) -> None:  # noqa: F811
    response = secure.call(forged(secure, kind), "GET", "Observation/o1")
    _outcome(response, 401, "login")
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith('Bearer realm="interlace"')
    assert 'error="invalid_token"' in challenge


def test_no_token_is_401_with_a_bare_challenge(secure: Secure) -> None:  # noqa: F811
    response = secure.call(None, "GET", "Observation/o1")
    _outcome(response, 401, "login")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="interlace"'


def _token_request(secure: Secure, form: dict) -> object:  # noqa: F811
    return secure.client.post("/auth/token", data=form)


def test_a_replayed_client_assertion_is_refused(secure: Secure) -> None:  # noqa: F811
    cid = secure.register("replay", "system/Observation.rs")
    signed = assertion(secure.key, cid, aud=URLS.token)
    assert _token_request(secure, backend_form(signed, "system/Observation.rs")).status_code == 200
    again = _token_request(secure, backend_form(signed, "system/Observation.rs"))
    assert again.status_code in (400, 401)
    assert again.get_json()["error"] == "invalid_client"


@pytest.mark.parametrize("case", ["unknown", "disabled", "long-exp"])
def test_bad_clients_get_no_token(secure: Secure, case: str) -> None:  # noqa: F811
    cid = secure.register("bad", "system/Observation.rs")
    if case == "disabled":
        secure.oauth.set_client_disabled(cid)
    if case == "unknown":
        cid = "nobody-" + secure.suffix
    signed = assertion(secure.key, cid, aud=URLS.token, expires_in=3600 if case == "long-exp" else 240)
    response = _token_request(secure, backend_form(signed, "system/Observation.rs"))
    assert response.status_code in (400, 401)
    assert "access_token" not in response.get_json()


def test_scope_escalation_yields_only_the_registered_scopes(secure: Secure) -> None:  # noqa: F811
    cid = secure.register("narrow", "system/Observation.rs")
    signed = assertion(secure.key, cid, aud=URLS.token)
    response = _token_request(secure, backend_form(signed, "system/*.cruds system/Observation.rs"))
    assert response.status_code == 200, response.get_data(as_text=True)
    token = response.get_json()
    assert token["scope"] == "system/Observation.rs"
    assert secure.call(token["access_token"], "GET", "Observation/o1").status_code == 200
    _outcome(secure.call(token["access_token"], "DELETE", "Observation/o1"), 403, "forbidden")
    _outcome(secure.call(token["access_token"], "GET", "Patient/p1"), 403, "forbidden")


# ------------------------------------------------------------------------------------------ audit, rate limits


def test_every_decision_is_an_audit_event_searchable_by_an_admin(secure: Secure) -> None:  # noqa: F811
    reader = secure.token("system/Observation.rs", name="auditee")
    client_id = f"auditee-{secure.suffix}"
    assert secure.call(reader, "GET", "Observation/o1").status_code == 200
    assert secure.call(reader, "GET", "Patient/p1").status_code == 403
    assert secure.call(reader, "GET", "Observation?code=1234-5").status_code == 200
    assert secure.call(None, "GET", "Observation/o1").status_code == 401
    admin = secure.token("system/AuditEvent.rs")
    secure.auth.audit.flush()
    response = secure.call(admin, "GET", f"AuditEvent?altid={client_id}&_count=50")
    events = [e["resource"] for e in response.get_json(force=True)["entry"]]
    summary = sorted((e["subtype"][0]["code"], e["outcome"]) for e in events)
    assert summary == [("read", "0"), ("read", "4"), ("search-type", "0")]
    read = next(e for e in events if e["outcome"] == "0" and e["subtype"][0]["code"] == "read")
    assert read["entity"][0]["what"]["reference"] == "Observation/o1"
    assert read["agent"][0]["who"]["identifier"]["value"] == client_id
    refused = ids(secure.call(admin, "GET", "AuditEvent?outcome=4&_count=100"))
    assert len(refused) >= 2  # the 403 and the anonymous 401
    assert secure.call(reader, "GET", "AuditEvent").status_code == 403


def test_a_client_over_its_rate_limit_gets_429_with_retry_after(secure: Secure) -> None:  # noqa: F811
    tok = secure.token("system/Observation.rs", rate_limit=3)
    statuses = [secure.call(tok, "GET", "Observation/o1").status_code for _ in range(4)]
    assert statuses[:3] == [200, 200, 200]
    response = secure.call(tok, "GET", "Observation/o1")
    _outcome(response, 429, "throttled")
    assert int(response.headers["Retry-After"]) >= 1
    other = secure.token("system/Observation.rs", rate_limit=3)
    assert secure.call(other, "GET", "Observation/o1").status_code == 200  # buckets are per client


def test_grouped_reads_keep_every_access_searchable_by_entity(secure: Secure) -> None:  # noqa: F811
    reader = secure.token("system/Observation.rs")
    for oid in ("o1", "o3", "o4"):
        assert secure.call(reader, "GET", f"Observation/{oid}").status_code == 200
    admin = secure.token("system/*.rs")
    secure.auth.audit.flush()
    for oid in ("o1", "o3", "o4"):
        found = secure.call(admin, "GET", f"AuditEvent?entity=Observation/{oid}&subtype=read").get_json(force=True)
        assert found.get("total", len(found.get("entry", []))) >= 1, oid
    events = [
        e
        for e in secure.audit_events()
        if any(x.get("what", {}).get("reference") == "Observation/o3" for x in e.get("entity", []))
    ]
    assert events and {"start", "end"} <= set(events[0]["period"])
