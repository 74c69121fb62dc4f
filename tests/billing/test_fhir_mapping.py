"""FHIR R4 financial resources -> ERP-neutral billing records (pure, no ERP)."""

from __future__ import annotations

import copy
import re
from datetime import date
from decimal import Decimal
from typing import Any

import pytest

from app.billing.fhir_mapping import (
    CPT,
    HCPCS,
    BillingMappingError,
    MappingOptions,
    invoice_from_claim,
    invoice_from_fhir,
    partner_from_organization,
    partner_from_person,
    payment_from_claim_response,
    payments_from_payment_reconciliation,
    product_from_code,
)
from app.billing.records import ExternalId, Invoice, InvoiceCancellation, TaxRef

PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "name": [{"use": "nickname", "given": ["Janie"]}, {"use": "official", "family": "Doe", "given": ["Jane", "Q"]}],
    "telecom": [{"system": "phone", "value": "+1 555 0100"}, {"system": "email", "value": "jane@example.org"}],
    "address": [
        {"use": "home", "line": ["1 Main St", "Apt 2"], "city": "Springfield", "postalCode": "01101", "country": "us"}
    ],
}
GUARANTOR = {
    "resourceType": "RelatedPerson",
    "id": "rp1",
    "patient": {"reference": "Patient/p1"},
    "name": [{"text": "John Doe"}],
}
PAYER = {
    "resourceType": "Organization",
    "id": "acme",
    "name": "ACME Health Insurance",
    "identifier": [
        {
            "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "TAX"}]},
            "value": "US-12-3456789",
        }
    ],
    "telecom": [{"system": "email", "value": "claims@acme.example"}],
}
COVERAGE = {
    "resourceType": "Coverage",
    "id": "cov1",
    "status": "active",
    "beneficiary": {"reference": "Patient/p1"},
    "payor": [{"reference": "Organization/acme"}],
}


def charge_item(cid: str, code: str, qty: int, system: str = CPT, display: str = "", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "ChargeItem",
        "id": cid,
        "status": "billable",
        "code": {"coding": [{"system": system, "code": code, "display": display or None}]},
        "subject": {"reference": "Patient/p1"},
        "quantity": {"value": qty},
        "occurrenceDateTime": "2026-11-20T09:30:00Z",
        **extra,
    }


VISIT = charge_item("ci1", "99213", 1, display="Office visit")
CBC = charge_item("ci2", "85025", 2, display="CBC")
INVOICE = {
    "resourceType": "Invoice",
    "id": "inv-1",
    "status": "issued",
    "identifier": [{"system": "urn:example:invoice", "value": "INV-2026-0001"}],
    "subject": {"reference": "Patient/p1"},
    "recipient": {"reference": "Organization/acme"},
    "date": "2026-11-24T10:00:00Z",
    "lineItem": [
        {
            "sequence": 1,
            "chargeItemReference": {"reference": "ChargeItem/ci1"},
            "priceComponent": [{"type": "base", "amount": {"value": 150, "currency": "USD"}}],
        },
        {
            "sequence": 2,
            "chargeItemReference": {"reference": "ChargeItem/ci2"},
            "priceComponent": [
                {"type": "base", "amount": {"value": 90.0, "currency": "USD"}},
                {
                    "type": "tax",
                    "code": {"coding": [{"system": "urn:example:tax", "code": "VAT15"}]},
                    "factor": 0.15,
                    "amount": {"value": 13.5, "currency": "USD"},
                },
            ],
        },
    ],
    "totalNet": {"value": 240.0, "currency": "USD"},
}
CLAIM = {
    "resourceType": "Claim",
    "id": "c1",
    "status": "active",
    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/claim-type", "code": "professional"}]},
    "use": "claim",
    "patient": {"reference": "Patient/p1"},
    "created": "2026-11-21",
    "provider": {"reference": "Organization/clinic"},
    "priority": {"coding": [{"code": "normal"}]},
    "insurance": [{"sequence": 1, "focal": True, "coverage": {"reference": "Coverage/cov1"}}],
    "item": [
        {
            "sequence": 1,
            "productOrService": {"coding": [{"system": CPT, "code": "99213"}]},
            "quantity": {"value": 1},
            "unitPrice": {"value": 150, "currency": "USD"},
            "net": {"value": 150},
        },
        {
            "sequence": 2,
            "productOrService": {"coding": [{"system": CPT, "code": "85025"}]},
            "quantity": {"value": 2},
            "unitPrice": {"value": 45, "currency": "USD"},
        },
    ],
    "total": {"value": 240, "currency": "USD"},
}
STORE = {f"{r['resourceType']}/{r['id']}": r for r in (PATIENT, GUARANTOR, PAYER, COVERAGE, VISIT, CBC)}


