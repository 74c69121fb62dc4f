"""SMART App Launch: authorization code + PKCE (S256 required), the development login/consent/patient picker page,
standalone and EHR launch, refresh tokens for offline_access, OpenID Connect id_tokens -- driven the way a browser
and authlib's OAuth2 client drive it."""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7636 import create_s256_code_challenge
from joserfc import jwt

from app.auth.clients import ClientRegistration
from app.auth.scopes import Interaction

REDIRECT = "https://app.example/callback"
SCOPE = "launch/patient openid fhirUser offline_access patient/Observation.rs"
VERIFIER = "v" * 20 + "-verifier-" + "x" * 30


@pytest.fixture
def app_client(http_oauth):
    _, oauth = http_oauth
    oauth.add_client(
        ClientRegistration(
            client_id="growth-chart",
            name="Growth Chart",
            auth_method="none",
            grant_types=("authorization_code", "refresh_token"),
            redirect_uris=(REDIRECT,),
            scopes="launch launch/patient openid fhirUser offline_access patient/*.rs user/Patient.r",
        )
    )
    oauth.add_user("alice", "correct horse", name="Dr Alice", fhir_user="Practitioner/7", patients=["p1", "p2"])
    return oauth


class _Form(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hidden: dict[str, str] = {}
        self.fields: set[str] = set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "input" and a.get("name"):
            self.fields.add(a["name"])
            if a.get("type") == "hidden":
                self.hidden[a["name"]] = a.get("value") or ""


def authorize_params(**overrides):
    params = {
        "response_type": "code",
        "client_id": "growth-chart",
        "redirect_uri": REDIRECT,
        "scope": SCOPE,
        "state": "st-123",
        "aud": "http://localhost/fhir",
        "code_challenge": create_s256_code_challenge(VERIFIER),
        "code_challenge_method": "S256",
        "nonce": "n-1",
    }
    params.update(overrides)
    return {k: v for k, v in params.items() if v is not None}


def sign_in(client, params, *, patient="p1", decision="allow", password="correct horse"):
    page = client.get("/auth/authorize", query_string=params)
    assert page.status_code == 200, page.get_data(as_text=True)
    form = _Form()
    form.feed(page.get_data(as_text=True))
    data = {**form.hidden, "username": "alice", "password": password, "decision": decision}
    if patient is not None:
        data["patient"] = patient
    return client.post("/auth/authorize", data=data)


def code_from(response) -> str:
    assert response.status_code == 302, response.get_data(as_text=True)
    query = parse_qs(urlsplit(response.headers["Location"]).query)
    assert query["state"] == ["st-123"]
    return query["code"][0]


def exchange(client, code, verifier=VERIFIER, redirect_uri=REDIRECT):
    return client.post(
        "/auth/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
              "client_id": "growth-chart", "code_verifier": verifier},
    )  # fmt: skip


def test_standalone_launch_with_patient_picker_issues_patient_confined_tokens(client, app_client):
    page = client.get("/auth/authorize", query_string=authorize_params())
    text = page.get_data(as_text=True)
    assert "Growth Chart" in text and 'name="patient"' in text and page.headers["X-Frame-Options"] == "DENY"
    response = exchange(client, code_from(sign_in(client, authorize_params())))
    body = response.get_json()
    assert response.status_code == 200, body
    assert body["patient"] == "p1" and body["refresh_token"] and body["id_token"]
    assert set(body["scope"].split()) == set(SCOPE.split())
    context = app_client.validate_access_token(body["access_token"], _urls())
    assert context.subject == "alice" and context.fhir_user == "http://localhost/fhir/Practitioner/7"
    (path,) = context.decide(Interaction.SEARCH_TYPE, "Observation").paths
    assert path.compartment is not None and path.compartment.patient_id == "p1"
    id_claims = jwt.decode(body["id_token"], app_client.keys.active()[1]).claims
    assert id_claims["aud"] == "growth-chart" and id_claims["nonce"] == "n-1"
    assert id_claims["fhirUser"] == "http://localhost/fhir/Practitioner/7"


def test_a_code_works_once(client, app_client):
    code = code_from(sign_in(client, authorize_params()))
    assert exchange(client, code).status_code == 200
    again = exchange(client, code)
    assert again.status_code == 400 and again.get_json()["error"] == "invalid_grant"


def test_wrong_code_verifier_is_invalid_grant(client, app_client):
    code = code_from(sign_in(client, authorize_params()))
    response = exchange(client, code, verifier="w" * 50)
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_grant"


