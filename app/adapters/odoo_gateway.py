"""Odoo (16/17/18) behind the billing ``ErpGateway`` port, over JSON-RPC (``POST /jsonrpc``).

Wire contract: ../shared/odoo17-wire (recorded from Odoo 17.0) and ODOO_API.md. What this adapter relies on:

* ``common.authenticate(db, login, api_key, {})`` gives the uid (``false`` on bad credentials); every
  ``object.execute_kw`` re-sends the key and is one database transaction. Replies are HTTP 200 even for
  errors; the class is ``error.data.name``. A method returning None has no ``result`` key.
* Exactly once: every record is bound to an external id (``ir.model.data``, ``<module>.<kind>_<sha1>``).
  Each operation looks the binding up first, falls back to the business key (``ref``/``default_code``) to
  adopt what an interrupted earlier attempt created, and only then creates and binds. The unique
  (module, name) index settles races: the loser re-reads the winner's binding and drops its own copy.
  Payments, which cannot simply be deleted, reserve their binding *before* creating anything.
* Invoices are posted only from ``draft`` and never rewritten once posted; a posted invoice is taken back
  with a credit note (``button_cancel`` would silently unreconcile a payment).
* Taxes are always sent explicitly (``tax_ids: [[6, 0, ids]]``), so a product's default tax cannot creep in.

Transport is stdlib ``http.client``: Odoo closes every connection (``Connection: close``), so a pooling client
buys nothing, and the adapter needs no runtime dependency.
"""

from __future__ import annotations

import http.client
import itertools
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import urlsplit

from app.billing.ports import (
    ErpAuthError,
    ErpConfigError,
    ErpDataError,
    ErpError,
    ErpMissingError,
    ErpNotReady,
    InvoiceState,
    PermanentErpError,
    TransientErpError,
)
from app.billing.records import ExternalId, Invoice, InvoiceCancellation, InvoiceLine, Partner, Payment, Product, TaxRef

log = logging.getLogger(__name__)
T = TypeVar("T")


# ---------------------------------------------------------------------------------------------------------------
# Errors: Odoo's error.data.name -> the port's transient/permanent classes
# ---------------------------------------------------------------------------------------------------------------
class OdooError(ErpError):
    """Carries the Odoo class name and message; ``rpc`` is ``model.method`` (never the arguments: PHI)."""

    def __init__(self, message: str, *, odoo_name: str = "", rpc: str = "") -> None:
        super().__init__(f"{rpc}: {odoo_name}: {message}" if rpc or odoo_name else message)
        self.odoo_name = odoo_name
        self.odoo_message = message
        self.rpc = rpc


class OdooAccessDenied(OdooError, ErpAuthError):
    pass


class OdooAccessError(OdooError, ErpConfigError):
    pass


class OdooValidationError(OdooError, ErpDataError):
    @property
    def duplicate_external_id(self) -> bool:
        msg = self.odoo_message
        return "ir_model_data_module_name_uniq_index" in msg or ("duplicate key" in msg and "(module, name)" in msg)


class OdooUserError(OdooError, ErpDataError):
    pass


class OdooMissingError(OdooError, ErpMissingError):
    pass


class OdooProgrammingError(OdooError, ErpConfigError):
    """ValueError/TypeError/KeyError... from Odoo: a field, argument or method this client got wrong."""


class OdooServerError(OdooError, PermanentErpError):
    """An Odoo error class this adapter does not know; permanent until someone looks at it."""


class OdooConcurrencyError(OdooError, TransientErpError):
    """Serialization failure, deadlock or lock timeout left over after Odoo's own 5 retries."""


class OdooAmbiguousKey(OdooConcurrencyError):
    """Several unbound records share a business key. Racing workers cause this for a moment (each created a
    copy and one is about to win the binding), so it is retried; if it outlasts the retries it is a real clash
    in the ERP and surfaces as a permanent ``ErpDataError``."""


