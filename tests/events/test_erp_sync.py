"""The ERP projection end to end: store -> outbox -> Redis -> ``erp`` consumer -> the Odoo 17 double, and the
outcome back into the FHIR resources and the projection state."""

from __future__ import annotations

from typing import Any

import pytest

from app.services.erp_sync import EXT_ERP, business_hash
from tests.events.conftest import drain
from tests.events.resources import MASTER, invoice, payment, put
from tests.fakes.odoo17 import FakeOdoo17


@pytest.fixture
def erp(backbone: Any) -> Any:
    assert backbone.erp is not None
    return backbone.bus.consumer(backbone.erp)


def moves(odoo: FakeOdoo17, move_type: str = "out_invoice") -> list[dict[str, Any]]:
    return [m for m in odoo.rows("account.move") if m.get("move_type") == move_type]


def move_state(odoo: FakeOdoo17, move_id: int) -> dict[str, Any]:
    [row] = odoo.execute("account.move", "read", [move_id], ["state", "payment_state", "amount_total", "name"])
    return row


def read(backbone: Any, rtype: str, rid: str) -> tuple[dict[str, Any], int]:
    with backbone.services.store.session() as s:
        stored = s.read(rtype, rid)
    return stored.as_dict(), stored.version_id


def projection(doc: dict[str, Any]) -> dict[str, list[str]]:
    [ext] = [e for e in doc.get("extension", []) if e["url"] == EXT_ERP]
    out: dict[str, list[str]] = {}
    for part in ext["extension"]:
        value = part.get("valueString", part.get("valueCode"))
        out.setdefault(part["url"], []).append(value)
    return out


def test_an_issued_invoice_becomes_one_posted_odoo_invoice_and_its_ids_flow_back(
    backbone: Any, erp: Any, odoo: FakeOdoo17
) -> None:
    put(backbone.services.store, *MASTER, invoice())
    drain(backbone, erp)
    [move] = moves(odoo)
    state = move_state(odoo, move["id"])
    assert state["state"] == "posted"
    assert state["amount_total"] == 240.0
    doc, _ = read(backbone, "Invoice", "inv-1")
    ext = projection(doc)
    assert ext["model"] == ["account.move"]
    assert ext["recordId"] == [str(move["id"])]
    assert ext["number"] == [state["name"]]
    assert ext["paymentState"] == ["not_paid"]
    st = backbone.states.get("erp", "Invoice", "inv-1")
    assert st.status == "projected"
    assert st.erp_refs["ids"] == [move["id"]]
    assert backbone.states.get("erp", "Organization", "acme").status == "projected"  # the partner billed
    assert {p["default_code"] for p in odoo.rows("product.product")} >= {"99213", "85025"}


def test_the_write_back_does_not_start_an_event_loop(backbone: Any, erp: Any, odoo: FakeOdoo17) -> None:
    put(backbone.services.store, *MASTER, invoice())
    drain(backbone, erp)
    _, version = read(backbone, "Invoice", "inv-1")
    rows = backbone.outbox.count()
    calls = len(odoo.calls)
    drain(backbone, erp)  # nothing left to do: the write-back's own event changed nothing the ERP sees
    assert read(backbone, "Invoice", "inv-1")[1] == version == 2  # v1 + one write-back
    assert backbone.outbox.count() == rows
    assert len(odoo.calls) == calls


def test_resending_the_same_resources_creates_no_duplicate_in_odoo(backbone: Any, erp: Any, odoo: FakeOdoo17) -> None:
    put(backbone.services.store, *MASTER, invoice(), payment())
    drain(backbone, erp)
    for _ in range(2):  # the same DFT/FHIR content sent again: new versions, same business content
        put(backbone.services.store, *MASTER, invoice(), payment())
        drain(backbone, erp)
    assert len(moves(odoo)) == 1
    assert len(odoo.rows("account.payment")) == 1
    assert len([p for p in odoo.rows("res.partner") if p.get("ref") == "Organization/acme"]) == 1
    assert odoo.count_calls("account.move", "create") == 1


