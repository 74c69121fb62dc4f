"""Search indexing: a resource (JSON dict) -> the IndexEntry rows of every standard search parameter of its type.

The official R4 expressions use a small FHIRPath subset (paths, ``|``, ``as``/``ofType`` on choice elements,
``.where(resolve() is X)``, ``.where(system='x')``, ``[0]``, ``exists()``). ``compile_fast`` turns that subset into
plain Python closures over the JSON dicts, typed statically from the ``fhir.resources.R4B`` models: a choice element
``Observation.effective`` becomes one branch per JSON key (``effectiveDateTime``, ``effectivePeriod`` ...), each with
a known FHIR type, so the converter for a branch (Period -> DateIndex, CodeableConcept -> TokenIndex ...) is chosen
once at compile time. Anything outside the subset falls back to ``fhirpathpy`` (per union branch), whose untyped
results are converted by shape. Plans are compiled once per resource type and cached.

Values follow the normalisation contract in ``app.fhir.query`` via ``app.fhir.values``.
"""

from __future__ import annotations

import logging
import re
import types
import typing
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from app.fhir.query import (
    INDEXED_TYPES,
    DateIndex,
    IndexEntry,
    NumberIndex,
    QuantityIndex,
    ReferenceIndex,
    SearchParamDef,
    StringIndex,
    TokenIndex,
    UriIndex,
)
from app.fhir.registry import SearchParamRegistry, default_registry, split_union
from app.fhir.values import normalize_string, parse_date_range, parse_number_range

log = logging.getLogger(__name__)

# The store keeps these as columns of the resource row.
COLUMN_PARAMS = frozenset({"_id", "_lastUpdated"})

ISO_4217 = "urn:iso:std:iso:4217"

Values = list[Any]
Op = Callable[[Values], Values]
TypeRef = Any  # a primitive type name ("dateTime") or a fhir.resources model class
Emit = Callable[[str, Any, list[IndexEntry]], None]


class CompileError(Exception):
    """The expression is outside the fast subset (or does not fit the R4B models)."""


# ---------------------------------------------------------------- static types from the R4B models


def _model_class(name: str) -> Any:
    from fhir.resources.R4B import get_fhir_model_class

    try:
        return get_fhir_model_class(name)
    except (ValueError, KeyError, AttributeError) as exc:
        raise CompileError(f"no R4B model for {name}") from exc


def _lower_first(name: str) -> str:
    return name[:1].lower() + name[1:]


def _resolve_annotation(annotation: Any) -> TypeRef | None:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or origin is types.UnionType:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _resolve_annotation(args[0]) if args else None
    if origin is list:
        return _resolve_annotation(typing.get_args(annotation)[0])
    if origin is typing.Annotated:
        return _lower_first(type(annotation.__metadata__[0]).__name__)
    if annotation is bool:
        return "boolean"
    klass = getattr(annotation, "get_model_klass", None)
    if klass is not None:
        return klass()
    return None


_ELEMENT_CACHE: dict[Any, dict[str, list[tuple[str, TypeRef]]]] = {}


def _elements(cls: Any) -> dict[str, list[tuple[str, TypeRef]]]:
    """FHIRPath element name -> [(JSON key, type)]: one pair, or one per type for a choice element ``x[x]``."""
    cached = _ELEMENT_CACHE.get(cls)
    if cached is not None:
        return cached
    out: dict[str, list[tuple[str, TypeRef]]] = {}
    for name, info in cls.model_fields.items():
        if name.endswith("__ext") or name in ("fhir_comments", "resource_type"):
            continue
        key = info.alias if info.alias and not info.alias.startswith("_") else name
        typ = _resolve_annotation(info.annotation)
        if typ is None:
            continue
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        choice = extra.get("one_of_many")
        out.setdefault(choice if isinstance(choice, str) else key, []).append((key, typ))
    _ELEMENT_CACHE[cls] = out
    return out


def type_name(t: TypeRef) -> str:
    return t if isinstance(t, str) else t.__name__


def _type_names(t: TypeRef) -> set[str]:
    """The type and its FHIR supertypes (Age -> Quantity; canonical -> uri; code -> string)."""
    if isinstance(t, str):
        return {t} | _PRIMITIVE_PARENTS.get(t, set())
    return {c.__name__ for c in t.__mro__} - _NOT_FHIR_TYPES


def _is_type(t: TypeRef, name: str) -> bool:
    """``is``/``as``/``ofType``: exact for primitives (so ``source as uri`` skips ``sourceCanonical``), by
    inheritance for complex types (``Age`` is a ``Quantity``)."""
    return t == name if isinstance(t, str) else name in _type_names(t)


