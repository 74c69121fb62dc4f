"""Alembic migrations for the SQL store, run programmatically by ``app.adapters.sql_store.upgrade_database``."""