def test_a_payment_delivered_before_its_invoice_waits_and_ends_right(backbone: Any, erp: Any, odoo: FakeOdoo17) -> None:
    put(backbone.services.store, *MASTER, payment())
    backbone.bus.relay(backbone.outbox).publish_batch()
    for _ in range(5):
        erp.run_once(block_ms=10)
    assert odoo.rows("account.payment") == []
    assert backbone.states.get("erp", "PaymentReconciliation", "pr1").status == "pending"  # waiting, not failed
    put(backbone.services.store, invoice())
    drain(backbone, erp)
    [move] = moves(odoo)
    assert len(odoo.rows("account.payment")) == 1
    assert move_state(odoo, move["id"])["payment_state"] == "paid"
    assert projection(read(backbone, "Invoice", "inv-1")[0])["paymentState"] == ["paid"]
    pay = projection(read(backbone, "PaymentReconciliation", "pr1")[0])
    assert pay["model"] == ["account.payment"]
    assert backbone.bus.count_dead("erp") == 0


def test_odoo_unavailable_is_retried_until_it_answers(backbone: Any, erp: Any, odoo: FakeOdoo17) -> None:
    put(backbone.services.store, *MASTER)
    drain(backbone, erp)
    # the gateway retries 3 times itself; 7 failing replies make the bus retry too
    odoo.inject("http", times=7, status=503, model="account.move")
    put(backbone.services.store, invoice())
    drain(backbone, erp)
    assert len(moves(odoo)) == 1
    assert backbone.states.get("erp", "Invoice", "inv-1").status == "projected"
    assert backbone.bus.count_dead("erp") == 0


def test_an_odoo_rejection_is_dead_lettered_with_its_class_and_message_then_replayed(
    backbone: Any, erp: Any, odoo: FakeOdoo17
) -> None:
    put(backbone.services.store, *MASTER)
    drain(backbone, erp)
    odoo.inject(
        "error",
        error="odoo.exceptions.ValidationError",
        message="Journal INV is locked",
        method="create",
        model="account.move",
    )
    put(backbone.services.store, invoice())
    drain(backbone, erp)
    assert moves(odoo) == []
    [letter] = backbone.bus.dead_letters("erp")
    assert letter.event.reference == "Invoice/inv-1"
    assert "odoo.exceptions.ValidationError" in letter.error_class
    assert letter.error_message == "Journal INV is locked"
    st = backbone.states.get("erp", "Invoice", "inv-1")
    assert (st.status, st.error_message) == ("dead", "Journal INV is locked")
    [dead] = backbone.states.list("erp", status="dead")
    assert dead.reference == "Invoice/inv-1"
    assert backbone.bus.replay_dead("erp", letter.id)  # someone fixed Odoo
    drain(backbone, erp)
    assert len(moves(odoo)) == 1
    assert backbone.states.get("erp", "Invoice", "inv-1").status == "projected"
    assert backbone.bus.count_dead("erp") == 0


def test_a_mapping_error_is_dead_lettered_without_retries(backbone: Any, erp: Any, odoo: FakeOdoo17) -> None:
    broken = invoice()
    broken["recipient"] = {"reference": "Organization/nobody"}
    put(backbone.services.store, *MASTER, broken)
    drain(backbone, erp)
    [letter] = backbone.bus.dead_letters("erp")
    assert letter.attempts == 1
    assert letter.error_class == "BillingMappingError"
    assert "cannot be resolved" in letter.error_message


def test_a_cancelled_invoice_is_taken_back_with_a_credit_note(backbone: Any, erp: Any, odoo: FakeOdoo17) -> None:
    put(backbone.services.store, *MASTER, invoice())
    drain(backbone, erp)
    put(backbone.services.store, invoice(status="cancelled"))
    drain(backbone, erp)
    [refund] = moves(odoo, "out_refund")
    [move] = moves(odoo)
    assert move_state(odoo, refund["id"])["state"] == "posted"
    assert move_state(odoo, move["id"])["payment_state"] == "reversed"
    assert projection(read(backbone, "Invoice", "inv-1")[0])["creditNoteId"] == [str(refund["id"])]


