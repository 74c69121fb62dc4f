"""Initial schema: current resources, history, one search-index table per parameter type.

Revision ID: 0001
Revises:
Create Date: 2026-12-01

A frozen copy of the tables in app/adapters/sql_store.py (tests/adapters/test_sql_store.py checks that the two
agree). The event outbox comes in a later revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

PK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
NUMBER = sa.Numeric().with_variant(sa.Float(), "sqlite")
MAX_INDEX_CHARS = 255


def _text(length: int) -> sa.types.TypeEngine[str]:
    # code-point order on PostgreSQL, like SQLite's BINARY collation
    return sa.String(length).with_variant(sa.String(length, collation="C"), "postgresql")


def _index_table(name: str, columns: list[sa.Column], indexes: list[tuple[str, ...]]) -> None:
    op.create_table(
        name,
        sa.Column("resource_pk", PK, sa.ForeignKey("resource.pk", ondelete="CASCADE"), nullable=False),
        sa.Column("resource_type", _text(64), nullable=False),
        sa.Column("param", _text(64), nullable=False),
        *columns,
    )
    op.create_index(f"ix_{name}_resource", name, ["resource_pk", "param"])
    for cols in indexes:
        suffix = "_".join(c for c in cols if c not in ("resource_type", "param"))
        op.create_index(f"ix_{name}_{suffix}", name, list(cols))


def upgrade() -> None:
    op.create_table(
        "resource",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("resource_type", _text(64), nullable=False),
        sa.Column("id", _text(64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.DateTime(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.UniqueConstraint("resource_type", "id", name="uq_resource_type_id"),
    )
    op.create_index("ix_resource_type_updated", "resource", ["resource_type", "last_updated"])
    op.create_index("ix_resource_type_pk", "resource", ["resource_type", "pk"])

    op.create_table(
        "resource_history",
        sa.Column("pk", PK, primary_key=True, autoincrement=True),
        sa.Column("resource_type", _text(64), nullable=False),
        sa.Column("id", _text(64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("last_updated", sa.DateTime(), nullable=False),
        sa.Column("deleted", sa.Boolean(), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.UniqueConstraint("resource_type", "id", "version_id", name="uq_history_type_id_version"),
    )
    op.create_index("ix_history_updated", "resource_history", ["last_updated"])
    op.create_index("ix_history_type_updated", "resource_history", ["resource_type", "last_updated"])

    _index_table(
        "idx_string",
        [
            sa.Column("norm", _text(MAX_INDEX_CHARS), nullable=False),
            sa.Column("exact", _text(MAX_INDEX_CHARS), nullable=False),
        ],
        [("resource_type", "param", "norm")],
    )
    _index_table(
        "idx_token",
        [
            sa.Column("system", _text(MAX_INDEX_CHARS), nullable=True),
            sa.Column("code", _text(MAX_INDEX_CHARS), nullable=True),
            sa.Column("text", _text(MAX_INDEX_CHARS), nullable=True),
        ],
        [("resource_type", "param", "code", "system"), ("resource_type", "param", "text")],
    )
    _index_table(
        "idx_reference",
        [
            sa.Column("target_type", _text(64), nullable=True),
            sa.Column("target_id", _text(64), nullable=True),
            sa.Column("url", _text(MAX_INDEX_CHARS), nullable=True),
            sa.Column("identifier_system", _text(MAX_INDEX_CHARS), nullable=True),
            sa.Column("identifier_value", _text(MAX_INDEX_CHARS), nullable=True),
        ],
        [("target_id", "target_type", "param"), ("url",), ("identifier_value",)],
    )
    _index_table(
        "idx_date",
        [sa.Column("low", sa.DateTime(), nullable=True), sa.Column("high", sa.DateTime(), nullable=True)],
        [("resource_type", "param", "low"), ("resource_type", "param", "high")],
    )
    for name, extra in (
        ("idx_number", []),
        (
            "idx_quantity",
            [
                sa.Column("system", _text(MAX_INDEX_CHARS), nullable=True),
                sa.Column("code", _text(MAX_INDEX_CHARS), nullable=True),
                sa.Column("unit", _text(MAX_INDEX_CHARS), nullable=True),
            ],
        ),
    ):
        _index_table(
            name,
            [
                sa.Column("value", NUMBER, nullable=False),
                sa.Column("low", NUMBER, nullable=False),
                sa.Column("high", NUMBER, nullable=False),
                *extra,
            ],
            [("resource_type", "param", "value")],
        )
    _index_table(
        "idx_uri", [sa.Column("value", _text(MAX_INDEX_CHARS), nullable=False)], [("resource_type", "param", "value")]
    )


def downgrade() -> None:
    for name in ("idx_uri", "idx_quantity", "idx_number", "idx_date", "idx_reference", "idx_token", "idx_string"):
        op.drop_table(name)
    op.drop_table("resource_history")
    op.drop_table("resource")