_NOT_FHIR_TYPES = frozenset({"FHIRResourceModel", "FHIRAbstractModel", "BaseModel", "object"})

_PRIMITIVE_PARENTS = {
    "code": {"string"},
    "id": {"string"},
    "markdown": {"string"},
    "canonical": {"uri"},
    "url": {"uri"},
    "oid": {"uri"},
    "uuid": {"uri"},
    "positiveInt": {"integer"},
    "unsignedInt": {"integer"},
}


# ---------------------------------------------------------------- FHIRPath subset: tokenizer and parser

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>\d+(?:\.\d+)?)|(?P<id>[A-Za-z_][A-Za-z0-9_]*|`[^`]+`)"
    r"|(?P<op>!=|<=|>=|[.()\[\]|=,<>+\-*/&~$%]))"
)


def _tokenize(expr: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    expr = expr.rstrip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise CompileError(f"cannot tokenize at {pos}")
        kind = m.lastgroup
        assert kind is not None
        text = m.group(kind)
        if kind == "str":
            text = re.sub(r"\\(.)", r"\1", text[1:-1])
        elif kind == "id" and text.startswith("`"):
            text = text[1:-1]
        tokens.append((kind, text))
        pos = m.end()
    return tokens


Node = tuple[Any, ...]


class _Parser:
    """Recursive descent over the operators the R4 search expressions use, with FHIRPath precedence:
    ``. []`` > ``as is`` > ``|`` > ``= !=`` > ``and`` > ``or``."""

    def __init__(self, expr: str) -> None:
        self.tokens = _tokenize(expr)
        self.i = 0

    def parse(self) -> Node:
        node = self.or_expr()
        if self.i != len(self.tokens):
            raise CompileError(f"unexpected {self.tokens[self.i][1]!r}")
        return node

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, text: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (text is not None and tok[1] != text):
            raise CompileError(f"expected {text!r}")
        self.i += 1
        return tok

    def at(self, *texts: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[1] in texts and tok[0] in ("op", "id")

    def or_expr(self) -> Node:
        node = self.and_expr()
        while self.at("or"):
            self.take()
            node = ("or", node, self.and_expr())
        return node

    def and_expr(self) -> Node:
        node = self.eq_expr()
        while self.at("and"):
            self.take()
            node = ("and", node, self.eq_expr())
        return node

    def eq_expr(self) -> Node:
        node = self.union_expr()
        if self.at("=", "!="):
            op = self.take()[1]
            node = ("eq" if op == "=" else "ne", node, self.union_expr())
        return node

    def union_expr(self) -> Node:
        node = self.type_expr()
        while self.at("|"):
            self.take()
            node = ("union", node, self.type_expr())
        return node

    def type_expr(self) -> Node:
        node = self.postfix()
        while self.at("as", "is"):
            op = self.take()[1]
            node = (op, node, self.type_name())
        return node

    def type_name(self) -> str:
        kind, text = self.take()
        if kind != "id":
            raise CompileError("type name expected")
        if self.at("."):  # FHIR.Quantity / System.String
            self.take()
            text = self.take()[1]
        return text

    def postfix(self) -> Node:
        node = self.primary()
        while True:
            if self.at("."):
                self.take()
                node = ("dot", node, self.invocation())
            elif self.at("["):
                self.take()
                index = self.or_expr()
                self.take("]")
                node = ("index", node, index)
            else:
                return node

    def primary(self) -> Node:
        tok = self.peek()
        if tok is None:
            raise CompileError("unexpected end")
        kind, text = tok
        if kind == "op" and text == "(":
            self.take()
            node = self.or_expr()
            self.take(")")
            return node
        if kind == "str":
            self.take()
            return ("lit", text)
        if kind == "num":
            self.take()
            return ("lit", Decimal(text) if "." in text else int(text))
        if kind == "id" and text in ("true", "false"):
            self.take()
            return ("lit", text == "true")
        return self.invocation()

    def invocation(self) -> Node:
        kind, name = self.take()
        if kind != "id":
            raise CompileError(f"identifier expected, got {name!r}")
        if self.at("("):
            self.take()
            args: list[Node] = []
            if not self.at(")"):
                args.append(self.or_expr())
                while self.at(","):
                    self.take()
                    args.append(self.or_expr())
            self.take(")")
            return ("func", name, args)
        return ("ident", name)


# ---------------------------------------------------------------- FHIRPath subset: compiler


@dataclass(frozen=True)
class Branch:
    """One statically typed path: ``runner()([root]) -> values``, all of FHIR type ``type``. An op is a JSON key
    (member access; consecutive keys are fused into one loop) or a function over the value list."""

    ops: tuple[str | Op, ...]
    type: TypeRef

    def then(self, op: str | Op, new_type: TypeRef | None = None) -> Branch:
        return Branch(self.ops + (op,), self.type if new_type is None else new_type)

    def runner(self) -> Op:
        fused: list[Op] = []
        keys: list[str] = []
        for op in self.ops:
            if isinstance(op, str):
                keys.append(op)
                continue
            if keys:
                fused.append(_path(tuple(keys)))
                keys = []
            fused.append(op)
        if keys:
            fused.append(_path(tuple(keys)))
        if not fused:
            return _identity
        if len(fused) == 1:
            return fused[0]
        ops = tuple(fused)

        def run(values: Values) -> Values:
            for op in ops:
                values = op(values)
                if not values:
                    return values
            return values

        return run


def _identity(values: Values) -> Values:
    return values


def _path(keys: tuple[str, ...]) -> Op:
    """Member access along ``keys``, flattening arrays (FHIRPath collections) and skipping nulls."""

    def walk(values: Values) -> Values:
        for key in keys:
            out: Values = []
            for item in values:
                if type(item) is dict:
                    v = item.get(key)
                    if v is not None:
                        if type(v) is list:
                            if None in v:  # primitive arrays with extensions: ["a", null] + "_given"
                                out.extend([x for x in v if x is not None])
                            else:
                                out.extend(v)
                        else:
                            out.append(v)
            if not out:
                return out
            values = out
        return values

    return walk


def _computed(fn: Callable[[Values], Values]) -> Branch:
    return Branch((fn,), "boolean")


def _collect(branches: Sequence[Branch]) -> Op:
    runners = [b.runner() for b in branches]
    if len(runners) == 1:
        return runners[0]

    def run(values: Values) -> Values:
        out: Values = []
        for r in runners:
            out.extend(r(values))
        return out

    return run


def _fp_equal(a: Any, b: Any) -> bool:
    if type(a) is bool or type(b) is bool:  # True == 1 in Python, not in FHIRPath
        return type(a) is type(b) and a == b
    if isinstance(a, float | int | Decimal) and isinstance(b, float | int | Decimal):
        return Decimal(str(a)) == Decimal(str(b))
    return a == b


_REF_TYPE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[^/]+)?$")


