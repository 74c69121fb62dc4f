"""A test double of Odoo 17.0's JSON-RPC endpoint, following the recordings in ../shared/odoo17-wire.

It is a real HTTP server (stdlib ``http.server`` on a free loopback port, one thread per request) with an
in-memory database of the models the FHIR -> Odoo projection touches: res.partner, product.product,
account.move (+ lines, sequences, taxes, reconciliation, payment_state), account.payment, the
account.payment.register and account.move.reversal wizards, and ir.model.data. Envelopes follow the
recordings byte for byte where they can (``json.dumps`` with default separators, header set per reply
kind, no ``result`` key when the method returns None); ``error.data.debug`` is a short traceback of the
same shape, ending in the same exception line.

Each execute_kw runs under one lock on a copy-on-error snapshot, so it is one serial transaction that rolls
back on any error, like Odoo's per-call transaction. Fault injection (``inject``) and hooks
(``before_call``) let tests produce transient failures, lost replies after commit, and racing workers.
"""

from __future__ import annotations

import copy
import json
import re
import socket
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VERSION_INFO = {
    "server_version": "17.0",
    "server_version_info": [17, 0, 0, "final", 0, ""],
    "server_serie": "17.0",
    "protocol_version": 1,
}
SERVER_HEADER = "Werkzeug/2.2.2 Python/3.11.7"
JSON_CT = "application/json; charset=utf-8"
HTML_CT = "text/html; charset=utf-8"
WRONG_ROUTE_TYPE_HTML = (
    "<!doctype html>\n<html lang=en>\n<title>400 Bad Request</title>\n<h1>Bad Request</h1>\n"
    "<p>Request inferred type is compatible with [&#39;http&#39;] but &#39;/jsonrpc&#39; is type=&#39;json&#39;.</p>\n"
)
NOT_FOUND_HTML = (
    "<!doctype html>\n<html lang=en>\n<title>404 Not Found</title>\n<h1>Not Found</h1>\n"
    "<p>The requested URL was not found on the server.</p>\n"
)


# ---------------------------------------------------------------------------------------------------------------
# Exceptions, named as Odoo names them on the wire (error.data.name)
# ---------------------------------------------------------------------------------------------------------------
class OdooException(Exception):
    wire_name = "odoo.exceptions.UserError"


class UserError(OdooException):
    wire_name = "odoo.exceptions.UserError"


class ValidationError(OdooException):
    wire_name = "odoo.exceptions.ValidationError"


class AccessError(OdooException):
    wire_name = "odoo.exceptions.AccessError"


class AccessDenied(OdooException):
    wire_name = "odoo.exceptions.AccessDenied"


class MissingError(OdooException):
    wire_name = "odoo.exceptions.MissingError"


class PgOperationalError(OdooException):
    wire_name = "psycopg2.OperationalError"


class InjectedError(OdooException):
    """An error of any wire name, raised by fault injection."""

    def __init__(self, wire_name: str, message: str) -> None:
        super().__init__(message)
        self.wire_name = wire_name


def wire_name_of(exc: BaseException) -> str:
    if isinstance(exc, OdooException):
        return exc.wire_name
    return f"builtins.{type(exc).__name__}"


def error_data(exc: BaseException) -> dict[str, Any]:
    name = wire_name_of(exc)
    short = name[len("builtins.") :] if name.startswith("builtins.") else name
    message = str(exc.args[0]) if exc.args else ""
    exc_text = str(exc)  # KeyError('nope') prints as 'nope' in a traceback, its message is nope
    debug = (
        "Traceback (most recent call last):\n"
        '  File "/opt/odoo/odoo/http.py", line 1752, in _serve_nodb\n'
        '  File "/opt/odoo/odoo/addons/base/controllers/rpc.py", line 155, in jsonrpc\n'
        f"{short}: {exc_text}\n"
    )
    return {"name": name, "debug": debug, "message": message, "arguments": list(exc.args), "context": {}}


def missing(model: str, ids: Iterable[int], uid: int) -> MissingError:
    return MissingError(f"Record does not exist or has been deleted.\n(Record: {model}{tuple(ids)!r}, User: {uid})")


# ---------------------------------------------------------------------------------------------------------------
# Fields
# ---------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class F:
    type: str  # char text int float bool date datetime selection m2o o2m m2m json
    comodel: str | None = None
    selection: tuple[str, ...] = ()
    required: bool = False
    string: str = ""
    compute: bool = False  # value from Model._compute(rec, fname)
    default: Any = None


def _m2m_commands(value: Any, current: list[int]) -> list[int]:
    """Apply x2many commands ([6,0,ids], [4,id], [3,id], [5]) or a plain id list to a many2many."""
    if value is False or value is None:
        return []
    out = list(current)
    for cmd in value:
        if isinstance(cmd, int):
            if cmd not in out:
                out.append(cmd)
            continue
        op = cmd[0]
        if op == 6:
            out = list(cmd[2])
        elif op == 4:
            if cmd[1] not in out:
                out.append(cmd[1])
        elif op == 3:
            out = [i for i in out if i != cmd[1]]
        elif op == 5:
            out = []
        else:
            raise ValueError(f"Unsupported many2many command {op}")
    return out


class Env:
    def __init__(self, server: FakeOdoo17, uid: int, context: dict[str, Any]) -> None:
        self.server = server
        self.db = server.db
        self.uid = uid
        self.context = context

    def __getitem__(self, model: str) -> BaseModel:
        cls = MODELS.get(model)
        if cls is None:
            raise UserError(f"Object {model} doesn't exist")
        return cls(self, [])

    def today(self) -> str:
        return self.server.now().date().isoformat()

    def now_str(self) -> str:
        return self.server.now().strftime("%Y-%m-%d %H:%M:%S")


