"""Pure mapping from FHIR R4 financial resources (plain dicts) to ERP-neutral billing records.

Nothing here talks to an ERP or a store: referenced resources come through a ``resolve`` callback
(``"Patient/1" -> dict | None``) that the caller backs with the store or a Bundle. Every failure is a
``BillingMappingError`` (an OperationOutcome-shaped 422), because a resource that cannot be mapped will not
map better on retry.

Choices worth knowing:
* Invoice status ``draft`` -> draft invoice; ``issued``/``balanced`` -> posted; ``cancelled``/
  ``entered-in-error`` -> ``InvoiceCancellation`` (cancel a draft, credit-note a posted invoice).
* Line price = sum of ``priceComponent`` base + surcharge - deduction - discount; tax components become
  explicit ``TaxRef``s (by code, else by factor). Quantity comes from the ChargeItem. When the net does not
  divide into a whole-cent unit price, the line is sent as quantity 1 at the net amount, so totals are exact.
* Product keys are the billing code; CPT and HCPCS codes go in as they are, local systems need a prefix
  (``MappingOptions.code_systems``) so that two systems' codes cannot meet in one ``default_code``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

from app.billing.records import (
    ExternalId,
    Invoice,
    InvoiceCancellation,
    InvoiceLine,
    Partner,
    Payment,
    Product,
    TaxRef,
)
from app.fhir.errors import UnprocessableEntity

Resource = Mapping[str, Any]
Resolver = Callable[[str], Resource | None]

CPT = "http://www.ama-assn.org/go/cpt"
HCPCS = "https://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets"
# system -> prefix put before the code in default_code ("" = the code as it is)
DEFAULT_CODE_SYSTEMS: Mapping[str, str] = {
    CPT: "",
    "urn:oid:2.16.840.1.113883.6.12": "",  # CPT by OID
    HCPCS: "",
    "http://www.cms.gov/Medicare/Coding/HCPCSReleaseCodeSets": "",
    "urn:oid:2.16.840.1.113883.6.285": "",  # HCPCS by OID
}
CENT = Decimal("0.01")
POSTED_STATUSES = {"issued", "balanced"}
VOID_STATUSES = {"cancelled", "entered-in-error"}


class BillingMappingError(UnprocessableEntity):
    details_code = "billing-mapping"


@dataclass(frozen=True)
class MappingOptions:
    code_systems: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_CODE_SYSTEMS))


DEFAULT_OPTIONS = MappingOptions()


# ---------------------------------------------------------------------------------------------------------------
# small readers
# ---------------------------------------------------------------------------------------------------------------
def _identity(resource: Resource) -> str:
    rtype, rid = resource.get("resourceType"), resource.get("id")
    if not rtype or not rid:
        raise BillingMappingError("A billed resource needs resourceType and id", expression=["id"])
    return f"{rtype}/{rid}"


def _money(value: Any, where: str) -> Decimal:
    if isinstance(value, Mapping):
        value = value.get("value")
    if value is None or isinstance(value, bool):
        raise BillingMappingError(f"{where} has no amount", expression=[where])
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise BillingMappingError(f"{where} is not a number", expression=[where]) from None


def _date(value: Any) -> date | None:
    if not value:
        return None
    try:
        return date.fromisoformat(str(value)[:10])
    except ValueError:
        raise BillingMappingError(f"{value!r} is not a FHIR date") from None


def _ref(reference: Any) -> str | None:
    if isinstance(reference, Mapping):
        reference = reference.get("reference")
    if not isinstance(reference, str) or not reference or reference.startswith("#"):
        return None
    parts = reference.split("/")  # relative, or absolute URL ending in Type/id[/_history/n]
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return "/".join(parts[-2:]) if len(parts) >= 2 else None


def _resolve(reference: Any, resolve: Resolver, where: str) -> Resource:
    ref = _ref(reference)
    found = resolve(ref) if ref else None
    if found is None:
        raise BillingMappingError(f"{where} refers to {ref or 'nothing'}, which cannot be resolved", expression=[where])
    return found


def _human_name(names: Sequence[Mapping[str, Any]] | None) -> str | None:
    if not names:
        return None
    chosen = next((n for n in names if n.get("use") == "official"), names[0])
    if chosen.get("text"):
        return str(chosen["text"])
    parts = [*chosen.get("given", []), chosen.get("family", "")]
    return " ".join(p for p in parts if p) or None


def _telecom(resource: Resource, system: str) -> str | None:
    for cp in resource.get("telecom", []) or []:
        if cp.get("system") == system and cp.get("value"):
            return str(cp["value"])
    return None


def _address_fields(resource: Resource) -> dict[str, str | None]:
    addresses = resource.get("address", []) or []
    if not addresses:
        return {}
    chosen = next((a for a in addresses if a.get("use") in ("billing", "home")), addresses[0])
    lines = chosen.get("line", []) or []
    country = chosen.get("country")
    return {
        "street": lines[0] if lines else None,
        "street2": ", ".join(lines[1:]) or None,
        "city": chosen.get("city"),
        "zip": chosen.get("postalCode"),
        "country_code": country.upper() if isinstance(country, str) and len(country) == 2 else None,
    }


def _first_coding(concept: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    for coding in (concept or {}).get("coding", []) or []:
        if coding.get("code"):
            return coding
    return None


# ---------------------------------------------------------------------------------------------------------------
# partners
# ---------------------------------------------------------------------------------------------------------------
def partner_from_person(resource: Resource) -> Partner:
    """Patient or RelatedPerson (e.g. a guarantor) -> a person partner."""
    if resource.get("resourceType") not in ("Patient", "RelatedPerson"):
        raise BillingMappingError(f"{resource.get('resourceType')} is not a person")
    ident = _identity(resource)
    name = _human_name(resource.get("name"))
    if not name:
        raise BillingMappingError(f"{resource['resourceType']} has no name to bill", expression=["name"])
    return Partner(
        external_id=ExternalId("partner", ident),
        ref=ident,
        name=name,
        is_company=False,
        email=_telecom(resource, "email"),
        phone=_telecom(resource, "phone"),
        **_address_fields(resource),
    )


def partner_from_organization(resource: Resource) -> Partner:
    """A payer (or any billed) Organization -> a company partner; a TAX identifier becomes the VAT number."""
    if resource.get("resourceType") != "Organization":
        raise BillingMappingError(f"{resource.get('resourceType')} is not an Organization")
    ident = _identity(resource)
    if not resource.get("name"):
        raise BillingMappingError("Organization has no name to bill", expression=["name"])
    vat = None
    for identifier in resource.get("identifier", []) or []:
        codes = {c.get("code") for c in (identifier.get("type") or {}).get("coding", []) or []}
        if "TAX" in codes and identifier.get("value"):
            vat = str(identifier["value"])
            break
    return Partner(
        external_id=ExternalId("partner", ident),
        ref=ident,
        name=str(resource["name"]),
        is_company=True,
        email=_telecom(resource, "email"),
        phone=_telecom(resource, "phone"),
        vat=vat,
        **_address_fields(resource),
    )


def partner_from_resource(resource: Resource) -> Partner:
    if resource.get("resourceType") == "Organization":
        return partner_from_organization(resource)
    return partner_from_person(resource)


# ---------------------------------------------------------------------------------------------------------------
# products
# ---------------------------------------------------------------------------------------------------------------
def _billing_coding(concept: Mapping[str, Any] | None, options: MappingOptions) -> tuple[str, str, str]:
    """(system, code, name) of the first coding from a known billing code system."""
    codings = [c for c in (concept or {}).get("coding", []) or [] if c.get("code")]
    known = [c for c in codings if c.get("system") in options.code_systems]
    if not known:
        systems = sorted({str(c.get("system")) for c in codings}) or ["none"]
        raise BillingMappingError(
            f"No billing code from a known system (got {', '.join(systems)}); add the system to the code systems",
            expression=["code"],
        )
    coding = known[0]
    code = str(coding["code"])
    return str(coding["system"]), code, str(coding.get("display") or (concept or {}).get("text") or code)


def product_from_code(concept: Mapping[str, Any] | None, options: MappingOptions = DEFAULT_OPTIONS) -> Product:
    """A billing CodeableConcept (ChargeItem.code, Claim.item.productOrService) -> a service product."""
    system, code, name = _billing_coding(concept, options)
    return Product(
        external_id=ExternalId("product", f"{system}|{code}"),
        default_code=f"{options.code_systems[system]}{code}",
        name=name,
        system=system,
    )


# ---------------------------------------------------------------------------------------------------------------
# invoices
# ---------------------------------------------------------------------------------------------------------------
def _tax_ref(component: Mapping[str, Any]) -> TaxRef:
    coding = _first_coding(component.get("code"))
    code = str(coding["code"]) if coding else (component.get("code") or {}).get("text")
    rate = Decimal(str(component["factor"])) if component.get("factor") is not None else None
    if not code and rate is None:
        raise BillingMappingError("A tax priceComponent needs a code or a factor", expression=["priceComponent"])
    return TaxRef(code=code, rate=rate)


def _split_price(net: Decimal, quantity: Decimal) -> tuple[Decimal, Decimal]:
    """(quantity, unit price) whose product is exactly ``net`` at cent precision."""
    if quantity > 0:
        unit = (net / quantity).quantize(CENT, rounding=ROUND_HALF_UP)
        if unit * quantity == net:
            return quantity, unit
    return Decimal(1), net


def _description(product: Product, when: Any) -> str:
    day = _date(when)
    return " ".join(
        p
        for p in (
            product.default_code,
            product.name if product.name != product.default_code else "",
            day.isoformat() if day else "",
        )
        if p
    )


def _line_from_components(
    product: Product,
    components: Sequence[Mapping[str, Any]],
    quantity: Decimal,
    fallback_net: Decimal | None,
    when: Any,
    where: str,
) -> InvoiceLine:
    net = Decimal(0)
    has_base = False
    taxes: list[TaxRef] = []
    for comp in components:
        ctype = comp.get("type")
        if ctype == "base":
            has_base = True
            net += _money(comp.get("amount"), f"{where}.priceComponent.amount")
        elif ctype == "surcharge":
            net += _money(comp.get("amount"), f"{where}.priceComponent.amount")
        elif ctype in ("deduction", "discount"):
            net -= abs(_money(comp.get("amount"), f"{where}.priceComponent.amount"))
        elif ctype == "tax":
            taxes.append(_tax_ref(comp))
    if not has_base:
        if fallback_net is None:
            raise BillingMappingError(f"{where} has no base price", expression=[where])
        net = fallback_net
    qty, unit = _split_price(net.quantize(CENT, rounding=ROUND_HALF_UP), quantity)
    return InvoiceLine(product, _description(product, when), qty, unit, tuple(taxes))


def _quantity(charge_item: Resource | None) -> Decimal:
    value = ((charge_item or {}).get("quantity") or {}).get("value")
    return Decimal(str(value)) if value is not None else Decimal(1)


def _cancellation(invoice: Invoice, reason: str) -> InvoiceCancellation:
    credit = Invoice(
        external_id=ExternalId("credit_note", invoice.ref),
        ref=invoice.ref,
        kind="credit_note",
        partner=invoice.partner,
        lines=invoice.lines,
        post=True,
        invoice_date=invoice.invoice_date,
        payment_reference=invoice.payment_reference,
        narration=reason,
        currency=invoice.currency,
        reversed_invoice=invoice.external_id,
    )
    return InvoiceCancellation(invoice=invoice.external_id, credit_note=credit, reason=reason)


def invoice_from_fhir(
    invoice: Resource, resolve: Resolver, options: MappingOptions = DEFAULT_OPTIONS
) -> Invoice | InvoiceCancellation:
    """FHIR Invoice -> a customer invoice (one line per lineItem), or its cancellation."""
    if invoice.get("resourceType") != "Invoice":
        raise BillingMappingError("Expected an Invoice")
    ident = _identity(invoice)
    status = invoice.get("status")
    if status not in POSTED_STATUSES | VOID_STATUSES | {"draft"}:
        raise BillingMappingError(f"Invoice status {status!r} cannot be billed", expression=["status"])
    payer_ref = invoice.get("recipient") or invoice.get("subject")
    partner = partner_from_resource(_resolve(payer_ref, resolve, "Invoice.recipient"))
    lines: list[InvoiceLine] = []
    items = sorted(enumerate(invoice.get("lineItem", []) or []), key=lambda p: (p[1].get("sequence", p[0]), p[0]))
    for idx, item in items:
        where = f"Invoice.lineItem[{idx}]"
        charge_item = None
        if item.get("chargeItemReference"):
            charge_item = _resolve(item["chargeItemReference"], resolve, f"{where}.chargeItemReference")
            product = product_from_code(charge_item.get("code"), options)
        else:
            product = product_from_code(item.get("chargeItemCodeableConcept"), options)
        override = (charge_item or {}).get("priceOverride")
        fallback = _money(override, f"{where}.priceOverride") if override else None
        when = (charge_item or {}).get("occurrenceDateTime") or ((charge_item or {}).get("occurrencePeriod") or {}).get(
            "start"
        )
        lines.append(
            _line_from_components(
                product, item.get("priceComponent", []) or [], _quantity(charge_item), fallback, when, where
            )
        )
    if not lines:
        raise BillingMappingError("Invoice has no lineItem to bill", expression=["lineItem"])
    identifiers = [i.get("value") for i in invoice.get("identifier", []) or [] if i.get("value")]
    record = Invoice(
        external_id=ExternalId("invoice", ident),
        ref=ident,
        kind="invoice",
        partner=partner,
        lines=tuple(lines),
        post=status in POSTED_STATUSES,
        invoice_date=_date(invoice.get("date")),
        payment_reference=str(identifiers[0]) if identifiers else invoice.get("id"),
        narration=_patient_note(invoice.get("subject"), payer_ref, resolve),
        currency=((invoice.get("totalNet") or invoice.get("totalGross") or {}).get("currency")),
    )
    if status in VOID_STATUSES:
        return _cancellation(record, f"FHIR {ident} {status}")
    return record


def _patient_note(subject: Any, payer: Any, resolve: Resolver) -> str | None:
    """Name the patient on the invoice when someone else (a payer, a guarantor) is billed."""
    if not subject or _ref(subject) == _ref(payer):
        return None
    patient = resolve(_ref(subject) or "")
    name = _human_name((patient or {}).get("name")) if patient else None
    return f"Patient: {name}" if name else None


def _claim_payer(claim: Resource, resolve: Resolver) -> Any:
    if claim.get("insurer"):
        return claim["insurer"]
    insurances = claim.get("insurance", []) or []
    focal = next((i for i in insurances if i.get("focal")), insurances[0] if insurances else None)
    if focal and focal.get("coverage"):
        coverage = resolve(_ref(focal["coverage"]) or "")
        payors = (coverage or {}).get("payor", []) or []
        if payors:
            return payors[0]
    return claim.get("patient")  # self-pay


def invoice_from_claim(
    claim: Resource,
    charge_items: Iterable[Resource],
    resolve: Resolver,
    options: MappingOptions = DEFAULT_OPTIONS,
) -> Invoice | InvoiceCancellation:
    """A Claim billed without a FHIR Invoice -> an invoice to the payer, one line per ChargeItem.

    Without ChargeItems the Claim's own items are used. A ChargeItem's price is its ``priceOverride``, else
    the Claim item with the same code (``net``, or ``unitPrice`` x quantity).
    """
    if claim.get("resourceType") != "Claim":
        raise BillingMappingError("Expected a Claim")
    ident = _identity(claim)
    status = claim.get("status")
    if status not in ("active", "draft", *VOID_STATUSES):
        raise BillingMappingError(f"Claim status {status!r} cannot be billed", expression=["status"])
    payer_ref = _claim_payer(claim, resolve)
    partner = partner_from_resource(_resolve(payer_ref, resolve, "Claim.insurer"))
    claim_items = claim.get("item", []) or []
    priced: dict[tuple[str, str], Decimal] = {}
    for item in claim_items:
        coding = _first_coding(item.get("productOrService"))
        if coding:
            priced[(str(coding.get("system")), str(coding["code"]))] = _claim_item_net(item)
    lines: list[InvoiceLine] = []
    charge_items = list(charge_items)
    if charge_items:
        for idx, ci in enumerate(charge_items):
            where = f"ChargeItem[{idx}]"
            product = product_from_code(ci.get("code"), options)
            system, code, _ = _billing_coding(ci.get("code"), options)
            qty = _quantity(ci)
            if ci.get("priceOverride"):
                net = _money(ci["priceOverride"], f"{where}.priceOverride")
            elif (system, code) in priced:
                net = priced[(system, code)]
            else:
                raise BillingMappingError(f"{where} has no price (no priceOverride, no Claim item with its code)")
            q, unit = _split_price(net.quantize(CENT, rounding=ROUND_HALF_UP), qty)
            lines.append(InvoiceLine(product, _description(product, ci.get("occurrenceDateTime")), q, unit))
    else:
        for item in claim_items:
            product = product_from_code(item.get("productOrService"), options)
            qty = Decimal(str((item.get("quantity") or {}).get("value", 1)))
            q, unit = _split_price(_claim_item_net(item).quantize(CENT, rounding=ROUND_HALF_UP), qty)
            lines.append(InvoiceLine(product, _description(product, item.get("servicedDate")), q, unit))
    if not lines:
        raise BillingMappingError("Claim has no items or ChargeItems to bill", expression=["item"])
    record = Invoice(
        external_id=ExternalId("invoice", ident),
        ref=ident,
        kind="invoice",
        partner=partner,
        lines=tuple(lines),
        post=status == "active",
        invoice_date=_date(claim.get("created")),
        payment_reference=claim.get("id"),
        narration=_patient_note(claim.get("patient"), payer_ref, resolve),
        currency=(claim.get("total") or {}).get("currency"),
    )
    if status in VOID_STATUSES:
        return _cancellation(record, f"FHIR {ident} {status}")
    return record


def _claim_item_net(item: Mapping[str, Any]) -> Decimal:
    if item.get("net"):
        return _money(item["net"], "Claim.item.net")
    qty = Decimal(str((item.get("quantity") or {}).get("value", 1)))
    return _money(item.get("unitPrice"), "Claim.item.unitPrice") * qty


# ---------------------------------------------------------------------------------------------------------------
# payments
# ---------------------------------------------------------------------------------------------------------------
def _invoice_key(reference: Any) -> ExternalId | None:
    ref = _ref(reference)
    if ref and ref.split("/")[0] in ("Invoice", "Claim"):
        return ExternalId("invoice", ref)
    return None


def payments_from_payment_reconciliation(resource: Resource) -> list[Payment]:
    """One payment per detail whose ``request`` is an Invoice or Claim, for the detail's amount (or the
    ``paymentAmount`` when there is one such detail). A cancelled or entered-in-error remittance yields nothing:
    undoing a posted payment is a person's decision in the ERP."""
    if resource.get("resourceType") != "PaymentReconciliation":
        raise BillingMappingError("Expected a PaymentReconciliation")
    ident = _identity(resource)
    if resource.get("status") in VOID_STATUSES:
        return []
    details = resource.get("detail", []) or []
    targets = [(i, d, _invoice_key(d.get("request"))) for i, d in enumerate(details)]
    targets = [t for t in targets if t[2] is not None]
    if not targets:
        raise BillingMappingError(
            "PaymentReconciliation has no detail whose request is an Invoice or Claim", expression=["detail"]
        )
    paid_on = _date(resource.get("paymentDate"))
    if paid_on is None:
        raise BillingMappingError("PaymentReconciliation has no paymentDate", expression=["paymentDate"])
    remittance = ((resource.get("paymentIdentifier") or {}).get("value")) or resource.get("id")
    out = []
    for idx, detail, invoice in targets:
        if detail.get("amount"):
            amount = _money(detail["amount"], f"PaymentReconciliation.detail[{idx}].amount")
        elif len(targets) == 1:
            amount = _money(resource.get("paymentAmount"), "PaymentReconciliation.paymentAmount")
        else:
            raise BillingMappingError(f"PaymentReconciliation.detail[{idx}] has no amount")
        if amount <= 0:
            continue  # a zero or negative detail is an adjustment, not money received
        key = f"{ident}#detail-{(detail.get('identifier') or {}).get('value') or idx}"
        assert invoice is not None
        out.append(
            Payment(
                external_id=ExternalId("payment", key),
                ref=key,
                invoice=invoice,
                amount=amount,
                payment_date=_date(detail.get("date")) or paid_on,
                memo=f"Remittance {remittance}",
            )
        )
    return out


