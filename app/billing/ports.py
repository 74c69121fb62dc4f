"""What billing needs from an ERP: the ``ErpGateway`` port and the errors a worker classifies.

Every gateway operation is an idempotent upsert keyed by the record's external id, so a worker may repeat
it after any failure. Errors say only whether a retry can help (``transient``); adapters subclass these with
the ERP's own detail. Today's adapter is Odoo JSON-RPC (app/adapters/odoo_gateway.py); Odoo 19's JSON-2
API can be a second implementation of the same Protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from app.billing.records import ExternalId, Invoice, InvoiceCancellation, Partner, Payment, Product


class ErpError(Exception):
    """Root of every gateway failure. ``transient`` tells the worker whether to retry with backoff."""

    transient: bool = False
    code: str = "erp-error"


class TransientErpError(ErpError):
    """Retry later with backoff: connection errors, timeouts, 5xx, serialization failures."""

    transient = True
    code = "erp-unavailable"


class ErpNotReady(TransientErpError):
    """A record this one depends on is not in the ERP yet (e.g. a payment before its invoice); retry later."""

    code = "erp-not-ready"


class PermanentErpError(ErpError):
    """A retry cannot help: dead-letter the event and tell a person."""

    code = "erp-rejected"


class ErpAuthError(PermanentErpError):
    """Bad login or API key. Alert; do not retry hot (each failed check costs the ERP CPU)."""

    code = "erp-auth"


class ErpConfigError(PermanentErpError):
    """Access rights, unknown database, missing journal/tax mapping, or a call the ERP does not understand."""

    code = "erp-config"


class ErpDataError(PermanentErpError):
    """The ERP refused the data or the state change (constraint, business rule, ambiguous business key)."""

    code = "erp-data"


class ErpMissingError(PermanentErpError):
    """A record the mapping points at no longer exists in the ERP: re-resolve the mapping."""

    code = "erp-missing"


@dataclass(frozen=True)
class InvoiceState:
    """Read-back of an invoice or credit note in the ERP."""

    erp_id: int
    state: str  # draft | posted | cancel
    payment_state: str  # not_paid | partial | in_payment | paid | reversed | ...
    amount_total: Decimal
    amount_residual: Decimal
    number: str | None = None

    @property
    def settled(self) -> bool:
        # Enterprise shows in_payment until the bank matches; both mean the customer paid.
        return self.payment_state in ("paid", "in_payment", "reversed")


class ErpGateway(Protocol):
    """Idempotent projection of billing records into an ERP. Every method may be repeated safely."""

    def upsert_partner(self, partner: Partner) -> int: ...

    def upsert_product(self, product: Product) -> int: ...

    def upsert_invoice(self, invoice: Invoice) -> InvoiceState: ...

    def register_payment(self, payment: Payment) -> int: ...

    def cancel_invoice(self, cancellation: InvoiceCancellation) -> InvoiceState | None: ...

    def invoice_state(self, external_id: ExternalId) -> InvoiceState | None: ...