class BaseModel:
    """The ORM subset. Method signatures follow Odoo 17 so that arity errors read the same."""

    _name = ""
    _description = ""
    _order = "id"
    _fields: dict[str, F] = {}
    # methods decorated @api.model in Odoo (called without ids)
    _model_methods = frozenset({"create", "search", "search_read", "search_count", "check_object_reference"})

    def __init__(self, env: Env, ids: list[int]) -> None:
        self.env = env
        self.ids = list(ids)

    # -- storage helpers ------------------------------------------------------------------------------------
    @property
    def _table(self) -> dict[int, dict[str, Any]]:
        return self.env.db.tables.setdefault(self._name, {})

    def _rows(self) -> list[dict[str, Any]]:
        return [self._table[i] for i in self.ids if i in self._table]

    def _browse(self, ids: Iterable[int]) -> BaseModel:
        return type(self)(self.env, list(ids))

    def _check_exists(self) -> None:
        gone = [i for i in self.ids if i not in self._table]
        if gone:
            raise missing(self._name, gone, self.env.uid)

    def _next_id(self) -> int:
        nxt = self.env.db.next_ids.get(self._name, 1)
        self.env.db.next_ids[self._name] = nxt + 1
        return nxt

    def _check_fields(self, names: Iterable[str]) -> None:
        for n in names:
            if n != "id" and n not in self._fields:
                raise ValueError(f"Invalid field {n!r} on model {self._name!r}")

    def _insert(self, vals: dict[str, Any]) -> int:
        rid = self._next_id()
        row: dict[str, Any] = {"id": rid}
        for fname, spec in self._fields.items():
            if spec.compute:
                continue
            row[fname] = copy.deepcopy(spec.default) if spec.default is not None else self._empty(spec)
        row["create_date"] = row["write_date"] = self.env.now_str()
        self._table[rid] = row
        self._assign(row, vals)
        for fname, spec in self._fields.items():
            if spec.required and row.get(fname) in (None, False, ""):
                del self._table[rid]
                raise ValidationError(
                    "The operation cannot be completed:\n- Create/update: a mandatory field is not set.\n"
                    "- Delete: another model requires the record being deleted. If possible, archive it instead.\n\n"
                    f"Model: {self._description} ({self._name})\nField: {spec.string} ({fname})\n"
                )
        return rid

    @staticmethod
    def _empty(spec: F) -> Any:
        if spec.type in ("o2m", "m2m"):
            return []
        if spec.type == "bool":
            return False
        return None

    def _assign(self, row: dict[str, Any], vals: dict[str, Any]) -> None:
        self._check_fields(vals)
        for fname, value in vals.items():
            spec = self._fields[fname]
            if spec.type == "selection" and value not in (False, None) and value not in spec.selection:
                raise ValueError(f"Wrong value for {self._name}.{fname}: {value!r}")
            if spec.type == "m2o":
                if value:
                    if int(value) not in self.env.db.tables.get(spec.comodel or "", {}):
                        raise missing(spec.comodel or "", [int(value)], self.env.uid)
                    value = int(value)
                else:
                    value = None
            elif spec.type == "m2m":
                value = _m2m_commands(value, row.get(fname) or [])
                table = self.env.db.tables.get(spec.comodel or "", {})
                gone = [i for i in value if i not in table]
                if gone:
                    raise missing(spec.comodel or "", gone, self.env.uid)
            elif spec.type == "o2m":
                continue  # handled by the model
            row[fname] = value
        row["write_date"] = self.env.now_str()

    # -- value conversion -----------------------------------------------------------------------------------
    def _raw(self, row: dict[str, Any], fname: str) -> Any:
        spec = self._fields.get(fname)
        if fname == "id":
            return row["id"]
        if spec is not None and spec.compute:
            return self._compute(row, fname)
        return row.get(fname)

    def _compute(self, row: dict[str, Any], fname: str) -> Any:
        if fname == "display_name":
            return self._display_name(row)
        raise NotImplementedError(fname)

    def _display_name(self, row: dict[str, Any]) -> str:
        return row.get("name") or ""

    def _wire(self, row: dict[str, Any], fname: str) -> Any:
        value = self._raw(row, fname)
        spec = self._fields.get(fname)
        if spec is None:
            return value
        t = spec.type
        if t == "m2o":
            if not value:
                return False
            comodel = self.env[spec.comodel or ""]
            target = comodel._table.get(value)
            return [value, comodel._display_name(target) if target else ""] if target else False
        if t in ("o2m", "m2m"):
            return list(value or [])
        if t == "float":
            return float(round(value or 0.0, 6))
        if t == "int":
            return int(value or 0)
        if t == "bool":
            return bool(value)
        if t == "json":
            return value if value is not None else False
        return value if value not in (None, "") else False

    def _match_value(self, row: dict[str, Any], path: str) -> Any:
        model: BaseModel = self
        cur_row: dict[str, Any] | None = row
        parts = path.split(".")
        for i, part in enumerate(parts):
            if cur_row is None:
                return None
            value = model._raw(cur_row, part)
            if i == len(parts) - 1:
                return value
            spec = model._fields[part]
            model = self.env[spec.comodel or ""]
            cur_row = model._table.get(value) if value else None
        return None

    # -- domains --------------------------------------------------------------------------------------------
    def _check_domain(self, domain: list[Any]) -> None:
        for leaf in domain:
            if isinstance(leaf, str):
                continue
            model: BaseModel = self
            for part in leaf[0].split("."):
                if part != "id" and part not in model._fields:
                    raise ValueError(f"Invalid field {model._name}.{part} in leaf {tuple(leaf)!r}")
                spec = model._fields.get(part)
                if spec is not None and spec.comodel:
                    model = self.env[spec.comodel]

    def _eval_leaf(self, row: dict[str, Any], leaf: list[Any]) -> bool:
        path, op, value = leaf
        got = self._match_value(row, path)
        if isinstance(got, list):  # x2many: any element
            if op in ("=", "in"):
                wanted = value if isinstance(value, list) else [value]
                return bool(set(got) & set(wanted)) if wanted not in ([], [False]) else not got
            if op in ("!=", "not in"):
                wanted = value if isinstance(value, list) else [value]
                return not (set(got) & set(wanted))
        if got is None:
            got = False
        if op == "=":
            return got == value or (value is False and got in ("", None, False))
        if op == "!=":
            return got != value
        if op == "in":
            return got in value
        if op == "not in":
            return got not in value
        if op in ("like", "ilike", "=like", "=ilike"):
            if got is False:
                return False
            s, v = str(got), str(value)
            if op.startswith("="):
                pattern = "^" + re.escape(v).replace("%", ".*").replace("_", ".") + "$"
                return re.match(pattern, s, re.I if op == "=ilike" else 0) is not None
            return (v.lower() in s.lower()) if op == "ilike" else (v in s)
        if op in ("<", ">", "<=", ">="):
            if got is False:
                return False
            return {"<": got < value, ">": got > value, "<=": got <= value, ">=": got >= value}[op]
        raise ValueError(f"Invalid operator {op!r}")

    def _eval_domain(self, row: dict[str, Any], domain: list[Any]) -> bool:
        stack: list[bool] = []
        for item in reversed(domain):
            if item == "!":
                stack.append(not stack.pop())
            elif item in ("&", "|"):
                a, b = stack.pop(), stack.pop()
                stack.append((a and b) if item == "&" else (a or b))
            else:
                stack.append(self._eval_leaf(row, item))
        return all(stack)

    def _search_rows(self, domain: list[Any], offset: int = 0, limit: int | None = None, order: str | None = None):
        self._check_domain(domain)
        rows = list(self._table.values())
        mentions_active = any(not isinstance(x, str) and x[0] == "active" for x in domain)
        if "active" in self._fields and not mentions_active and self.env.context.get("active_test", True):
            rows = [r for r in rows if r.get("active", True)]
        rows = [r for r in rows if self._eval_domain(r, domain)]
        for key in reversed([k.strip() for k in (order or self._order).split(",") if k.strip()]):
            fname, _, direction = key.partition(" ")
            rows.sort(key=lambda r, f=fname: self._sort_key(r, f), reverse=direction.strip().lower() == "desc")
        rows = rows[offset:]
        return rows[:limit] if limit else rows

    def _sort_key(self, row: dict[str, Any], fname: str) -> Any:
        value = self._raw(row, fname)
        if isinstance(value, str):
            return (1, value.casefold())
        return (0 if value in (None, False) else 1, value if value not in (None, False) else 0)

    # -- public ORM methods (Odoo 17 signatures) -------------------------------------------------------------
    def search(self, domain, offset=0, limit=None, order=None):
        return [r["id"] for r in self._search_rows(domain, offset, limit, order)]

    def search_count(self, domain, limit=None):
        return len(self._search_rows(domain, 0, limit))

    def search_read(self, domain=None, fields=None, offset=0, limit=None, order=None):
        rows = self._search_rows(domain or [], offset, limit, order)
        return self._browse([r["id"] for r in rows]).read(fields)

    def read(self, fields=None, load="_classic_read"):
        names = [f for f in (fields or [n for n, s in self._fields.items()]) if f != "id"]
        self._check_fields(names)
        return [{"id": row["id"], **{f: self._wire(row, f) for f in names}} for row in self._rows()]

    def create(self, vals_list):
        if isinstance(vals_list, dict):
            return self._create_one(vals_list)
        return [self._create_one(v) for v in vals_list]

    def _create_one(self, vals: dict[str, Any]) -> int:
        return self._insert(dict(vals))

    def write(self, vals):
        self._check_exists()
        for row in self._rows():
            self._assign(row, dict(vals))
        return True

    def unlink(self):
        self._check_exists()
        for rid in self.ids:
            self._table.pop(rid, None)
        # like Odoo, deleting a record deletes its external ids
        imd = self.env.db.tables.setdefault("ir.model.data", {})
        for key in [k for k, r in imd.items() if r["model"] == self._name and r["res_id"] in self.ids]:
            del imd[key]
        return True


# ---------------------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------------------
COMMON = {"display_name": F("char", compute=True), "create_date": F("datetime"), "write_date": F("datetime")}


class IrModelData(BaseModel):
    _name = "ir.model.data"
    _description = "Model Data"
    _fields = {
        **COMMON,
        "module": F("char", required=True, string="Module"),
        "name": F("char", required=True, string="External Identifier"),
        "model": F("char", required=True, string="Model Name"),
        "res_id": F("int"),
        "noupdate": F("bool"),
        "complete_name": F("char", compute=True),
    }

    def _compute(self, row, fname):
        if fname == "complete_name":
            return f"{row['module']}.{row['name']}"
        return super()._compute(row, fname)

    def _create_one(self, vals):
        for row in self._table.values():
            if row["module"] == vals.get("module") and row["name"] == vals.get("name"):
                raise ValidationError(
                    "The operation cannot be completed: duplicate key value violates unique constraint "
                    '"ir_model_data_module_name_uniq_index"\n'
                    f"DETAIL:  Key (module, name)=({vals.get('module')}, {vals.get('name')}) already exists.\n"
                )
        return super()._create_one(vals)

    def check_object_reference(self, module, xml_id, raise_on_access_error=False):
        for row in self._table.values():
            if row["module"] == module and row["name"] == xml_id:
                return [row["model"], row["res_id"]]
        raise ValueError(f"External ID not found in the system: {module}.{xml_id}")