def reference_type(ref: Any) -> str | None:
    """The resource type a Reference points at, from its ``reference`` (relative or absolute) or ``type``."""
    if type(ref) is not dict:
        return None
    target = ref.get("reference")
    if isinstance(target, str) and target and not target.startswith("#"):
        m = _REF_TYPE.search(target.split("?", 1)[0])
        if m:
            return m.group(1)
    declared = ref.get("type")
    return declared if isinstance(declared, str) else None


class _Compiler:
    def __init__(self, root: TypeRef) -> None:
        self.root = root

    def compile(self, node: Node, ctx: list[Branch], at_start: bool = True) -> list[Branch]:
        kind = node[0]
        if kind == "ident":
            return self.member(ctx, node[1], at_start)
        if kind == "dot":
            left = self.compile(node[1], ctx, at_start)
            right = node[2]
            if right[0] == "ident":
                return self.member(left, right[1], False)
            return self.function(left, right[1], right[2])
        if kind == "func":
            return self.function(ctx, node[1], node[2])
        if kind == "union":
            return self.compile(node[1], ctx) + self.compile(node[2], ctx)
        if kind == "as":
            return self.as_type(self.compile(node[1], ctx, at_start), node[2])
        if kind == "is":
            return self.is_type(node[1], ctx, node[2])
        if kind == "index":
            if node[2][0] != "lit" or type(node[2][1]) is not int:
                raise CompileError("only literal indexes")
            return self.take_nth(self.compile(node[1], ctx, at_start), node[2][1])
        if kind in ("eq", "ne"):
            return self.equality(node, ctx)
        if kind in ("and", "or"):
            return self.logic(node, ctx)
        raise CompileError(f"unsupported node {kind}")

    # ---- paths

    def member(self, ctx: list[Branch], name: str, at_start: bool) -> list[Branch]:
        if at_start and len(ctx) == 1 and not isinstance(ctx[0].type, str):
            # a leading type name filters on the type: ``Patient.name`` evaluated on a Patient
            if name in _type_names(ctx[0].type):
                return ctx
        out: list[Branch] = []
        for branch in ctx:
            if isinstance(branch.type, str):
                raise CompileError(f"{name} on primitive {branch.type}")
            elements = _elements(branch.type)
            if name not in elements:
                raise CompileError(f"{type_name(branch.type)} has no element {name}")
            for key, typ in elements[name]:
                out.append(branch.then(key, typ))
        return out

    def as_type(self, ctx: list[Branch], name: str) -> list[Branch]:
        out = [b for b in ctx if _is_type(b.type, name)]
        if not out:
            raise CompileError(f"nothing of type {name}")  # maybe an R4 type R4B lacks: let fhirpathpy decide
        return out

    def take_nth(self, ctx: list[Branch], n: int) -> list[Branch]:
        if len(ctx) != 1:
            raise CompileError("index over several branches")
        return [ctx[0].then(lambda values: values[n : n + 1])]

    def function(self, ctx: list[Branch], name: str, args: list[Node]) -> list[Branch]:
        if name in ("as", "ofType") and len(args) == 1 and args[0][0] == "ident":
            return self.as_type(ctx, args[0][1])
        if name == "where" and len(args) == 1:
            return [self.where(b, args[0]) for b in ctx]
        if name == "first" and not args:
            return self.take_nth(ctx, 0)
        if name in ("exists", "empty") and not args:
            collect = _collect(ctx)
            want = name == "exists"
            return [_computed(lambda values: [bool(collect(values)) is want])]
        if name == "extension" and len(args) == 1 and args[0][0] == "lit" and isinstance(args[0][1], str):
            url = args[0][1]
            return [
                b.then(lambda values: [e for e in values if type(e) is dict and e.get("url") == url])
                for b in self.member(ctx, "extension", False)
            ]
        raise CompileError(f"unsupported function {name}()")

    def where(self, branch: Branch, cond: Node) -> Branch:
        item = Branch((), branch.type)
        if cond[0] == "is" and cond[1] == ("func", "resolve", []):
            target = cond[2]
            if "Reference" not in _type_names(branch.type):
                raise CompileError("resolve() on a non-Reference")
            return branch.then(lambda values: [v for v in values if reference_type(v) == target])
        test = _collect(self.compile(cond, [item]))
        return branch.then(lambda values: [v for v in values if test([v]) == [True]])

    def is_type(self, left: Node, ctx: list[Branch], name: str) -> list[Branch]:
        branches = self.compile(left, ctx)
        if not branches:
            return [_computed(lambda values: [])]
        matching = [b.runner() for b in branches if _is_type(b.type, name)]
        everything = _collect(branches)

        def run(values: Values) -> Values:
            if not everything(values):
                return []
            return [any(r(values) for r in matching)]

        return [_computed(run)]

    # ---- booleans

    def equality(self, node: Node, ctx: list[Branch]) -> list[Branch]:
        if node[2][0] != "lit":
            raise CompileError("equality only against a literal")
        literal = node[2][1]
        left = _collect(self.compile(node[1], ctx))
        negate = node[0] == "ne"

        def run(values: Values) -> Values:
            got = left(values)
            if not got:
                return []
            equal = len(got) == 1 and _fp_equal(got[0], literal)
            return [equal is not negate]

        return [_computed(run)]

    def logic(self, node: Node, ctx: list[Branch]) -> list[Branch]:
        left = _collect(self.compile(node[1], ctx))
        right = _collect(self.compile(node[2], ctx))
        is_and = node[0] == "and"

        def as_bool(result: Values) -> bool | None:
            if not result:
                return None
            if len(result) == 1 and type(result[0]) is bool:
                return result[0]
            return True  # a non-empty non-boolean singleton is true in a boolean context

        def run(values: Values) -> Values:
            a, b = as_bool(left(values)), as_bool(right(values))
            if is_and:
                if a is False or b is False:
                    return [False]
                return [True] if a and b else []
            if a is True or b is True:
                return [True]
            return [False] if a is False and b is False else []

        return [_computed(run)]