def payment_from_claim_response(resource: Resource, invoice: ExternalId | None = None) -> Payment | None:
    """ClaimResponse.payment -> a payment against the Claim's invoice (or ``invoice`` when billed otherwise)."""
    if resource.get("resourceType") != "ClaimResponse":
        raise BillingMappingError("Expected a ClaimResponse")
    ident = _identity(resource)
    payment = resource.get("payment")
    if not payment or resource.get("status") in VOID_STATUSES:
        return None
    target = invoice or _invoice_key(resource.get("request"))
    if target is None:
        raise BillingMappingError("ClaimResponse.request does not name a Claim", expression=["request"])
    amount = _money(payment.get("amount"), "ClaimResponse.payment.amount")
    if amount <= 0:
        return None
    paid_on = _date(payment.get("date"))
    if paid_on is None:
        raise BillingMappingError("ClaimResponse.payment has no date", expression=["payment.date"])
    remittance = (payment.get("identifier") or {}).get("value") or resource.get("id")
    return Payment(
        external_id=ExternalId("payment", f"{ident}#payment"),
        ref=f"{ident}#payment",
        invoice=target,
        amount=amount,
        payment_date=paid_on,
        memo=f"Remittance {remittance}",
    )


# ---------------------------------------------------------------------------------------------------------------
# standalone ChargeItems (an HL7v2 DFT feed, or a FHIR client that sends charges but no Invoice/Claim)
# ---------------------------------------------------------------------------------------------------------------
EXT_TRANSACTION_TYPE = "https://interlace.dev/fhir/StructureDefinition/v2-transaction-type"
# v2 table 0017: CD is the standard "credit"; CR is what some senders use for the same thing
CREDIT_TRANSACTION_TYPES = frozenset({"CD", "CR"})