class ResPartner(BaseModel):
    _name = "res.partner"
    _description = "Contact"
    _order = "complete_name, id desc"
    _fields = {
        **COMMON,
        "name": F("char"),
        "complete_name": F("char", compute=True),
        "is_company": F("bool"),
        "company_type": F("selection", selection=("person", "company"), compute=True),
        "ref": F("char"),
        "email": F("char"),
        "phone": F("char"),
        "mobile": F("char"),
        "street": F("char"),
        "street2": F("char"),
        "city": F("char"),
        "zip": F("char"),
        "country_id": F("m2o", "res.country"),
        "parent_id": F("m2o", "res.partner"),
        "vat": F("char"),
        "lang": F("char"),
        "comment": F("text"),
        "customer_rank": F("int", default=0),
        "active": F("bool", default=True),
        "type": F("selection", selection=("contact", "invoice", "delivery", "other", "private"), default="contact"),
    }

    def _assign(self, row, vals):
        if "company_type" in vals:  # the computed helper writes is_company
            ctype = vals.pop("company_type")
            if ctype not in ("person", "company"):
                raise ValueError(f"Wrong value for res.partner.company_type: {ctype!r}")
            vals["is_company"] = ctype == "company"
        super()._assign(row, vals)

    def _compute(self, row, fname):
        if fname == "company_type":
            return "company" if row.get("is_company") else "person"
        if fname == "complete_name":
            return self._display_name(row)
        return super()._compute(row, fname)

    def _display_name(self, row):
        name = row.get("name") or ""
        parent = self._table.get(row.get("parent_id")) if row.get("parent_id") else None
        if parent and not row.get("is_company"):
            return f"{self._display_name(parent)}, {name}"
        return name


class SimpleNamed(BaseModel):
    _fields = {**COMMON, "name": F("char"), "code": F("char"), "active": F("bool", default=True)}


class ResCountry(SimpleNamed):
    _name = "res.country"
    _description = "Country"


class ResCurrency(SimpleNamed):
    _name = "res.currency"
    _description = "Currency"


class ResCompany(SimpleNamed):
    _name = "res.company"
    _description = "Companies"


class UomUom(SimpleNamed):
    _name = "uom.uom"
    _description = "Product Unit of Measure"


class AccountAccount(BaseModel):
    _name = "account.account"
    _description = "Account"
    _fields = {
        **COMMON,
        "name": F("char"),
        "code": F("char"),
        "account_type": F("char"),
        "reconcile": F("bool"),
    }

    def _display_name(self, row):
        return f"{row['code']} {row['name']}"


class AccountTax(BaseModel):
    _name = "account.tax"
    _description = "Tax"
    _fields = {
        **COMMON,
        "name": F("char"),
        "amount": F("float"),
        "amount_type": F("selection", selection=("percent", "fixed", "group", "division")),
        "price_include": F("bool"),
        "type_tax_use": F("selection", selection=("sale", "purchase", "none")),
        "active": F("bool", default=True),
        "company_id": F("m2o", "res.company"),
    }


class AccountPaymentMethodLine(BaseModel):
    _name = "account.payment.method.line"
    _description = "Payment Methods"
    _fields = {**COMMON, "name": F("char"), "journal_id": F("m2o", "account.journal"), "payment_type": F("char")}


class AccountJournal(BaseModel):
    _name = "account.journal"
    _description = "Journal"
    _fields = {
        **COMMON,
        "name": F("char"),
        "code": F("char"),
        "type": F("selection", selection=("sale", "purchase", "cash", "bank", "general")),
        "currency_id": F("m2o", "res.currency"),
        "company_id": F("m2o", "res.company"),
        "default_account_id": F("m2o", "account.account"),
        "inbound_payment_method_line_ids": F("o2m", "account.payment.method.line", compute=True),
        "active": F("bool", default=True),
    }

    def _compute(self, row, fname):
        if fname == "inbound_payment_method_line_ids":
            lines = self.env.db.tables.get("account.payment.method.line", {}).values()
            return [pl["id"] for pl in lines if pl["journal_id"] == row["id"] and pl["payment_type"] == "inbound"]
        return super()._compute(row, fname)


class ProductTemplate(BaseModel):
    _name = "product.template"
    _description = "Product"
    _fields = {**COMMON, "name": F("char"), "default_code": F("char")}

    def _display_name(self, row):
        return f"[{row['default_code']}] {row['name']}" if row.get("default_code") else row.get("name") or ""


class ProductProduct(BaseModel):
    _name = "product.product"
    _description = "Product Variant"
    _order = "default_code, name, id"
    _fields = {
        **COMMON,
        "name": F("char", required=True, string="Name"),
        "default_code": F("char"),
        "barcode": F("char"),
        "type": F("selection", selection=("consu", "service", "product"), default="consu"),
        "detailed_type": F("selection", selection=("consu", "service", "product"), compute=True),
        "list_price": F("float", default=1.0),
        "taxes_id": F("m2m", "account.tax"),
        "product_tmpl_id": F("m2o", "product.template"),
        "uom_id": F("m2o", "uom.uom", default=1),
        "property_account_income_id": F("m2o", "account.account"),
        "active": F("bool", default=True),
    }

    def _compute(self, row, fname):
        if fname == "detailed_type":
            return row.get("type")
        return super()._compute(row, fname)

    def _display_name(self, row):
        return f"[{row['default_code']}] {row['name']}" if row.get("default_code") else row.get("name") or ""

    def _create_one(self, vals):
        vals = dict(vals)
        if "detailed_type" in vals:
            vals["type"] = vals.pop("detailed_type")
        if "taxes_id" not in vals:  # the company's default sale tax, as in the generic chart
            vals["taxes_id"] = [[6, 0, list(self.env.db.default_sale_tax_ids)]]
        rid = super()._create_one(vals)
        row = self._table[rid]
        tmpl = self.env["product.template"]
        row["product_tmpl_id"] = tmpl._insert({"name": row["name"], "default_code": row.get("default_code")})
        return rid

    def write(self, vals):
        vals = dict(vals)
        if "detailed_type" in vals:
            vals["type"] = vals.pop("detailed_type")
        res = super().write(vals)
        for row in self._rows():
            tmpl = self.env.db.tables["product.template"].get(row["product_tmpl_id"])
            if tmpl:
                tmpl.update(name=row["name"], default_code=row.get("default_code"))
        return res


def _r2(x: float) -> float:
    return round(x + 0.0, 2)


class AccountMoveLine(BaseModel):
    _name = "account.move.line"
    _description = "Journal Item"
    _fields = {
        **COMMON,
        "move_id": F("m2o", "account.move"),
        "move_name": F("char", compute=True),
        "parent_state": F("char", compute=True),
        "product_id": F("m2o", "product.product"),
        "partner_id": F("m2o", "res.partner"),
        "name": F("char"),
        "quantity": F("float", default=1.0),
        "price_unit": F("float"),
        "discount": F("float", default=0.0),
        "price_subtotal": F("float", compute=True),
        "price_total": F("float", compute=True),
        "tax_ids": F("m2m", "account.tax"),
        "tax_line_id": F("m2o", "account.tax"),
        "account_id": F("m2o", "account.account"),
        "account_type": F("char", compute=True),
        "display_type": F("selection", selection=("product", "tax", "payment_term", "line_section", "line_note")),
        "debit": F("float", compute=True),
        "credit": F("float", compute=True),
        "balance": F("float"),
        "amount_residual": F("float"),
        "reconciled": F("bool", compute=True),
        "analytic_distribution": F("json"),
    }

    def _compute(self, row, fname):
        if fname in ("price_subtotal", "price_total"):
            sub, tax = _line_amounts(self.env, row)
            return sub if fname == "price_subtotal" else _r2(sub + tax)
        if fname in ("move_name", "parent_state"):
            move = self.env.db.tables["account.move"].get(row["move_id"]) or {}
            return move.get("name" if fname == "move_name" else "state")
        if fname == "account_type":
            acc = self.env.db.tables["account.account"].get(row.get("account_id")) or {}
            return acc.get("account_type")
        if fname == "debit":
            return max(row.get("balance") or 0.0, 0.0)
        if fname == "credit":
            return max(-(row.get("balance") or 0.0), 0.0)
        if fname == "reconciled":
            acc = self.env.db.tables["account.account"].get(row.get("account_id")) or {}
            return bool(acc.get("reconcile")) and abs(row.get("amount_residual") or 0.0) < 0.005
        return super()._compute(row, fname)


