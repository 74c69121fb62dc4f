"""SMART on FHIR discovery and the OAuth 2.0 endpoints: the HTTP edge of ``app.services.oauth``.

- ``GET /.well-known/smart-configuration`` (and under ``/fhir``, where SMART clients look): discovery
- ``GET /auth/jwks``: the server's public signing keys (current and not-yet-expired retired ones)
- ``GET|POST /auth/authorize``: authorization code + PKCE (S256) with a minimal login, consent and patient picker
  page backed by the local user store (development and demos)
- ``POST /auth/token``: client_credentials (private_key_jwt, client_secret_basic), authorization_code, refresh_token
- ``POST /auth/introspect`` (RFC 7662), ``POST /auth/revoke`` (RFC 7009)
- ``install_bearer_gate``: the replacement for ``app.api.protect``'s closed gate -- validates the bearer token of
  every FHIR request (except the public paths) and leaves the caller's ``AuthContext`` in ``flask.g.auth``

OAuth errors are RFC 6749 JSON (``{"error", "error_description"}``), not OperationOutcomes: OAuth clients
expect them. Token responses carry ``Cache-Control: no-store``.
"""

from __future__ import annotations

import html
from typing import Any

import orjson
from flask import Blueprint as FlaskBlueprint
from flask import Response, g, request
from flask_smorest import Blueprint

from app.auth.context import AuthContext
from app.config import Settings
from app.fhir.errors import Unauthorized
from app.services.oauth import (
    ASSERTION_ALGS,
    AuthorizationPrompt,
    InvalidToken,
    LoginFailed,
    OAuthResponse,
    OAuthService,
    ServerUrls,
    TokenHttpRequest,
    urls_from,
)

FHIR_PREFIX = "/fhir"
FORM = "application/x-www-form-urlencoded"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}

CAPABILITIES = [
    "launch-ehr",
    "launch-standalone",
    "client-public",
    "client-confidential-asymmetric",
    "client-confidential-symmetric",
    "context-ehr-patient",
    "context-standalone-patient",
    "sso-openid-connect",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
]


def request_urls(settings: Settings) -> ServerUrls:
    """Issuer and FHIR base of this request: configured (INTERLACE_ISSUER, INTERLACE_BASE_URL) or, for
    development, from the request's own scheme and host."""
    fhir_base = settings.base_url.rstrip("/") or request.root_url.rstrip("/") + FHIR_PREFIX
    return urls_from(settings.issuer, fhir_base)


def _json(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status=status, headers=headers, content_type="application/json")


def _oauth_response(result: OAuthResponse) -> Response:
    headers = dict(NO_STORE)
    for name, value in result.headers:
        if name.lower() != "content-type":
            headers[name] = value
    return _json(result.body, result.status, headers)