def compile_fast(expression: str, resource_type: str) -> list[Branch]:
    """Compile one expression for ``resource_type`` into typed branches; CompileError outside the subset."""
    root = _model_class(resource_type)
    node = _Parser(expression).parse()
    return _Compiler(root).compile(node, [Branch((), root)])


# ---------------------------------------------------------------- values -> index entries


def _str_value(v: Any) -> str | None:
    return v if type(v) is str and v else None


_WS = re.compile(r"\s+")


def normalize_fast(value: str) -> str:
    """``values.normalize_string`` with a shortcut for ASCII (NFKD and accent stripping are no-ops there), which
    is most of what we index; tests pin that both agree."""
    if value.isascii():
        return _WS.sub(" ", value).strip().casefold()
    return normalize_string(value)


def _emit_string(code: str, v: Any, out: list[IndexEntry]) -> None:
    if type(v) is str and v:
        out.append(StringIndex(code, normalize_fast(v), v))


def _emit_strings(*keys: str) -> Emit:
    def emit(code: str, v: Any, out: list[IndexEntry]) -> None:
        if type(v) is not dict:
            return
        for key in keys:
            part = v.get(key)
            if type(part) is list:
                for p in part:
                    _emit_string(code, p, out)
            else:
                _emit_string(code, part, out)

    return emit


