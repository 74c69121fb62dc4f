"""The auth store on SQLite and PostgreSQL: migration 0003 matches the adapter's tables; clients, keys, grants and
revocations round-trip; secrets are only ever stored hashed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from app.adapters.auth_store import SqlAuthStore, metadata
from app.auth.clients import (
    ClientRegistration,
    GrantRecord,
    RegistrationError,
    SigningKeyRecord,
    hash_secret,
    registration_from_json,
    verify_secret,
)


def test_migration_creates_exactly_the_adapters_tables(auth_store: SqlAuthStore, database_url: str):
    engine = sa.create_engine(
        database_url.replace("postgresql://", "postgresql+psycopg://"), poolclass=sa.pool.NullPool
    )
    try:
        inspector = sa.inspect(engine)
        for table in metadata.sorted_tables:
            migrated = {c["name"]: c["nullable"] for c in inspector.get_columns(table.name)}
            declared = {c.name: c.nullable for c in table.columns}
            assert migrated == declared, table.name
            assert {i["name"] for i in inspector.get_indexes(table.name)} == {i.name for i in table.indexes}
    finally:
        engine.dispose()


def test_client_round_trips_and_client_ids_are_unique(auth_store: SqlAuthStore):
    reg = ClientRegistration(
        client_id="lab-sync",
        name="Lab sync",
        scopes="system/Observation.rs",
        jwks={"keys": [{"kty": "EC", "crv": "P-384", "x": "a", "y": "b"}]},
        rate_limit=600,
        patient="p1",
    )
    stored = auth_store.add_client(reg)
    fetched = auth_store.get_client("lab-sync")
    assert fetched == stored
    assert fetched.jwks == reg.jwks and fetched.rate_limit == 600 and fetched.patient == "p1"
    assert fetched.created_at is not None and fetched.created_at.tzinfo is not None
    with pytest.raises(RegistrationError):
        auth_store.add_client(reg)
    assert [c.client_id for c in auth_store.list_clients()] == ["lab-sync"]
    assert auth_store.get_client("nobody") is None


def test_upsert_keeps_creation_time_and_disabled_flag(auth_store: SqlAuthStore):
    reg = ClientRegistration(client_id="c1", scopes="system/*.rs", jwks_uri="https://example.org/jwks")
    first, created = auth_store.upsert_client(reg)
    assert created
    assert auth_store.set_client_disabled("c1", True)
    second, created = auth_store.upsert_client(
        ClientRegistration(client_id="c1", scopes="system/Patient.r", jwks_uri="https://example.org/jwks")
    )
    assert not created
    assert second.scopes == "system/Patient.r" and second.disabled and second.created_at == first.created_at


def test_rotation_replaces_the_secret_hash_and_stamps_rotated_at(auth_store: SqlAuthStore):
    auth_store.add_client(
        ClientRegistration(client_id="s1", auth_method="client_secret_basic", secret_hash=hash_secret("old"))
    )
    assert auth_store.rotate_client_credentials("s1", secret_hash=hash_secret("new"))
    reg = auth_store.get_client("s1")
    assert reg.rotated_at is not None
    assert verify_secret("new", reg.secret_hash) and not verify_secret("old", reg.secret_hash)
    assert not auth_store.rotate_client_credentials("missing", secret_hash="x")


def test_signing_keys_newest_first_and_retirement(auth_store: SqlAuthStore):
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    for i, kid in enumerate(("k1", "k2")):
        auth_store.add_signing_key(
            SigningKeyRecord(
                kid=kid,
                alg="RS256",
                public_jwk={"kty": "RSA", "kid": kid},
                private_jwk="plain:{}",
                created_at=t0 + timedelta(hours=i),
            )
        )
    assert [k.kid for k in auth_store.signing_keys()] == ["k2", "k1"]
    assert auth_store.retire_signing_keys("k2", t0 + timedelta(hours=2)) == 1
    keys = {k.kid: k for k in auth_store.signing_keys()}
    assert keys["k2"].active and not keys["k1"].active
    assert auth_store.delete_signing_keys_retired_before(t0 + timedelta(hours=3)) == 1
    assert [k.kid for k in auth_store.signing_keys()] == ["k2"]


def test_a_code_is_consumed_exactly_once(auth_store: SqlAuthStore):
    now = datetime.now(UTC)
    auth_store.save_grant(
        GrantRecord(
            token_hash="h" * 64,
            kind="code",
            client_id="c",
            scope="patient/*.rs",
            expires_at=now + timedelta(minutes=1),
            created_at=now,
            patient="p",
        )
    )
    assert auth_store.get_grant("h" * 64).patient == "p"
    assert auth_store.consume_grant("h" * 64)
    assert not auth_store.consume_grant("h" * 64)
    assert auth_store.get_grant("h" * 64).used


def test_revoked_token_ids_are_remembered_until_they_expire(auth_store: SqlAuthStore):
    now = datetime.now(UTC)
    auth_store.revoke_token_id("jti-1", "c", now + timedelta(minutes=5))
    auth_store.revoke_token_id("jti-1", "c", now + timedelta(minutes=5))  # idempotent
    auth_store.revoke_token_id("jti-old", "c", now - timedelta(minutes=5))
    assert auth_store.is_token_revoked("jti-1") and not auth_store.is_token_revoked("jti-2")
    assert auth_store.revoked_token_ids(now) == {"jti-1"}
    assert auth_store.purge_expired(now) == 1
    assert auth_store.is_token_revoked("jti-1") and not auth_store.is_token_revoked("jti-old")


def test_secrets_are_hashed_with_a_salt_and_verified_in_constant_time():
    a, b = hash_secret("s3cret"), hash_secret("s3cret")
    assert a != b and "s3cret" not in a
    assert verify_secret("s3cret", a) and not verify_secret("s3cret!", a)
    assert not verify_secret("s3cret", None) and not verify_secret("s3cret", "garbage")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"client_id": "x", "scopes": "system/*.rs"}, "public keys"),
        ({"client_id": "x", "jwks": {"keys": []}, "scopes": "system/*.sr"}, "order"),
        ({"client_id": "x", "jwks": {"keys": []}, "scopes": "system/*.rs", "colour": "red"}, "unknown fields"),
        ({"client_id": "bad id", "jwks": {"keys": []}}, "client_id"),
        ({"client_id": "x", "jwks": {"keys": []}, "grant_types": ["password"]}, "grant_types"),
        ({"client_id": "x", "jwks": {"keys": []}, "scopes": "email"}, "unknown scopes"),
    ],
)
def test_import_entries_are_validated_with_a_reason(entry, message):
    with pytest.raises(RegistrationError, match=message):
        registration_from_json(entry)
