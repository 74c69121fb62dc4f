"""Fixtures for the FHIR REST API over Flask's test client, on every store backend (``database_url``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.adapters.sql_store import upgrade_database
from app.config import Settings

from .support import Fhir


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, auth=False)


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    upgrade_database(settings.effective_database_url)  # no-op when the shared fixture already migrated it
    flask_app = create_app(settings)
    flask_app.config["TESTING"] = True
    yield flask_app
    flask_app.extensions["interlace.ingest"].messages.close()
    flask_app.extensions["interlace"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def fhir(client: FlaskClient) -> Fhir:
    return Fhir(client)