_emit_human_name = _emit_strings("family", "given", "prefix", "suffix", "text")
_emit_address = _emit_strings("line", "city", "district", "state", "postalCode", "country", "text")


def _norm_or_none(v: Any) -> str | None:
    return normalize_fast(v) if type(v) is str and v else None


def _emit_token_primitive(code: str, v: Any, out: list[IndexEntry]) -> None:
    if type(v) is bool:
        out.append(TokenIndex(code, None, "true" if v else "false"))
    elif type(v) is str:
        if v:
            out.append(TokenIndex(code, None, v))
    elif isinstance(v, int | float | Decimal):
        out.append(TokenIndex(code, None, str(v)))


def _emit_coding(code: str, v: Any, out: list[IndexEntry]) -> None:
    if type(v) is not dict:
        return
    system, value, display = _str_value(v.get("system")), _str_value(v.get("code")), v.get("display")
    if system or value or display:
        out.append(TokenIndex(code, system, value, _norm_or_none(display)))


def _emit_codeable_concept(code: str, v: Any, out: list[IndexEntry]) -> None:
    if type(v) is not dict:
        return
    codings = v.get("coding")
    if type(codings) is list:
        for coding in codings:
            _emit_coding(code, coding, out)
    text = _norm_or_none(v.get("text"))
    if text:
        out.append(TokenIndex(code, None, None, text))


def _emit_identifier(code: str, v: Any, out: list[IndexEntry]) -> None:
    if type(v) is not dict:
        return
    system, value = _str_value(v.get("system")), _str_value(v.get("value"))
    typ = v.get("type")
    text = _norm_or_none(typ.get("text")) if type(typ) is dict else None
    if system or value:
        out.append(TokenIndex(code, system, value, text))


def _emit_contact_point(code: str, v: Any, out: list[IndexEntry]) -> None:
    if type(v) is dict and _str_value(v.get("value")):
        out.append(TokenIndex(code, None, v["value"]))


def _strip_history(ref: str) -> str:
    i = ref.find("/_history/")
    return ref[:i] if i >= 0 else ref


def _emit_reference(code: str, v: Any, out: list[IndexEntry]) -> None:
    if type(v) is not dict:
        return
    target_type = target_id = url = None
    ref = v.get("reference")
    if type(ref) is str and ref and not ref.startswith("#"):
        ref = _strip_history(ref)
        if "://" in ref or ref.startswith(("urn:", "urn%3A")):
            url = ref
            parts = ref.rstrip("/").split("/")
            if "://" in ref and len(parts) >= 5 and parts[-2][:1].isupper():
                target_type, target_id = parts[-2], parts[-1]
        elif "?" not in ref:  # conditional references are resolved before storage
            parts = ref.split("/")
            if len(parts) >= 2 and parts[-2] and parts[-1]:
                target_type, target_id = parts[-2], parts[-1]
    ident = v.get("identifier")
    ident_system = ident_value = None
    if type(ident) is dict:
        ident_system, ident_value = _str_value(ident.get("system")), _str_value(ident.get("value"))
    if target_id or url or ident_value:
        out.append(ReferenceIndex(code, target_type, target_id, url, ident_system, ident_value))


def _emit_canonical_ref(code: str, v: Any, out: list[IndexEntry]) -> None:
    if type(v) is str and v and not v.startswith("#"):
        out.append(ReferenceIndex(code, None, None, v.split("|", 1)[0]))


def _date_range(v: Any) -> tuple[Any, Any] | None:
    if type(v) is not str:
        return None
    try:
        return parse_date_range(v)
    except ValueError:
        return None


def _emit_date(code: str, v: Any, out: list[IndexEntry]) -> None:
    rng = _date_range(v)
    if rng:
        out.append(DateIndex(code, rng[0], rng[1]))


