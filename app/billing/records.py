"""ERP-neutral billing records: what the ERP gets, nothing Odoo-specific.

Each record carries an ``ExternalId`` derived from the FHIR identity it came from (``Invoice/123``). The
gateway binds the ERP record to that id (in Odoo: an ir.model.data row ``<module>.invoice_<sha1>``) and
looks it up before every write, which is how a repeated event reaches the ERP exactly once.
Money is ``Decimal``; the adapter decides how to put it on the wire.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Literal

ExternalKind = Literal["partner", "product", "invoice", "credit_note", "payment"]


@dataclass(frozen=True)
class ExternalId:
    """A stable key for one ERP record: ``kind`` plus the FHIR identity (``source``) it projects.

    The name is ``<kind>_<sha1(source)>``: letters, digits and ``_`` only (safe as an Odoo xmlid), fixed
    length, and free of the FHIR id itself (no PHI in ERP keys).
    """

    kind: ExternalKind
    source: str

    @property
    def name(self) -> str:
        return f"{self.kind}_{hashlib.sha1(self.source.encode('utf-8')).hexdigest()}"

    def qualified(self, module: str) -> str:
        return f"{module}.{self.name}"


@dataclass(frozen=True)
class Partner:
    """A person (patient, guarantor) or a company (payer) to invoice."""

    external_id: ExternalId
    ref: str  # the FHIR reference, e.g. "Patient/123": a second, human-readable business key
    name: str
    is_company: bool = False
    email: str | None = None
    phone: str | None = None
    street: str | None = None
    street2: str | None = None
    city: str | None = None
    zip: str | None = None
    country_code: str | None = None  # ISO 3166-1 alpha-2
    vat: str | None = None


@dataclass(frozen=True)
class TaxRef:
    """A tax named by the source (a code, or a rate when no code is given); the adapter maps it to an ERP tax."""

    code: str | None = None
    rate: Decimal | None = None  # 0.15 for 15 %

    @property
    def key(self) -> str:
        if self.code:
            return self.code
        if self.rate is not None:
            return f"{(self.rate * 100).normalize():f}%"
        return ""


@dataclass(frozen=True)
class Product:
    """A billable service identified by its billing code (CPT, HCPCS or a local code)."""

    external_id: ExternalId
    default_code: str
    name: str
    system: str = ""
    list_price: Decimal | None = None
    taxes: tuple[TaxRef, ...] = ()  # the product's default taxes; empty means "no tax", said explicitly


@dataclass(frozen=True)
class InvoiceLine:
    product: Product
    description: str
    quantity: Decimal
    unit_price: Decimal
    taxes: tuple[TaxRef, ...] = ()  # always sent explicitly, so ERP product defaults never creep in
    discount_percent: Decimal = Decimal(0)

    @property
    def subtotal(self) -> Decimal:
        return (self.quantity * self.unit_price * (1 - self.discount_percent / 100)).quantize(Decimal("0.01"))


@dataclass(frozen=True)
class Invoice:
    """A customer invoice or credit note. ``post`` says whether it should be final (posted) in the ERP."""

    external_id: ExternalId
    ref: str  # FHIR identity, e.g. "Invoice/123" or "Claim/9"
    kind: Literal["invoice", "credit_note"]
    partner: Partner
    lines: tuple[InvoiceLine, ...]
    post: bool = True
    invoice_date: date | None = None
    payment_reference: str | None = None
    narration: str | None = None
    currency: str | None = None
    reversed_invoice: ExternalId | None = None  # for a credit note: the invoice it corrects

    @property
    def amount_untaxed(self) -> Decimal:
        return sum((line.subtotal for line in self.lines), Decimal(0))


@dataclass(frozen=True)
class InvoiceCancellation:
    """Take back an invoice: cancel it while it is a draft, otherwise post ``credit_note`` against it."""

    invoice: ExternalId
    credit_note: Invoice
    reason: str = ""


@dataclass(frozen=True)
class Payment:
    """Money received against one invoice (a PaymentReconciliation detail, a ClaimResponse payment)."""

    external_id: ExternalId
    ref: str  # FHIR identity of the payment line, e.g. "PaymentReconciliation/7#detail-0"
    invoice: ExternalId
    amount: Decimal
    payment_date: date
    memo: str = ""  # remittance text; the adapter puts it where the ERP shows it (Odoo 17: payment.ref)
    journal_code: str | None = None  # override the gateway's default payment journal