class OdooUnavailable(OdooError, TransientErpError):
    """Connection refused/reset, timeout, HTTP 5xx/429, or the database server unreachable."""


class OdooTimeout(OdooUnavailable):
    """No reply in time. The call may have been committed: the next attempt must re-read, never assume."""


class OdooProtocolError(OdooError, ErpConfigError):
    """A reply that is not JSON-RPC (Odoo's HTTP 400 pages, a proxy's login page): wrong URL or request."""


_BY_NAME: dict[str, type[OdooError]] = {
    "odoo.exceptions.AccessDenied": OdooAccessDenied,
    "odoo.exceptions.AccessError": OdooAccessError,
    "odoo.exceptions.ValidationError": OdooValidationError,
    "odoo.exceptions.UserError": OdooUserError,
    "odoo.exceptions.RedirectWarning": OdooUserError,
    "odoo.exceptions.MissingError": OdooMissingError,
    "psycopg2.errors.SerializationFailure": OdooConcurrencyError,
    "psycopg2.extensions.TransactionRollbackError": OdooConcurrencyError,
    "psycopg2.errors.DeadlockDetected": OdooConcurrencyError,
    "psycopg2.errors.LockNotAvailable": OdooConcurrencyError,
    "psycopg2.errors.QueryCanceled": OdooConcurrencyError,
    "psycopg2.InterfaceError": OdooUnavailable,
}
_PROGRAMMING = {"ValueError", "TypeError", "KeyError", "AttributeError", "NameError", "IndexError", "Exception"}


def error_from_envelope(error: Mapping[str, Any], rpc: str = "") -> OdooError:
    """Map a JSON-RPC ``error`` object to a typed exception, keyed on ``data.name`` (the message is unstable)."""
    data = error.get("data") or {}
    name = str(data.get("name") or "")
    message = str(data.get("message") or error.get("message") or "")
    cls = _BY_NAME.get(name)
    if cls is None:
        if name.startswith("builtins.") and name.split(".", 1)[1] in _PROGRAMMING:
            cls = OdooProgrammingError
        elif name == "psycopg2.OperationalError":
            # an unknown database is configuration; a lost or refused PostgreSQL connection is not
            cls = OdooProgrammingError if "does not exist" in message else OdooUnavailable
        else:
            cls = OdooServerError
    return cls(message, odoo_name=name, rpc=rpc)