def test_missing_code_verifier_is_refused(client, app_client):
    code = code_from(sign_in(client, authorize_params()))
    response = client.post(
        "/auth/token",
        data={"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "client_id": "growth-chart"},
    )
    assert response.status_code == 400 and response.get_json()["error"] == "invalid_request"


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        ({"code_challenge": None, "code_challenge_method": None}, "code_challenge is required"),
        ({"code_challenge_method": "plain"}, "S256"),
        ({"code_challenge_method": None}, "S256"),
        ({"state": None}, "state is required"),
        ({"aud": "https://other.example/fhir"}, "aud must be"),
        ({"scope": "system/*.rs"}, "none of the requested scopes"),
    ],
)
def test_bad_authorization_requests_are_sent_back_to_the_client(client, app_client, overrides, needle):
    response = client.get("/auth/authorize", query_string=authorize_params(**overrides))
    assert response.status_code == 302
    location = response.headers["Location"]
    assert location.startswith(REDIRECT)
    query = parse_qs(urlsplit(location).query)
    assert query["error"][0] in ("invalid_request", "invalid_scope")
    assert needle in query["error_description"][0]


def test_an_unregistered_redirect_uri_is_never_redirected_to(client, app_client):
    response = client.get("/auth/authorize", query_string=authorize_params(redirect_uri="https://evil.example/cb"))
    assert response.status_code == 400 and "Location" not in response.headers
    assert response.get_json()["error"] == "invalid_request"


def test_denying_consent_redirects_with_access_denied(client, app_client):
    response = sign_in(client, authorize_params(), decision="deny")
    assert response.status_code == 302
    assert parse_qs(urlsplit(response.headers["Location"]).query)["error"] == ["access_denied"]


def test_wrong_password_shows_the_page_again(client, app_client):
    response = sign_in(client, authorize_params(), password="wrong")
    assert response.status_code == 400 and "wrong password" in response.get_data(as_text=True)


def test_the_picker_only_offers_the_users_patients(client, app_client):
    response = sign_in(client, authorize_params(), patient="p9")
    assert response.status_code == 400 and "may not choose patient p9" in response.get_data(as_text=True)


def test_ehr_launch_carries_the_launch_context(client, app_client):
    launch = app_client.create_launch("p2", encounter="e5")
    params = authorize_params(scope="launch openid patient/*.rs", launch=launch)
    page = client.get("/auth/authorize", query_string=params)
    assert "Patient in context: <strong>p2</strong>" in page.get_data(as_text=True)
    body = exchange(client, code_from(sign_in(client, params, patient=None))).get_json()
    assert body["patient"] == "p2" and body["encounter"] == "e5" and "refresh_token" not in body


def test_refresh_tokens_rotate_and_a_reused_one_is_refused(client, app_client):
    first = exchange(client, code_from(sign_in(client, authorize_params()))).get_json()
    refresh = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"], "client_id": "growth-chart"}
    second = client.post("/auth/token", data=refresh)
    body = second.get_json()
    assert second.status_code == 200 and body["patient"] == "p1" and body["refresh_token"] != first["refresh_token"]
    narrowed = client.post(
        "/auth/token", data={**refresh, "refresh_token": body["refresh_token"], "scope": "patient/Observation.r"}
    )
    assert narrowed.status_code == 200 and narrowed.get_json()["scope"] == "patient/Observation.r"
    reused = client.post("/auth/token", data=refresh)
    assert reused.status_code == 400 and reused.get_json()["error"] == "invalid_grant"


def test_authlib_client_runs_the_whole_browser_flow_against_the_real_server(http_oauth, live_url):
    _, oauth = http_oauth
    oauth.add_client(
        ClientRegistration(client_id="web-app", auth_method="none", grant_types=("authorization_code",),
                           redirect_uris=(REDIRECT,), scopes="launch/patient patient/*.rs openid fhirUser")
    )  # fmt: skip
    oauth.add_user("bob", "pw-bob", fhir_user="Patient/p3")
    verifier = "q" * 64
    with OAuth2Session("web-app", redirect_uri=REDIRECT, scope="launch/patient patient/*.rs",
                       code_challenge_method="S256") as session, requests.Session() as browser:  # fmt: skip
        url, state = session.create_authorization_url(live_url + "/auth/authorize", code_verifier=verifier,
                                                      aud=live_url + "/fhir")  # fmt: skip
        page = browser.get(url)
        form = _Form()
        form.feed(page.text)
        assert "patient" in form.fields
        answer = browser.post(
            live_url + "/auth/authorize",
            data={**form.hidden, "username": "bob", "password": "pw-bob", "patient": "p3", "decision": "allow"},
            allow_redirects=False,
        )
        assert answer.status_code == 302
        token = session.fetch_token(live_url + "/auth/token", authorization_response=answer.headers["Location"],
                                    code_verifier=verifier, state=state)  # fmt: skip
    assert token["patient"] == "p3" and re.match(r"^[\w-]+\.[\w-]+\.[\w-]+$", token["access_token"])


def _urls():
    from app.services.oauth import urls_from

    return urls_from("", "http://localhost/fhir")
