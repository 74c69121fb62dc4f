"""The authorization server's storage on SQL (SQLAlchemy Core; SQLite and PostgreSQL), migration 0003.

Tables: ``auth_client`` (registrations; secrets only as scrypt hashes), ``auth_signing_key`` (server keys; the
private JWK in its stored, optionally encrypted, form -- never logged), ``auth_grant`` (authorization codes and
refresh tokens by SHA-256), ``auth_revoked_token`` (revoked access-token ids until they would have expired).
Every method is one short transaction. Returns the plain records of ``app.auth.clients``.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy import exc
from sqlalchemy.engine import Connection, Row

from app.adapters.sql_store import _make_engine, transaction
from app.auth.clients import ClientRegistration, GrantRecord, LocalUser, RegistrationError, SigningKeyRecord

__all__ = ["SqlAuthStore", "metadata"]


def _text(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


metadata = sa.MetaData()

auth_client = sa.Table(
    "auth_client",
    metadata,
    sa.Column("client_id", _text(128), primary_key=True),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("scopes", sa.Text(), nullable=False),
    sa.Column("grant_types", sa.String(255), nullable=False),
    sa.Column("auth_method", sa.String(32), nullable=False),
    sa.Column("jwks", sa.Text(), nullable=True),
    sa.Column("jwks_uri", sa.String(2048), nullable=True),
    sa.Column("secret_hash", sa.String(255), nullable=True),
    sa.Column("redirect_uris", sa.Text(), nullable=True),
    sa.Column("rate_limit", sa.Integer(), nullable=True),
    sa.Column("patient", _text(64), nullable=True),
    sa.Column("disabled", sa.Boolean(), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("rotated_at", sa.DateTime(), nullable=True),
)

auth_signing_key = sa.Table(
    "auth_signing_key",
    metadata,
    sa.Column("kid", _text(64), primary_key=True),
    sa.Column("alg", sa.String(16), nullable=False),
    sa.Column("public_jwk", sa.Text(), nullable=False),
    sa.Column("private_jwk", sa.Text(), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("retired_at", sa.DateTime(), nullable=True),
)

auth_grant = sa.Table(
    "auth_grant",
    metadata,
    sa.Column("token_hash", _text(64), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("client_id", _text(128), nullable=False),
    sa.Column("scope", sa.Text(), nullable=False),
    sa.Column("subject", sa.String(255), nullable=True),
    sa.Column("patient", _text(64), nullable=True),
    sa.Column("encounter", _text(64), nullable=True),
    sa.Column("fhir_user", sa.String(255), nullable=True),
    sa.Column("redirect_uri", sa.String(2048), nullable=True),
    sa.Column("code_challenge", sa.String(128), nullable=True),
    sa.Column("code_challenge_method", sa.String(16), nullable=True),
    sa.Column("nonce", sa.String(255), nullable=True),
    sa.Column("extra", sa.Text(), nullable=True),
    sa.Column("created_at", sa.DateTime(), nullable=False),
    sa.Column("expires_at", sa.DateTime(), nullable=False),
    sa.Column("used", sa.Boolean(), nullable=False),
    sa.Column("revoked", sa.Boolean(), nullable=False),
    sa.Index("ix_auth_grant_expires", "expires_at"),
    sa.Index("ix_auth_grant_client", "client_id"),
)

auth_revoked_token = sa.Table(
    "auth_revoked_token",
    metadata,
    sa.Column("jti", _text(128), primary_key=True),
    sa.Column("client_id", _text(128), nullable=True),
    sa.Column("expires_at", sa.DateTime(), nullable=False),
    sa.Column("revoked_at", sa.DateTime(), nullable=False),
    sa.Index("ix_auth_revoked_token_expires", "expires_at"),
)

auth_user = sa.Table(
    "auth_user",
    metadata,
    sa.Column("username", _text(128), primary_key=True),
    sa.Column("password_hash", sa.String(255), nullable=False),
    sa.Column("name", sa.String(255), nullable=False),
    sa.Column("fhir_user", sa.String(255), nullable=True),
    sa.Column("patients", sa.Text(), nullable=True),
    sa.Column("disabled", sa.Boolean(), nullable=False),
    sa.Column("created_at", sa.DateTime(), nullable=False),
)

_C, _K, _G, _R, _U = auth_client.c, auth_signing_key.c, auth_grant.c, auth_revoked_token.c, auth_user.c


def _naive(dt: datetime | None) -> datetime | None:
    if dt is None:
        return None
    return dt.astimezone(UTC).replace(tzinfo=None) if dt.tzinfo else dt


def _aware(dt: datetime | None) -> datetime | None:
    return None if dt is None else dt.replace(tzinfo=UTC)


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _client(row: Row[Any]) -> ClientRegistration:
    return _client_from_values(dict(row._mapping))


def _client_values(reg: ClientRegistration) -> dict[str, Any]:
    return {
        "client_id": reg.client_id,
        "name": reg.name,
        "scopes": reg.scopes,
        "grant_types": " ".join(reg.grant_types),
        "auth_method": reg.auth_method,
        "jwks": orjson.dumps(dict(reg.jwks)).decode() if reg.jwks is not None else None,
        "jwks_uri": reg.jwks_uri,
        "secret_hash": reg.secret_hash,
        "redirect_uris": orjson.dumps(list(reg.redirect_uris)).decode() if reg.redirect_uris else None,
        "rate_limit": reg.rate_limit,
        "patient": reg.patient,
        "disabled": reg.disabled,
        "created_at": _naive(reg.created_at) or _now(),
        "rotated_at": _naive(reg.rotated_at),
    }


def _key(row: Row[Any]) -> SigningKeyRecord:
    m = row._mapping
    return SigningKeyRecord(
        kid=m["kid"],
        alg=m["alg"],
        public_jwk=orjson.loads(m["public_jwk"]),
        private_jwk=m["private_jwk"],
        created_at=_aware(m["created_at"]),  # type: ignore[arg-type]
        retired_at=_aware(m["retired_at"]),
    )


def _grant(row: Row[Any]) -> GrantRecord:
    m = row._mapping
    return GrantRecord(
        token_hash=m["token_hash"],
        kind=m["kind"],
        client_id=m["client_id"],
        scope=m["scope"],
        subject=m["subject"],
        patient=m["patient"],
        encounter=m["encounter"],
        fhir_user=m["fhir_user"],
        redirect_uri=m["redirect_uri"],
        code_challenge=m["code_challenge"],
        code_challenge_method=m["code_challenge_method"],
        nonce=m["nonce"],
        extra=orjson.loads(m["extra"]) if m["extra"] else {},
        created_at=_aware(m["created_at"]),  # type: ignore[arg-type]
        expires_at=_aware(m["expires_at"]),  # type: ignore[arg-type]
        used=bool(m["used"]),
        revoked=bool(m["revoked"]),
    )


class SqlAuthStore:
    """Clients, signing keys, grants and revocations on the application database."""

    def __init__(self, url: str, *, pool_size: int = 5) -> None:
        self._engine = _make_engine(url, pool_size=pool_size)

    def close(self) -> None:
        self._engine.dispose()

    def _tx(self, write: bool = False) -> AbstractContextManager[Connection]:
        return transaction(self._engine, write=write, what="the database")

    # ------------------------------------------------------------------------------------------------- clients

    def add_client(self, reg: ClientRegistration) -> ClientRegistration:
        """Register a new client; RegistrationError when the client_id is taken."""
        values = _client_values(reg)
        try:
            with self._tx(write=True) as conn:
                conn.execute(auth_client.insert().values(**values))
        except exc.IntegrityError:
            raise RegistrationError(f"client {reg.client_id} is already registered") from None
        return _client_from_values(values)

    def upsert_client(self, reg: ClientRegistration) -> tuple[ClientRegistration, bool]:
        """Insert or replace a registration (declarative import); keeps created_at, the secret hash and the
        disabled flag of an existing one. Returns (stored, created)."""
        with self._tx(write=True) as conn:
            row = conn.execute(sa.select(auth_client).where(_C.client_id == reg.client_id)).first()
            values = _client_values(reg)
            if row is None:
                conn.execute(auth_client.insert().values(**values))
                return _client_from_values(values), True
            old = row._mapping
            values.update(
                created_at=old["created_at"],
                secret_hash=reg.secret_hash or old["secret_hash"],
                disabled=old["disabled"],
                rotated_at=old["rotated_at"],
            )
            conn.execute(auth_client.update().where(_C.client_id == reg.client_id).values(**values))
            return _client_from_values(values), False

    def get_client(self, client_id: str) -> ClientRegistration | None:
        with self._tx() as conn:
            row = conn.execute(sa.select(auth_client).where(_C.client_id == client_id)).first()
        return _client(row) if row is not None else None

    def list_clients(self) -> list[ClientRegistration]:
        with self._tx() as conn:
            rows = conn.execute(sa.select(auth_client).order_by(_C.client_id)).all()
        return [_client(r) for r in rows]

    def set_client_disabled(self, client_id: str, disabled: bool) -> bool:
        with self._tx(write=True) as conn:
            n = conn.execute(auth_client.update().where(_C.client_id == client_id).values(disabled=disabled))
        return n.rowcount > 0

    def rotate_client_credentials(
        self,
        client_id: str,
        *,
        secret_hash: str | None = None,
        jwks: dict[str, Any] | None = None,
        jwks_uri: str | None = None,
    ) -> bool:
        """Replace the secret hash and/or the public keys, stamping rotated_at."""
        values: dict[str, Any] = {"rotated_at": _now()}
        if secret_hash is not None:
            values["secret_hash"] = secret_hash
        if jwks is not None:
            values["jwks"] = orjson.dumps(jwks).decode()
        if jwks_uri is not None:
            values["jwks_uri"] = jwks_uri
        with self._tx(write=True) as conn:
            n = conn.execute(auth_client.update().where(_C.client_id == client_id).values(**values))
        return n.rowcount > 0

    # -------------------------------------------------------------------------------------------- signing keys

    def add_signing_key(self, key: SigningKeyRecord) -> None:
        with self._tx(write=True) as conn:
            conn.execute(
                auth_signing_key.insert().values(
                    kid=key.kid,
                    alg=key.alg,
                    public_jwk=orjson.dumps(dict(key.public_jwk)).decode(),
                    private_jwk=key.private_jwk,
                    created_at=_naive(key.created_at),
                    retired_at=_naive(key.retired_at),
                )
            )

    def signing_keys(self) -> list[SigningKeyRecord]:
        """Every stored key, newest first."""
        with self._tx() as conn:
            rows = conn.execute(sa.select(auth_signing_key).order_by(_K.created_at.desc(), _K.kid)).all()
        return [_key(r) for r in rows]

    def retire_signing_keys(self, except_kid: str, at: datetime) -> int:
        """Retire every active key but ``except_kid`` (they stay published for verification)."""
        with self._tx(write=True) as conn:
            n = conn.execute(
                auth_signing_key.update()
                .where(_K.retired_at.is_(None), _K.kid != except_kid)
                .values(retired_at=_naive(at))
            )
        return n.rowcount

    def delete_signing_keys_retired_before(self, cutoff: datetime) -> int:
        with self._tx(write=True) as conn:
            n = conn.execute(auth_signing_key.delete().where(_K.retired_at < _naive(cutoff)))
        return n.rowcount

    # ----------------------------------------------------------------------------------- codes, refresh tokens

    def save_grant(self, grant: GrantRecord) -> None:
        with self._tx(write=True) as conn:
            conn.execute(
                auth_grant.insert().values(
                    token_hash=grant.token_hash,
                    kind=grant.kind,
                    client_id=grant.client_id,
                    scope=grant.scope,
                    subject=grant.subject,
                    patient=grant.patient,
                    encounter=grant.encounter,
                    fhir_user=grant.fhir_user,
                    redirect_uri=grant.redirect_uri,
                    code_challenge=grant.code_challenge,
                    code_challenge_method=grant.code_challenge_method,
                    nonce=grant.nonce,
                    extra=orjson.dumps(dict(grant.extra)).decode() if grant.extra else None,
                    created_at=_naive(grant.created_at),
                    expires_at=_naive(grant.expires_at),
                    used=grant.used,
                    revoked=grant.revoked,
                )
            )

    def get_grant(self, token_hash: str) -> GrantRecord | None:
        with self._tx() as conn:
            row = conn.execute(sa.select(auth_grant).where(_G.token_hash == token_hash)).first()
        return _grant(row) if row is not None else None

    def consume_grant(self, token_hash: str) -> bool:
        """Mark a code used, atomically: True only for the one caller that flipped it (codes are single-use)."""
        with self._tx(write=True) as conn:
            n = conn.execute(
                auth_grant.update()
                .where(_G.token_hash == token_hash, _G.used.is_(False), _G.revoked.is_(False))
                .values(used=True)
            )
        return n.rowcount == 1

    def revoke_grant(self, token_hash: str) -> bool:
        with self._tx(write=True) as conn:
            n = conn.execute(auth_grant.update().where(_G.token_hash == token_hash).values(revoked=True))
        return n.rowcount > 0

    def revoke_client_grants(self, client_id: str) -> int:
        with self._tx(write=True) as conn:
            n = conn.execute(
                auth_grant.update().where(_G.client_id == client_id, _G.revoked.is_(False)).values(revoked=True)
            )
        return n.rowcount

    # -------------------------------------------------------------------------------------- revoked access jti

    def revoke_token_id(self, jti: str, client_id: str | None, expires_at: datetime) -> None:
        try:
            with self._tx(write=True) as conn:
                conn.execute(
                    auth_revoked_token.insert().values(
                        jti=jti, client_id=client_id, expires_at=_naive(expires_at), revoked_at=_now()
                    )
                )
        except exc.IntegrityError:
            pass  # revoked already: revocation is idempotent (RFC 7009)

    def is_token_revoked(self, jti: str) -> bool:
        with self._tx() as conn:
            return conn.execute(sa.select(_R.jti).where(_R.jti == jti)).first() is not None

    # -------------------------------------------------------------------------------------------- local users

    def add_user(self, user: LocalUser) -> None:
        try:
            with self._tx(write=True) as conn:
                conn.execute(
                    auth_user.insert().values(
                        username=user.username,
                        password_hash=user.password_hash,
                        name=user.name,
                        fhir_user=user.fhir_user,
                        patients=orjson.dumps(list(user.patients)).decode() if user.patients else None,
                        disabled=user.disabled,
                        created_at=_naive(user.created_at) or _now(),
                    )
                )
        except exc.IntegrityError:
            raise RegistrationError(f"user {user.username} exists already") from None

    def get_user(self, username: str) -> LocalUser | None:
        with self._tx() as conn:
            row = conn.execute(sa.select(auth_user).where(_U.username == username)).first()
        if row is None:
            return None
        m = row._mapping
        return LocalUser(
            username=m["username"],
            password_hash=m["password_hash"],
            name=m["name"],
            fhir_user=m["fhir_user"],
            patients=tuple(orjson.loads(m["patients"])) if m["patients"] else (),
            disabled=bool(m["disabled"]),
            created_at=_aware(m["created_at"]),
        )

    def revoked_token_ids(self, now: datetime) -> set[str]:
        """Every revoked jti whose token has not expired yet (a small set: entries live at most one lifetime)."""
        with self._tx() as conn:
            rows = conn.execute(sa.select(_R.jti).where(_R.expires_at >= _naive(now))).all()
        return {r[0] for r in rows}

    def purge_expired(self, now: datetime | None = None) -> int:
        """Forget revocations and grants past their expiry (the tokens are dead anyway)."""
        cutoff = _naive(now) or _now()
        with self._tx(write=True) as conn:
            a = conn.execute(auth_revoked_token.delete().where(_R.expires_at < cutoff)).rowcount
            b = conn.execute(auth_grant.delete().where(_G.expires_at < cutoff)).rowcount
        return a + b


def _client_from_values(values: dict[str, Any]) -> ClientRegistration:
    return ClientRegistration(
        client_id=values["client_id"],
        name=values["name"],
        scopes=values["scopes"],
        grant_types=tuple(values["grant_types"].split()),
        auth_method=values["auth_method"],
        jwks=orjson.loads(values["jwks"]) if values["jwks"] else None,
        jwks_uri=values["jwks_uri"],
        secret_hash=values["secret_hash"],
        redirect_uris=tuple(orjson.loads(values["redirect_uris"])) if values["redirect_uris"] else (),
        rate_limit=values["rate_limit"],
        patient=values["patient"],
        disabled=bool(values["disabled"]),
        created_at=_aware(values["created_at"]),
        rotated_at=_aware(values["rotated_at"]),
    )