# ---------------------------------------------------------------------------------------------------------------
# The gateway
# ---------------------------------------------------------------------------------------------------------------
class OdooGateway:
    """``ErpGateway`` for Odoo over JSON-RPC. Thread-safe; one instance per Odoo database."""

    def __init__(
        self,
        url: str,
        db: str,
        login: str,
        api_key: str,
        *,
        module: str = "interlace",
        sale_journal_code: str = "INV",
        payment_journal_code: str = "BNK1",
        tax_map: Mapping[str, int | str] | None = None,
        account_map: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        max_attempts: int = 3,
        backoff: float = 0.5,
        auth_cooldown: float = 60.0,
        payment_lease: float = 300.0,
        odoo_version: int = 17,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"Odoo URL must be http(s)://host[:port], got {parts.scheme}://{parts.hostname}")
        if not module.replace("_", "").isalnum():
            raise ValueError("module namespace: letters, digits and _ only")
        self._scheme, self._host, self._port = parts.scheme, parts.hostname, parts.port
        self._path = (parts.path.rstrip("/") or "") + "/jsonrpc"
        self.db, self.login, self._api_key = db, login, api_key
        self.module = module
        self.sale_journal_code = sale_journal_code
        self.payment_journal_code = payment_journal_code
        self.tax_map = dict(tax_map or {})
        # billing code system URI (or "*") -> income account code: which revenue account a service posts to
        self.account_map = dict(account_map or {})
        self.timeout = timeout
        self.max_attempts = max(1, max_attempts)
        self.backoff = backoff
        self.auth_cooldown = auth_cooldown
        self.payment_lease = payment_lease
        self.odoo_version = odoo_version
        self._sleep, self._clock = sleep, clock
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._uid: int | None = None
        self._auth_failed_at: float | None = None
        self._cache: dict[tuple[str, str], int | None] = {}
        self._held: set[str] = set()  # payment reservations this instance is working on

    def __repr__(self) -> str:  # never show the key
        return f"OdooGateway({self._scheme}://{self._host}:{self._port or ''}, db={self.db!r}, login={self.login!r})"

    # -- transport -----------------------------------------------------------------------------------------
    def _post(self, service: str, method: str, args: Sequence[Any], rpc: str) -> Any:
        payload = {
            "jsonrpc": "2.0",
            "method": "call",
            "id": next(self._ids),
            "params": {"service": service, "method": method, "args": list(args)},
        }
        body = json.dumps(payload, default=_json_default).encode()
        conn_cls = http.client.HTTPSConnection if self._scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(self._host, self._port, timeout=self.timeout)
        try:
            conn.request("POST", self._path, body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            raw = resp.read()
            status = resp.status
        except TimeoutError as exc:  # socket.timeout is TimeoutError
            raise OdooTimeout(f"no reply within {self.timeout}s", odoo_name=type(exc).__name__, rpc=rpc) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise OdooUnavailable(str(exc) or type(exc).__name__, odoo_name=type(exc).__name__, rpc=rpc) from exc
        finally:
            conn.close()
        if status >= 500 or status == 429:
            raise OdooUnavailable(f"HTTP {status}", odoo_name=f"HTTP {status}", rpc=rpc)
        if status != 200:
            raise OdooProtocolError(f"HTTP {status}: {raw[:200].decode('utf-8', 'replace')}", rpc=rpc)
        try:
            reply = json.loads(raw)
        except ValueError:
            raise OdooProtocolError(f"not JSON: {raw[:200].decode('utf-8', 'replace')}", rpc=rpc) from None
        if not isinstance(reply, dict):
            raise OdooProtocolError("not a JSON-RPC reply", rpc=rpc)
        if "error" in reply:
            raise error_from_envelope(reply["error"], rpc)
        return reply.get("result")  # absent when the method returned None (e.g. account.payment.action_post)

    def version(self) -> dict[str, Any]:
        return self._post("common", "version", [], "common.version")

    def _authenticate(self) -> int:
        with self._lock:
            if self._uid is not None:
                return self._uid
            if self._auth_failed_at is not None and self._clock() - self._auth_failed_at < self.auth_cooldown:
                # each failed check costs Odoo ~0.45 s of CPU and nothing rate-limits it: do not hammer
                raise OdooAccessDenied("credentials were refused recently; not retrying yet", rpc="common.authenticate")
        uid = self._post("common", "authenticate", [self.db, self.login, self._api_key, {}], "common.authenticate")
        with self._lock:
            if not uid:
                self._auth_failed_at = self._clock()
                raise OdooAccessDenied(
                    "login or API key refused", odoo_name="authenticate=false", rpc="common.authenticate"
                )
            self._uid, self._auth_failed_at = int(uid), None
            return self._uid

    def call(self, model: str, method: str, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> Any:
        """One ``execute_kw``: the whole transport surface, kept small so JSON-2 (Odoo 19+) can replace it."""
        uid = self._authenticate()
        rpc = f"{model}.{method}"
        call_args: list[Any] = [self.db, uid, self._api_key, model, method, list(args)]
        if kwargs:
            call_args.append(dict(kwargs))
        try:
            return self._post("object", "execute_kw", call_args, rpc)
        except OdooAccessDenied:
            with self._lock:  # the key was revoked or rotated: authenticate again, after the cooldown
                self._uid, self._auth_failed_at = None, self._clock()
            raise

    # -- retries -------------------------------------------------------------------------------------------
    def _retrying(self, op: Callable[[], T], what: str) -> T:
        """Re-run a whole idempotent operation on transient errors (never a single non-idempotent call)."""
        for attempt in range(1, self.max_attempts + 1):
            try:
                return op()
            except ErpNotReady:
                raise  # waiting on another record: the worker's backoff, not ours
            except TransientErpError as exc:
                if attempt == self.max_attempts:
                    if isinstance(exc, OdooAmbiguousKey):
                        raise ErpDataError(exc.odoo_message) from exc
                    raise
                delay = self.backoff * 2 ** (attempt - 1) * (1 + random.random() / 2)
                log.warning("odoo %s: transient %s (attempt %d), retrying", what, type(exc).__name__, attempt)
                self._sleep(delay)
        raise AssertionError("unreachable")

    # -- external ids ------------------------------------------------------------------------------------
    def _binding(self, ext: ExternalId) -> dict[str, Any] | None:
        rows = self.call(
            "ir.model.data",
            "search_read",
            [[["module", "=", self.module], ["name", "=", ext.name]]],
            {"fields": ["module", "name", "model", "res_id", "write_date"], "limit": 1},
        )
        return rows[0] if rows else None

    def _exists(self, model: str, res_id: int) -> bool:
        # read() silently drops deleted ids (recording 60): an empty list means the record is gone
        return bool(res_id) and bool(self.call(model, "read", [[res_id]], {"fields": ["id"]}))

    def _lookup(self, ext: ExternalId, model: str) -> tuple[int | None, dict[str, Any] | None]:
        """(bound record id or None, binding row or None). A binding to a deleted record counts as unbound."""
        row = self._binding(ext)
        if row is None:
            return None, None
        if row["model"] != model:
            raise ErpDataError(f"external id {ext.qualified(self.module)} is bound to {row['model']}, not {model}")
        return (row["res_id"] if self._exists(model, row["res_id"]) else None), row

    def _bind(self, ext: ExternalId, model: str, res_id: int, stale: dict[str, Any] | None) -> int:
        """Bind ``res_id``; returns the id that ends up bound (another worker's, if it won the race)."""
        if stale is not None:
            self.call("ir.model.data", "write", [[stale["id"]], {"res_id": res_id}])
            return res_id
        try:
            self.call(
                "ir.model.data",
                "create",
                [{"module": self.module, "name": ext.name, "model": model, "res_id": res_id, "noupdate": True}],
            )
            return res_id
        except OdooValidationError as exc:
            if not exc.duplicate_external_id:
                raise
        winner = self._binding(ext)
        if winner is None or not winner["res_id"]:
            raise OdooConcurrencyError("external id taken and released concurrently", rpc="ir.model.data.create")
        return int(winner["res_id"])

    def _drop_orphan(self, model: str, res_id: int) -> None:
        try:
            self.call(model, "unlink", [[res_id]])
        except ErpError as exc:  # best effort: an unbound leftover is untidy, not wrong
            log.warning("odoo: could not remove orphan %s %s: %s", model, res_id, type(exc).__name__)

    def _upsert(self, ext: ExternalId, model: str, vals: dict[str, Any], business_key: list[Any]) -> int:
        """Find by external id -> write; else adopt by business key or create; then bind (race-safe)."""
        res_id, row = self._lookup(ext, model)
        if res_id is not None:
            self.call(model, "write", [[res_id], vals])
            return res_id
        found = self.call(model, "search_read", [business_key], {"fields": ["id"], "limit": 2})
        if len(found) > 1:
            res_id, row = self._lookup(ext, model)  # a racing worker's copy, about to be dropped, or a real clash
            if res_id is None:
                raise OdooAmbiguousKey(f"{model}: more than one record matches the business key of {ext.name}")
            self.call(model, "write", [[res_id], vals])
            return res_id
        if found:
            res_id = int(found[0]["id"])
            self.call(model, "write", [[res_id], vals])
        else:
            res_id = int(self.call(model, "create", [vals]))
        bound = self._bind(ext, model, res_id, row)
        if bound != res_id:
            if not found:
                self._drop_orphan(model, res_id)
            self.call(model, "write", [[bound], vals])
        return bound

    # -- lookups (cached: journals, taxes, countries, currencies do not change under us) ------------------
    def _cached(self, key: tuple[str, str], find: Callable[[], int | None]) -> int | None:
        with self._lock:
            if key in self._cache:
                return self._cache[key]
        value = find()
        with self._lock:
            self._cache[key] = value
        return value

    def _journal(self, code: str, types: list[str]) -> int:
        def find() -> int | None:
            ids = self.call("account.journal", "search", [[["code", "=", code], ["type", "in", types]]], {"limit": 1})
            return ids[0] if ids else None

        journal = self._cached(("journal", code), find)
        if journal is None:
            raise ErpConfigError(f"no Odoo journal with code {code!r} and type {'/'.join(types)}")
        return journal

    def _tax_ids(self, taxes: Sequence[TaxRef]) -> list[int]:
        out = []
        for tax in taxes:
            target = self.tax_map.get(tax.key)
            if target is None:
                raise ErpConfigError(f"no Odoo tax mapped for {tax.key!r} (configure the tax mapping)")
            if isinstance(target, int):
                out.append(target)
                continue

            def find(name: str = target) -> int | None:
                ids = self.call("account.tax", "search", [[["name", "=", name], ["type_tax_use", "=", "sale"]]])
                return ids[0] if len(ids) == 1 else None

            tax_id = self._cached(("tax", target), find)
            if tax_id is None:
                raise ErpConfigError(f"Odoo sale tax {target!r} not found, or not unique")
            out.append(tax_id)
        return out

    def _income_account(self, system: str) -> int | None:
        """The income account configured for products of ``system`` (else ``*``); None: Odoo's journal default."""
        code = self.account_map.get(system) or self.account_map.get("*")
        if not code:
            return None

        def find() -> int | None:
            ids = self.call("account.account", "search", [[["code", "=", code]]], {"limit": 1})
            return ids[0] if ids else None

        account = self._cached(("account", code), find)
        if account is None:
            raise ErpConfigError(f"no Odoo account with code {code!r} (configure the account mapping)")
        return account

    def _country(self, code: str | None) -> int | bool:
        if not code:
            return False

        def find() -> int | None:
            ids = self.call("res.country", "search", [[["code", "=", code.upper()]]], {"limit": 1})
            return ids[0] if ids else None

        return self._cached(("country", code.upper()), find) or False

    def _currency(self, code: str) -> int:
        def find() -> int | None:
            ids = self.call("res.currency", "search", [[["name", "=", code.upper()]]], {"limit": 1})
            return ids[0] if ids else None

        currency = self._cached(("currency", code.upper()), find)
        if currency is None:
            raise ErpConfigError(f"currency {code} is not active in Odoo")
        return currency

    # -- partners and products -----------------------------------------------------------------------------
    def _partner_vals(self, p: Partner) -> dict[str, Any]:
        return {
            "name": p.name,
            "company_type": "company" if p.is_company else "person",
            "ref": p.ref,
            "email": p.email or False,
            "phone": p.phone or False,
            "street": p.street or False,
            "street2": p.street2 or False,
            "city": p.city or False,
            "zip": p.zip or False,
            "country_id": self._country(p.country_code),
            "vat": p.vat or False,
        }

    def _upsert_partner(self, p: Partner) -> int:
        return self._upsert(p.external_id, "res.partner", self._partner_vals(p), [["ref", "=", p.ref]])

    def _upsert_product(self, p: Product) -> int:
        vals: dict[str, Any] = {
            "name": p.name,
            "default_code": p.default_code,
            "type": "service",
            "taxes_id": [[6, 0, self._tax_ids(p.taxes)]],
        }
        if p.list_price is not None:
            vals["list_price"] = float(p.list_price)
        income = self._income_account(p.system)
        if income is not None:
            vals["property_account_income_id"] = income
        return self._upsert(p.external_id, "product.product", vals, [["default_code", "=", p.default_code]])

    def upsert_partner(self, partner: Partner) -> int:
        return self._retrying(lambda: self._upsert_partner(partner), "upsert_partner")

    def upsert_product(self, product: Product) -> int:
        return self._retrying(lambda: self._upsert_product(product), "upsert_product")

    # -- invoices ------------------------------------------------------------------------------------------
    def _line_vals(self, line: InvoiceLine, product_ids: Mapping[ExternalId, int]) -> dict[str, Any]:
        vals: dict[str, Any] = {
            "product_id": product_ids[line.product.external_id],
            "name": line.description,
            "quantity": _number(line.quantity),
            "price_unit": float(line.unit_price),
            "tax_ids": [[6, 0, self._tax_ids(line.taxes)]],  # explicit, even when empty (product defaults creep in)
        }
        if line.discount_percent:
            vals["discount"] = float(line.discount_percent)
        return vals

    def _move_vals(self, inv: Invoice, partner_id: int, product_ids: Mapping[ExternalId, int]) -> dict[str, Any]:
        vals: dict[str, Any] = {
            "move_type": "out_refund" if inv.kind == "credit_note" else "out_invoice",
            "partner_id": partner_id,
            "journal_id": self._journal(self.sale_journal_code, ["sale"]),
            "ref": inv.ref,
            "invoice_origin": inv.ref,
            "payment_reference": inv.payment_reference or False,
            "narration": inv.narration or False,
            "invoice_line_ids": [[0, 0, self._line_vals(line, product_ids)] for line in inv.lines],
        }
        if inv.invoice_date:
            vals["invoice_date"] = inv.invoice_date.isoformat()
        if inv.currency:
            vals["currency_id"] = self._currency(inv.currency)
        if inv.reversed_invoice is not None:
            origin, _ = self._lookup(inv.reversed_invoice, "account.move")
            if origin is None:
                raise ErpNotReady(
                    f"the invoice a credit note corrects is not in Odoo yet ({inv.reversed_invoice.name})"
                )
            vals["reversed_entry_id"] = origin
        return vals

    def _read_move(self, move_id: int) -> dict[str, Any]:
        rows = self.call(
            "account.move",
            "read",
            [[move_id]],
            {"fields": ["name", "state", "payment_state", "amount_total", "amount_residual", "invoice_line_ids"]},
        )
        if not rows:
            raise ErpMissingError(f"account.move {move_id} is gone")
        return rows[0]

    @staticmethod
    def _state(row: Mapping[str, Any]) -> InvoiceState:
        return InvoiceState(
            erp_id=int(row["id"]),
            state=str(row["state"]),
            payment_state=str(row["payment_state"]),
            amount_total=Decimal(str(row["amount_total"])),
            amount_residual=Decimal(str(row["amount_residual"])),
            number=row["name"] if row.get("name") and row["name"] != "/" else None,
        )

    def _post_draft(self, move_id: int) -> dict[str, Any]:
        row = self._read_move(move_id)
        if row["state"] != "draft":
            return row
        try:
            self.call("account.move", "action_post", [[move_id]])
        except OdooUserError:
            row = self._read_move(move_id)  # posted by a racing worker or a lost reply: fine; else re-raise
            if row["state"] != "posted":
                raise
        return self._read_move(move_id)

    def _upsert_invoice(self, inv: Invoice) -> InvoiceState:
        partner_id = self._upsert_partner(inv.partner)
        product_ids: dict[ExternalId, int] = {}
        for line in inv.lines:
            if line.product.external_id not in product_ids:
                product_ids[line.product.external_id] = self._upsert_product(line.product)
        vals = self._move_vals(inv, partner_id, product_ids)
        move_id, binding = self._lookup(inv.external_id, "account.move")
        if move_id is None:
            # a move created by an attempt that died before binding it carries our ref: adopt it
            found = self.call(
                "account.move",
                "search_read",
                [[["ref", "=", inv.ref], ["move_type", "=", vals["move_type"]]]],
                {"fields": ["id", "state"], "limit": 2},
            )
            if len(found) > 1:
                move_id, binding = self._lookup(inv.external_id, "account.move")  # a racer's copy, or a real clash
                if move_id is None:
                    raise OdooAmbiguousKey(f"more than one {vals['move_type']} has the ref of {inv.external_id.name}")
            else:
                created = not found
                move_id = int(found[0]["id"]) if found else int(self.call("account.move", "create", [vals]))
                bound = self._bind(inv.external_id, "account.move", move_id, binding)
                if bound != move_id:
                    if created:
                        self._drop_orphan("account.move", move_id)  # still a draft: deleting it is allowed
                    move_id = bound
                elif created:
                    return self._state(self._post_draft(move_id) if inv.post else self._read_move(move_id))
        row = self._read_move(move_id)
        if row["state"] == "draft":
            replace = [[2, line_id] for line_id in row["invoice_line_ids"]] + vals["invoice_line_ids"]
            try:
                self.call("account.move", "write", [[move_id], {**vals, "invoice_line_ids": replace}])
            except OdooUserError:
                row = self._read_move(move_id)  # posted meanwhile by a racing worker: nothing left to do
                if row["state"] == "draft":
                    raise
                return self._state(row)
            row = self._post_draft(move_id) if inv.post else self._read_move(move_id)
        # posted or cancelled moves are never rewritten: a change after posting comes as a credit note
        return self._state(row)

    def upsert_invoice(self, invoice: Invoice) -> InvoiceState:
        return self._retrying(lambda: self._upsert_invoice(invoice), "upsert_invoice")

    def invoice_state(self, external_id: ExternalId) -> InvoiceState | None:
        def op() -> InvoiceState | None:
            move_id, _ = self._lookup(external_id, "account.move")
            return None if move_id is None else self._state(self._read_move(move_id))

        return self._retrying(op, "invoice_state")

    def _cancel_invoice(self, c: InvoiceCancellation) -> InvoiceState | None:
        move_id, _ = self._lookup(c.invoice, "account.move")
        if move_id is None:
            return None  # never reached Odoo: nothing to take back
        row = self._read_move(move_id)
        if row["state"] == "draft":
            self.call("account.move", "button_cancel", [[move_id]])  # returns None: no result key
        elif row["state"] == "posted":
            self._upsert_invoice(c.credit_note)  # its own external id: posted at most once
        return self._state(self._read_move(move_id))

    def cancel_invoice(self, cancellation: InvoiceCancellation) -> InvoiceState | None:
        return self._retrying(lambda: self._cancel_invoice(cancellation), "cancel_invoice")

    # -- payments ------------------------------------------------------------------------------------------
    def _payment_memo(self, pay: Payment) -> str:
        # the memo doubles as the business key that finds a payment whose binding was never written
        return f"{pay.memo} [{pay.ref}]" if pay.memo else pay.ref

    def _reserve_payment(self, pay: Payment) -> tuple[int | None, dict[str, Any]]:
        """Claim the payment's external id before creating money in Odoo (res_id 0 = in progress).

        Returns (payment id if already registered, binding row). A reservation held by this gateway (a retry
        of our own attempt) is ours to continue; one younger than ``payment_lease`` belongs to a worker still
        at it; an older one was left by a crash and is taken over."""
        for _ in range(2):
            row = self._binding(pay.external_id)
            if row is None:
                try:
                    self.call(
                        "ir.model.data",
                        "create",
                        [
                            {
                                "module": self.module,
                                "name": pay.external_id.name,
                                "model": "account.payment",
                                "res_id": 0,
                                "noupdate": True,
                            }
                        ],
                    )
                except OdooValidationError as exc:
                    if not exc.duplicate_external_id:
                        raise
                    continue  # another worker reserved it first: look again
                row = self._binding(pay.external_id)
                if row is None:
                    raise OdooConcurrencyError("payment reservation vanished", rpc="ir.model.data.create")
                with self._lock:
                    self._held.add(pay.external_id.name)
                return None, row
            if row["res_id"]:
                if self._exists("account.payment", row["res_id"]):
                    return int(row["res_id"]), row
                return None, row  # the bound payment was deleted in Odoo: register it again
            with self._lock:
                ours = pay.external_id.name in self._held
            age = _age_seconds(row.get("write_date"))
            if not ours and age is not None and age < self.payment_lease:
                raise ErpNotReady(f"payment {pay.external_id.name} is being registered by another worker")
            with self._lock:
                self._held.add(pay.external_id.name)
            return None, row
        raise OdooConcurrencyError("payment reservation contended", rpc="ir.model.data.create")

    def _release(self, pay: Payment, row: Mapping[str, Any]) -> None:
        with self._lock:
            self._held.discard(pay.external_id.name)
        if not row.get("res_id"):
            try:
                self.call("ir.model.data", "unlink", [[row["id"]]])
            except ErpError as exc:  # the lease frees it later
                log.warning("odoo: could not release payment reservation: %s", type(exc).__name__)

    def _register_payment(self, pay: Payment) -> int:
        done, row = self._reserve_payment(pay)
        if done is not None:
            return done
        money_sent = False
        try:
            move_id, _ = self._lookup(pay.invoice, "account.move")
            if move_id is None:
                raise ErpNotReady(f"invoice {pay.invoice.name} is not in Odoo yet")
            move = self._read_move(move_id)
            if move["state"] == "draft":
                raise ErpNotReady(f"invoice {pay.invoice.name} is still a draft")
            if move["state"] == "cancel":
                raise ErpDataError(f"invoice {pay.invoice.name} is cancelled; the payment needs a person")
            memo = self._payment_memo(pay)
            memo_field = "memo" if self.odoo_version >= 18 else "ref"
            found = self.call(
                "account.payment", "search_read", [[[memo_field, "=", memo]]], {"fields": ["id"], "limit": 2}
            )
            if len(found) > 1:
                raise ErpDataError(f"more than one Odoo payment carries the memo of {pay.external_id.name}")
            if found:
                payment_id = int(found[0]["id"])  # made by an attempt whose reply or binding was lost
            else:
                if Decimal(str(move["amount_residual"])) <= 0:
                    raise ErpDataError(f"invoice {pay.invoice.name} has nothing left to pay")
                journal = self._journal(pay.journal_code or self.payment_journal_code, ["bank", "cash"])
                ctx = {"context": {"active_model": "account.move", "active_ids": [move_id]}}
                vals = {
                    "journal_id": journal,
                    "amount": float(pay.amount),
                    "payment_date": pay.payment_date.isoformat(),
                    "communication": memo,
                }
                money_sent = True
                wizard = self.call("account.payment.register", "create", [vals], ctx)
                action = self.call("account.payment.register", "action_create_payments", [[wizard]], ctx)
                payment_id = int(action["res_id"])
            self.call("ir.model.data", "write", [[row["id"]], {"res_id": payment_id}])
        except ErpError as exc:
            # keep the reservation only while a payment may exist in Odoo without its binding
            if not money_sent or not exc.transient:
                self._release(pay, row)
            raise
        with self._lock:
            self._held.discard(pay.external_id.name)
        return payment_id

    def register_payment(self, payment: Payment) -> int:
        return self._retrying(lambda: self._register_payment(payment), "register_payment")


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _age_seconds(write_date: Any) -> float | None:
    if not isinstance(write_date, str):
        return None
    try:
        when = datetime.strptime(write_date, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    except ValueError:
        return None
    return (datetime.now(UTC) - when).total_seconds()