def resolve(reference: str) -> dict[str, Any] | None:
    return STORE.get(reference)


def test_patient_becomes_a_person_partner_keyed_by_its_fhir_identity() -> None:
    partner = partner_from_person(PATIENT)
    assert (partner.name, partner.is_company, partner.ref) == ("Jane Q Doe", False, "Patient/p1")
    assert (partner.email, partner.phone) == ("jane@example.org", "+1 555 0100")
    assert (partner.street, partner.street2, partner.city, partner.zip, partner.country_code) == (
        "1 Main St",
        "Apt 2",
        "Springfield",
        "01101",
        "US",
    )
    assert partner.external_id == ExternalId("partner", "Patient/p1")


def test_guarantor_related_person_becomes_a_person_partner() -> None:
    partner = partner_from_person(GUARANTOR)
    assert (partner.name, partner.is_company, partner.ref) == ("John Doe", False, "RelatedPerson/rp1")


def test_payer_organization_becomes_a_company_partner_with_its_tax_id_as_vat() -> None:
    partner = partner_from_organization(PAYER)
    assert (partner.name, partner.is_company, partner.vat, partner.email) == (
        "ACME Health Insurance",
        True,
        "US-12-3456789",
        "claims@acme.example",
    )


def test_a_person_without_a_name_cannot_be_billed() -> None:
    with pytest.raises(BillingMappingError) as err:
        partner_from_person({"resourceType": "Patient", "id": "anon"})
    assert err.value.status == 422 and err.value.to_outcome()["issue"][0]["expression"] == ["name"]


def test_external_id_is_stable_and_safe_as_an_odoo_xmlid() -> None:
    ext = ExternalId("invoice", "Invoice/inv-1")
    assert ext.name == ExternalId("invoice", "Invoice/inv-1").name
    assert re.fullmatch(r"invoice_[0-9a-f]{40}", ext.name)
    assert ext.qualified("interlace") == f"interlace.{ext.name}"
    assert "inv-1" not in ext.name  # the FHIR id does not leak into ERP keys
    assert ext.name != ExternalId("invoice", "Claim/inv-1").name != ExternalId("credit_note", "Invoice/inv-1").name


@pytest.mark.parametrize(
    ("system", "code"), [(CPT, "99213"), (HCPCS, "G0439"), ("urn:oid:2.16.840.1.113883.6.12", "85025")]
)
def test_cpt_and_hcpcs_codes_become_service_products_with_the_code_as_default_code(system: str, code: str) -> None:
    product = product_from_code({"coding": [{"system": system, "code": code, "display": "Thing"}]})
    assert (product.default_code, product.name) == (code, "Thing")
    assert product.external_id == ExternalId("product", f"{system}|{code}")


def test_local_codes_need_a_configured_prefix_so_systems_cannot_collide() -> None:
    concept = {"coding": [{"system": "urn:example:local-fees", "code": "99213"}], "text": "Local visit"}
    with pytest.raises(BillingMappingError, match="urn:example:local-fees"):
        product_from_code(concept)
    options = MappingOptions(code_systems={"urn:example:local-fees": "LOC-"})
    product = product_from_code(concept, options)
    assert (product.default_code, product.name) == ("LOC-99213", "Local visit")