def test_replay_since_re_projects_without_duplicating(backbone: Any, erp: Any, odoo: FakeOdoo17) -> None:
    from datetime import UTC, datetime, timedelta

    from app.services.event_admin import replay_since

    put(backbone.services.store, *MASTER, invoice(), payment())
    drain(backbone, erp)
    assert replay_since(backbone, datetime.now(UTC) - timedelta(hours=1)) >= 6
    drain(backbone, erp)
    assert len(moves(odoo)) == 1
    assert len(odoo.rows("account.payment")) == 1


def test_a_client_update_that_drops_the_extension_gets_it_back_without_reaching_odoo(
    backbone: Any, erp: Any, odoo: FakeOdoo17
) -> None:
    put(backbone.services.store, *MASTER, invoice())
    drain(backbone, erp)
    calls = odoo.count_calls("account.move", "create") + odoo.count_calls("account.move", "write")
    put(backbone.services.store, invoice())  # a client PUTs its own copy, without our extension
    drain(backbone, erp)
    assert projection(read(backbone, "Invoice", "inv-1")[0])["model"] == ["account.move"]
    assert odoo.count_calls("account.move", "create") + odoo.count_calls("account.move", "write") == calls


def test_business_hash_ignores_meta_and_the_projection_extension() -> None:
    doc = invoice()
    with_ext = {**doc, "meta": {"versionId": "7"}, "extension": [{"url": EXT_ERP, "extension": []}]}
    assert business_hash(doc) == business_hash(with_ext)
    assert business_hash(doc) != business_hash(invoice(base=151))


CLAIM = {
    "resourceType": "Claim",
    "id": "c1",
    "status": "active",
    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
    "use": "claim",
    "patient": {"reference": "Patient/p1"},
    "created": "2026-11-21",
    "provider": {"reference": "Organization/acme"},
    "priority": {"coding": [{"code": "normal"}]},
    "insurance": [{"sequence": 1, "focal": True, "coverage": {"reference": "Coverage/cov1"}}],
    "item": [
        {
            "sequence": 1,
            "productOrService": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "99213"}]},
            "encounter": [{"reference": "Encounter/e1"}],
            "net": {"value": 150},
        },
        {
            "sequence": 2,
            "productOrService": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "85025"}]},
            "encounter": [{"reference": "Encounter/e1"}],
            "net": {"value": 90},
        },
    ],
}
COVERAGE = {
    "resourceType": "Coverage",
    "id": "cov1",
    "status": "active",
    "beneficiary": {"reference": "Patient/p1"},
    "payor": [{"reference": "Organization/acme"}],
}
CLAIM_RESPONSE = {
    "resourceType": "ClaimResponse",
    "id": "cr1",
    "status": "active",
    "type": CLAIM["type"],
    "use": "claim",
    "patient": {"reference": "Patient/p1"},
    "created": "2026-11-28",
    "insurer": {"reference": "Organization/acme"},
    "request": {"reference": "Claim/c1"},
    "outcome": "complete",
    "payment": {"type": {"coding": [{"code": "complete"}]}, "date": "2026-11-28", "amount": {"value": 240}},
}


