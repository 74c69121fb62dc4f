"""The client registry's admin API (``/admin/clients``) over HTTP: create_app with INTERLACE_AUTH on, every store
backend, real Redis. Gate (401/403), each endpoint, secrets shown once and never again, a client registered here
getting tokens at /auth/token (client_secret_basic) until it is disabled, and the AuditEvents of every change."""

from __future__ import annotations

import base64
from typing import Any

import orjson
import pytest

from app.api.admin_clients import ADMIN_ACTION_SYSTEM

from .conftest import assertion, backend_form, new_rsa, public_jwks
from .enforcement_support import URLS, Secure, secure  # noqa: F401

ADMIN = "system/*.cruds"
FORM = {"Content-Type": "application/x-www-form-urlencoded"}


def admin_call(secure: Secure, token: str | None, method: str, path: str, body: Any = None) -> Any:  # noqa: F811
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = None
    if body is not None:
        data = orjson.dumps(body)
        headers["Content-Type"] = "application/json"
    return secure.client.open("/admin/clients" + path, method=method, data=data, headers=headers)


def outcome(response: Any, status: int, code: str) -> str:
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json(force=True)
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == code
    return body["issue"][0]["diagnostics"]


def secret_entry(client_id: str, scopes: str = "system/Observation.rs", **extra: Any) -> dict[str, Any]:
    return {"client_id": client_id, "scope": scopes, "token_endpoint_auth_method": "client_secret_basic", **extra}


def basic_token(secure: Secure, client_id: str, secret: str, scope: str = "system/Observation.rs") -> Any:  # noqa: F811
    credentials = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return secure.client.post(
        "/auth/token",
        data={"grant_type": "client_credentials", "scope": scope},
        headers={**FORM, "Authorization": f"Basic {credentials}"},
    )


@pytest.fixture
def admin(secure: Secure) -> str:  # noqa: F811
    return secure.token(ADMIN, name="admin")


ENDPOINTS = [
    ("GET", ""),
    ("GET", "/x"),
    ("POST", ""),
    ("PUT", "/x"),
    ("POST", "/$import"),
    ("POST", "/x/$disable"),
    ("POST", "/x/$enable"),
    ("POST", "/x/$rotate"),
]


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_every_admin_endpoint_answers_401_without_a_token(secure: Secure, method: str, path: str) -> None:  # noqa: F811
    response = admin_call(secure, None, method, path, {"client_id": "x"} if method != "GET" else None)
    outcome(response, 401, "login")
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="interlace"'


@pytest.mark.parametrize(("method", "path"), ENDPOINTS)
def test_patient_and_narrow_system_tokens_are_refused_403(secure: Secure, method: str, path: str) -> None:  # noqa: F811
    patient = secure.token("patient/*.cruds", patient="p1")
    narrow = secure.token("system/Observation.cruds")
    body = {"client_id": "x"} if method != "GET" else None
    for token in (patient, narrow):
        outcome(admin_call(secure, token, method, path, body), 403, "forbidden")


def test_a_read_only_system_token_may_list_but_not_change_clients(secure: Secure) -> None:  # noqa: F811
    reader = secure.token("system/*.rs")
    assert admin_call(secure, reader, "GET", "").status_code == 200
    text = outcome(admin_call(secure, reader, "POST", "", secret_entry("never")), 403, "forbidden")
    assert "system/*.cu" in text
    assert secure.oauth.store.get_client("never") is None


def test_post_registers_a_client_with_location_and_shows_its_secret_only_once(secure: Secure, admin: str) -> None:  # noqa: F811
    cid = f"partner-{secure.suffix}"
    response = admin_call(secure, admin, "POST", "", secret_entry(cid, name="Partner", rate_limit=120))
    assert response.status_code == 201, response.get_data(as_text=True)
    assert response.headers["Location"] == f"http://localhost/admin/clients/{cid}"
    assert response.headers["Cache-Control"] == "no-store"
    created = response.get_json()
    secret = created["client_secret"]
    assert len(secret) >= 32
    assert created["client_id"] == cid and created["name"] == "Partner" and created["rate_limit"] == 120
    assert created["has_secret"] is True

    one = admin_call(secure, admin, "GET", f"/{cid}")
    listing = admin_call(secure, admin, "GET", "")
    for response in (one, listing):
        assert response.status_code == 200
        text = response.get_data(as_text=True)
        assert secret not in text and 'client_secret"' not in text and "scrypt$" not in text
    assert one.get_json()["token_endpoint_auth_method"] == "client_secret_basic"
    assert cid in {c["client_id"] for c in listing.get_json()["clients"]}


def test_a_client_registered_through_the_api_gets_a_token_and_reads_with_it(secure: Secure, admin: str) -> None:  # noqa: F811
    cid = f"lab-{secure.suffix}"
    secret = admin_call(secure, admin, "POST", "", secret_entry(cid)).get_json()["client_secret"]
    response = basic_token(secure, cid, secret)
    assert response.status_code == 200, response.get_data(as_text=True)
    token = response.get_json()["access_token"]
    assert secure.call(token, "GET", "Observation/o1").status_code == 200
    assert secure.call(token, "GET", "Patient/p1").status_code == 403  # the registered scopes are the ceiling
    assert basic_token(secure, cid, "wrong-" + secret).status_code == 401


