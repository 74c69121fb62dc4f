"""One check shared by every adapter's tests: the migrations build exactly the tables that adapter queries."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from app.adapters.sql_store import MIGRATIONS_DIR, upgrade_database


def assert_migrations_build(database_url: str, metadata: sa.MetaData) -> None:
    """Upgrade ``database_url`` to head (twice: it must be idempotent) and compare the result with ``metadata``."""
    upgrade_database(database_url)
    upgrade_database(database_url)

    def ours(name: str | None, type_: str, parent: Any) -> bool:  # other adapters' tables are not ours to check
        return type_ != "table" or name in metadata.tables

    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": False, "include_name": ours})
            diff = compare_metadata(context, metadata)
            version = context.get_current_revision()
    finally:
        engine.dispose()
    assert diff == []
    assert version == ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