def test_issued_invoice_becomes_a_posted_invoice_with_one_line_per_line_item() -> None:
    record = invoice_from_fhir(INVOICE, resolve)
    assert isinstance(record, Invoice)
    assert (record.post, record.kind, record.ref, record.invoice_date) == (
        True,
        "invoice",
        "Invoice/inv-1",
        date(2026, 11, 24),
    )
    assert record.external_id == ExternalId("invoice", "Invoice/inv-1")
    assert record.partner.ref == "Organization/acme" and record.partner.is_company
    assert (record.payment_reference, record.narration, record.currency) == (
        "INV-2026-0001",
        "Patient: Jane Q Doe",
        "USD",
    )
    visit, cbc = record.lines
    assert (visit.product.default_code, visit.quantity, visit.unit_price, visit.taxes) == ("99213", 1, 150, ())
    assert visit.description == "99213 Office visit 2026-11-20"
    assert (cbc.product.default_code, cbc.quantity, cbc.unit_price) == ("85025", 2, Decimal("45.00"))
    assert cbc.taxes == (TaxRef(code="VAT15", rate=Decimal("0.15")),)
    assert record.amount_untaxed == Decimal("240.00")


def test_draft_invoice_is_projected_but_not_posted() -> None:
    record = invoice_from_fhir({**INVOICE, "status": "draft"}, resolve)
    assert isinstance(record, Invoice) and record.post is False


def test_invoice_billed_to_the_patient_names_no_separate_patient() -> None:
    record = invoice_from_fhir({**INVOICE, "recipient": {"reference": "Patient/p1"}}, resolve)
    assert isinstance(record, Invoice)
    assert record.partner.ref == "Patient/p1" and record.narration is None


def test_line_whose_net_does_not_split_into_cents_goes_as_one_unit_at_the_net(monkeypatch) -> None:
    inv = copy.deepcopy(INVOICE)
    monkeypatch.setitem(STORE, "ChargeItem/ci3", charge_item("ci3", "85025", 3))
    inv["lineItem"] = [
        {
            "chargeItemReference": {"reference": "ChargeItem/ci3"},
            "priceComponent": [{"type": "base", "amount": {"value": 100}}],
        }
    ]
    record = invoice_from_fhir(inv, resolve)
    assert isinstance(record, Invoice)
    (line,) = record.lines
    assert (line.quantity, line.unit_price, line.subtotal) == (1, Decimal("100.00"), Decimal("100.00"))


def test_surcharge_discount_and_deduction_adjust_the_line_net() -> None:
    inv = copy.deepcopy(INVOICE)
    inv["lineItem"] = [
        {
            "chargeItemCodeableConcept": {"coding": [{"system": CPT, "code": "99213"}]},
            "priceComponent": [
                {"type": "base", "amount": {"value": 150}},
                {"type": "surcharge", "amount": {"value": 10}},
                {"type": "discount", "amount": {"value": -15}},
                {"type": "deduction", "amount": {"value": 5}},
                {"type": "informational", "amount": {"value": 999}},
            ],
        }
    ]
    record = invoice_from_fhir(inv, resolve)
    assert isinstance(record, Invoice)
    assert record.lines[0].unit_price == Decimal("140.00") and record.lines[0].quantity == 1


@pytest.mark.parametrize("status", ["cancelled", "entered-in-error"])
def test_voided_invoice_becomes_a_cancellation_with_a_credit_note_against_it(status: str) -> None:
    record = invoice_from_fhir({**INVOICE, "status": status}, resolve)
    assert isinstance(record, InvoiceCancellation)
    assert record.invoice == ExternalId("invoice", "Invoice/inv-1")
    credit = record.credit_note
    assert (credit.kind, credit.post, credit.reversed_invoice) == ("credit_note", True, record.invoice)
    assert credit.external_id == ExternalId("credit_note", "Invoice/inv-1")
    assert credit.lines == invoice_from_fhir(INVOICE, resolve).lines  # type: ignore[union-attr]
    assert status in record.reason


