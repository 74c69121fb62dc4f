"""HL7v2 message store: every inbound delivery, raw bytes first, then its outcome.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

A frozen copy of the table in app/adapters/message_store.py (tests/ingest/test_message_store.py checks that the
two agree). ``dedupe_key`` (a hash of sending application + facility + control id) is unique on the first delivery
only; resends are stored too, with ``dedupe_key`` NULL and ``duplicate_of`` pointing at the first.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _text(length: int) -> sa.types.TypeEngine[str]:
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "hl7v2_message",
        sa.Column("id", _text(36), primary_key=True),
        sa.Column("received_at", sa.DateTime(), nullable=False),  # naive UTC
        sa.Column("peer", sa.String(255), nullable=False),
        sa.Column("sending_application", _text(255), nullable=False),
        sa.Column("sending_facility", _text(255), nullable=False),
        sa.Column("control_id", _text(255), nullable=False),
        sa.Column("message_code", _text(16), nullable=False),
        sa.Column("trigger_event", _text(16), nullable=False),
        sa.Column("version", sa.String(16), nullable=False),
        sa.Column("ack_mode", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("ack_code", sa.String(4), nullable=True),
        sa.Column("ack", sa.LargeBinary(), nullable=True),
        sa.Column("raw", sa.LargeBinary(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),  # OperationOutcome JSON
        sa.Column("resources", sa.Text(), nullable=True),  # JSON list of produced references
        sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("processed_at", sa.DateTime(), nullable=True),
        sa.Column("claimed_until", sa.DateTime(), nullable=True),  # processing lease (workers, crash recovery)
        sa.Column("dedupe_key", sa.String(64), nullable=True),
        sa.Column("duplicate_of", _text(36), nullable=True),
        sa.UniqueConstraint("dedupe_key", name="uq_hl7v2_message_dedupe"),
    )
    op.create_index("ix_hl7v2_message_received", "hl7v2_message", ["received_at", "id"])
    op.create_index("ix_hl7v2_message_status_received", "hl7v2_message", ["status", "received_at"])
    op.create_index("ix_hl7v2_message_type_received", "hl7v2_message", ["message_code", "trigger_event", "received_at"])
    op.create_index("ix_hl7v2_message_control_id", "hl7v2_message", ["control_id"])
    op.create_index(
        "ix_hl7v2_message_sender_control", "hl7v2_message", ["sending_application", "sending_facility", "control_id"]
    )


def downgrade() -> None:
    op.drop_table("hl7v2_message")