def _line_amounts(env: Env, row: dict[str, Any]) -> tuple[float, float]:
    sub = _r2((row.get("quantity") or 0.0) * (row.get("price_unit") or 0.0) * (1 - (row.get("discount") or 0.0) / 100))
    tax = 0.0
    for tid in row.get("tax_ids") or []:
        t = env.db.tables["account.tax"][tid]
        tax += sub * t["amount"] / 100 if t["amount_type"] == "percent" else t["amount"] * (row.get("quantity") or 0)
    return sub, _r2(tax)


MOVE_TYPES = ("entry", "out_invoice", "out_refund", "in_invoice", "in_refund", "out_receipt", "in_receipt")
LINE_FIELDS_IN_VALS = frozenset(AccountMoveLine._fields)


class AccountMove(BaseModel):
    _name = "account.move"
    _description = "Journal Entry"
    _order = "date desc, name desc, id desc"
    _fields = {
        **COMMON,
        "name": F("char"),
        "state": F("selection", selection=("draft", "posted", "cancel"), default="draft"),
        "move_type": F("selection", selection=MOVE_TYPES, default="entry"),
        "partner_id": F("m2o", "res.partner"),
        "commercial_partner_id": F("m2o", "res.partner", compute=True),
        "journal_id": F("m2o", "account.journal"),
        "company_id": F("m2o", "res.company", default=1),
        "currency_id": F("m2o", "res.currency", default=1),
        "date": F("date"),
        "invoice_date": F("date"),
        "invoice_date_due": F("date"),
        "invoice_payment_term_id": F("m2o", "account.payment.term"),
        "ref": F("char"),
        "invoice_origin": F("char"),
        "payment_reference": F("char"),
        "narration": F("text"),
        "invoice_line_ids": F("o2m", "account.move.line", compute=True),
        "line_ids": F("o2m", "account.move.line", compute=True),
        "amount_untaxed": F("float", compute=True),
        "amount_tax": F("float", compute=True),
        "amount_total": F("float", compute=True),
        "amount_residual": F("float", compute=True),
        "payment_state": F(
            "selection",
            selection=("not_paid", "in_payment", "paid", "partial", "reversed", "invoicing_legacy"),
            compute=True,
        ),
        "reversed_entry_id": F("m2o", "account.move"),
        "reversal_move_id": F("o2m", "account.move", compute=True),
        "payment_id": F("m2o", "account.payment"),
        "posted_before": F("bool"),
    }

    # -- helpers -------------------------------------------------------------------------------------------
    def _lines(self, move_id: int, kind: str | None = None) -> list[dict[str, Any]]:
        lines = self.env.db.tables.setdefault("account.move.line", {})
        return [
            ln for ln in lines.values() if ln["move_id"] == move_id and (kind is None or ln["display_type"] == kind)
        ]

    def _receivable(self, move_id: int) -> dict[str, Any] | None:
        for ln in self._lines(move_id):
            if ln["display_type"] == "payment_term":
                return ln
        return None

    def _compute(self, row, fname):
        rid = row["id"]
        if fname == "invoice_line_ids":
            return sorted(ln["id"] for ln in self._lines(rid, "product"))
        if fname == "line_ids":
            return sorted(ln["id"] for ln in self._lines(rid))
        if fname == "commercial_partner_id":
            return row.get("partner_id")
        if fname in ("amount_untaxed", "amount_tax", "amount_total"):
            sub = tax = 0.0
            for ln in self._lines(rid, "product"):
                s, t = _line_amounts(self.env, ln)
                sub, tax = sub + s, tax + t
            return {"amount_untaxed": _r2(sub), "amount_tax": _r2(tax), "amount_total": _r2(sub + tax)}[fname]
        if fname == "amount_residual":
            rec = self._receivable(rid)
            return _r2(abs(rec["amount_residual"])) if rec else 0.0
        if fname == "payment_state":
            return self._payment_state(row)
        if fname == "reversal_move_id":
            return sorted(m["id"] for m in self._table.values() if m.get("reversed_entry_id") == rid)
        return super()._compute(row, fname)

    def _counterpart_moves(self, line_id: int) -> set[int]:
        out = set()
        lines = self.env.db.tables["account.move.line"]
        for p in self.env.db.tables.setdefault("account.partial.reconcile", {}).values():
            other = p["credit_move_id"] if p["debit_move_id"] == line_id else None
            other = p["debit_move_id"] if p["credit_move_id"] == line_id else other
            if other is not None and other in lines:
                out.add(lines[other]["move_id"])
        return out

    def _payment_state(self, row: dict[str, Any]) -> str:
        rec = self._receivable(row["id"])
        if row["state"] != "posted" or rec is None or row["move_type"] == "entry":
            return "not_paid"
        residual, total = abs(rec["amount_residual"]), abs(rec["balance"])
        if residual < 0.005:
            reversals = set(self._compute(row, "reversal_move_id"))
            counterpart = self._counterpart_moves(rec["id"])
            return "reversed" if reversals and counterpart <= reversals else "paid"
        return "partial" if residual < total - 0.005 else "not_paid"

    def _display_name(self, row):
        name = row.get("name")
        if not name or name == "/":
            label = {"out_invoice": "Invoice", "out_refund": "Credit Note"}.get(row.get("move_type"), "Entry")
            name = f"Draft {label} (* {row['id']})"
        return f"{name} ({row['ref']})" if row.get("ref") else name

    def _sequence_prefix(self, row: dict[str, Any]) -> str:
        journal = self.env.db.tables["account.journal"][row["journal_id"]]
        year = (row.get("date") or self.env.today())[:4]
        code = journal["code"]
        if row["move_type"] in ("out_refund", "in_refund"):
            code = "R" + code
        elif row.get("payment_id"):
            code = "P" + code
        return f"{code}/{year}/"

    def _used_numbers(self, prefix: str) -> list[int]:
        out = []
        for m in self._table.values():
            name = m.get("name") or ""
            if name.startswith(prefix) and name[len(prefix) :].isdigit():
                out.append(int(name[len(prefix) :]))
        return out

    def _assign_name(self, row: dict[str, Any], *, posting: bool) -> None:
        if row.get("name") and row["name"] != "/":
            return
        prefix = self._sequence_prefix(row)
        used = self._used_numbers(prefix)
        if posting or not used:  # the first move of a sequence is numbered already in draft
            row["name"] = f"{prefix}{(max(used) if used else 0) + 1:05d}"
        else:
            row["name"] = "/"

    def _default_journal(self, move_type: str) -> int:
        wanted = "sale" if move_type.startswith("out_") else "purchase" if move_type.startswith("in_") else "general"
        journals = sorted(self.env.db.tables["account.journal"].values(), key=lambda j: j["id"])
        return next(j["id"] for j in journals if j["type"] == wanted)

    def _make_product_line(self, move: dict[str, Any], vals: dict[str, Any]) -> None:
        vals = dict(vals)
        unknown = [k for k in vals if k not in LINE_FIELDS_IN_VALS]
        if unknown:
            raise ValueError(f"Invalid field {unknown[0]!r} on model 'account.move.line'")
        line_model = self.env["account.move.line"]
        product = None
        if vals.get("product_id"):
            product = self.env.db.tables["product.product"].get(int(vals["product_id"]))
            if product is None:
                raise missing("product.product", [int(vals["product_id"])], self.env.uid)
        if "tax_ids" not in vals:  # the product's default taxes creep in (recording 31/32)
            vals["tax_ids"] = [[6, 0, list(product["taxes_id"]) if product else []]]
        vals.setdefault("name", self.env["product.product"]._display_name(product) if product else False)
        vals.setdefault("price_unit", product["list_price"] if product else 0.0)
        journal = self.env.db.tables["account.journal"][move["journal_id"]]
        income = (product or {}).get("property_account_income_id") or journal["default_account_id"]
        vals.setdefault("account_id", income)
        vals.update(move_id=move["id"], display_type="product", partner_id=move.get("partner_id"))
        line_model._insert(vals)

    def _sync_dynamic_lines(self, move: dict[str, Any]) -> None:
        """Rebuild tax and receivable lines from the product lines, as Odoo does on every change."""
        lines = self.env.db.tables["account.move.line"]
        for ln in self._lines(move["id"]):
            if ln["display_type"] in ("tax", "payment_term"):
                del lines[ln["id"]]
        if move["move_type"] not in ("out_invoice", "out_refund"):
            return
        sign = 1 if move["move_type"] == "out_invoice" else -1
        taxes: dict[int, float] = {}
        total = 0.0
        product_lines = sorted(self._lines(move["id"], "product"), key=lambda x: x["id"])
        for ln in product_lines:
            sub, tax = _line_amounts(self.env, ln)
            ln["balance"] = -sign * sub
            total += sub + tax
            for tid in ln.get("tax_ids") or []:
                t = self.env.db.tables["account.tax"][tid]
                taxes[tid] = taxes.get(tid, 0.0) + sub * t["amount"] / 100
        line_model = self.env["account.move.line"]
        for tid, amount in taxes.items():
            if _r2(amount):
                line_model._insert(
                    {
                        "move_id": move["id"],
                        "display_type": "tax",
                        "tax_line_id": tid,
                        "account_id": 30,
                        "name": self.env.db.tables["account.tax"][tid]["name"],
                        "balance": -sign * _r2(amount),
                    }
                )
        line_model._insert(
            {
                "move_id": move["id"],
                "display_type": "payment_term",
                "account_id": 6,
                "name": move.get("name") or "",
                "partner_id": move.get("partner_id"),
                "balance": sign * _r2(total),
                "amount_residual": sign * _r2(total),
            }
        )

    # -- ORM overrides -------------------------------------------------------------------------------------
    def _create_one(self, vals):
        vals = dict(vals)
        line_cmds = vals.pop("invoice_line_ids", None) or []
        vals.pop("line_ids", None)
        move_type = vals.get("move_type", "entry")
        if move_type not in MOVE_TYPES:
            raise ValueError(f"Wrong value for account.move.move_type: {move_type!r}")
        vals.setdefault("journal_id", self._default_journal(move_type))
        rid = self._insert(vals)
        move = self._table[rid]
        move["date"] = move.get("invoice_date") or move.get("date") or self.env.today()
        for cmd in line_cmds:
            if cmd[0] != 0:
                raise ValueError("Only [0, 0, vals] line commands are supported on create")
            self._make_product_line(move, cmd[2])
        self._sync_dynamic_lines(move)
        if move_type != "entry":
            self._assign_name(move, posting=False)
        return rid

    def write(self, vals):
        self._check_exists()
        vals = dict(vals)
        line_cmds = vals.pop("invoice_line_ids", None)
        for row in self._rows():
            if row["state"] != "draft":
                locked = {"partner_id", "journal_id", "invoice_date", "date", "move_type", "currency_id"}
                if line_cmds is not None or locked & set(vals):
                    raise UserError("You cannot modify a posted entry of this journal.")
            self._assign(row, dict(vals))
            if line_cmds is not None:
                lines = self.env.db.tables["account.move.line"]
                for cmd in line_cmds:
                    if cmd[0] == 0:
                        self._make_product_line(row, cmd[2])
                    elif cmd[0] == 1:
                        self.env["account.move.line"]._browse([cmd[1]]).write(cmd[2])
                    elif cmd[0] == 2:
                        lines.pop(cmd[1], None)
                    elif cmd[0] == 5:
                        for ln in self._lines(row["id"], "product"):
                            del lines[ln["id"]]
                    else:
                        raise ValueError(f"Unsupported line command {cmd[0]}")
                self._sync_dynamic_lines(row)
        return True

    def unlink(self):
        self._check_exists()
        for row in self._rows():
            if any(self._counterpart_moves(ln["id"]) for ln in self._lines(row["id"])):
                raise UserError(
                    "You cannot do this modification on a reconciled journal entry. You can just change some non "
                    "legal fields or you must unreconcile first.\n"
                    f"Journal Entry (id): {row['name']} ({row['id']})"
                )
            if row["state"] == "posted" or row.get("posted_before"):
                raise UserError("You cannot delete an entry which has been posted once.")
        lines = self.env.db.tables["account.move.line"]
        for rid in self.ids:
            for ln in self._lines(rid):
                del lines[ln["id"]]
        return super().unlink()

    # -- business methods ----------------------------------------------------------------------------------
    def action_post(self):
        self._check_exists()
        for row in self._rows():
            if row["state"] != "draft":
                raise UserError(f"The entry {row['name']} (id {row['id']}) must be in draft.")
            self._post(row)
        return False

    def _post(self, row: dict[str, Any]) -> None:
        if row["move_type"] in ("out_invoice", "out_refund"):
            if not row.get("partner_id"):
                raise UserError(
                    "The field 'Customer' is required, please complete it to validate the Customer Invoice."
                )
            if not self._lines(row["id"], "product"):
                raise UserError("You need to add a line before posting.")
            row["invoice_date"] = row.get("invoice_date") or self.env.today()
            row["date"] = row["invoice_date"]
            row["invoice_date_due"] = row.get("invoice_date_due") or row["invoice_date"]
            partner = self.env.db.tables["res.partner"][row["partner_id"]]
            partner["customer_rank"] = (partner.get("customer_rank") or 0) + 1
        self._assign_name(row, posting=True)
        row["state"] = "posted"
        row["posted_before"] = True
        rec = self._receivable(row["id"])
        if rec is not None:
            rec["name"] = row["name"]
        if row["move_type"] == "out_refund" and row.get("reversed_entry_id"):
            origin = self._table.get(row["reversed_entry_id"])
            origin_rec = self._receivable(origin["id"]) if origin and origin["state"] == "posted" else None
            if rec is not None and origin_rec is not None:
                reconcile(self.env, [origin_rec, rec])

    def button_cancel(self):
        self._check_exists()
        for row in self._rows():
            unreconcile_move(self.env, row["id"])  # 17 resets to draft first, which unreconciles silently
            row["state"] = "cancel"
        return None

    def button_draft(self):
        self._check_exists()
        for row in self._rows():
            unreconcile_move(self.env, row["id"])
            row["state"] = "draft"
        return None

    def js_assign_outstanding_line(self, line_id):
        self._check_exists()
        lines = self.env.db.tables["account.move.line"]
        if line_id not in lines:
            raise missing("account.move.line", [line_id], self.env.uid)
        for row in self._rows():
            rec = self._receivable(row["id"])
            if rec is not None:
                reconcile(self.env, [rec, lines[line_id]])
        return None


