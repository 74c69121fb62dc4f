"""ERP projection: the use case behind the ``erp`` consumer of resource-change events.

For a change of a financial resource it reads the *current* resources through the store, maps them with
``app.billing`` and calls the ``ErpGateway`` (every gateway call is an idempotent upsert under an external id), then
records the outcome twice: in the projection state (``ProjectionStates``) and in the FHIR resource itself, as the
``erp-projection`` extension (ERP model, record ids, number, state, payment_state).

What makes it safe to run again and again:
* Idempotence: the gateway binds every ERP record to an external id derived from the FHIR identity; this use case
  never creates anything by itself.
* No event loop: the write-back is a store update, so it makes an event too. The projection state keeps a hash of
  the resource's *business content* (without ``meta`` and without our extension); an event whose content hash is
  the one already projected is a no-op (it only restores a missing write-back). A resend of unchanged resources
  is the same no-op. Replays (``event.force``) skip this check.
* Ordering: events carry no data, only "X changed"; the current version is read, so late or repeated events
  converge. A payment whose invoice is not in the ERP yet raises ``ErpNotReady`` and is retried by the bus.
* Errors: gateway errors say whether they are transient; mapping errors (``BillingMappingError``) are permanent.
  The bus retries or dead-letters; ``failed`` records the error class and message in the projection state.

Which resources: Invoice (and Claim when ``bill_claims``), PaymentReconciliation and ClaimResponse payments,
ChargeItem codes (products), and Patient/RelatedPerson/Organization once they have been billed (partners).
Coverage is read when a Claim needs its payer, never pushed by itself.

Standalone ChargeItems (``bill_charge_items``: ``per-encounter`` or ``per-account``; an HL7v2 DFT^P03 makes only
ChargeItems) are billed the way a finance team expects a visit to be billed:
* The billable ChargeItems (status ``billable``) of one Encounter (``ChargeItem.context``) or Account
  (``ChargeItem.account``) that no Invoice (``lineItem.chargeItemReference``) and no billed Claim (same encounter)
  covers become one posted customer invoice, one line per ChargeItem, to the Account's guarantor or else the
  patient. Its business key is ``Encounter/<id>#charges`` (external id and ERP ``ref``), so a resend of the same
  charges finds it and changes nothing.
* A posted invoice is never rewritten. Charges that arrive for the encounter after it was posted become a second
  invoice for the new charges only, keyed by the group plus a hash of those ChargeItem ids
  (``Encounter/<id>#charges-<sha1[:12]>``); a resend of them finds that one again.
* A credit (FT1-6 ``CD``, or ``CR``) is a negative line; a document whose total is negative is a credit note.
* Which ChargeItem went on which document is kept in the projection state of the group (``Encounter/<id>``,
  ``erp_refs.batches``), written *before* the ERP call (an intent), so a crash between the ERP write and the
  state write cannot bill a charge twice: the retry upserts the same document under the same key.
* A ChargeItem changed after it was billed is not re-billed: corrections come as credits (as v2 senders do).
* Coverage is decided when a charge is billed: an Invoice or Claim that arrives later for charges already billed
  here is billed too. Charge billing is for feeds that send charges only.
* Limits: two ``erp`` consumers working on two charges of one group at the same moment are not serialised
  against each other (the bus leases one resource, not a group); run one consumer per group or accept that the
  later one may wait for its retry.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from app.billing.fhir_mapping import (
    DEFAULT_OPTIONS,
    VOID_STATUSES,
    BillingMappingError,
    MappingOptions,
    invoice_from_charge_items,
    invoice_from_claim,
    invoice_from_fhir,
    partner_from_resource,
    payment_from_claim_response,
    payments_from_payment_reconciliation,
    product_from_code,
)
from app.billing.ports import ErpGateway, InvoiceState
from app.billing.records import ExternalId, Invoice, InvoiceCancellation, Payment
from app.fhir.errors import Gone, NotFound, PreconditionFailed
from app.fhir.store import ResourceStore, StoreSession
from app.services.events import Event, ProjectionState, ProjectionStates, describe_error, is_waiting

log = logging.getLogger("interlace.erp")

CONSUMER = "erp"
EXT_ERP = "https://interlace.dev/fhir/StructureDefinition/erp-projection"
PARTY_TYPES = frozenset({"Patient", "RelatedPerson", "Organization"})
BILLED_TYPES = frozenset({"Invoice", "Claim"})
PAYMENT_TYPES = frozenset({"PaymentReconciliation", "ClaimResponse"})
RESOURCE_TYPES = PARTY_TYPES | BILLED_TYPES | PAYMENT_TYPES | {"ChargeItem"}
WRITE_BACK_RETRIES = 3


@dataclass(frozen=True)
class ErpSyncOptions:
    mapping: MappingOptions = DEFAULT_OPTIONS
    bill_claims: bool = False  # Claims (with their ChargeItems) become invoices when no FHIR Invoice is used
    bill_charge_items: str = "off"  # standalone ChargeItems: off | per-encounter | per-account
    erp_name: str = "odoo"
    write_back: bool = True


@dataclass
class _Outcome:
    status: str = "projected"
    refs: dict[str, Any] = field(default_factory=dict)
    payment_state: str | None = None
    message: str | None = None
    settled_invoices: list[tuple[str, InvoiceState]] = field(default_factory=list)  # payment_state to write back
    parties: dict[str, Mapping[str, Any]] = field(default_factory=dict)  # partners billed: ref -> resource


def business_hash(resource: Mapping[str, Any]) -> str:
    """Hash of what the ERP sees: the resource without ``meta`` and without the erp-projection extension."""
    body = {k: v for k, v in resource.items() if k != "meta"}
    exts = [e for e in body.get("extension", []) or [] if e.get("url") != EXT_ERP]
    if exts:
        body["extension"] = exts
    else:
        body.pop("extension", None)
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _split(reference: str) -> tuple[str, str]:
    rtype, _, rid = reference.partition("/")
    return rtype, rid


def _reference(value: Any) -> str | None:
    ref = value.get("reference") if isinstance(value, Mapping) else None
    return ref if isinstance(ref, str) and "/" in ref and not ref.startswith(("#", "urn:")) else None


@dataclass
class _ChargeGroup:
    """The billable, uncovered ChargeItems of one Encounter/Account, read in one snapshot."""

    group: str  # "Encounter/e1"
    charge_items: dict[str, dict[str, Any]]  # "ChargeItem/x" -> resource


def _batch_key(group: str, refs: list[str]) -> str:
    digest = hashlib.sha1(",".join(sorted(refs)).encode("utf-8")).hexdigest()[:12]
    return f"{group}#charges-{digest}"


class ErpSync:
    """``EventHandler`` named ``erp``. ``registry`` (optional, ``app.fhir.registry``) lets a billed Claim find its
    ChargeItems by encounter; without it a Claim is billed from its own items."""

    name = CONSUMER
    resource_types: frozenset[str] | None = RESOURCE_TYPES

    def __init__(
        self,
        store: ResourceStore,
        gateway: ErpGateway,
        states: ProjectionStates,
        options: ErpSyncOptions | None = None,
        *,
        registry: Any = None,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self.states = states
        self.options = options or ErpSyncOptions()
        self.registry = registry

    # -- EventHandler ------------------------------------------------------------------------------------
    def handle(self, event: Event) -> None:
        rtype, rid = event.resource_type, event.resource_id
        if rtype not in RESOURCE_TYPES:
            return
        state = self.states.get(CONSUMER, rtype, rid)
        if rtype in PARTY_TYPES and state is None:
            return  # never billed: a partner is pushed only once an invoice needs it
        with self.store.session() as s:
            current = self._current(s, rtype, rid)
            if current is None:
                return
            doc, version, deleted = current
            digest = business_hash(doc) + (":deleted" if deleted else "")
            if not event.force and state is not None and state.status == "projected" and state.content_hash == digest:
                unchanged = True
            else:
                unchanged = False
                record = self._map(s, rtype, doc, deleted)
        if unchanged:
            assert state is not None
            self._write_back(rtype, rid, state)  # restores it if a client PUT dropped the extension
            return
        outcome = self._project(rtype, record)
        new_state = ProjectionState(
            consumer=CONSUMER,
            resource_type=rtype,
            resource_id=rid,
            status=outcome.status,
            attempts=0,
            version_id=version,
            content_hash=digest,
            error_message=outcome.message,
            erp_refs=outcome.refs,
            payment_state=outcome.payment_state,
        )
        self.states.save(new_state)
        for ref, party in outcome.parties.items():
            self._remember_party(ref, party)
        if outcome.status == "projected":
            self._write_back(rtype, rid, new_state)
        for ref, inv_state in outcome.settled_invoices:
            self._payment_state_back(ref, inv_state)

    def failed(self, event: Event, error: BaseException, *, attempts: int, dead: bool) -> None:
        cls, message = describe_error(error)
        prev = self.states.get(CONSUMER, event.resource_type, event.resource_id)
        status = "dead" if dead else ("pending" if is_waiting(error) else "failed")
        self.states.save(
            ProjectionState(
                consumer=CONSUMER,
                resource_type=event.resource_type,
                resource_id=event.resource_id,
                status=status,
                attempts=attempts,
                version_id=event.version_id,
                content_hash=None,  # whatever was projected before, this version is not: never skip it
                error_class=cls,
                error_message=message,
                erp_refs=prev.erp_refs if prev else {},
                payment_state=prev.payment_state if prev else None,
            )
        )

    # -- reading -----------------------------------------------------------------------------------------
    @staticmethod
    def _current(s: StoreSession, rtype: str, rid: str) -> tuple[dict[str, Any], int, bool] | None:
        """(content, version, deleted). For a deleted resource, the last content it had."""
        try:
            stored = s.read(rtype, rid)
            return stored.as_dict(), stored.version_id, False
        except NotFound:
            return None
        except Gone:
            page = s.history(resource_type=rtype, id=rid, count=50)
            alive = [e for e in page.entries if not e.deleted and e.content is not None]
            if not alive:
                return None
            newest = page.entries[0].version_id if page.entries else alive[0].version_id
            return alive[0].as_dict(), newest, True

    def _resolver(self, s: StoreSession, seen: dict[str, Mapping[str, Any]]) -> Any:
        def resolve(reference: str) -> Mapping[str, Any] | None:
            if reference in seen:
                return seen[reference]
            rtype, rid = _split(reference)
            try:
                doc = s.read(rtype, rid).as_dict()
            except (NotFound, Gone):
                return None
            seen[reference] = doc
            return doc

        return resolve

    def _claim_charge_items(self, s: StoreSession, claim: Mapping[str, Any]) -> list[dict[str, Any]]:
        if self.registry is None:
            return []
        from app.fhir.search import parse_search
        from app.fhir.store import iter_pages

        encounters = sorted(
            {
                ref["reference"]
                for item in claim.get("item", []) or []
                for ref in item.get("encounter", []) or []
                if isinstance(ref, Mapping) and ref.get("reference")
            }
        )
        if not encounters:
            return []
        query = parse_search(["ChargeItem"], {"context": [",".join(encounters)]}, self.registry, max_count=1000)
        return [r.as_dict() for r in iter_pages(s, query) if r.content is not None]

    def _search(self, s: StoreSession, rtype: str, params: dict[str, list[str]]) -> list[dict[str, Any]]:
        from app.fhir.search import parse_search
        from app.fhir.store import iter_pages

        query = parse_search([rtype], params, self.registry, max_count=1000)
        return [r.as_dict() for r in iter_pages(s, query) if r.content is not None]

    def _charge_group_of(self, doc: Mapping[str, Any]) -> str | None:
        mode = self.options.bill_charge_items
        if mode == "off" or self.registry is None or doc.get("status") != "billable":
            return None
        if mode == "per-encounter":
            ref = _reference(doc.get("context"))
            return ref if ref and ref.startswith("Encounter/") else None
        refs = [_reference(a) for a in doc.get("account", []) or []]
        return next((r for r in refs if r and r.startswith("Account/")), None)

    def _charge_group(self, s: StoreSession, group: str) -> _ChargeGroup:
        """The group's billable ChargeItems minus those an Invoice or a billed Claim already covers."""
        param = "context" if group.startswith("Encounter/") else "account"
        items = [d for d in self._search(s, "ChargeItem", {param: [group]}) if d.get("status") == "billable"]
        covered: set[str] = set()
        patients = sorted({r for d in items if (r := _reference(d.get("subject")))})
        if patients:
            for inv in self._search(s, "Invoice", {"subject": [",".join(patients)]}):
                if inv.get("status") in VOID_STATUSES:
                    continue
                for line in inv.get("lineItem", []) or []:
                    if ref := _reference(line.get("chargeItemReference")):
                        covered.add(ref)
        encounters = sorted({r for d in items if (r := _reference(d.get("context")))})
        if self.options.bill_claims and encounters:
            claimed = {
                ref
                for claim in self._search(s, "Claim", {"encounter": [",".join(encounters)]})
                if claim.get("status") not in VOID_STATUSES
                for item in claim.get("item", []) or []
                for enc in item.get("encounter", []) or []
                if (ref := _reference(enc))
            }
            covered |= {f"ChargeItem/{d['id']}" for d in items if _reference(d.get("context")) in claimed}
        by_ref = {f"ChargeItem/{d['id']}": d for d in items}
        return _ChargeGroup(group, {ref: d for ref, d in sorted(by_ref.items()) if ref not in covered})

    # -- mapping (inside the read session) -----------------------------------------------------------------
    def _map(self, s: StoreSession, rtype: str, doc: dict[str, Any], deleted: bool) -> tuple[str, Any, Any]:
        """(kind, billing record(s), extra) -- everything the ERP calls need, read in one snapshot."""
        seen: dict[str, Mapping[str, Any]] = {}
        resolve = self._resolver(s, seen)
        opts = self.options.mapping
        if rtype in BILLED_TYPES and deleted:
            doc = {**doc, "status": "entered-in-error"}  # a deleted invoice is taken back like a voided one
        if rtype == "Invoice":
            return "invoice", invoice_from_fhir(doc, resolve, opts), seen
        if rtype == "Claim":
            if not self.options.bill_claims:
                return "skip", "Claims are not billed (INTERLACE_ERP_BILL_CLAIMS is off)", seen
            return "invoice", invoice_from_claim(doc, self._claim_charge_items(s, doc), resolve, opts), seen
        if deleted:
            return "skip", f"{rtype} deleted: nothing to take back in the ERP", seen
        if rtype == "PaymentReconciliation":
            return "payments", payments_from_payment_reconciliation(doc), seen
        if rtype == "ClaimResponse":
            if not self.options.bill_claims:
                return "skip", "Claims are not billed, so a ClaimResponse has no invoice to pay", seen
            payment = payment_from_claim_response(doc)
            return "payments", [payment] if payment else [], seen
        if rtype == "ChargeItem":
            try:
                product = product_from_code(doc.get("code"), opts)
            except BillingMappingError as exc:
                return "skip", exc.diagnostics, seen  # not a billing code we know: nothing to push, no alarm
            group = self._charge_group_of(doc)
            if group is None:
                return "product", product, seen
            charges = self._charge_group(s, group)
            if charges.charge_items:
                # map once here: resolves (into ``seen``) every party the ERP call needs, and fails early
                invoice_from_charge_items(group, list(charges.charge_items.values()), resolve, opts)
            return "charges", (product, charges, f"ChargeItem/{doc.get('id')}"), seen
        return "partner", partner_from_resource(doc), {f"{rtype}/{doc.get('id')}": doc}

    # -- ERP calls (outside any database transaction) ---------------------------------------------------------
    def _project(self, rtype: str, mapped: tuple[str, Any, Any]) -> _Outcome:
        kind, record, seen = mapped
        erp = self.options.erp_name
        if kind == "skip":
            return _Outcome(status="skipped", message=str(record))
        if kind == "partner":
            partner_id = self.gateway.upsert_partner(record)
            return _Outcome(refs={"erp": erp, "model": "res.partner", "ids": [partner_id]})
        if kind == "product":
            product_id = self.gateway.upsert_product(record)
            return _Outcome(refs={"erp": erp, "model": "product.product", "ids": [product_id]})
        if kind == "invoice":
            return self._project_invoice(record, seen)
        if kind == "charges":
            product, charges, own = record
            product_id = self.gateway.upsert_product(product)
            outcome = self._bill_charges(charges, seen, own)
            outcome.refs = {"erp": erp, "model": "product.product", "ids": [product_id], **outcome.refs}
            return outcome
        return self._project_payments(record)

    def _bill_charges(self, charges: _ChargeGroup, seen: Mapping[str, Mapping[str, Any]], own: str) -> _Outcome:
        """Put every billable charge of the group on exactly one ERP document (see the module docstring)."""
        gtype, gid = _split(charges.group)
        prev = self.states.get(CONSUMER, gtype, gid)
        refs = dict(prev.erp_refs) if prev else {}
        batches: dict[str, list[str]] = {k: list(v) for k, v in (refs.get("batches") or {}).items()}
        posted: dict[str, int] = dict(refs.get("posted") or {})  # document key -> ERP id, once final
        assigned = {ref for refs_ in batches.values() for ref in refs_}
        new = [ref for ref in charges.charge_items if ref not in assigned]
        primary = f"{charges.group}#charges"
        if new:
            target = primary
            if primary in posted:
                target = _batch_key(charges.group, new)
            elif primary in batches:  # planned before: is it final in the ERP already (a crash after posting)?
                found = self.gateway.invoice_state(ExternalId("invoice", primary))
                if found is not None and found.state != "draft":
                    posted[primary] = found.erp_id
                    target = _batch_key(charges.group, new)
            batches[target] = sorted({*batches.get(target, []), *new})
            self._save_group(gtype, gid, batches, posted)  # the intent, before the ERP hears of it
        resolve = seen.get
        parties: dict[str, Mapping[str, Any]] = {}
        for key, members in batches.items():
            if key in posted:
                continue
            docs = [charges.charge_items[r] for r in members if r in charges.charge_items]
            if not docs:
                continue  # its charges stopped being billable before it reached the ERP: nothing to bill
            invoice = invoice_from_charge_items(key, docs, resolve, self.options.mapping)
            state = self.gateway.upsert_invoice(invoice)
            if state.state != "draft":
                posted[key] = state.erp_id
            if invoice.partner.ref in seen:
                parties[invoice.partner.ref] = seen[invoice.partner.ref]
        self._save_group(gtype, gid, batches, posted)
        mine = next((k for k, members in batches.items() if own in members), None)
        out: dict[str, Any] = {"document": mine, "invoice": posted.get(mine)} if mine else {}
        return _Outcome(refs=out, parties=parties, message=None if mine else "covered by an Invoice or a Claim")

    def _save_group(self, gtype: str, gid: str, batches: dict[str, list[str]], posted: dict[str, int]) -> None:
        self.states.save(
            ProjectionState(
                consumer=CONSUMER,
                resource_type=gtype,
                resource_id=gid,
                status="projected" if set(batches) <= set(posted) else "pending",
                erp_refs={
                    "erp": self.options.erp_name,
                    "model": "account.move",
                    "ids": sorted(posted.values()),
                    "batches": batches,
                    "posted": posted,
                },
            )
        )

    def _project_invoice(
        self, record: Invoice | InvoiceCancellation, seen: Mapping[str, Mapping[str, Any]]
    ) -> _Outcome:
        erp = self.options.erp_name
        partner = record.partner if isinstance(record, Invoice) else record.credit_note.partner
        parties = {partner.ref: seen[partner.ref]} if partner.ref in seen else {}
        if isinstance(record, InvoiceCancellation):
            state = self.gateway.cancel_invoice(record)
            if state is None:
                return _Outcome(message="cancelled before it reached the ERP: nothing to take back", parties=parties)
            refs = {"erp": erp, "model": "account.move", "ids": [state.erp_id], "state": state.state}
            credit = self.gateway.invoice_state(record.credit_note.external_id)
            if credit is not None:
                refs["creditNote"] = {"ids": [credit.erp_id], "number": credit.number}
        else:
            state = self.gateway.upsert_invoice(record)
            refs = {"erp": erp, "model": "account.move", "ids": [state.erp_id], "state": state.state}
        if state.number:
            refs["number"] = state.number
        return _Outcome(refs=refs, payment_state=state.payment_state, parties=parties)

    def _project_payments(self, payments: list[Payment]) -> _Outcome:
        ids: list[int] = []
        settled: dict[ExternalId, InvoiceState] = {}
        for payment in payments:
            ids.append(self.gateway.register_payment(payment))
        for invoice in {p.invoice for p in payments}:
            state = self.gateway.invoice_state(invoice)
            if state is not None:
                settled[invoice] = state
        refs = {"erp": self.options.erp_name, "model": "account.payment", "ids": ids}
        states = {s.payment_state for s in settled.values()}
        return _Outcome(
            refs=refs,
            payment_state=states.pop() if len(states) == 1 else None,
            message=None if payments else "no payment lines to register",
            settled_invoices=[(ext.source, st) for ext, st in settled.items()],
        )

    # -- outcomes back into the store ----------------------------------------------------------------------
    def _remember_party(self, reference: str, party: Mapping[str, Any]) -> None:
        rtype, rid = _split(reference)
        prev = self.states.get(CONSUMER, rtype, rid)
        if prev is not None and prev.status == "projected":
            return
        self.states.save(
            ProjectionState(
                consumer=CONSUMER,
                resource_type=rtype,
                resource_id=rid,
                status="projected",
                content_hash=business_hash(party),
                erp_refs={"erp": self.options.erp_name, "model": "res.partner"},
            )
        )

    def _payment_state_back(self, reference: str, inv: InvoiceState) -> None:
        rtype, rid = _split(reference)
        state = self.states.get(CONSUMER, rtype, rid)
        if state is None:
            return
        if state.payment_state != inv.payment_state or state.erp_refs.get("state") != inv.state:
            state.payment_state = inv.payment_state
            state.erp_refs = {**state.erp_refs, "state": inv.state}
            self.states.save(state)
        if state.status == "projected":
            self._write_back(rtype, rid, state)

    def _extension(self, state: ProjectionState) -> dict[str, Any] | None:
        refs = state.erp_refs
        if not refs.get("model") or not refs.get("ids"):
            return None
        parts: list[dict[str, Any]] = [
            {"url": "erp", "valueString": str(refs.get("erp") or self.options.erp_name)},
            {"url": "model", "valueString": str(refs["model"])},
        ]
        parts += [{"url": "recordId", "valueString": str(i)} for i in refs.get("ids", []) or []]
        if refs.get("number"):
            parts.append({"url": "number", "valueString": str(refs["number"])})
        if refs.get("state"):
            parts.append({"url": "state", "valueCode": str(refs["state"])})
        if state.payment_state:
            parts.append({"url": "paymentState", "valueCode": state.payment_state})
        credit = refs.get("creditNote") or {}
        for i in credit.get("ids", []) or []:
            parts.append({"url": "creditNoteId", "valueString": str(i)})
        return {"url": EXT_ERP, "extension": parts}

    def _write_back(self, rtype: str, rid: str, state: ProjectionState) -> None:
        """Put the ERP outcome on the resource, unless it is there already (then no new version, no event)."""
        if not self.options.write_back or rtype == "ChargeItem":
            return
        ext = self._extension(state)
        if ext is None:
            return
        for _ in range(WRITE_BACK_RETRIES):
            try:
                with self.store.session(write=True) as s:
                    try:
                        stored = s.read(rtype, rid)
                    except (NotFound, Gone):
                        return
                    doc = stored.as_dict()
                    others = [e for e in doc.get("extension", []) or [] if e.get("url") != EXT_ERP]
                    mine = [e for e in doc.get("extension", []) or [] if e.get("url") == EXT_ERP]
                    if mine == [ext]:
                        return
                    doc["extension"] = [*others, ext]
                    s.update(doc, if_match=stored.version_id)
                    return
            except PreconditionFailed:
                continue  # changed under us: read again (its own event re-projects it anyway)
