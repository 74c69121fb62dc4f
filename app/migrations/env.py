"""Alembic environment, configured in code (no alembic.ini).

``upgrade_database`` passes an open connection (already in a locked transaction) in
``config.attributes["connection"]``. Running the ``alembic`` CLI against a URL in ``sqlalchemy.url`` works too.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context

config = context.config


def _run(connection: sa.Connection) -> None:
    context.configure(connection=connection, target_metadata=None, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    shared = config.attributes.get("connection")
    if shared is not None:
        _run(shared)
    else:
        engine = sa.create_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=sa.pool.NullPool)
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
        engine.dispose()