def reconcile(env: Env, lines: list[dict[str, Any]]) -> None:
    """Match debit residuals against credit residuals, oldest first (account.move.line.reconcile)."""
    partials = env.db.tables.setdefault("account.partial.reconcile", {})
    debits = [ln for ln in lines if (ln.get("amount_residual") or 0) > 0.005]
    credits = [ln for ln in lines if (ln.get("amount_residual") or 0) < -0.005]
    for d in debits:
        for c in credits:
            amount = _r2(min(d["amount_residual"], -c["amount_residual"]))
            if amount <= 0:
                continue
            d["amount_residual"] = _r2(d["amount_residual"] - amount)
            c["amount_residual"] = _r2(c["amount_residual"] + amount)
            pid = env.db.next_ids.get("account.partial.reconcile", 1)
            env.db.next_ids["account.partial.reconcile"] = pid + 1
            partials[pid] = {"id": pid, "debit_move_id": d["id"], "credit_move_id": c["id"], "amount": amount}


def unreconcile_move(env: Env, move_id: int) -> None:
    lines = env.db.tables["account.move.line"]
    partials = env.db.tables.setdefault("account.partial.reconcile", {})
    own = {ln["id"] for ln in lines.values() if ln["move_id"] == move_id}
    for pid, p in list(partials.items()):
        if p["debit_move_id"] in own or p["credit_move_id"] in own:
            if p["debit_move_id"] in lines:
                lines[p["debit_move_id"]]["amount_residual"] += p["amount"]
            if p["credit_move_id"] in lines:
                lines[p["credit_move_id"]]["amount_residual"] -= p["amount"]
            del partials[pid]


