"""The ERP-neutral records and the port's read-back type."""

from __future__ import annotations

from decimal import Decimal

import pytest

from app.billing.ports import ErpDataError, ErpNotReady, InvoiceState, PermanentErpError, TransientErpError
from app.billing.records import ExternalId, InvoiceLine, Product, TaxRef

PRODUCT = Product(ExternalId("product", "cpt|99213"), "99213", "Visit")


@pytest.mark.parametrize(
    ("payment_state", "settled"),
    [("paid", True), ("in_payment", True), ("reversed", True), ("partial", False), ("not_paid", False)],
)
def test_in_payment_counts_as_settled_like_paid(payment_state: str, settled: bool) -> None:
    # Enterprise shows in_payment until the bank statement matches; the customer has paid either way
    state = InvoiceState(1, "posted", payment_state, Decimal("240"), Decimal("0"))
    assert state.settled is settled


def test_tax_key_is_the_code_or_else_the_rate_as_a_percentage() -> None:
    assert TaxRef(code="VAT15", rate=Decimal("0.15")).key == "VAT15"
    assert TaxRef(rate=Decimal("0.15")).key == "15%"
    assert TaxRef(rate=Decimal("0.075")).key == "7.5%"


def test_line_subtotal_applies_quantity_and_discount_at_cent_precision() -> None:
    line = InvoiceLine(PRODUCT, "visit", Decimal(3), Decimal("33.33"), discount_percent=Decimal(10))
    assert line.subtotal == Decimal("89.99")


def test_not_ready_is_transient_and_data_errors_are_permanent() -> None:
    assert ErpNotReady("later").transient and issubclass(ErpNotReady, TransientErpError)
    assert not ErpDataError("no").transient and issubclass(ErpDataError, PermanentErpError)