def _transaction_type(charge_item: Resource) -> str | None:
    for ext in charge_item.get("extension", []) or []:
        if ext.get("url") == EXT_TRANSACTION_TYPE:
            return str((ext.get("valueCoding") or {}).get("code") or "").upper() or None
    return None


def charge_item_net(charge_item: Resource, where: str = "ChargeItem") -> Decimal:
    """The line amount of a ChargeItem: its ``priceOverride`` (the line total, as for Claims), negative for a
    credit (FT1-6 CD/CR) whatever sign the sender used."""
    net = _money(charge_item.get("priceOverride"), f"{where}.priceOverride")
    if _transaction_type(charge_item) in CREDIT_TRANSACTION_TYPES:
        net = -abs(net)
    return net.quantize(CENT, rounding=ROUND_HALF_UP)


def charge_item_payer(charge_item: Resource, resolve: Resolver) -> Any:
    """Who a standalone charge is billed to: the guarantor of its Account (first ``guarantor.party``), else its
    subject (the patient)."""
    for account_ref in charge_item.get("account", []) or []:
        account = resolve(_ref(account_ref) or "")
        for guarantor in (account or {}).get("guarantor", []) or []:
            if guarantor.get("onHold"):
                continue
            if _ref(guarantor.get("party")):
                return guarantor["party"]
    return charge_item.get("subject")


