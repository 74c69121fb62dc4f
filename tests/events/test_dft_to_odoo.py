"""HL7v2 DFT^P03 -> Odoo, end to end and exactly once: the real ``Hl7Ingest`` (commit mode) stores the ChargeItems,
the outbox and Redis carry the events, the ``erp`` consumer (``INTERLACE_ERP_BILL_CHARGE_ITEMS=per-encounter``)
bills them into the Odoo 17 double. Resends, a later charge and a DFT before the ADT must all end right."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from app.adapters.message_store import SqlMessageStore
from app.billing.fhir_mapping import charge_item_net, invoice_from_charge_items
from app.config import ConfigError, Settings, load_settings
from app.services.ingest import Hl7Ingest
from tests.events.conftest import drain, make_settings
from tests.fakes.odoo17 import FakeOdoo17
from tests.ingest.conftest import msa
from tests.ingest.samples import adt_a01


def dft(control_id: str, *ft1: str, name: str = "Doe^Jane", visit: str = "V5001") -> bytes:
    """A DFT^P03 for patient MRN1001, visit V5001 (the ADT sample's), account ACC-9."""
    lines = [
        f"MSH|^~\\&|BILL|SENDFAC|INTERLACE|HOSP|20240323120000||DFT^P03^DFT_P03|{control_id}|P|2.5.1",
        "EVN|P03|20240323120000",
        f"PID|1||MRN1001^^^HOSP^MR||{name}||19800101|F||||||||||ACC-9^^^HOSP^AN",
        f"PV1|1|O|CLINIC1^^^HOSP||||||||||||||||{visit}^^^HOSP^VN",
        *ft1,
    ]
    return ("\r".join(lines) + "\r").encode("ascii")


VISIT = "FT1|1|TX-1||20240323100000|20240323|CG|99213^Office visit^C4|Office visit||1|85.00"
XRAY = "FT1|2|TX-2||20240323101500|20240323|CG|71045^Xray chest^C4|Xray chest||2|80.00"
CREDIT = "FT1|3|TX-3||20240323|20240323|CD|99213^Office visit^C4|Goodwill credit||1|25.00"  # sent unsigned
LAB = "FT1|1|TX-4||20240324090000|20240324|CG|85025^CBC^C4|CBC||1|30.00"


@pytest.fixture
def settings(tmp_path: Path, database_url: str, prefix: str, odoo: FakeOdoo17) -> Settings:
    from app.adapters.sql_store import upgrade_database

    upgrade_database(database_url)
    return make_settings(tmp_path, database_url, prefix, odoo, erp_bill_charge_items="per-encounter")


@pytest.fixture
def erp(backbone: Any) -> Any:
    assert backbone.erp is not None
    return backbone.bus.consumer(backbone.erp)


@pytest.fixture
def ingest(backbone: Any, database_url: str) -> Iterator[Hl7Ingest]:
    messages = SqlMessageStore(database_url)
    yield Hl7Ingest(messages, backbone.services.router)
    messages.close()


def receive(ingest: Hl7Ingest, raw: bytes) -> str:
    ack = ingest.receive(raw, peer="test")
    code, _ = msa(ack)
    return code


def invoices(odoo: FakeOdoo17, move_type: str = "out_invoice") -> list[dict[str, Any]]:
    return sorted((m for m in odoo.rows("account.move") if m.get("move_type") == move_type), key=lambda m: m["id"])


def lines(odoo: FakeOdoo17, move_id: int) -> list[tuple[str, float, float]]:
    """(product default_code, quantity, unit price) of the product lines of one move."""
    codes = {p["id"]: p["default_code"] for p in odoo.rows("product.product")}
    return sorted(
        (codes[ln["product_id"]], ln["quantity"], ln["price_unit"])
        for ln in odoo.rows("account.move.line")
        if ln.get("move_id") == move_id and ln.get("product_id")
    )


def header(odoo: FakeOdoo17, move_id: int) -> dict[str, Any]:
    [row] = odoo.execute("account.move", "read", [move_id], ["state", "amount_total", "partner_id", "ref"])
    return row


def patient_partners(odoo: FakeOdoo17) -> list[dict[str, Any]]:
    return [p for p in odoo.rows("res.partner") if str(p.get("ref") or "").startswith("Patient/")]


FIRST_DFT_LINES = [("71045", 2.0, 40.0), ("99213", 1.0, -25.0), ("99213", 1.0, 85.0)]


def test_a_dft_becomes_one_posted_invoice_with_a_line_per_charge_and_the_credit_negative(
    ingest: Hl7Ingest, backbone: Any, erp: Any, odoo: FakeOdoo17
) -> None:
    assert receive(ingest, dft("DFT-1", VISIT, XRAY, CREDIT)) == "AA"
    drain(backbone, erp)
    [move] = invoices(odoo)
    row = header(odoo, move["id"])
    assert row["state"] == "posted"
    assert row["amount_total"] == 140.0  # 85 + 2 x 40 - 25
    assert lines(odoo, move["id"]) == FIRST_DFT_LINES
    [partner] = patient_partners(odoo)
    assert partner["name"] == "Jane Doe"
    assert row["partner_id"][0] == partner["id"]  # a many2one reads as [id, name]
    [encounter_state] = [s for s in backbone.states.list("erp") if s.resource_type == "Encounter"]
    assert (encounter_state.status, encounter_state.erp_refs["ids"]) == ("projected", [move["id"]])
    assert backbone.bus.count_dead("erp") == 0


def test_the_same_dft_resent_under_its_control_id_or_a_new_one_bills_nothing_more(
    ingest: Hl7Ingest, backbone: Any, erp: Any, odoo: FakeOdoo17
) -> None:
    raw = dft("DFT-1", VISIT, XRAY, CREDIT)
    assert receive(ingest, raw) == "AA"
    drain(backbone, erp)
    creates = odoo.count_calls("account.move", "create")
    assert receive(ingest, raw) == "AA"  # a duplicate: the stored ACK again, nothing stored
    assert receive(ingest, dft("DFT-1-RESENT", VISIT, XRAY, CREDIT)) == "AA"  # processed again: same content
    drain(backbone, erp)
    [move] = invoices(odoo)
    assert lines(odoo, move["id"]) == FIRST_DFT_LINES
    assert odoo.count_calls("account.move", "create") == creates == 1
    assert odoo.count_calls("account.move", "write") == 0  # a posted invoice is never rewritten
    assert invoices(odoo, "out_refund") == []
    assert len(patient_partners(odoo)) == 1


def test_a_later_charge_for_a_billed_encounter_becomes_a_second_invoice_for_that_charge_alone(
    ingest: Hl7Ingest, backbone: Any, erp: Any, odoo: FakeOdoo17
) -> None:
    assert receive(ingest, dft("DFT-1", VISIT, XRAY, CREDIT)) == "AA"
    drain(backbone, erp)
    assert receive(ingest, dft("DFT-2", LAB)) == "AA"
    drain(backbone, erp)
    first, second = invoices(odoo)
    assert lines(odoo, first["id"]) == FIRST_DFT_LINES  # untouched once posted
    assert lines(odoo, second["id"]) == [("85025", 1.0, 30.0)]
    assert header(odoo, second["id"])["state"] == "posted"
    assert header(odoo, first["id"])["partner_id"] == header(odoo, second["id"])["partner_id"]
    # both documents again, cumulative, under new control ids: nothing new
    assert receive(ingest, dft("DFT-3", VISIT, XRAY, CREDIT, LAB.replace("FT1|1|", "FT1|4|"))) == "AA"
    assert receive(ingest, dft("DFT-2", LAB)) == "AA"
    drain(backbone, erp)
    assert [m["id"] for m in invoices(odoo)] == [first["id"], second["id"]]
    assert odoo.count_calls("account.move", "create") == 2


def test_a_dft_before_the_adt_bills_once_and_the_adt_corrects_the_partner(
    ingest: Hl7Ingest, backbone: Any, erp: Any, odoo: FakeOdoo17
) -> None:
    assert receive(ingest, dft("DFT-1", VISIT, XRAY, CREDIT, name="DOE^J")) == "AA"  # the billing system's spelling
    drain(backbone, erp)
    assert receive(ingest, adt_a01("ADT-1")) == "AA"  # registration arrives late, with the full name
    drain(backbone, erp)
    [move] = invoices(odoo)
    assert lines(odoo, move["id"]) == FIRST_DFT_LINES
    [partner] = patient_partners(odoo)
    assert partner["name"] == "Jane Q Doe"
    assert odoo.count_calls("account.move", "create") == 1
    assert backbone.bus.count_dead("erp") == 0


def test_credits_that_outweigh_the_charges_become_a_posted_credit_note(
    ingest: Hl7Ingest, backbone: Any, erp: Any, odoo: FakeOdoo17
) -> None:
    assert receive(ingest, dft("DFT-9", CREDIT)) == "AA"
    drain(backbone, erp)
    assert invoices(odoo) == []
    [refund] = invoices(odoo, "out_refund")
    assert header(odoo, refund["id"])["state"] == "posted"
    assert header(odoo, refund["id"])["amount_total"] == 25.0
    assert lines(odoo, refund["id"]) == [("99213", 1.0, 25.0)]


def test_an_invoice_whose_odoo_reply_was_lost_after_commit_is_adopted_not_duplicated(
    ingest: Hl7Ingest, backbone: Any, erp: Any, odoo: FakeOdoo17
) -> None:
    odoo.inject("drop_after", times=1, model="account.move", method="create")  # Odoo created it, the reply is lost
    assert receive(ingest, dft("DFT-1", VISIT, XRAY, CREDIT)) == "AA"
    drain(backbone, erp)
    [move] = invoices(odoo)
    assert header(odoo, move["id"])["state"] == "posted"
    assert lines(odoo, move["id"]) == FIRST_DFT_LINES
    assert backbone.bus.count_dead("erp") == 0


def test_an_odoo_rejection_is_dead_lettered_and_its_replay_bills_nothing_twice(
    ingest: Hl7Ingest, backbone: Any, erp: Any, odoo: FakeOdoo17
) -> None:
    odoo.inject("error", error="odoo.exceptions.ValidationError", message="Journal INV is locked", model="account.move")
    assert receive(ingest, dft("DFT-1", VISIT, XRAY, CREDIT)) == "AA"
    drain(backbone, erp)  # the first charge's event dead-letters; the next ones bill the encounter
    letters = backbone.bus.dead_letters("erp")
    assert [(lt.event.resource_type, lt.error_message) for lt in letters] == [("ChargeItem", "Journal INV is locked")]
    for letter in letters:
        assert backbone.bus.replay_dead("erp", letter.id)
    drain(backbone, erp)
    [move] = invoices(odoo)
    assert lines(odoo, move["id"]) == FIRST_DFT_LINES
    assert backbone.bus.count_dead("erp") == 0
    assert odoo.count_calls("account.move", "create") == 1


def test_per_account_billing_puts_the_charges_of_two_visits_on_one_invoice(
    tmp_path: Path, database_url: str, prefix: str, odoo: FakeOdoo17
) -> None:
    from app.adapters.sql_store import upgrade_database
    from app.workers.events import close_backbone, open_backbone

    upgrade_database(database_url)
    bb = open_backbone(make_settings(tmp_path, database_url, prefix, odoo, erp_bill_charge_items="per-account"))
    messages = SqlMessageStore(database_url)
    try:
        ingest = Hl7Ingest(messages, bb.services.router)
        assert receive(ingest, dft("DFT-A", VISIT)) == "AA"
        assert receive(ingest, dft("DFT-B", LAB, visit="V5002")) == "AA"
        drain(bb, bb.bus.consumer(bb.erp))
        [move] = invoices(odoo)
        assert lines(odoo, move["id"]) == [("85025", 1.0, 30.0), ("99213", 1.0, 85.0)]
        [group] = bb.states.list("erp", resource_type="Account")
        assert group.erp_refs["ids"] == [move["id"]]
    finally:
        messages.close()
        close_backbone(bb)


def test_a_cr_or_cd_credit_is_negative_whatever_sign_the_sender_used() -> None:
    def charge(ttype: str, amount: float) -> dict[str, Any]:
        return {
            "resourceType": "ChargeItem",
            "id": f"c-{ttype}-{amount}",
            "status": "billable",
            "subject": {"reference": "Patient/p1"},
            "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "99213"}]},
            "priceOverride": {"value": amount},
            "extension": [
                {
                    "url": "https://interlace.dev/fhir/StructureDefinition/v2-transaction-type",
                    "valueCoding": {"system": "http://terminology.hl7.org/CodeSystem/v2-0017", "code": ttype},
                }
            ],
        }

    assert [charge_item_net(charge(t, a)) for t, a in [("CR", 10), ("CD", -10), ("CG", 10), ("AJ", -5)]] == [
        Decimal("-10.00"),
        Decimal("-10.00"),
        Decimal("10.00"),
        Decimal("-5.00"),
    ]
    patient = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Doe", "given": ["Jane"]}]}
    note = invoice_from_charge_items("Encounter/e1#charges", [charge("CR", 10)], {"Patient/p1": patient}.get)
    assert (note.kind, note.lines[0].unit_price, note.external_id.source) == (
        "credit_note",
        Decimal("10.00"),
        "Encounter/e1#charges",
    )


def test_the_charge_item_billing_setting_is_validated() -> None:
    assert load_settings({"INTERLACE_ERP_BILL_CHARGE_ITEMS": "Per-Account"}).erp_bill_charge_items == "per-account"
    assert load_settings({}).erp_bill_charge_items == "off"
    with pytest.raises(ConfigError, match="per-encounter"):
        load_settings({"INTERLACE_ERP_BILL_CHARGE_ITEMS": "always"})