class AccountPayment(BaseModel):
    _name = "account.payment"
    _description = "Payments"
    _order = "date desc, name desc"
    _fields = {
        **COMMON,
        "name": F("char", compute=True),
        "state": F("selection", selection=("draft", "posted", "cancel"), compute=True),
        "payment_type": F("selection", selection=("outbound", "inbound"), default="inbound"),
        "partner_type": F("selection", selection=("customer", "supplier"), default="customer"),
        "partner_id": F("m2o", "res.partner"),
        "amount": F("float"),
        "date": F("date"),
        "ref": F("char"),
        "journal_id": F("m2o", "account.journal"),
        "move_id": F("m2o", "account.move"),
        "currency_id": F("m2o", "res.currency", default=1),
        "payment_method_line_id": F("m2o", "account.payment.method.line"),
        "is_reconciled": F("bool", compute=True),
        "reconciled_invoice_ids": F("m2m", "account.move", compute=True),
    }

    def _compute(self, row, fname):
        move = self.env.db.tables["account.move"].get(row["move_id"]) or {}
        moves = self.env["account.move"]
        rec = moves._receivable(row["move_id"]) if move else None
        if fname == "name":
            return move.get("name") or "/"
        if fname == "state":
            return move.get("state") or "draft"
        if fname == "is_reconciled":
            return bool(rec) and abs(rec["amount_residual"]) < 0.005
        if fname == "reconciled_invoice_ids":
            if rec is None:
                return []
            all_moves = self.env.db.tables["account.move"]
            return sorted(m for m in moves._counterpart_moves(rec["id"]) if all_moves[m]["move_type"] != "entry")
        return super()._compute(row, fname)

    def _display_name(self, row):
        return self._compute(row, "name")

    def _create_one(self, vals):
        vals = dict(vals)
        self._check_fields(vals)
        vals.setdefault("date", self.env.today())
        if not vals.get("journal_id"):
            vals["journal_id"] = next(
                j["id"] for j in self.env.db.tables["account.journal"].values() if j["type"] in ("bank", "cash")
            )
        rid = self._insert(vals)
        row = self._table[rid]
        moves = self.env["account.move"]
        move_id = moves._insert(
            {
                "move_type": "entry",
                "journal_id": row["journal_id"],
                "partner_id": row.get("partner_id"),
                "ref": row.get("ref"),
                "date": row["date"],
            }
        )
        move = moves._table[move_id]
        move["payment_id"] = rid
        row["move_id"] = move_id
        sign = 1 if row["payment_type"] == "inbound" else -1
        amount = _r2(row.get("amount") or 0.0)
        line_model = self.env["account.move.line"]
        line_model._insert(
            {
                "move_id": move_id,
                "display_type": "product",
                "account_id": 5,
                "name": row.get("ref") or "",
                "balance": sign * amount,
                "quantity": 1.0,
            }
        )
        line_model._insert(
            {
                "move_id": move_id,
                "display_type": "payment_term",
                "account_id": 6,
                "name": row.get("ref") or "",
                "partner_id": row.get("partner_id"),
                "balance": -sign * amount,
                "amount_residual": -sign * amount,
            }
        )
        moves._assign_name(move, posting=False)
        return rid

    def action_post(self):
        self._check_exists()
        moves = self.env["account.move"]
        for row in self._rows():
            move = moves._table[row["move_id"]]
            if move["state"] != "draft":
                raise UserError("Only a draft payment can be posted.")
            moves._post(move)
        return None


class AccountPaymentRegister(BaseModel):
    _name = "account.payment.register"
    _description = "Pay"
    _fields = {
        **COMMON,
        "journal_id": F("m2o", "account.journal", required=True, string="Journal"),
        "amount": F("float"),
        "payment_date": F("date"),
        "communication": F("char"),
        "payment_method_line_id": F("m2o", "account.payment.method.line"),
        "partner_id": F("m2o", "res.partner"),
        "group_payment": F("bool"),
        "line_ids": F("m2m", "account.move.line"),
    }

    def _create_one(self, vals):
        ctx = self.env.context
        if ctx.get("active_model") not in ("account.move", "account.move.line") or not ctx.get("active_ids"):
            raise UserError(
                "The register payment wizard should only be called on account.move or account.move.line records."
            )
        self._check_fields(vals)
        moves = self.env["account.move"]
        move_ids = list(ctx["active_ids"])
        moves._browse(move_ids)._check_exists()
        lines = []
        for mid in move_ids:
            move = moves._table[mid]
            if move["state"] != "posted":
                raise UserError("You can only register payment for posted journal entries.")
            rec = moves._receivable(mid)
            if rec is not None and abs(rec["amount_residual"]) > 0.005:
                lines.append(rec)
        if not lines:
            raise UserError(
                "You can't register a payment because there is nothing left to pay on the selected journal items."
            )
        first = moves._table[move_ids[0]]
        vals = dict(vals)
        vals.setdefault("amount", _r2(sum(abs(ln["amount_residual"]) for ln in lines)))
        vals.setdefault("payment_date", self.env.today())
        vals.setdefault("communication", first.get("payment_reference") or first.get("ref") or first["name"])
        vals.setdefault("partner_id", first.get("partner_id"))
        if "journal_id" not in vals:
            vals["journal_id"] = next(
                j["id"] for j in self.env.db.tables["account.journal"].values() if j["type"] in ("bank", "cash")
            )
        vals["line_ids"] = [[6, 0, [ln["id"] for ln in lines]]]
        return self._insert(vals)

    def action_create_payments(self):
        self._check_exists()
        payments = self.env["account.payment"]
        lines_table = self.env.db.tables["account.move.line"]
        pay_id = 0
        for row in self._rows():
            pay_id = payments._create_one(
                {
                    "payment_type": "inbound",
                    "partner_type": "customer",
                    "partner_id": row["partner_id"],
                    "amount": row["amount"],
                    "date": row["payment_date"],
                    "ref": row.get("communication"),
                    "journal_id": row["journal_id"],
                    "payment_method_line_id": row.get("payment_method_line_id"),
                }
            )
            payments._browse([pay_id]).action_post()
            pay_move = payments._table[pay_id]["move_id"]
            pay_rec = self.env["account.move"]._receivable(pay_move)
            targets = [lines_table[i] for i in row["line_ids"] if i in lines_table]
            reconcile(self.env, [*targets, pay_rec])
        return {
            "name": "Payments",
            "type": "ir.actions.act_window",
            "res_model": "account.payment",
            "context": {"create": False},
            "view_mode": "form",
            "res_id": pay_id,
        }


class AccountMoveReversal(BaseModel):
    _name = "account.move.reversal"
    _description = "Account Move Reversal"
    _fields = {
        **COMMON,
        "reason": F("char"),
        "journal_id": F("m2o", "account.journal", required=True, string="Journal"),
        "date": F("date"),
        "move_ids": F("m2m", "account.move"),
    }

    def _create_one(self, vals):
        ctx = self.env.context
        vals = dict(vals)
        if ctx.get("active_model") == "account.move" and ctx.get("active_ids"):
            vals.setdefault("move_ids", [[6, 0, list(ctx["active_ids"])]])
        vals.setdefault("date", self.env.today())
        return self._insert(vals)

    def refund_moves(self):
        self._check_exists()
        moves = self.env["account.move"]
        new_id = 0
        for wiz in self._rows():
            for mid in wiz["move_ids"]:
                origin = moves._table[mid]
                lines = [
                    [
                        0,
                        0,
                        {
                            "product_id": ln.get("product_id") or False,
                            "name": ln.get("name"),
                            "quantity": ln["quantity"],
                            "price_unit": ln["price_unit"],
                            "discount": ln["discount"],
                            "tax_ids": [[6, 0, list(ln.get("tax_ids") or [])]],
                        },
                    ]
                    for ln in sorted(moves._lines(mid, "product"), key=lambda x: x["id"])
                ]
                reason = f", {wiz['reason']}" if wiz.get("reason") else ""
                new_id = moves._create_one(
                    {
                        "move_type": "out_refund",
                        "partner_id": origin["partner_id"],
                        "journal_id": wiz["journal_id"],
                        "reversed_entry_id": mid,
                        "invoice_date": wiz["date"],
                        "ref": f"Reversal of: {origin['name']}{reason}",
                        "invoice_line_ids": lines,
                    }
                )
        return {
            "name": "Reverse Moves",
            "type": "ir.actions.act_window",
            "res_model": "account.move",
            "view_mode": "form",
            "res_id": new_id,
            "context": {"default_move_type": "out_refund"},
        }


