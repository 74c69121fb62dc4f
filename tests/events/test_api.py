"""The admin endpoints: projection state, dead letters, replay."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask

from app.api import erp as erp_api
from app.api import errors as api_errors
from tests.events.conftest import drain
from tests.events.resources import MASTER, invoice, put
from tests.fakes.odoo17 import FakeOdoo17


@pytest.fixture
def client(backbone: Any) -> Any:
    app = Flask(__name__)
    app.config.update(API_TITLE="t", API_VERSION="1", OPENAPI_VERSION="3.0.3")
    api = api_errors.FhirApi(app)
    api.register_blueprint(erp_api.create_blueprint(backbone, replace(backbone.settings, auth=False)))
    api_errors.register_error_handlers(app)
    return app.test_client()


@pytest.fixture
def dead_invoice(backbone: Any, odoo: FakeOdoo17) -> str:
    erp = backbone.bus.consumer(backbone.erp)
    put(backbone.services.store, *MASTER)
    drain(backbone, erp)
    odoo.inject("error", error="odoo.exceptions.UserError", message="No sale journal", model="account.move")
    put(backbone.services.store, invoice())
    drain(backbone, erp)
    [letter] = backbone.bus.dead_letters("erp")
    return letter.id


@pytest.mark.usefixtures("dead_invoice")
def test_projections_filter_by_status_and_by_resource(client: Any) -> None:
    dead = client.get("/erp/projections?status=dead").get_json()["projections"]
    assert [(p["resource"], p["errorClass"], p["errorMessage"]) for p in dead] == [
        ("Invoice/inv-1", "OdooUserError (odoo.exceptions.UserError)", "No sale journal")
    ]
    one = client.get("/erp/projections?resource=ChargeItem/ci1").get_json()["projections"]
    assert [p["status"] for p in one] == ["projected"]
    assert client.get("/erp/projections?status=bogus").status_code == 400


def test_dead_letters_are_listed_shown_and_replayed(client: Any, backbone: Any, dead_invoice: str) -> None:
    listing = client.get("/erp/dead-letters").get_json()
    assert listing["total"] == 1
    assert [d["id"] for d in listing["deadLetters"]] == [dead_invoice]
    shown = client.get(f"/erp/dead-letters/{dead_invoice}").get_json()
    assert shown["resource"] == "Invoice/inv-1"
    assert shown["projection"]["status"] == "dead"
    assert client.get("/erp/dead-letters/0-1").status_code == 404
    assert client.post(f"/erp/dead-letters/{dead_invoice}/$replay").get_json() == {"replayed": 1}
    assert client.post(f"/erp/dead-letters/{dead_invoice}/$replay").status_code == 404
    drain(backbone, backbone.bus.consumer(backbone.erp))
    assert client.get("/erp/projections?resource=Invoice/inv-1").get_json()["projections"][0]["status"] == "projected"


@pytest.mark.usefixtures("dead_invoice")
def test_replay_since_needs_a_date_and_re_projects(client: Any, backbone: Any, odoo: FakeOdoo17) -> None:
    assert client.post("/erp/$replay").status_code == 400
    assert client.post("/erp/$replay?since=yesterday").status_code == 400
    since = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    body = client.post(f"/erp/$replay?since={since}").get_json()
    assert body["replayed"] >= 5
    assert client.post("/erp/dead-letters/$replay").get_json() == {"replayed": 1}
    drain(backbone, backbone.bus.consumer(backbone.erp))
    assert len([m for m in odoo.rows("account.move") if m.get("move_type") == "out_invoice"]) == 1
