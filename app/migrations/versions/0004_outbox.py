"""Event backbone: the transactional outbox and the per-resource projection state.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01

A frozen copy of the tables in app/adapters/outbox_sql.py (tests/events/test_outbox.py checks that the two agree).
``event_outbox`` rows are written in the same transaction as the resource change; ``published_at`` is set once the
relay has put the event on the Redis stream. ``event_projection`` says, per consumer and resource, whether the
projection (e.g. into Odoo) is pending, done, failed (retrying) or dead (dead-lettered), with the ERP ids.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _text(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "event_outbox",
        sa.Column("id", PK, primary_key=True, autoincrement=True),
        sa.Column("event_id", _text(36), nullable=False),
        sa.Column("resource_type", _text(64), nullable=False),
        sa.Column("resource_id", _text(64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("operation", sa.String(8), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("published_at", sa.DateTime(), nullable=True),
        sa.UniqueConstraint("event_id", name="uq_event_outbox_event_id"),
    )
    op.create_index("ix_event_outbox_created", "event_outbox", ["created_at"])
    op.create_index(
        "ix_event_outbox_unpublished",
        "event_outbox",
        ["id"],
        postgresql_where=sa.text("published_at IS NULL"),
        sqlite_where=sa.text("published_at IS NULL"),
    )
    op.create_table(
        "event_projection",
        sa.Column("consumer", _text(32), nullable=False),
        sa.Column("resource_type", _text(64), nullable=False),
        sa.Column("resource_id", _text(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("error_class", sa.String(200), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("erp_refs", sa.Text(), nullable=True),
        sa.Column("payment_state", sa.String(32), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "resource_type", "resource_id"),
    )
    op.create_index("ix_event_projection_status", "event_projection", ["consumer", "status", "updated_at"])


def downgrade() -> None:
    op.drop_table("event_projection")
    op.drop_table("event_outbox")