class AccountPaymentTerm(SimpleNamed):
    _name = "account.payment.term"
    _description = "Payment Terms"


MODELS: dict[str, type[BaseModel]] = {
    cls._name: cls
    for cls in (
        IrModelData,
        ResPartner,
        ResCountry,
        ResCurrency,
        ResCompany,
        UomUom,
        AccountAccount,
        AccountTax,
        AccountPaymentMethodLine,
        AccountJournal,
        ProductTemplate,
        ProductProduct,
        AccountMoveLine,
        AccountMove,
        AccountPayment,
        AccountPaymentRegister,
        AccountMoveReversal,
        AccountPaymentTerm,
    )
}


# ---------------------------------------------------------------------------------------------------------------
# Database seed: the state of the recorded database before file 01
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class User:
    uid: int
    login: str
    secrets: tuple[str, ...]
    invoicing: bool = True


@dataclass
class Database:
    tables: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    next_ids: dict[str, int] = field(default_factory=dict)
    default_sale_tax_ids: tuple[int, ...] = (1,)


def seed_database(now: str) -> Database:
    """A fresh 17.0 database with `account` and the generic chart, as recorded (ids match the recordings)."""
    db = Database()

    def put(model: str, rows: list[dict[str, Any]], next_id: int | None = None) -> None:
        table = db.tables.setdefault(model, {})
        for r in rows:
            spec = MODELS[model]._fields
            full = {
                n: BaseModel._empty(s) if s.default is None else s.default for n, s in spec.items() if not s.compute
            }
            full.update(r, create_date=now, write_date=now)
            table[r["id"]] = full
        db.next_ids[model] = next_id if next_id is not None else max(table, default=0) + 1

    put("res.company", [{"id": 1, "name": "My Company"}])
    put("res.currency", [{"id": 1, "name": "USD"}, {"id": 2, "name": "EUR", "active": False}])
    put(
        "res.country", [{"id": 233, "name": "United States", "code": "US"}, {"id": 56, "name": "Germany", "code": "DE"}]
    )
    put("uom.uom", [{"id": 1, "name": "Units"}])
    put(
        "res.partner",
        [
            {"id": 1, "name": "My Company", "is_company": True},
            {"id": 2, "name": "OdooBot"},
            {"id": 3, "name": "Administrator"},
            {"id": 4, "name": "Public user", "active": False},
            {"id": 5, "name": "Default User Template", "active": False},
            {"id": 6, "name": "Portal User Template", "active": False},
            {"id": 7, "name": "Limited User"},
        ],
    )
    put(
        "account.account",
        [
            {
                "id": 5,
                "name": "Outstanding Receipts",
                "code": "101402",
                "account_type": "asset_current",
                "reconcile": True,
            },
            {
                "id": 6,
                "name": "Account Receivable",
                "code": "121000",
                "account_type": "asset_receivable",
                "reconcile": True,
            },
            {"id": 24, "name": "Product Sales", "code": "400000", "account_type": "income"},
            {"id": 30, "name": "Tax Payable", "code": "251000", "account_type": "liability_current"},
        ],
    )
    put(
        "account.tax",
        [
            {
                "id": 1,
                "name": "15%",
                "amount": 15.0,
                "amount_type": "percent",
                "price_include": False,
                "type_tax_use": "sale",
                "company_id": 1,
            }
        ],
    )
    put(
        "account.journal",
        [
            {
                "id": 1,
                "name": "Customer Invoices",
                "code": "INV",
                "type": "sale",
                "company_id": 1,
                "default_account_id": 24,
            },
            {"id": 2, "name": "Vendor Bills", "code": "BILL", "type": "purchase", "company_id": 1},
            {"id": 3, "name": "Miscellaneous Operations", "code": "MISC", "type": "general", "company_id": 1},
            {"id": 4, "name": "Exchange Difference", "code": "EXCH", "type": "general", "company_id": 1},
            {"id": 5, "name": "Cash Basis Taxes", "code": "CABA", "type": "general", "company_id": 1},
            {"id": 6, "name": "Bank", "code": "BNK1", "type": "bank", "company_id": 1, "default_account_id": 5},
            {"id": 7, "name": "Cash", "code": "CSH1", "type": "cash", "company_id": 1, "default_account_id": 5},
        ],
    )
    put(
        "account.payment.method.line",
        [
            {"id": 1, "name": "Manual Payment", "journal_id": 6, "payment_type": "inbound"},
            {"id": 2, "name": "Manual Payment", "journal_id": 6, "payment_type": "outbound"},
            {"id": 4, "name": "Manual Payment", "journal_id": 7, "payment_type": "inbound"},
            {"id": 5, "name": "Manual Payment", "journal_id": 7, "payment_type": "outbound"},
        ],
    )
    put("ir.model.data", [], next_id=16128)
    for model in (
        "product.product",
        "product.template",
        "account.move",
        "account.move.line",
        "account.payment",
        "account.payment.register",
        "account.move.reversal",
        "account.payment.term",
    ):
        put(model, [])
    return db


# ---------------------------------------------------------------------------------------------------------------
# Faults and hooks
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class Fault:
    """One injected failure. kind:
    error        reply with an error envelope named ``error`` (no state change)
    http         reply with HTTP ``status`` and an HTML body (a proxy's 502/503/504), no state change
    delay        sleep ``seconds`` before handling (the client may time out; nothing was done)
    delay_after  handle and commit, then sleep ``seconds`` before replying (a reply lost after commit)
    drop         close the connection without a reply, no state change
    drop_after   handle and commit, then close the connection without a reply
    """

    kind: str
    times: int = 1
    model: str | None = None
    method: str | None = None
    error: str = "psycopg2.errors.SerializationFailure"
    message: str = "could not serialize access due to concurrent update\n"
    status: int = 503
    seconds: float = 0.0

    def matches(self, model: str | None, method: str | None) -> bool:
        return (self.model is None or self.model == model) and (self.method is None or self.method == method)


@dataclass
class Hook:
    fn: Callable[[FakeOdoo17], None]
    times: int
    model: str | None
    method: str | None