def test_disable_stops_new_tokens_and_enable_restores_them(secure: Secure, admin: str) -> None:  # noqa: F811
    cid = f"off-{secure.suffix}"
    secret = admin_call(secure, admin, "POST", "", secret_entry(cid)).get_json()["client_secret"]
    disabled = admin_call(secure, admin, "POST", f"/{cid}/$disable")
    assert disabled.status_code == 200 and disabled.get_json()["disabled"] is True
    refused = basic_token(secure, cid, secret)
    assert refused.status_code == 401
    assert refused.get_json()["error"] == "invalid_client"
    enabled = admin_call(secure, admin, "POST", f"/{cid}/$enable")
    assert enabled.status_code == 200 and enabled.get_json()["disabled"] is False
    assert basic_token(secure, cid, secret).status_code == 200


def test_rotate_issues_a_new_secret_once_and_the_old_one_stops_working(secure: Secure, admin: str) -> None:  # noqa: F811
    cid = f"rot-{secure.suffix}"
    old = admin_call(secure, admin, "POST", "", secret_entry(cid)).get_json()["client_secret"]
    rotated = admin_call(secure, admin, "POST", f"/{cid}/$rotate")
    assert rotated.status_code == 200, rotated.get_data(as_text=True)
    new = rotated.get_json()["client_secret"]
    assert new != old and rotated.get_json()["rotated_at"]
    assert basic_token(secure, cid, old).status_code == 401
    assert basic_token(secure, cid, new).status_code == 200
    assert new not in admin_call(secure, admin, "GET", f"/{cid}").get_data(as_text=True)
    # a secret client takes no keys: the body would be silently ignored otherwise
    text = outcome(admin_call(secure, admin, "POST", f"/{cid}/$rotate", {"jwks": {"keys": []}}), 400, "invalid")
    assert "client_secret_basic" in text


def test_rotate_replaces_the_public_keys_of_a_private_key_jwt_client(secure: Secure, admin: str) -> None:  # noqa: F811
    cid = f"jwt-{secure.suffix}"
    old_key, new_key = new_rsa(), new_rsa()
    entry = {"client_id": cid, "scope": "system/Observation.rs", "jwks": public_jwks(old_key)}
    created = admin_call(secure, admin, "POST", "", entry)
    assert created.status_code == 201 and "client_secret" not in created.get_json()
    outcome(admin_call(secure, admin, "POST", f"/{cid}/$rotate"), 400, "invalid")  # needs the new keys
    rotated = admin_call(secure, admin, "POST", f"/{cid}/$rotate", {"jwks": public_jwks(new_key)})
    assert rotated.status_code == 200, rotated.get_data(as_text=True)
    assert "client_secret" not in rotated.get_json()
    assert rotated.get_json()["jwks"]["keys"][0]["kid"] == new_key.kid

    def token_with(key: Any) -> Any:
        form = backend_form(assertion(key, cid, aud=URLS.token), scope="system/Observation.rs")
        return secure.client.post("/auth/token", data=form, headers=FORM)

    assert token_with(new_key).status_code == 200
    refused = token_with(old_key)
    assert refused.status_code in (400, 401) and refused.get_json()["error"] == "invalid_client", refused.get_json()


def test_put_creates_then_updates_keeping_the_secret_and_the_disabled_flag(secure: Secure, admin: str) -> None:  # noqa: F811
    cid = f"put-{secure.suffix}"
    created = admin_call(secure, admin, "PUT", f"/{cid}", secret_entry(cid))
    assert created.status_code == 201 and created.headers["Location"].endswith(f"/admin/clients/{cid}")
    secret = created.get_json()["client_secret"]
    admin_call(secure, admin, "POST", f"/{cid}/$disable")
    body = {"scope": "system/Observation.rs system/Patient.rs", "token_endpoint_auth_method": "client_secret_basic"}
    updated = admin_call(secure, admin, "PUT", f"/{cid}", body)  # client_id taken from the URL
    assert updated.status_code == 200, updated.get_data(as_text=True)
    view = updated.get_json()
    assert "client_secret" not in view
    assert view["scopes"] == "system/Observation.rs system/Patient.rs" and view["disabled"] is True
    admin_call(secure, admin, "POST", f"/{cid}/$enable")
    assert basic_token(secure, cid, secret, "system/Patient.rs").status_code == 200


