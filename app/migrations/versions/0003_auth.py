"""SMART on FHIR authorization server: clients, signing keys, codes/refresh tokens, revoked token ids, users.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01

A frozen copy of the tables in app/adapters/auth_store.py (tests/auth/test_auth_store.py checks that the two
agree). Secrets are stored hashed (scrypt), codes and refresh tokens by their SHA-256, private signing keys in
their stored (optionally encrypted) form.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _text(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "auth_client",
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
    op.create_table(
        "auth_signing_key",
        sa.Column("kid", _text(64), primary_key=True),
        sa.Column("alg", sa.String(16), nullable=False),
        sa.Column("public_jwk", sa.Text(), nullable=False),
        sa.Column("private_jwk", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("retired_at", sa.DateTime(), nullable=True),
    )
    op.create_table(
        "auth_grant",
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
    )
    op.create_index("ix_auth_grant_expires", "auth_grant", ["expires_at"])
    op.create_index("ix_auth_grant_client", "auth_grant", ["client_id"])
    op.create_table(
        "auth_revoked_token",
        sa.Column("jti", _text(128), primary_key=True),
        sa.Column("client_id", _text(128), nullable=True),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_auth_revoked_token_expires", "auth_revoked_token", ["expires_at"])
    op.create_table(
        "auth_user",
        sa.Column("username", _text(128), primary_key=True),
        sa.Column("password_hash", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("fhir_user", sa.String(255), nullable=True),
        sa.Column("patients", sa.Text(), nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("auth_user")
    op.drop_table("auth_revoked_token")
    op.drop_table("auth_grant")
    op.drop_table("auth_signing_key")
    op.drop_table("auth_client")