def _http_request() -> TokenHttpRequest | Response:
    media = (request.content_type or "").split(";", 1)[0].strip().lower()
    if media != FORM:
        return _json({"error": "invalid_request", "error_description": f"send the parameters as {FORM}"}, 400, NO_STORE)
    form = request.form
    return TokenHttpRequest(
        method=request.method,
        url=request.base_url,
        form={k: form.getlist(k) for k in form},
        headers=dict(request.headers),
    )


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in - Interlace</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}}
label{{display:block;margin:.8rem 0 .2rem}}input[type=text],input[type=password]{{width:100%;padding:.4rem}}
.err{{color:#a00}}li{{font-family:monospace}}button{{margin:1rem .5rem 0 0;padding:.5rem 1rem}}</style></head>
<body><h1>Interlace sign-in</h1>
<p>This is the built-in development login. <strong>{client}</strong> asks for:</p><ul>{scopes}</ul>
{error}<form method="post" action="{action}">{hidden}
<label for="username">User name</label><input type="text" id="username" name="username" autocomplete="username">
<label for="password">Password</label><input type="password" id="password" name="password"
 autocomplete="current-password">{patient}
<button type="submit" name="decision" value="allow">Allow</button>
<button type="submit" name="decision" value="deny">Deny</button></form></body></html>
"""


def _login_page(prompt: AuthorizationPrompt, action: str, error: str | None = None, status: int = 200) -> Response:
    esc = html.escape
    hidden = "".join(
        f'<input type="hidden" name="{esc(k)}" value="{esc(v)}">' for k, v in sorted(prompt.params.items())
    )
    if prompt.launch_patient:
        patient = f"<p>Patient in context: <strong>{esc(prompt.launch_patient)}</strong></p>"
    elif prompt.needs_patient:
        patient = '<label for="patient">Patient id</label><input type="text" id="patient" name="patient">'
    else:
        patient = ""
    body = _PAGE.format(
        client=esc(prompt.client_name),
        scopes="".join(f"<li>{esc(s)}</li>" for s in prompt.scope.split()),
        error=f'<p class="err">{esc(error)}</p>' if error else "",
        action=esc(action),
        hidden=hidden,
        patient=patient,
    )
    # the page holds a password form: never cache it, never frame it (clickjacking)
    headers = {**NO_STORE, "X-Frame-Options": "DENY", "Content-Security-Policy": "frame-ancestors 'none'"}
    return Response(body, status=status, headers=headers, content_type="text/html; charset=utf-8")


def _authorize_request(values: Any) -> TokenHttpRequest:
    return TokenHttpRequest(
        method="GET",  # authlib validates the authorization request the same way for GET and POST
        url=request.base_url,
        form={k: values.getlist(k) for k in values if k in _AUTHORIZE_KEYS},
        headers={},
    )


_AUTHORIZE_KEYS = frozenset(
    {"response_type", "client_id", "redirect_uri", "scope", "state", "aud", "launch", "code_challenge",
     "code_challenge_method", "nonce"}
)  # fmt: skip


def _redirect_or_error(result: OAuthResponse) -> Response:
    location = dict(result.headers).get("Location")
    if location:
        return Response("", status=302, headers={"Location": location, **NO_STORE})
    return _oauth_response(result)


def smart_configuration(oauth: OAuthService, urls: ServerUrls) -> dict[str, Any]:
    """The SMART App Launch 2.x discovery document."""
    return {
        "issuer": urls.issuer,
        "jwks_uri": urls.jwks,
        "authorization_endpoint": urls.authorize,
        "token_endpoint": urls.token,
        "introspection_endpoint": urls.introspect,
        "revocation_endpoint": urls.revoke,
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic", "none"],
        "token_endpoint_auth_signing_alg_values_supported": list(oauth.config.assertion_algorithms or ASSERTION_ALGS),
        "scopes_supported": oauth.scopes_supported(),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": CAPABILITIES,
    }


def create_blueprint(oauth: OAuthService, settings: Settings) -> Blueprint:
    """A fresh blueprint (per app) serving discovery and the OAuth endpoints of ``oauth``."""
    blp = Blueprint("smart", __name__, description="SMART on FHIR discovery and OAuth 2.0 endpoints")

    def authorize() -> Response:
        urls = request_urls(settings)
        if request.method == "GET":
            prompt = oauth.authorization_prompt(_authorize_request(request.args), urls)
            if isinstance(prompt, OAuthResponse):
                return _redirect_or_error(prompt)
            return _login_page(prompt, urls.authorize)
        form = request.form
        http = _authorize_request(form)
        prompt = oauth.authorization_prompt(http, urls)
        if isinstance(prompt, OAuthResponse):
            return _redirect_or_error(prompt)
        result = oauth.authorize(
            http,
            urls,
            username=form.get("username", ""),
            password=form.get("password", ""),
            approved=form.get("decision") == "allow",
            patient=form.get("patient") or None,
        )
        if isinstance(result, LoginFailed):
            return _login_page(prompt, urls.authorize, result.message, status=400)
        return _redirect_or_error(result)

    def discovery() -> Response:
        return _json(smart_configuration(oauth, request_urls(settings)), headers={"Cache-Control": "max-age=300"})

    def jwks() -> Response:
        return _json(oauth.jwks(), headers={"Cache-Control": "max-age=60"})

    def token() -> Response:
        http = _http_request()
        if isinstance(http, Response):
            return http
        return _oauth_response(oauth.token_response(http, request_urls(settings)))

    def introspect() -> Response:
        http = _http_request()
        if isinstance(http, Response):
            return http
        return _oauth_response(oauth.introspection_response(http, request_urls(settings)))

    def revoke() -> Response:
        http = _http_request()
        if isinstance(http, Response):
            return http
        return _oauth_response(oauth.revocation_response(http, request_urls(settings)))

    for rule, endpoint, view, methods, doc in (
        ("/.well-known/smart-configuration", "discovery", discovery, ["GET"], "SMART configuration"),
        (FHIR_PREFIX + "/.well-known/smart-configuration", "fhir_discovery", discovery, ["GET"], "SMART configuration"),
        ("/auth/jwks", "jwks", jwks, ["GET"], "Public keys of the server's access tokens (JWK Set)"),
        ("/auth/authorize", "authorize", authorize, ["GET", "POST"], "Authorization endpoint (code + PKCE S256)"),
        ("/auth/token", "token", token, ["POST"], "Token endpoint (client_credentials)"),
        ("/auth/introspect", "introspect", introspect, ["POST"], "Token introspection (RFC 7662)"),
        ("/auth/revoke", "revoke", revoke, ["POST"], "Token revocation (RFC 7009)"),
    ):
        view.__doc__ = doc
        blp.add_url_rule(rule, endpoint, view, methods=methods)
    return blp


REALM = "interlace"
PUBLIC_FHIR_PATHS = frozenset({"metadata", ".well-known/smart-configuration"})


def bearer_token() -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (scheme case-insensitive), else None."""
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def current_auth() -> AuthContext | None:
    """The AuthContext the gate validated for this request (None on public paths or with auth off)."""
    auth = g.get("auth")
    return auth if isinstance(auth, AuthContext) else None


def install_bearer_gate(
    blueprint: FlaskBlueprint, oauth: OAuthService, settings: Settings, *, prefix: str = FHIR_PREFIX
) -> None:
    """Require a valid access token on every request to ``blueprint`` but the public paths: 401 with an
    OperationOutcome and ``WWW-Authenticate: Bearer ...`` when it is missing or invalid (RFC 6750 section 3: no
    error code when no token was sent). Scope checks (403) belong to the router, which reads ``g.auth``."""

    def authenticate() -> None:
        relative = request.path[len(prefix) :].strip("/") if request.path.startswith(prefix) else request.path
        if relative in PUBLIC_FHIR_PATHS:
            return
        token = bearer_token()
        if token is None:
            raise Unauthorized(
                "Authentication is required: send an OAuth 2.0 access token (Authorization: Bearer <token>); "
                "see /.well-known/smart-configuration",
                headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'},
            )
        g.auth = oauth.validate_access_token(token, request_urls(settings))

    blueprint.before_request(authenticate)


__all__ = [
    "InvalidToken",
    "bearer_token",
    "create_blueprint",
    "current_auth",
    "install_bearer_gate",
    "request_urls",
    "smart_configuration",
]