def test_put_switching_to_client_secret_basic_issues_a_secret_once(secure: Secure, admin: str) -> None:  # noqa: F811
    cid = f"switch-{secure.suffix}"
    entry = {"client_id": cid, "scope": "system/Observation.rs", "jwks": public_jwks(new_rsa())}
    assert admin_call(secure, admin, "PUT", f"/{cid}", entry).status_code == 201
    switched = admin_call(secure, admin, "PUT", f"/{cid}", secret_entry(cid))
    assert switched.status_code == 200
    assert basic_token(secure, cid, switched.get_json()["client_secret"]).status_code == 200


def test_put_refuses_a_body_naming_another_client(secure: Secure, admin: str) -> None:  # noqa: F811
    text = outcome(admin_call(secure, admin, "PUT", "/one", secret_entry("other")), 400, "invalid")
    assert "other" in text and "one" in text
    assert secure.oauth.store.get_client("one") is None


def test_import_creates_and_updates_all_or_nothing(secure: Secure, admin: str) -> None:  # noqa: F811
    a, b = f"imp-a-{secure.suffix}", f"imp-b-{secure.suffix}"
    first = {"client_id": a, "scope": "system/Observation.rs", "jwks": public_jwks(new_rsa())}
    assert admin_call(secure, admin, "POST", "/$import", [first]).get_json()["results"] == [
        {"client_id": a, "result": "created"}
    ]
    second = {"client_id": b, "scope": "system/Patient.rs", "jwks_uri": "https://partner.example/jwks.json"}
    response = admin_call(secure, admin, "POST", "/$import", {"clients": [{**first, "name": "A"}, second]})
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.get_json()["results"] == [
        {"client_id": a, "result": "updated"},
        {"client_id": b, "result": "created"},
    ]
    assert secure.oauth.store.get_client(a).name == "A"

    c = f"imp-c-{secure.suffix}"
    bad = {"client_id": "bad", "scope": "system/Observation.rs"}  # private_key_jwt without keys
    text = outcome(admin_call(secure, admin, "POST", "/$import", [{**second, "client_id": c}, bad]), 400, "invalid")
    assert "jwks" in text
    assert secure.oauth.store.get_client(c) is None  # validated before anything is written
    outcome(admin_call(secure, admin, "POST", "/$import", [secret_entry(c)]), 400, "invalid")  # no secrets in bulk


def test_errors_are_operation_outcomes_with_the_right_status(secure: Secure, admin: str) -> None:  # noqa: F811
    cid = f"dup-{secure.suffix}"
    assert admin_call(secure, admin, "POST", "", secret_entry(cid)).status_code == 201
    assert "already registered" in outcome(admin_call(secure, admin, "POST", "", secret_entry(cid)), 409, "conflict")
    for method, path in (("GET", "/nobody"), ("POST", "/nobody/$disable"), ("POST", "/nobody/$rotate")):
        assert "nobody is not registered" in outcome(admin_call(secure, admin, method, path), 404, "not-found")
    text = outcome(admin_call(secure, admin, "POST", "", {**secret_entry("s"), "scope": "nonsense"}), 400, "invalid")
    assert "scope" in text
    text = outcome(admin_call(secure, admin, "POST", "", {**secret_entry("s"), "colour": "red"}), 400, "invalid")
    assert "unknown fields colour" in text
    not_json = secure.client.post(
        "/admin/clients", data=b"client_id=x", headers={"Authorization": f"Bearer {admin}", **FORM}
    )
    outcome(not_json, 400, "invalid")


def test_every_change_is_an_audit_event_naming_caller_and_client_without_secrets(secure: Secure, admin: str) -> None:  # noqa: F811
    cid = f"aud-{secure.suffix}"
    secret = admin_call(secure, admin, "POST", "", secret_entry(cid)).get_json()["client_secret"]
    rotated = admin_call(secure, admin, "POST", f"/{cid}/$rotate").get_json()["client_secret"]
    admin_call(secure, admin, "POST", f"/{cid}/$disable")
    admin_call(secure, admin, "POST", "", secret_entry(cid))  # 409: failed changes are recorded too
    reader = secure.token("system/*.rs", name="reader")
    admin_call(secure, reader, "POST", f"/{cid}/$enable")  # 403

    events = secure.audit_events()
    text = orjson.dumps(events).decode()
    assert secret not in text and rotated not in text
    admin_events = [e for e in events if any(c.get("system") == ADMIN_ACTION_SYSTEM for c in e.get("subtype", []))]
    seen = {
        (
            next(c["code"] for c in e["subtype"] if c["system"] == ADMIN_ACTION_SYSTEM),
            e["agent"][0]["altId"].split("-")[0],
            e["outcome"],
        )
        for e in admin_events
        if any(ent.get("name") == cid for ent in e.get("entity", []))
    }
    assert {
        ("client-create", "admin", "0"),
        ("client-rotate", "admin", "0"),
        ("client-disable", "admin", "0"),
        ("client-create", "admin", "8"),
        ("client-enable", "reader", "4"),
    } <= seen
    create = next(e for e in admin_events if e["action"] == "C" and e["outcome"] == "0")
    assert create["entity"][0]["what"]["identifier"] == {"system": "urn:interlace:oauth-client", "value": cid}