def _emit_period(code: str, v: Any, out: list[IndexEntry]) -> None:
    if type(v) is not dict:
        return
    start, end = _date_range(v.get("start")), _date_range(v.get("end"))
    if start or end:
        out.append(DateIndex(code, start[0] if start else None, end[1] if end else None))


def _emit_timing(code: str, v: Any, out: list[IndexEntry]) -> None:
    if type(v) is not dict:
        return
    events = v.get("event")
    ranges = [r for r in (_date_range(e) for e in events) if r] if type(events) is list else []
    if ranges:
        out.append(DateIndex(code, min(r[0] for r in ranges), max(r[1] for r in ranges)))
        return
    repeat = v.get("repeat")
    if type(repeat) is dict:
        _emit_period(code, repeat.get("boundsPeriod"), out)


def _number(v: Any) -> tuple[Decimal, Decimal, Decimal] | None:
    if type(v) is bool or not isinstance(v, int | float | Decimal | str):
        return None
    try:
        return parse_number_range(str(v))
    except ValueError:
        return None


def _emit_number(code: str, v: Any, out: list[IndexEntry]) -> None:
    n = _number(v)
    if n:
        out.append(NumberIndex(code, n[0], n[1], n[2]))


def _emit_quantity(code: str, v: Any, out: list[IndexEntry]) -> None:
    if type(v) is not dict:
        return
    n = _number(v.get("value"))
    if n:
        out.append(
            QuantityIndex(
                code,
                n[0],
                n[1],
                n[2],
                _str_value(v.get("system")),
                _str_value(v.get("code")),
                _str_value(v.get("unit")),
            )
        )


def _emit_money(code: str, v: Any, out: list[IndexEntry]) -> None:
    if type(v) is not dict:
        return
    n = _number(v.get("value"))
    if n:
        currency = _str_value(v.get("currency"))
        out.append(QuantityIndex(code, n[0], n[1], n[2], ISO_4217 if currency else None, currency, None))


def _emit_range(code: str, v: Any, out: list[IndexEntry]) -> None:
    # A Range is indexed as one quantity spanning [low, high]; an open end cannot be stored (low/high are
    # required), so half-open ranges are not indexed.
    if type(v) is not dict:
        return
    low, high = v.get("low"), v.get("high")
    if type(low) is not dict or type(high) is not dict:
        return
    lo, hi = _number(low.get("value")), _number(high.get("value"))
    if lo and hi:
        unit_of = low if low.get("code") or low.get("unit") else high
        out.append(
            QuantityIndex(
                code,
                lo[0],
                lo[1],
                hi[2],
                _str_value(unit_of.get("system")),
                _str_value(unit_of.get("code")),
                _str_value(unit_of.get("unit")),
            )
        )


def _emit_number_range(code: str, v: Any, out: list[IndexEntry]) -> None:
    # e.g. RiskAssessment.prediction.probability[x] as a Range: one number spanning [low, high]
    if type(v) is not dict or type(v.get("low")) is not dict or type(v.get("high")) is not dict:
        return
    lo, hi = _number(v["low"].get("value")), _number(v["high"].get("value"))
    if lo and hi:
        out.append(NumberIndex(code, lo[0], lo[1], hi[2]))


def _emit_uri(code: str, v: Any, out: list[IndexEntry]) -> None:
    if type(v) is str and v:
        out.append(UriIndex(code, v))


_STRINGISH = {"string", "code", "id", "markdown", "uri", "url", "canonical", "oid", "uuid"}
_QUANTITIES = {"Quantity", "Age", "Duration", "Distance", "Count", "SimpleQuantity", "MoneyQuantity"}


