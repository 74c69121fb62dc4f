"""Helpers shared by the API tests: a FHIR-flavoured test client and OperationOutcome assertions."""

from __future__ import annotations

from typing import Any

import orjson
from flask.testing import FlaskClient

FHIR_JSON = "application/fhir+json"


class Fhir:
    """Small conveniences over the test client, so tests read like FHIR interactions."""

    def __init__(self, client: FlaskClient) -> None:
        self.client = client

    def request(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None, **kw: Any):
        hdrs = {"Accept": FHIR_JSON, **(headers or {})}
        data = kw.pop("data", None)
        if body is not None:
            data = orjson.dumps(body)
            hdrs.setdefault("Content-Type", FHIR_JSON)
        return self.client.open(f"/fhir/{path.lstrip('/')}", method=method, data=data, headers=hdrs, **kw)

    def create(self, resource: dict[str, Any], **headers: str) -> dict[str, Any]:
        response = self.request("POST", resource["resourceType"], resource, headers=headers or None)
        assert response.status_code == 201, response.get_data(as_text=True)
        return response.get_json(force=True)


def assert_outcome(response: Any, status: int, issue_code: str, details: str | None = None) -> dict[str, Any]:
    """The response is an OperationOutcome with ``status`` whose first error issue has ``issue_code``."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == FHIR_JSON
    outcome = response.get_json(force=True)
    assert outcome["resourceType"] == "OperationOutcome"
    codes = [i["code"] for i in outcome["issue"]]
    assert issue_code in codes, outcome
    if details is not None:
        detail_codes = [c["code"] for i in outcome["issue"] for c in i.get("details", {}).get("coding", [])]
        assert details in detail_codes, outcome
    return outcome


def patient(family: str = "Chalmers", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": family, "given": ["Peter"]}], **extra}