def test_invoice_whose_recipient_cannot_be_resolved_is_a_mapping_error() -> None:
    with pytest.raises(BillingMappingError) as err:
        invoice_from_fhir({**INVOICE, "recipient": {"reference": "Organization/unknown"}}, resolve)
    assert err.value.details_code == "billing-mapping" and "Organization/unknown" in err.value.diagnostics


def test_line_without_a_price_is_a_mapping_error() -> None:
    inv = copy.deepcopy(INVOICE)
    inv["lineItem"][0]["priceComponent"] = [{"type": "informational", "amount": {"value": 1}}]
    with pytest.raises(BillingMappingError, match="no base price"):
        invoice_from_fhir(inv, resolve)


def test_charge_item_price_override_prices_a_line_without_base_component(monkeypatch) -> None:
    monkeypatch.setitem(STORE, "ChargeItem/ci4", charge_item("ci4", "99213", 1, priceOverride={"value": 120}))
    inv = copy.deepcopy(INVOICE)
    inv["lineItem"] = [{"chargeItemReference": {"reference": "ChargeItem/ci4"}}]
    record = invoice_from_fhir(inv, resolve)
    assert isinstance(record, Invoice) and record.lines[0].unit_price == Decimal("120.00")


def test_claim_without_invoice_bills_the_coverage_payor_from_its_charge_items() -> None:
    record = invoice_from_claim(CLAIM, [VISIT, CBC], resolve)
    assert isinstance(record, Invoice)
    assert record.external_id == ExternalId("invoice", "Claim/c1") and record.ref == "Claim/c1"
    assert record.partner.ref == "Organization/acme" and record.post
    assert [(ln.product.default_code, ln.quantity, ln.unit_price) for ln in record.lines] == [
        ("99213", 1, Decimal("150.00")),
        ("85025", 2, Decimal("45.00")),
    ]
    assert record.invoice_date == date(2026, 11, 21) and record.narration == "Patient: Jane Q Doe"


def test_claim_uses_its_own_items_when_there_are_no_charge_items() -> None:
    record = invoice_from_claim({**CLAIM, "insurer": {"reference": "Organization/acme"}}, [], resolve)
    assert isinstance(record, Invoice)
    assert record.amount_untaxed == Decimal("240.00") and len(record.lines) == 2


def test_self_pay_claim_bills_the_patient_and_a_draft_claim_is_not_posted() -> None:
    claim = {**CLAIM, "status": "draft", "insurance": []}
    record = invoice_from_claim(claim, [], resolve)
    assert isinstance(record, Invoice)
    assert record.partner.ref == "Patient/p1" and record.post is False and record.narration is None


def test_cancelled_claim_becomes_a_cancellation() -> None:
    record = invoice_from_claim({**CLAIM, "status": "cancelled"}, [VISIT, CBC], resolve)
    assert isinstance(record, InvoiceCancellation) and record.invoice == ExternalId("invoice", "Claim/c1")


def test_charge_item_with_no_price_anywhere_is_a_mapping_error() -> None:
    other = charge_item("ci5", "80053", 1)
    with pytest.raises(BillingMappingError, match="no price"):
        invoice_from_claim(CLAIM, [other], resolve)


PAYREC = {
    "resourceType": "PaymentReconciliation",
    "id": "pr1",
    "status": "active",
    "created": "2026-11-25",
    "paymentDate": "2026-11-25",
    "paymentAmount": {"value": 390, "currency": "USD"},
    "paymentIdentifier": {"value": "ERA-0001"},
    "detail": [
        {
            "identifier": {"value": "d1"},
            "type": {"coding": [{"code": "payment"}]},
            "request": {"reference": "Invoice/inv-1"},
            "amount": {"value": 240, "currency": "USD"},
        },
        {
            "type": {"coding": [{"code": "payment"}]},
            "request": {"reference": "Claim/c1"},
            "date": "2026-11-26",
            "amount": {"value": 150, "currency": "USD"},
        },
        {
            "type": {"coding": [{"code": "adjustment"}]},
            "request": {"reference": "Task/t1"},
            "amount": {"value": 5, "currency": "USD"},
        },
    ],
}


