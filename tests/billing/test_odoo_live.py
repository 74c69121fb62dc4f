"""The gateway against a real Odoo (16/17/18 with ``account``), when one is configured.

Set INTERLACE_ODOO_URL, INTERLACE_ODOO_DB, INTERLACE_ODOO_LOGIN (default admin) and INTERLACE_ODOO_API_KEY;
optionally INTERLACE_ODOO_SALE_JOURNAL (INV) and INTERLACE_ODOO_PAYMENT_JOURNAL (BNK1). Use a scratch database:
the tests create partners, products, posted invoices, payments and credit notes, under a fresh external-id
module per run so that reruns never meet earlier records.
"""

from __future__ import annotations

import os
import uuid
from datetime import date
from decimal import Decimal

import pytest

from app.adapters.odoo_gateway import OdooGateway
from app.billing.records import ExternalId, Invoice, InvoiceCancellation, InvoiceLine, Partner, Payment, Product

pytestmark = [
    pytest.mark.odoo_live,
    pytest.mark.skipif(not os.environ.get("INTERLACE_ODOO_URL"), reason="INTERLACE_ODOO_URL is not set"),
]
RUN = uuid.uuid4().hex[:10]
CPT = "http://www.ama-assn.org/go/cpt"


@pytest.fixture(scope="module")
def gateway() -> OdooGateway:
    env = os.environ
    return OdooGateway(
        env["INTERLACE_ODOO_URL"],
        env.get("INTERLACE_ODOO_DB", ""),
        env.get("INTERLACE_ODOO_LOGIN", "admin"),
        env.get("INTERLACE_ODOO_API_KEY", ""),
        module=f"interlace_test_{RUN}",
        sale_journal_code=env.get("INTERLACE_ODOO_SALE_JOURNAL", "INV"),
        payment_journal_code=env.get("INTERLACE_ODOO_PAYMENT_JOURNAL", "BNK1"),
        odoo_version=int(env.get("INTERLACE_ODOO_VERSION", "17")),
    )


def _invoice(key: str) -> Invoice:
    payer = Partner(
        ExternalId("partner", f"Organization/payer-{RUN}"),
        f"Organization/payer-{RUN}",
        f"Interlace test payer {RUN}",
        is_company=True,
    )
    product = Product(ExternalId("product", f"{CPT}|T{RUN}"), f"T{RUN}", "Interlace test service", system=CPT)
    return Invoice(
        ExternalId("invoice", key),
        key,
        "invoice",
        payer,
        (InvoiceLine(product, "test service", Decimal(2), Decimal("45.00")),),
        invoice_date=date.today(),
    )


def test_live_odoo_answers_version_and_accepts_the_key(gateway: OdooGateway) -> None:
    assert int(gateway.version()["server_version_info"][0]) >= 16
    assert isinstance(gateway.call("res.partner", "search", [[]], {"limit": 1}), list)


def test_live_invoice_is_created_posted_and_paid_exactly_once(gateway: OdooGateway) -> None:
    key = f"Invoice/live-{RUN}"
    first = gateway.upsert_invoice(_invoice(key))
    second = gateway.upsert_invoice(_invoice(key))
    assert first.erp_id == second.erp_id and second.state == "posted" and second.amount_total == Decimal("90.0")
    pay = Payment(
        ExternalId("payment", f"{key}#pay"),
        f"{key}#pay",
        ExternalId("invoice", key),
        Decimal("90.00"),
        date.today(),
        memo="live test",
    )
    assert gateway.register_payment(pay) == gateway.register_payment(pay)
    state = gateway.invoice_state(ExternalId("invoice", key))
    assert state is not None and state.settled


def test_live_cancelled_invoice_gets_one_credit_note(gateway: OdooGateway) -> None:
    key = f"Invoice/live-cancel-{RUN}"
    inv = gateway.upsert_invoice(_invoice(key))
    base = _invoice(key)
    credit = Invoice(
        ExternalId("credit_note", key), key, "credit_note", base.partner, base.lines, reversed_invoice=base.external_id
    )
    cancel = InvoiceCancellation(base.external_id, credit, "live test")
    gateway.cancel_invoice(cancel)
    state = gateway.cancel_invoice(cancel)
    assert state is not None and state.erp_id == inv.erp_id and state.payment_state == "reversed"