def converter(param_type: str, t: str | TypeRef) -> Emit | None:
    """How to index values of FHIR type ``t`` for a parameter of ``param_type`` (None: not indexable)."""
    names = {t} if isinstance(t, str) else _type_names(t)
    name = t if isinstance(t, str) else t.__name__
    if param_type == "string":
        if name in _STRINGISH:
            return _emit_string
        if "HumanName" in names:
            return _emit_human_name
        if "Address" in names:
            return _emit_address
        return None
    if param_type == "token":
        if name in _STRINGISH or name == "boolean" or name in ("integer", "positiveInt", "unsignedInt"):
            return _emit_token_primitive
        if "CodeableConcept" in names:
            return _emit_codeable_concept
        if "Coding" in names:
            return _emit_coding
        if "Identifier" in names:
            return _emit_identifier
        if "ContactPoint" in names:
            return _emit_contact_point
        return None
    if param_type == "reference":
        if "Reference" in names:
            return _emit_reference
        if name in ("canonical", "uri", "url"):
            return _emit_canonical_ref
        return None
    if param_type == "date":
        if name in ("date", "dateTime", "instant"):
            return _emit_date
        if "Period" in names:
            return _emit_period
        if "Timing" in names:
            return _emit_timing
        return None
    if param_type == "number":
        if name in ("integer", "decimal", "positiveInt", "unsignedInt", "integer64"):
            return _emit_number
        if "Range" in names:
            return _emit_number_range
        return None
    if param_type == "quantity":
        if "Money" in names:
            return _emit_money
        if names & _QUANTITIES:
            return _emit_quantity
        if "Range" in names:
            return _emit_range
        if name in ("integer", "decimal", "positiveInt", "unsignedInt"):
            return _emit_number_as_quantity
        return None
    if param_type == "uri":
        if name in _STRINGISH:
            return _emit_uri
        return None
    return None


def _emit_number_as_quantity(code: str, v: Any, out: list[IndexEntry]) -> None:
    n = _number(v)
    if n:
        out.append(QuantityIndex(code, n[0], n[1], n[2], None, None, None))


def guess_type(v: Any, param_type: str) -> str | None:
    """The FHIR type of an untyped value (fhirpathpy results), by its JSON shape."""
    if type(v) is bool:
        return "boolean"
    if isinstance(v, int | float | Decimal):
        return "decimal"
    if isinstance(v, str):
        return {"date": "dateTime", "reference": "canonical", "uri": "uri"}.get(param_type, "string")
    if type(v) is not dict:
        # fhirpathpy date/time/quantity nodes
        return "dateTime" if param_type == "date" and str(v)[:1].isdigit() else None
    if "reference" in v or ("identifier" in v and param_type == "reference"):
        return "Reference"
    if "coding" in v or (set(v) <= {"text", "id", "extension"} and "text" in v and param_type == "token"):
        return "CodeableConcept"
    if "family" in v or "given" in v:
        return "HumanName"
    if "line" in v or "city" in v or "postalCode" in v or "country" in v:
        return "Address"
    if param_type == "string" and "text" in v:
        return "HumanName"  # a name (or address) with only text: both index their text the same way
    if "currency" in v:
        return "Money"
    if "low" in v or "high" in v:
        return "Range"
    if "start" in v or "end" in v:
        return "Period"
    if "event" in v or "repeat" in v:
        return "Timing"
    if "value" in v and ("unit" in v or "comparator" in v or param_type == "quantity"):
        return "Quantity"
    if "system" in v and "value" in v and param_type == "token":
        return "ContactPoint" if v.get("system") in _CONTACT_SYSTEMS else "Identifier"
    if "code" in v or "display" in v:
        return "Coding"
    if "value" in v:
        return "Identifier" if param_type == "token" else None
    return None


_CONTACT_SYSTEMS = {"phone", "fax", "email", "pager", "url", "sms", "other"}


# ---------------------------------------------------------------- the indexer


@dataclass
class _Step:
    """One (param, union branch) of a resource type's plan."""

    code: str
    run: Op
    emit: Emit | None  # None for fhirpathpy branches: converted by shape
    fast: bool
    param_type: str
    first_key: str | None = None  # the top-level JSON key the branch starts with: absent -> nothing to do

    def apply(self, resource: dict[str, Any], out: list[IndexEntry]) -> None:
        values = self.run([resource])
        if not values:
            return
        emit = self.emit
        if emit is not None:
            for v in values:
                emit(self.code, v, out)
            return
        for v in values:
            guessed = guess_type(v, self.param_type)
            conv = converter(self.param_type, guessed) if guessed else None
            if conv is not None:
                if guessed == "dateTime" and not isinstance(v, str):
                    v = str(v)
                conv(self.code, v, out)


@dataclass
class IndexPlanStats:
    fast: int = 0  # union branches on the fast path
    fallback: int = 0  # union branches evaluated with fhirpathpy
    skipped: int = 0  # branches whose type cannot be indexed for the parameter type (e.g. SampledData)
    failed: list[str] = field(default_factory=list)  # "Type.code" that neither path could compile


_AS_OPERATOR = re.compile(r"\(([A-Za-z0-9_.]+) as ([A-Za-z]+)\)")


def as_to_oftype(expression: str) -> str:
    """``(a.b as T)`` -> ``a.b.ofType(T)``: search evaluates ``as`` over collections (strict FHIRPath requires a
    singleton and fhirpathpy raises), as other servers do."""
    return _AS_OPERATOR.sub(r"\1.ofType(\2)", expression)


