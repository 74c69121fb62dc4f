"""Shared fixtures: ``database_url`` (every store backend) and ``store`` (a migrated, empty SqlStore on it).

``database_url`` runs a test on SQLite (a file in tmp_path) and on PostgreSQL (marked ``postgres``: a fresh,
uniquely named schema on INTERLACE_TEST_POSTGRES_URL, dropped afterwards). Deselect PostgreSQL with
``-m "not postgres"``; when it is selected but unreachable the test fails and says how to start it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import sqlalchemy as sa

if TYPE_CHECKING:
    from app.adapters.sql_store import SqlStore

DEFAULT_TEST_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
POSTGRES_HELP = (
    "PostgreSQL is not reachable at {url}. Start one with\n"
    "  docker run -d --name interlace-pg -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust -e POSTGRES_DB=test "
    "postgres:16\n"
    "or point INTERLACE_TEST_POSTGRES_URL at a server where you may create schemas, "
    "or deselect these tests with -m 'not postgres'."
)


def _postgres_base_url() -> sa.URL:
    url = sa.make_url(os.environ.get("INTERLACE_TEST_POSTGRES_URL", DEFAULT_TEST_POSTGRES_URL))
    if url.drivername in ("postgres", "postgresql"):
        url = url.set(drivername="postgresql+psycopg")
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A URL to an empty database (not yet migrated) on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'interlace.db'}"
        return
    base = _postgres_base_url()
    schema = f"interlace_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(base, poolclass=sa.pool.NullPool)
    try:
        with admin.begin() as conn:
            conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
        reachable = True
    except sa.exc.OperationalError:
        reachable = False
    if not reachable:
        admin.dispose()
        pytest.fail(POSTGRES_HELP.format(url=base.render_as_string(hide_password=True)), pytrace=False)
    # every connection of this URL works inside the schema (libpq "options"), so tests stay isolated
    url = base.update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
            conn.exec_driver_sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        admin.dispose()


@pytest.fixture
def store(database_url: str) -> Iterator[SqlStore]:
    """A migrated, empty ``SqlStore`` indexing with ``app.fhir.indexing.default_indexer()``."""
    from app.adapters.sql_store import SqlStore, upgrade_database
    from app.fhir.indexing import default_indexer

    upgrade_database(database_url)
    sql_store = SqlStore(database_url, default_indexer())
    yield sql_store
    sql_store.close()