@dataclass
class Call:
    service: str
    method: str
    model: str | None = None
    model_method: str | None = None
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------------------------
class FakeOdoo17:
    """``with FakeOdoo17() as odoo: OdooGateway(odoo.url, odoo.db_name, "admin", odoo.api_key, ...)``."""

    def __init__(
        self,
        *,
        db_name: str = "odoo17wire",
        password: str = "<PASSWORD>",
        api_key: str = "<API_KEY>",
        limited_password: str = "<LIMITED_USER_PASSWORD>",
        now: Callable[[], datetime] | None = None,
    ) -> None:
        self.db_name = db_name
        self.password = password
        self.api_key = api_key
        self.now = now or (lambda: datetime.now(UTC).replace(tzinfo=None))
        self.users = {
            2: User(2, "admin", (password, api_key)),
            6: User(6, "limited.user", (limited_password,), invoicing=False),
        }
        self.db = seed_database(self.now().strftime("%Y-%m-%d %H:%M:%S"))
        self.calls: list[Call] = []
        self._faults: list[Fault] = []
        self._hooks: list[Hook] = []
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> FakeOdoo17:
        fake = self

        class Handler(_Handler):
            odoo = fake

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-odoo17", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wake handlers sleeping in a delay fault
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeOdoo17:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        assert self._server is not None, "start() first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # -- test controls -------------------------------------------------------------------------------------
    def inject(self, kind: str, times: int = 1, **kwargs: Any) -> Fault:
        fault = Fault(kind, times, **kwargs)
        with self._lock:
            self._faults.append(fault)
        return fault

    def before_call(
        self, fn: Callable[[FakeOdoo17], None], *, model: str | None = None, method: str | None = None, times: int = 1
    ) -> None:
        """Run ``fn(fake)`` inside the lock just before a matching execute_kw (e.g. a racing worker's write)."""
        with self._lock:
            self._hooks.append(Hook(fn, times, model, method))

    def env(self, uid: int = 2, context: dict[str, Any] | None = None) -> Env:
        return Env(self, uid, context or {})

    def execute(self, model: str, method: str, *args: Any, uid: int = 2, **kwargs: Any) -> Any:
        """Server-side call for test setup and assertions (no HTTP, no faults)."""
        with self._lock:
            return self._call_kw(uid, model, method, list(args), kwargs)

    def rows(self, model: str) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self.db.tables.get(model, {}).values()]

    def count_calls(self, model: str, method: str) -> int:
        return sum(1 for c in self.calls if c.model == model and c.model_method == method)

    # -- dispatch ------------------------------------------------------------------------------------------
    def _take_fault(self, model: str | None, method: str | None) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.times > 0 and fault.matches(model, method):
                    fault.times -= 1
                    return fault
        return None

    def _run_hooks(self, model: str | None, method: str | None) -> None:
        for hook in self._hooks:
            if hook.times > 0 and (hook.model in (None, model)) and (hook.method in (None, method)):
                hook.times -= 1
                hook.fn(self)

    def handle_rpc(self, payload: dict[str, Any]) -> tuple[Any, Fault | None]:
        """Returns (reply body or fault marker, fault to apply after handling)."""
        rpc_id = payload.get("id")
        params = payload.get("params") or {}
        service, method = params.get("service"), params.get("method")
        args = params.get("args")
        model = model_method = None
        if service == "object" and method == "execute_kw" and isinstance(args, list) and len(args) >= 5:
            model, model_method = args[3], args[4]
        self.calls.append(Call(str(service), str(method), model, model_method, list(args or [])))
        fault = self._take_fault(model, model_method or method)
        if fault is not None:
            if fault.kind == "error":
                return self._error_body(rpc_id, InjectedError(fault.error, fault.message)), None
            if fault.kind in ("http", "drop"):
                return fault, None
            if fault.kind == "delay":
                self._stop.wait(fault.seconds)
        try:
            if "args" not in params:
                raise TypeError("RPC.jsonrpc() missing 1 required positional argument: 'args'")
            result = self._dispatch(service, method, args)
        except Exception as exc:  # noqa: BLE001 - every error becomes an envelope, as in Odoo
            return self._error_body(rpc_id, exc), fault
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": rpc_id}
        if result is not None:  # Odoo drops the key when the method returns None (recordings 42, 45)
            body["result"] = result
        return body, fault

    @staticmethod
    def _error_body(rpc_id: Any, exc: BaseException) -> dict[str, Any]:
        return {
            "jsonrpc": "2.0",
            "id": rpc_id,
            "error": {"code": 200, "message": "Odoo Server Error", "data": error_data(exc)},
        }

    def _dispatch(self, service: Any, method: Any, args: list[Any]) -> Any:
        if service == "common":
            if method in ("version", "about"):
                return dict(VERSION_INFO) if method == "version" else "See http://openerp.com"
            if method in ("authenticate", "login"):
                db, login, secret = args[0], args[1], args[2]
                self._check_db(db)
                for user in self.users.values():
                    if user.login == login and secret in user.secrets:
                        return user.uid
                return False
            raise Exception(f"Method not found: {method}")
        if service == "object":
            if method not in ("execute", "execute_kw"):
                raise NameError(f"Method not available {method}")
            db, uid, secret, model, model_method, *rest = args
            self._check_db(db)
            user = self.users.get(uid)
            if user is None or secret not in user.secrets:
                raise AccessDenied("Access Denied")
            call_args = rest[0] if rest else []
            kwargs = dict(rest[1]) if len(rest) > 1 and rest[1] else {}
            with self._lock:
                self._run_hooks(model, model_method)
                # one transaction per call: roll back the rows on any error (sequences, as in PostgreSQL, do not)
                snapshot = copy.deepcopy(self.db.tables)
                try:
                    return self._call_kw(uid, model, model_method, call_args, kwargs)
                except BaseException:
                    self.db.tables = snapshot
                    raise
        if service == "db":
            if method == "list":
                return [self.db_name]
            raise Exception(f"Method not found: {method}")
        raise KeyError(service)

    def _check_db(self, db: Any) -> None:
        if db != self.db_name:
            raise PgOperationalError(
                f'connection to server at "127.0.0.1", port 5432 failed: FATAL:  database "{db}" does not exist\n'
            )

    def _call_kw(self, uid: int, model: str, method: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if method.startswith("_"):
            raise AccessError(f"Private methods (such as {method}) cannot be called remotely.")
        context = kwargs.pop("context", None) or {}
        env = Env(self, uid, context)
        recs = env[model]
        user = self.users.get(uid)
        if (
            user is not None
            and not user.invoicing
            and model.startswith("account.")
            and method in ("create", "write", "unlink")
        ):
            op = {"create": "create", "write": "modify", "unlink": "delete"}[method]
            raise AccessError(
                f"You are not allowed to {op} '{recs._description}' ({model}) records.\n\n"
                "This operation is allowed for the following groups:\n\t- Invoicing/Billing\n\n"
                "Contact your administrator to request access if necessary."
            )
        func = getattr(type(recs), method, None)
        if func is None or not callable(func):
            raise AttributeError(f"The method '{model}.{method}' does not exist")
        if method in recs._model_methods:
            return getattr(recs, method)(*args, **kwargs)
        if not args:
            raise TypeError(f"{type(recs).__name__}.{method}() missing 1 required positional argument: 'ids'")
        ids = args[0] if isinstance(args[0], list) else [args[0]]
        return getattr(recs._browse(ids), method)(*args[1:], **kwargs)


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that timed out and went away is an expected event here, not a test failure


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "Werkzeug/2.2.2"
    sys_version = "Python/3.11.7"
    odoo: FakeOdoo17

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
        pass

    def _reply(
        self,
        status: int,
        reason: str,
        body: bytes,
        content_type: str,
        *,
        nosniff: bool,
        extra: dict[str, str] | None = None,
        length_first: bool = True,
    ) -> None:
        self.send_response(status, reason)
        headers = [("Content-Length", str(len(body))), ("Content-Type", content_type)]
        if not length_first:
            headers.reverse()
        for k, v in [*headers, *(extra or {}).items()]:
            self.send_header(k, v)
        if nosniff:
            self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Connection", "close")
        self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _html_400(self, text: str, *, nosniff: bool) -> None:
        self._reply(400, "BAD REQUEST", text.encode(), HTML_CT, nosniff=nosniff, length_first=False)

    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/jsonrpc":
            self._html_400(WRONG_ROUTE_TYPE_HTML, nosniff=False)
        else:
            self._reply(404, "NOT FOUND", NOT_FOUND_HTML.encode(), HTML_CT, nosniff=False, length_first=False)

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.path not in ("/jsonrpc", "/web/webclient/version_info"):
            self._reply(404, "NOT FOUND", NOT_FOUND_HTML.encode(), HTML_CT, nosniff=False, length_first=False)
            return
        ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype not in ("application/json", "application/json-rpc"):
            self._html_400(WRONG_ROUTE_TYPE_HTML, nosniff=False)
            return
        try:
            payload = json.loads(raw)
        except ValueError:
            self._html_400("Invalid JSON data", nosniff=True)
            return
        if not isinstance(payload, dict):
            self._html_400("Invalid JSON-RPC data", nosniff=True)
            return
        if self.path == "/web/webclient/version_info":
            body = {"jsonrpc": "2.0", "id": payload.get("id"), "result": dict(VERSION_INFO)}
            cookie = (
                "session_id="
                + threading.current_thread().name.encode().hex()[:40]
                + "; Expires="
                + _http_date(self.odoo.now(), years=1)
                + "; Max-Age=604800; HttpOnly; Path=/"
            )
            self._reply(200, "OK", json.dumps(body).encode(), JSON_CT, nosniff=True, extra={"Set-Cookie": cookie})
            return
        reply, after = self.odoo.handle_rpc(payload)
        if isinstance(reply, Fault):
            if reply.kind == "drop":
                self._drop()
                return
            phrase = HTTPStatus(reply.status).phrase
            html = f"<html><head><title>{reply.status} {phrase}</title></head><body>{phrase}</body></html>"
            self._reply(reply.status, phrase, html.encode(), "text/html", nosniff=False)
            return
        if after is not None and after.kind == "delay_after":
            self.odoo._stop.wait(after.seconds)
        if after is not None and after.kind == "drop_after":
            self._drop()
            return
        is_error = "error" in reply
        self._reply(200, "OK", json.dumps(reply).encode(), JSON_CT, nosniff=not is_error)

    def _drop(self) -> None:
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _http_date(now: datetime, years: int = 0) -> str:
    when = now.replace(year=now.year + years) if years else now
    return when.strftime("%a, %d %b %Y %H:%M:%S GMT")


__all__ = ["FakeOdoo17", "Fault", "Call"]