def _fhirpathpy_resolve(references: Values) -> Values:
    """``resolve()`` for fhirpathpy without a database: a stub resource of the referenced type, which is all
    ``resolve() is X`` needs."""
    from fhirpathpy.engine.nodes import ResourceNode

    return [ResourceNode.create_node({"resourceType": t}) for t in map(reference_type, references) if t]


def _fhirpathpy_runner(expression: str) -> Op:
    import fhirpathpy
    from fhirpathpy.engine.nodes import TypeInfo
    from fhirpathpy.models import models

    model = models["r4"]
    options = {"userInvocationTable": {"resolve": {"fn": _fhirpathpy_resolve, "arity": {0: []}}}}
    compiled = fhirpathpy.compile(as_to_oftype(expression), model=model, options=options)
    reported = False

    def run(values: Values) -> Values:
        nonlocal reported
        # fhirpathpy keeps the type model in a class global that only `is`/`as` set, so `ofType` would otherwise
        # depend on what was evaluated before; pin it.
        TypeInfo.model = model
        try:
            return list(compiled(values[0]))
        except Exception as exc:  # noqa: BLE001 -- a bad resource must not fail the write; index what we can
            if not reported:  # once per expression: no log flood, and no resource content (PHI) in the log
                reported = True
                log.warning("fhirpathpy cannot evaluate %s: %s", expression, type(exc).__name__)
            return []

    return run


class FhirPathIndexer:
    """Indexes every standard search parameter (string, token, reference, date, number, quantity, uri) of a
    resource's type. Thread-safe after warm-up: plans are immutable once built (a race only builds twice)."""

    def __init__(self, registry: SearchParamRegistry | None = None, *, allow_fallback: bool = True) -> None:
        self.registry = registry or default_registry()
        self.allow_fallback = allow_fallback
        self._plans: dict[str, tuple[_Step, ...]] = {}
        self.stats: dict[str, IndexPlanStats] = {}

    def index(self, resource: dict[str, Any]) -> list[IndexEntry]:
        rtype = resource.get("resourceType")
        if not isinstance(rtype, str):
            return []
        plan = self._plans.get(rtype)
        if plan is None:
            plan = self.plan(rtype)
        out: list[IndexEntry] = []
        for step in plan:
            key = step.first_key
            if key is None or key in resource:
                step.apply(resource, out)
        return list(dict.fromkeys(out))  # stable de-duplication (unions often yield the same value twice)

    def plan(self, resource_type: str) -> tuple[_Step, ...]:
        """Compile (once) the index plan of a resource type."""
        plan = self._plans.get(resource_type)
        if plan is not None:
            return plan
        stats = IndexPlanStats()
        steps: list[_Step] = []
        for param in self.registry.params_for(resource_type).values():
            steps.extend(self._compile_param(resource_type, param, stats))
        plan = tuple(steps)
        self._plans[resource_type] = plan
        self.stats[resource_type] = stats
        return plan

    def _compile_param(self, resource_type: str, param: SearchParamDef, stats: IndexPlanStats) -> Iterable[_Step]:
        if param.type not in INDEXED_TYPES or not param.expression or param.code in COLUMN_PARAMS:
            return []
        steps = []
        for part in split_union(param.expression):
            try:
                branches = compile_fast(part, resource_type)
            except CompileError as exc:
                if not self.allow_fallback:
                    stats.failed.append(f"{resource_type}.{param.code}")
                    continue
                try:
                    run = _fhirpathpy_runner(part)
                except Exception:  # noqa: BLE001 -- fhirpathpy raises assorted parser errors
                    log.warning("cannot compile %s.%s: %s", resource_type, param.code, part)
                    stats.failed.append(f"{resource_type}.{param.code}")
                    continue
                log.debug("fhirpathpy fallback for %s.%s (%s)", resource_type, param.code, exc)
                stats.fallback += 1
                steps.append(_Step(param.code, run, None, False, param.type))
                continue
            for branch in branches:
                emit = converter(param.type, branch.type)
                if emit is None:
                    stats.skipped += 1
                    continue
                stats.fast += 1
                first = branch.ops[0] if branch.ops and isinstance(branch.ops[0], str) else None
                steps.append(_Step(param.code, branch.runner(), emit, True, param.type, first))
        return steps


_DEFAULT: FhirPathIndexer | None = None


def default_indexer() -> FhirPathIndexer:
    """The shared indexer over ``default_registry()``."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = FhirPathIndexer()
    return _DEFAULT
