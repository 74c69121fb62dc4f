"""/hl7v2 and /erp with INTERLACE_AUTH on: a bearer token is required, and only a system-level token for every
resource type passes (read for GET, write for POST); patient- and type-scoped tokens are refused."""

from __future__ import annotations

import pytest

from .enforcement_support import Secure, secure  # noqa: F401

ADT = (
    b"MSH|^~\\&|LAB|HOSP|INTERLACE|HOSP|20240101120000||ADT^A01|GATE-1|P|2.5\r"
    b"PID|1||G-1^^^HOSP^MR||Gate^Tess||19800101|F\rPV1|1|I\r"
)


@pytest.mark.parametrize("path", ["/hl7v2/messages", "/erp/projections", "/erp/dead-letters"])
def test_operator_reads_need_a_token_then_system_read_on_every_type(secure: Secure, path: str) -> None:  # noqa: F811
    assert secure.client.get(path).status_code == 401
    narrow = secure.token("system/Observation.rs")
    refused = secure.client.get(path, headers={"Authorization": f"Bearer {narrow}"})
    assert refused.status_code == 403
    assert "system/*.rs" in refused.get_json()["issue"][0]["diagnostics"]
    reader = secure.token("system/*.rs")
    assert secure.client.get(path, headers={"Authorization": f"Bearer {reader}"}).status_code == 200


def test_posting_hl7v2_needs_system_write_on_every_type(secure: Secure) -> None:  # noqa: F811
    headers = {"Content-Type": "x-application/hl7-v2+er7"}
    reader = secure.token("system/*.rs")
    refused = secure.client.post("/hl7v2", data=ADT, headers={**headers, "Authorization": f"Bearer {reader}"})
    assert refused.status_code == 403
    feeder = secure.token("system/*.cruds")
    accepted = secure.client.post("/hl7v2", data=ADT, headers={**headers, "Authorization": f"Bearer {feeder}"})
    assert accepted.status_code == 200
    assert b"MSA|AA|GATE-1" in accepted.data