def test_payment_reconciliation_details_become_payments_against_their_invoices() -> None:
    first, second = payments_from_payment_reconciliation(PAYREC)
    assert (first.invoice, first.amount, first.payment_date) == (
        ExternalId("invoice", "Invoice/inv-1"),
        240,
        date(2026, 11, 25),
    )
    assert (second.invoice, second.amount, second.payment_date) == (
        ExternalId("invoice", "Claim/c1"),
        150,
        date(2026, 11, 26),
    )
    assert first.ref == "PaymentReconciliation/pr1#detail-d1" and second.ref == "PaymentReconciliation/pr1#detail-1"
    assert first.external_id != second.external_id and first.external_id.kind == "payment"
    assert first.memo == "Remittance ERA-0001"


def test_single_detail_without_amount_takes_the_payment_amount() -> None:
    pr = {**PAYREC, "paymentAmount": {"value": 240}, "detail": [{"request": {"reference": "Invoice/inv-1"}}]}
    (payment,) = payments_from_payment_reconciliation(pr)
    assert payment.amount == 240


@pytest.mark.parametrize("status", ["cancelled", "entered-in-error"])
def test_voided_payment_reconciliation_projects_nothing(status: str) -> None:
    assert payments_from_payment_reconciliation({**PAYREC, "status": status}) == []


def test_payment_reconciliation_naming_no_invoice_is_a_mapping_error() -> None:
    with pytest.raises(BillingMappingError):
        payments_from_payment_reconciliation({**PAYREC, "detail": [PAYREC["detail"][2]]})


CLAIM_RESPONSE = {
    "resourceType": "ClaimResponse",
    "id": "cr1",
    "status": "active",
    "type": {"coding": [{"code": "professional"}]},
    "use": "claim",
    "patient": {"reference": "Patient/p1"},
    "created": "2026-11-25",
    "insurer": {"reference": "Organization/acme"},
    "request": {"reference": "Claim/c1"},
    "outcome": "complete",
    "payment": {
        "type": {"coding": [{"code": "complete"}]},
        "date": "2026-11-27",
        "amount": {"value": 200, "currency": "USD"},
        "identifier": {"value": "EFT-77"},
    },
}


def test_claim_response_payment_becomes_a_payment_against_the_claims_invoice() -> None:
    payment = payment_from_claim_response(CLAIM_RESPONSE)
    assert payment is not None
    assert (payment.invoice, payment.amount, payment.payment_date, payment.memo) == (
        ExternalId("invoice", "Claim/c1"),
        200,
        date(2026, 11, 27),
        "Remittance EFT-77",
    )
    billed_by_invoice = payment_from_claim_response(CLAIM_RESPONSE, ExternalId("invoice", "Invoice/inv-1"))
    assert billed_by_invoice is not None and billed_by_invoice.invoice == ExternalId("invoice", "Invoice/inv-1")


def test_claim_response_without_payment_projects_nothing() -> None:
    assert payment_from_claim_response({k: v for k, v in CLAIM_RESPONSE.items() if k != "payment"}) is None


def test_every_fixture_is_a_valid_r4_resource() -> None:
    from fhir.resources.R4B import get_fhir_model_class

    for resource in (PATIENT, GUARANTOR, PAYER, COVERAGE, VISIT, CBC, INVOICE, CLAIM, PAYREC, CLAIM_RESPONSE):
        clean = _drop_none(resource)
        model = get_fhir_model_class(clean["resourceType"]).model_validate(clean)
        assert model.id == clean["id"]


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value
