"""The FHIR search-query parser: a raw query multidict -> a validated ``SearchQuery`` (app.fhir.query).

Follows http://hl7.org/fhir/R4/search.html: repeats of a parameter are AND'ed, commas inside one value are OR'ed
(``\\,`` escapes a comma), ``name:modifier`` selects a modifier, date/number/quantity values take a prefix. Values
are typed and normalised here with the same functions the indexer uses (app.fhir.values), so the store only
compares.

Errors are BadRequest with the offending parameter in ``expression`` and a stable ``details`` code:
``unknown-search-param``, ``unsupported-search-param``, ``unknown-modifier``, ``invalid-search-value``.
Under ``lenient=True`` (``Prefer: handling=lenient``) unknown/unsupported parameters and modifiers are dropped and
listed in ``SearchQuery.ignored``; malformed values of known parameters stay errors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, cast
from urllib.parse import quote

from app.fhir.errors import BadRequest
from app.fhir.model import ID_RE, split_reference
from app.fhir.query import (
    INDEXED_TYPES,
    ChainClause,
    Clause,
    HasClause,
    IdClause,
    Include,
    LastUpdatedClause,
    ParamClause,
    Prefix,
    SearchParamDef,
    SearchQuery,
    SearchValue,
    SortKey,
    SummaryMode,
    TotalMode,
)
from app.fhir.values import normalize_string, parse_date_range, parse_number_range, split_unescaped, unescape


class Registry(Protocol):
    """What the parser needs from app.fhir.registry.SearchParamRegistry."""

    @property
    def resource_types(self) -> frozenset[str]: ...

    def get(self, resource_type: str, code: str) -> SearchParamDef | None: ...


# Modifiers each parameter type accepts (http://hl7.org/fhir/R4/search.html#modifiers). ``:[Type]`` on
# references is handled separately. Token :above/:below (subsumption) and :in/:not-in/:of-type need terminology
# services the store does not have, so they are refused here, where the error can name the parameter.
MODIFIERS: dict[str, frozenset[str]] = {
    "string": frozenset({"exact", "contains", "missing"}),
    "token": frozenset({"text", "not", "missing"}),
    "reference": frozenset({"identifier", "missing"}),
    "date": frozenset({"missing"}),
    "number": frozenset({"missing"}),
    "quantity": frozenset({"missing"}),
    "uri": frozenset({"above", "below", "missing"}),
}
PREFIXES: frozenset[str] = frozenset({"eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap"})
SUMMARY_MODES: frozenset[str] = frozenset({"true", "false", "count", "data", "text"})
TOTAL_MODES: frozenset[str] = frozenset({"none", "estimate", "accurate"})
CONTAINED_MODES: frozenset[str] = frozenset({"true", "false", "both"})

# Parameters that only shape the response, dropped silently (never "ignored", never in the canonical form).
_SILENT = frozenset({"_format", "_pretty"})
# Result parameters other than the special clauses below; kept in the canonical form.
_RESULT_PARAMS = frozenset(
    {"_sort", "_count", "_cursor", "_include", "_revinclude", "_summary", "_elements", "_total", "_contained"}
    | {"_containedType", "_type"}
)
_NOT_CANONICAL = frozenset({"_cursor", "_count", "_format", "_pretty"})
MAX_CHAIN_DEPTH = 1  # subject.name is fine, subject.organization.name is not
MAX_HAS_DEPTH = 3
_ELEMENT_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# A '+' in a time-zone offset arrives as a space when the client did not percent-encode it.
_TZ_SPACE_RE = re.compile(r"T\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)? \d{2}:\d{2}$")


def is_supported(pdef: SearchParamDef) -> bool:
    """Whether the parser (and so the index) handles ``pdef``: an indexed type with an expression to index
    (``_text``/``_content``/``_query`` have none)."""
    return pdef.type in INDEXED_TYPES and pdef.expression is not None


def _bad(param: str, message: str, code: str = "invalid-search-value") -> BadRequest:
    return BadRequest(f"{param}: {message}", expression=[param], details_code=code)


class _Unsupported(Exception):
    """An unknown/unsupported parameter or modifier: an error, or an ignored parameter under lenient handling."""

    def __init__(self, param: str, message: str, code: str) -> None:
        super().__init__(message)
        self.param, self.message, self.code = param, message, code

    def to_error(self) -> BadRequest:
        return _bad(self.param, self.message, self.code)


def parse_search(
    resource_types: Sequence[str],
    params: Mapping[str, Sequence[str]],
    registry: Registry,
    *,
    lenient: bool = False,
    default_count: int = 20,
    max_count: int = 1000,
    base_url: str = "",
) -> SearchQuery:
    """Parse ``params`` (``request.args.to_dict(flat=False)`` or a POST _search form) for a search over
    ``resource_types`` (one type, or every type for a system search, narrowed by ``_type``).

    ``base_url`` (optional) lets absolute references into this server compare as relative ones.
    """
    parser = _Parser(registry, lenient=lenient, base_url=base_url)
    return parser.parse(tuple(resource_types), params, default_count=default_count, max_count=max_count)


class _Parser:
    def __init__(self, registry: Registry, *, lenient: bool, base_url: str) -> None:
        self.registry = registry
        self.lenient = lenient
        self.base_url = base_url.rstrip("/")
        self.ignored: list[str] = []

    # ------------------------------------------------------------ top level

    def parse(
        self, types: tuple[str, ...], params: Mapping[str, Sequence[str]], *, default_count: int, max_count: int
    ) -> SearchQuery:
        known = self.registry.resource_types
        for t in types:
            if t not in known:
                raise BadRequest(f"unknown resource type {t!r}", details_code="unknown-type")
        items = [(k, v) for k, vs in params.items() for v in (vs if not isinstance(vs, str) else [vs])]
        # _type first: it decides which types the other parameters must exist on
        type_values = [v for k, v in items if k == "_type"]
        if type_values:
            types = self._narrow_types(types, type_values)
        if not types:
            raise BadRequest("no resource type to search", details_code="unknown-type")

        clauses: list[Clause] = []
        canon: list[tuple[str, str]] = []
        sort: list[SortKey] = []
        includes: list[Include] = []
        count: int | None = None
        cursor: str | None = None
        summary: SummaryMode | None = None
        elements: list[str] = []
        total: TotalMode | None = None
        contained: str | None = None
        extra: dict[str, str] = {}

        for key, raw in items:
            if key in _SILENT or key == "_type":
                continue
            if raw.strip() == "":
                continue  # an empty parameter value is ignored (search.html 3.1.1.2)
            base = key.partition(":")[0]
            if base in _RESULT_PARAMS:
                if key != base and base not in ("_include", "_revinclude"):
                    self._unsupported_or_raise(key, f"{base} takes no modifier", "unknown-modifier")
                    continue
                canon_value = raw.strip()
                if base == "_sort":
                    sort.extend(self._sort(types, key, raw))
                elif base == "_count":
                    count = self._int(key, raw)
                elif base == "_cursor":
                    cursor = raw
                elif base in ("_include", "_revinclude"):
                    inc = self._include(types, key, raw)
                    if inc is None:
                        continue
                    includes.append(inc)
                elif base == "_summary":
                    summary = cast(SummaryMode, self._choice(key, raw, SUMMARY_MODES))
                elif base == "_elements":
                    names = self._elements(types, key, raw)
                    elements.extend(n for n in names if n not in elements)
                    canon_value = ",".join(sorted(names))
                elif base == "_total":
                    total = cast(TotalMode, self._choice(key, raw, TOTAL_MODES))
                elif base == "_contained":
                    contained = self._choice(key, raw, CONTAINED_MODES)
                elif base == "_containedType":
                    extra[key] = self._choice(key, raw, frozenset({"container", "contained"}))
                if base not in _NOT_CANONICAL:
                    canon.append((key, canon_value))
                continue
            try:
                parsed = self._clause(types, key, raw, chain_depth=0, has_depth=0)
            except _Unsupported as exc:
                if not self.lenient:
                    raise exc.to_error() from None
                self.ignored.append(key)
                continue
            if parsed is not None:
                clause, ckey, cvalue = parsed
                clauses.append(clause)
                canon.append((ckey, cvalue))

        if type_values:
            canon.append(("_type", ",".join(types)))
        if count is None:
            count = default_count
        count = min(count, max_count)
        if count == 0 and summary is None:
            summary = "count"
        return SearchQuery(
            resource_types=types,
            clauses=tuple(clauses),
            sort=tuple(sort),
            count=count,
            cursor=cursor,
            includes=tuple(includes),
            summary=summary,
            elements=tuple(elements),
            total=total,
            contained=contained,
            ignored=tuple(self.ignored),
            canonical=canonical_query(canon),
            extra=extra,
        )

    def _narrow_types(self, types: tuple[str, ...], values: list[str]) -> tuple[str, ...]:
        wanted: list[str] = []
        for raw in values:
            for t in (p.strip() for p in raw.split(",")):
                if not t:
                    continue
                if t not in types:
                    raise _bad("_type", f"{t!r} is not a resource type that can be searched here", "unknown-type")
                if t not in wanted:
                    wanted.append(t)
        return tuple(sorted(wanted)) if wanted else types

    # ------------------------------------------------------------ result parameters

    def _int(self, key: str, raw: str) -> int:
        if not raw.strip().isdigit():
            raise _bad(key, f"expected a whole number >= 0, got {raw!r}")
        return int(raw)

    def _choice(self, key: str, raw: str, allowed: frozenset[str]) -> Any:
        value = raw.strip()
        if value not in allowed:
            raise _bad(key, f"expected one of {', '.join(sorted(allowed))}, got {raw!r}")
        return value

    def _sort(self, types: tuple[str, ...], key: str, raw: str) -> list[SortKey]:
        keys: list[SortKey] = []
        for part in (p.strip() for p in raw.split(",")):
            if not part:
                continue
            descending = part.startswith("-")
            code = part[1:] if descending else part
            if code in ("_id", "_lastUpdated"):
                keys.append(SortKey(code, descending, self._lookup(types, code)))
                continue
            pdef = self._lookup(types, code)
            if pdef is None:
                self._unsupported_or_raise("_sort", f"unknown search parameter {code!r}", "unknown-search-param")
                continue
            if not is_supported(pdef):
                self._unsupported_or_raise(
                    "_sort", f"cannot sort by {code!r} ({pdef.type})", "unsupported-search-param"
                )
                continue
            keys.append(SortKey(code, descending, pdef))
        return keys

    def _unsupported_or_raise(self, param: str, message: str, code: str) -> None:
        if not self.lenient:
            raise _bad(param, message, code)
        self.ignored.append(param)

    def _include(self, types: tuple[str, ...], key: str, raw: str) -> Include | None:
        base, _, modifier = key.partition(":")
        reverse = base == "_revinclude"
        if modifier not in ("", "iterate", "recurse"):
            self._unsupported_or_raise(key, f"unknown modifier {modifier!r}", "unknown-modifier")
            return None
        iterate = bool(modifier)
        value = raw.strip()
        if value == "*":
            return Include("*", None, None, reverse=reverse, iterate=iterate)
        parts = value.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise _bad(key, f"expected SourceType:param[:TargetType] or *, got {raw!r}")
        source, code = parts[0], parts[1]
        target = parts[2] if len(parts) == 3 else None
        known = self.registry.resource_types
        if source not in known:
            raise _bad(key, f"unknown resource type {source!r}")
        if target is not None and target not in known:
            raise _bad(key, f"unknown resource type {target!r}")
        if not reverse and not iterate and source not in types:
            raise _bad(key, f"{source} is not a type being searched ({', '.join(types)})")
        if code == "*":
            return Include(source, None, target, reverse=reverse, iterate=iterate)
        pdef = self.registry.get(source, code)
        if pdef is None or pdef.type != "reference":
            self._unsupported_or_raise(
                key, f"{source} has no reference search parameter {code!r}", "unknown-search-param"
            )
            return None
        if target is not None and pdef.targets and target not in pdef.targets:
            raise _bad(key, f"{source}:{code} cannot point at {target}")
        if reverse and not iterate and pdef.targets and not set(types) & set(pdef.targets):
            raise _bad(key, f"{source}:{code} never points at {', '.join(types)}")
        return Include(source, pdef, target, reverse=reverse, iterate=iterate)

    def _elements(self, types: tuple[str, ...], key: str, raw: str) -> list[str]:
        out: list[str] = []
        for part in (p.strip() for p in raw.split(",")):
            if not part:
                continue
            head, dot, tail = part.partition(".")
            name = tail if dot and head in types else part  # accept Patient.name as well as name
            if not _ELEMENT_RE.match(name):
                raise _bad(key, f"not an element name: {part!r}")
            if name not in out:
                out.append(name)
        return out

    # ------------------------------------------------------------ criteria

    def _lookup(self, types: Sequence[str], code: str) -> SearchParamDef | None:
        """The definition of ``code`` if it exists, with one type, on every type of ``types``."""
        found: SearchParamDef | None = None
        for t in types:
            pdef = self.registry.get(t, code)
            if pdef is None:
                return None
            if found is None:
                found = pdef
            elif found.type != pdef.type:
                return None
        return found

    def _clause(
        self, types: tuple[str, ...], key: str, raw: str, *, chain_depth: int, has_depth: int
    ) -> tuple[Clause, str, str] | None:
        """One ``key=raw`` occurrence -> (clause, canonical key, canonical value); None for an empty value."""
        if key.startswith("_has:"):
            return self._has(types, key, raw, chain_depth=chain_depth, has_depth=has_depth)
        head, dot, rest = key.partition(".")
        if dot:
            return self._chain(types, key, head, rest, raw, chain_depth=chain_depth, has_depth=has_depth)
        code, _, modifier = key.partition(":")
        if code == "_id":
            return self._id(key, modifier, raw)
        if code == "_lastUpdated":
            return self._last_updated(key, modifier, raw)
        pdef = self._lookup(types, code)
        if pdef is None:
            where = ", ".join(types) if len(types) <= 3 else "every searched type"
            raise _Unsupported(key, f"unknown search parameter {code!r} for {where}", "unknown-search-param")
        if not is_supported(pdef):
            raise _Unsupported(
                key, f"search parameter {code!r} of type {pdef.type} is not supported", "unsupported-search-param"
            )
        return self._param(types, key, pdef, modifier, raw)

    def _id(self, key: str, modifier: str, raw: str) -> tuple[Clause, str, str] | None:
        if modifier not in ("", "not"):
            raise _Unsupported(key, f"unknown modifier {modifier!r} for _id", "unknown-modifier")
        ids = [unescape(p).strip() for p in split_unescaped(raw, ",")]
        ids = [i for i in ids if i]
        if not ids:
            return None
        for i in ids:
            if not ID_RE.match(i):
                raise _bad(key, f"not a valid resource id: {i!r}")
        ids = sorted(set(ids))
        return IdClause(tuple(ids), negate=modifier == "not"), key, ",".join(ids)

    def _last_updated(self, key: str, modifier: str, raw: str) -> tuple[Clause, str, str] | None:
        if modifier:
            raise _Unsupported(key, f"unknown modifier {modifier!r} for _lastUpdated", "unknown-modifier")
        values = [self._date_value(key, p) for p in self._or_parts(raw)]
        if not values:
            return None
        return LastUpdatedClause(tuple(values)), key, _canon_values(values, _canon_prefixed)

    def _chain(
        self, types: tuple[str, ...], key: str, head: str, rest: str, raw: str, *, chain_depth: int, has_depth: int
    ) -> tuple[Clause, str, str] | None:
        if chain_depth >= MAX_CHAIN_DEPTH:
            raise _Unsupported(key, "chains deeper than one level are not supported", "unsupported-search-param")
        code, _, type_mod = head.partition(":")
        pdef = self._lookup(types, code)
        if pdef is None:
            raise _Unsupported(key, f"unknown search parameter {code!r}", "unknown-search-param")
        if pdef.type != "reference":
            raise _bad(key, f"{code!r} is a {pdef.type} parameter; only reference parameters can be chained")
        known = self.registry.resource_types
        if type_mod:
            if type_mod not in known:
                raise _bad(key, f"unknown resource type {type_mod!r}")
            if pdef.targets and type_mod not in pdef.targets:
                raise _bad(key, f"{code} cannot point at {type_mod}")
            candidates: tuple[str, ...] = (type_mod,)
        else:
            candidates = tuple(pdef.targets) if pdef.targets else tuple(sorted(known))
        inner_code = rest.partition(":")[0]
        if "." in inner_code:
            raise _Unsupported(key, "chains deeper than one level are not supported", "unsupported-search-param")
        if inner_code.startswith("_has"):
            raise _Unsupported(key, "_has inside a chain is not supported", "unsupported-search-param")
        targets = self._chain_targets(candidates, inner_code)
        if not targets:
            where = ", ".join(candidates[:5]) + (" ..." if len(candidates) > 5 else "")
            raise _Unsupported(key, f"{inner_code!r} is not a search parameter of {where}", "unknown-search-param")
        parsed = self._clause(targets, rest, raw, chain_depth=chain_depth + 1, has_depth=has_depth)
        if parsed is None:
            return None
        inner, ikey, ivalue = parsed
        ckey = f"{code}:{type_mod}.{ikey}" if type_mod else f"{code}.{ikey}"
        return ChainClause(pdef, targets, inner), ckey, ivalue

    def _chain_targets(self, candidates: tuple[str, ...], code: str) -> tuple[str, ...]:
        """The candidate types that define ``code``, all with the type of the first definition found."""
        if code in ("_id", "_lastUpdated"):
            return candidates
        defs = [(t, d) for t in candidates if (d := self.registry.get(t, code)) is not None]
        if not defs:
            return ()
        first_type = defs[0][1].type
        return tuple(t for t, d in defs if d.type == first_type)

    def _has(
        self, types: tuple[str, ...], key: str, raw: str, *, chain_depth: int, has_depth: int
    ) -> tuple[Clause, str, str] | None:
        if has_depth >= MAX_HAS_DEPTH:
            raise _Unsupported(key, f"_has nested deeper than {MAX_HAS_DEPTH} levels", "unsupported-search-param")
        parts = key.split(":", 3)
        if len(parts) != 4 or not all(parts):
            raise _bad(key, "expected _has:SourceType:referenceParam:param=value")
        _, source, ref_code, rest = parts
        if source not in self.registry.resource_types:
            raise _bad(key, f"unknown resource type {source!r}")
        ref = self.registry.get(source, ref_code)
        if ref is None:
            raise _Unsupported(key, f"unknown search parameter {ref_code!r} for {source}", "unknown-search-param")
        if ref.type != "reference":
            raise _bad(key, f"{source}:{ref_code} is not a reference parameter")
        if ref.targets and not set(types) & set(ref.targets):
            raise _bad(key, f"{source}:{ref_code} never points at {', '.join(types)}")
        parsed = self._clause((source,), rest, raw, chain_depth=chain_depth, has_depth=has_depth + 1)
        if parsed is None:
            return None
        inner, ikey, ivalue = parsed
        return HasClause(source, ref, inner), f"_has:{source}:{ref_code}:{ikey}", ivalue

    # ------------------------------------------------------------ typed values

    @staticmethod
    def _or_parts(raw: str) -> list[str]:
        return [p for p in split_unescaped(raw, ",") if p.strip() != ""]

    def _param(
        self, types: tuple[str, ...], key: str, pdef: SearchParamDef, modifier: str, raw: str
    ) -> tuple[Clause, str, str] | None:
        ptype = pdef.type
        if modifier == "missing":
            value = raw.strip().lower()
            if value not in ("true", "false"):
                raise _bad(key, f"expected true or false, got {raw!r}")
            return ParamClause(pdef, (SearchValue(raw=value, code=value),), "missing"), key, value
        type_modifier: str | None = None
        if modifier and ptype == "reference" and modifier not in MODIFIERS["reference"]:
            if modifier not in self.registry.resource_types:
                raise _Unsupported(key, f"unknown modifier {modifier!r}", "unknown-modifier")
            if pdef.targets and modifier not in pdef.targets:
                raise _bad(key, f"{pdef.code} cannot point at {modifier}")
            type_modifier, modifier = modifier, ""
        elif modifier and modifier not in MODIFIERS.get(ptype, frozenset()):
            raise _Unsupported(
                key, f"modifier {modifier!r} is not supported for {ptype} parameters", "unknown-modifier"
            )

        parts = self._or_parts(raw)
        if not parts:
            return None
        values: list[SearchValue]
        if ptype == "string":
            values = [self._string_value(p) for p in parts]
        elif ptype == "uri":
            values = [SearchValue(raw=p, text=unescape(p), url=unescape(p)) for p in parts]
        elif ptype == "token":
            values = [self._token_value(key, p, text=modifier == "text") for p in parts]
        elif ptype == "reference":
            if modifier == "identifier":
                values = [self._token_value(key, p, text=False) for p in parts]
            else:
                values = [self._reference_value(key, pdef, p, type_modifier) for p in parts]
        elif ptype == "date":
            values = [self._date_value(key, p) for p in parts]
        elif ptype == "number":
            values = [self._number_value(key, p) for p in parts]
        elif ptype == "quantity":
            values = [self._quantity_value(key, p) for p in parts]
        else:  # pragma: no cover - filtered by INDEXED_TYPES
            raise _Unsupported(key, f"unsupported type {ptype}", "unsupported-search-param")

        ckey = f"{pdef.code}:{modifier}" if modifier else pdef.code
        if ptype == "reference" and modifier != "identifier":
            cvalue = _canon_values(values, _canon_reference)
        elif ptype in ("date", "number", "quantity"):
            cvalue = _canon_values(values, _canon_prefixed)
        else:
            cvalue = _canon_values(values, lambda v: v.raw)
        return ParamClause(pdef, tuple(values), modifier or None), ckey, cvalue

    @staticmethod
    def _string_value(part: str) -> SearchValue:
        text = unescape(part)
        return SearchValue(raw=part, text=text, norm=normalize_string(text))

    @staticmethod
    def _token_value(key: str, part: str, *, text: bool) -> SearchValue:
        if text:
            t = unescape(part)
            return SearchValue(raw=part, text=t, norm=normalize_string(t))
        pieces = split_unescaped(part, "|")
        if len(pieces) == 1:
            return SearchValue(raw=part, system=None, code=unescape(pieces[0]))
        if len(pieces) == 2:
            system, code = unescape(pieces[0]), unescape(pieces[1])
            if not system and not code:
                raise _bad(key, "expected system|code, |code or system|, got '|'")
            return SearchValue(raw=part, system=system, code=code or None)
        raise _bad(key, f"a token is code, system|code, |code or system| (escape a literal '|' as '\\|'): {part!r}")

    def _reference_value(self, key: str, pdef: SearchParamDef, part: str, type_modifier: str | None) -> SearchValue:
        value = unescape(part).strip()
        if self.base_url and value.startswith(self.base_url + "/"):
            value = value[len(self.base_url) + 1 :]
        known = self.registry.resource_types
        if "://" in value or value.startswith("urn:"):
            parts = split_reference(value, known_types=known)
            url = value.split("|", 1)[0]  # canonical version suffix
            if parts is not None and parts.base is None:  # pragma: no cover - regex requires a base for URLs
                return SearchValue(raw=part, target_type=parts.resource_type, target_id=parts.id)
            return SearchValue(raw=part, url=url)
        if "/" in value:
            parts = split_reference(value, known_types=known)
            if parts is None:
                raise _bad(key, f"expected Type/id, an id or an absolute URL, got {part!r}")
            if type_modifier and parts.resource_type != type_modifier:
                raise _bad(key, f"{parts.resource_type}/{parts.id} contradicts the :{type_modifier} modifier")
            if pdef.targets and parts.resource_type not in pdef.targets:
                raise _bad(key, f"{pdef.code} cannot point at {parts.resource_type}")
            return SearchValue(raw=part, target_type=parts.resource_type, target_id=parts.id)
        if not ID_RE.match(value):
            raise _bad(key, f"not a valid resource id: {part!r}")
        target_type = type_modifier or (pdef.targets[0] if len(pdef.targets) == 1 else None)
        return SearchValue(raw=part, target_type=target_type, target_id=value)

    @staticmethod
    def _split_prefix(part: str) -> tuple[Prefix, str]:
        if len(part) > 2 and part[:2] in PREFIXES and not part[2:3].isalpha():
            return cast(Prefix, part[:2]), part[2:]
        return "eq", part

    def _date_value(self, key: str, part: str) -> SearchValue:
        prefix, rest = self._split_prefix(unescape(part).strip())
        if _TZ_SPACE_RE.search(rest):
            rest = rest[:-6] + "+" + rest[-5:]
        try:
            low, high = parse_date_range(rest)
        except ValueError:
            raise _bad(
                key, f"not a FHIR date/dateTime (YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss[Z]): {part!r}"
            ) from None
        return SearchValue(raw=part, prefix=prefix, text=rest, low=low, high=high)

    def _number_value(self, key: str, part: str) -> SearchValue:
        prefix, rest = self._split_prefix(unescape(part).strip())
        try:
            number, low, high = parse_number_range(rest)
        except ValueError:
            raise _bad(key, f"not a number: {part!r}") from None
        return SearchValue(raw=part, prefix=prefix, text=rest, number=number, low=low, high=high)

    def _quantity_value(self, key: str, part: str) -> SearchValue:
        pieces = split_unescaped(part, "|")
        if len(pieces) not in (1, 3):
            raise _bad(key, f"a quantity is [prefix]number, or [prefix]number|system|code: {part!r}")
        prefix, rest = self._split_prefix(unescape(pieces[0]).strip())
        try:
            number, low, high = parse_number_range(rest)
        except ValueError:
            raise _bad(key, f"not a number: {pieces[0]!r}") from None
        system = code = None
        if len(pieces) == 3:
            system = unescape(pieces[1]) or None
            code = unescape(pieces[2]) or None
        return SearchValue(
            raw=part, prefix=prefix, text=rest, number=number, low=low, high=high, system=system, code=code
        )


# ---------------------------------------------------------------- canonical form


def _canon_prefixed(v: SearchValue) -> str:
    # "eq" is the default prefix (date=eq2024 is date=2024); the value as normalised by the parser (text)
    out = ("" if v.prefix == "eq" else v.prefix) + (v.text or v.raw)
    if v.system is not None or v.code is not None:
        out += "|" + _escape(v.system or "") + "|" + _escape(v.code or "")
    return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")


def _canon_reference(v: SearchValue) -> str:
    if v.target_type and v.target_id:
        return f"{v.target_type}/{v.target_id}"
    return v.raw


def _canon_values(values: Sequence[SearchValue], render: Any) -> str:
    return ",".join(sorted(dict.fromkeys(render(v) for v in values)))


_SAFE = "-._~:/|,*$!'()"


def canonical_query(pairs: Sequence[tuple[str, str]]) -> str:
    """``key=value`` pairs, percent-encoded and sorted, joined by ``&`` (the same criteria in any order give the
    same string)."""
    encoded = sorted({f"{quote(k, safe=_SAFE)}={quote(v, safe=_SAFE)}" for k, v in pairs})
    return "&".join(encoded)