def test_with_claim_billing_a_claim_and_its_encounter_charge_items_become_an_invoice_paid_by_its_response(
    tmp_path: Any, database_url: str, prefix: str, odoo: FakeOdoo17
) -> None:
    from app.adapters.sql_store import upgrade_database
    from app.workers.events import close_backbone, open_backbone
    from tests.events.conftest import make_settings
    from tests.events.resources import CBC, PATIENT, PAYER, VISIT

    upgrade_database(database_url)
    bb = open_backbone(make_settings(tmp_path, database_url, prefix, odoo, erp_bill_claims=True))
    try:
        items = [{**ci, "context": {"reference": "Encounter/e1"}} for ci in (VISIT, CBC)]
        put(bb.services.store, PATIENT, PAYER, COVERAGE, *items, CLAIM_RESPONSE)
        put(bb.services.store, CLAIM)
        drain(bb, bb.bus.consumer(bb.erp))
        [move] = moves(odoo)
        lines = [ln for ln in odoo.rows("account.move.line") if ln.get("move_id") == move["id"]]
        # one line per ChargeItem of the claim's encounter, with the ChargeItem's quantity (the claim items have none)
        assert sorted(ln["quantity"] for ln in lines if ln.get("product_id")) == [1, 2]
        row = move_state(odoo, move["id"])
        assert (row["amount_total"], row["payment_state"]) == (240.0, "paid")
        assert projection(read(bb, "Claim", "c1")[0])["paymentState"] == ["paid"]
        assert bb.states.get("erp", "ClaimResponse", "cr1").status == "projected"
    finally:
        close_backbone(bb)


@pytest.mark.parametrize(
    ("wire_name", "message"),
    [
        ("odoo.exceptions.AccessDenied", "Access Denied"),
        ("odoo.exceptions.AccessError", "You are not allowed to create 'Journal Entry' (account.move) records."),
        ("odoo.exceptions.ValidationError", "The operation cannot be completed: another record has the same key"),
        ("odoo.exceptions.UserError", "The entry INV/2026/00001 (id 1) must be in draft."),
        ("odoo.exceptions.MissingError", "Record does not exist or has been deleted."),
        ("builtins.ValueError", "Invalid field 'bogus' on model 'account.move'"),
    ],
)
def test_each_permanent_odoo_error_class_is_dead_lettered_once_with_its_name(
    backbone: Any, erp: Any, odoo: FakeOdoo17, wire_name: str, message: str
) -> None:
    put(backbone.services.store, *MASTER)
    drain(backbone, erp)
    odoo.inject("error", error=wire_name, message=message, model="account.move", method="create")
    put(backbone.services.store, invoice())
    drain(backbone, erp)
    [letter] = backbone.bus.dead_letters("erp")
    assert wire_name in letter.error_class
    assert letter.error_message == message
    assert letter.attempts == 1
    assert moves(odoo) == []


@pytest.mark.parametrize(
    "fault",
    [
        {"kind": "error", "error": "psycopg2.errors.SerializationFailure", "times": 5},
        {"kind": "http", "status": 502, "times": 5},
        {"kind": "drop", "times": 5},
        {"kind": "drop_after", "times": 1},  # Odoo created the invoice, the reply was lost
        {"kind": "delay", "seconds": 1.5, "times": 1},  # slower than the 1 s client timeout
    ],
    ids=["serialization", "http-502", "dropped", "reply-lost-after-commit", "timeout"],
)
def test_transient_odoo_failures_are_retried_to_exactly_one_invoice(
    tmp_path: Any, database_url: str, prefix: str, odoo: FakeOdoo17, fault: dict[str, Any]
) -> None:
    from app.adapters.sql_store import upgrade_database
    from app.workers.events import close_backbone, open_backbone
    from tests.events.conftest import make_settings

    upgrade_database(database_url)
    bb = open_backbone(make_settings(tmp_path, database_url, prefix, odoo, odoo_timeout=1))
    try:
        odoo.inject(model="account.move", method="create", **fault)
        put(bb.services.store, *MASTER, invoice())
        drain(bb, bb.bus.consumer(bb.erp))
        assert len(moves(odoo)) == 1
        assert move_state(odoo, moves(odoo)[0]["id"])["state"] == "posted"
        assert bb.bus.count_dead("erp") == 0
        assert bb.states.get("erp", "Invoice", "inv-1").status == "projected"
    finally:
        close_backbone(bb)
