"""FHIR financial resources for the event tests (a patient billed to a payer, a payment for the invoice)."""

from __future__ import annotations

import copy
from typing import Any

CPT = "http://www.ama-assn.org/go/cpt"

PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "name": [{"use": "official", "family": "Doe", "given": ["Jane"]}],
    "telecom": [{"system": "email", "value": "jane@example.org"}],
}
PAYER = {"resourceType": "Organization", "id": "acme", "name": "ACME Health Insurance"}


def charge_item(cid: str, code: str, qty: int, display: str) -> dict[str, Any]:
    return {
        "resourceType": "ChargeItem",
        "id": cid,
        "status": "billable",
        "code": {"coding": [{"system": CPT, "code": code, "display": display}]},
        "subject": {"reference": "Patient/p1"},
        "quantity": {"value": qty},
        "occurrenceDateTime": "2026-11-20T09:30:00Z",
    }


VISIT = charge_item("ci1", "99213", 1, "Office visit")
CBC = charge_item("ci2", "85025", 2, "CBC")


def invoice(iid: str = "inv-1", status: str = "issued", base: float = 150) -> dict[str, Any]:
    return {
        "resourceType": "Invoice",
        "id": iid,
        "status": status,
        "identifier": [{"system": "urn:example:invoice", "value": f"INV-{iid}"}],
        "subject": {"reference": "Patient/p1"},
        "recipient": {"reference": "Organization/acme"},
        "date": "2026-11-24T10:00:00Z",
        "lineItem": [
            {
                "sequence": 1,
                "chargeItemReference": {"reference": "ChargeItem/ci1"},
                "priceComponent": [{"type": "base", "amount": {"value": base, "currency": "USD"}}],
            },
            {
                "sequence": 2,
                "chargeItemReference": {"reference": "ChargeItem/ci2"},
                "priceComponent": [{"type": "base", "amount": {"value": 90.0, "currency": "USD"}}],
            },
        ],
    }


def payment(pid: str = "pr1", iid: str = "inv-1", amount: float = 240) -> dict[str, Any]:
    return {
        "resourceType": "PaymentReconciliation",
        "id": pid,
        "status": "active",
        "created": "2026-11-25",
        "paymentDate": "2026-11-25",
        "paymentAmount": {"value": amount, "currency": "USD"},
        "paymentIdentifier": {"value": f"ERA-{pid}"},
        "detail": [
            {
                "identifier": {"value": "d1"},
                "type": {"coding": [{"code": "payment"}]},
                "request": {"reference": f"Invoice/{iid}"},
                "amount": {"value": amount, "currency": "USD"},
            }
        ],
    }


def put(store: Any, *resources: dict[str, Any]) -> None:
    """Store each resource (create or update) in its own transaction, as API clients would."""
    for res in resources:
        with store.session(write=True) as s:
            s.update(copy.deepcopy(res))


MASTER = (PATIENT, PAYER, VISIT, CBC)