def invoice_from_charge_items(
    source: str,
    charge_items: Sequence[Resource],
    resolve: Resolver,
    options: MappingOptions = DEFAULT_OPTIONS,
) -> Invoice:
    """Billable ChargeItems of one Encounter or Account -> one posted invoice, one line per ChargeItem.

    ``source`` is the stable business key of the document (``Encounter/e1#charges``); it becomes the external id
    and the ERP ``ref``. A credit is a negative line; when the credits outweigh the charges the document is a
    credit note with the signs turned, because an ERP will not post an invoice with a negative total.
    """
    if not charge_items:
        raise BillingMappingError("No ChargeItem to bill", expression=["ChargeItem"])
    first = charge_items[0]
    payer_ref = charge_item_payer(first, resolve)
    partner = partner_from_resource(_resolve(payer_ref, resolve, "ChargeItem.subject"))
    lines: list[InvoiceLine] = []
    days: list[date] = []
    currencies = set()
    for idx, ci in enumerate(charge_items):
        where = f"ChargeItem[{idx}]"
        product = product_from_code(ci.get("code"), options)
        when = ci.get("occurrenceDateTime") or (ci.get("occurrencePeriod") or {}).get("start")
        day = _date(when)
        if day:
            days.append(day)
        if (ci.get("priceOverride") or {}).get("currency"):
            currencies.add(ci["priceOverride"]["currency"])
        q, unit = _split_price(charge_item_net(ci, where), _quantity(ci))
        lines.append(InvoiceLine(product, _description(product, when), q, unit))
    if len(currencies) > 1:
        raise BillingMappingError(f"ChargeItems of {source} are in more than one currency: {sorted(currencies)}")
    kind: Any = "invoice"
    if sum((ln.subtotal for ln in lines), Decimal(0)) < 0:
        kind = "credit_note"
        lines = [InvoiceLine(ln.product, ln.description, ln.quantity, -ln.unit_price, ln.taxes) for ln in lines]
    return Invoice(
        external_id=ExternalId("invoice", source),  # one key per document, whichever way its total falls
        ref=source,
        kind=kind,
        partner=partner,
        lines=tuple(lines),
        post=True,
        invoice_date=max(days) if days else None,
        payment_reference=source.split("/", 1)[0] + " charges",  # no FHIR id: it is printed for the customer
        narration=_patient_note(first.get("subject"), payer_ref, resolve),
        currency=currencies.pop() if currencies else None,
    )
