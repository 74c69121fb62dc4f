"""The search data model shared by the parser (app.fhir.search), the indexer (app.fhir.indexing)
and every store adapter. Plain frozen dataclasses: no behaviour, no I/O.

Normalisation contract (the indexer writes, the parser reads, the store compares; all three agree):
- strings: ``norm`` = casefolded, accents stripped (NFKD, combining marks removed), whitespace collapsed;
  ``exact`` = the original value.
- tokens: ``system`` and ``code`` as written (exact match); ``text`` = normalised display/text for ``:text``.
- dates: half-open UTC ranges ``[low, high)`` as naive ``datetime`` in UTC; a value without time zone is read
  as UTC; partial precision widens the range (``2024`` -> 2024-01-01T00:00 .. 2025-01-01T00:00).
- numbers/quantities: ``low``/``high`` from the value's implicit precision (``100`` -> [99.5, 100.5)), ``value``
  the exact Decimal.
- references: ``target_type``/``target_id`` for relative (and local absolute) references, ``url`` for
  canonical/absolute ones (version suffix ``|x`` removed), identifier system/value for ``:identifier``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal

ParamType = Literal["string", "token", "reference", "date", "number", "quantity", "uri", "composite", "special"]
INDEXED_TYPES: frozenset[str] = frozenset({"string", "token", "reference", "date", "number", "quantity", "uri"})


@dataclass(frozen=True)
class SearchParamDef:
    """One official SearchParameter as it applies to one resource type."""

    code: str  # the name used in the query string, e.g. "subject", "_tag"
    type: ParamType
    expression: str | None  # FHIRPath restricted to this resource type (None for special/unindexed)
    targets: tuple[str, ...] = ()  # reference target types
    url: str = ""
    description: str = ""


# ---------------------------------------------------------------- index entries (written by the indexer)


@dataclass(frozen=True)
class StringIndex:
    param: str
    norm: str
    exact: str


@dataclass(frozen=True)
class TokenIndex:
    param: str
    system: str | None
    code: str | None
    text: str | None = None


@dataclass(frozen=True)
class ReferenceIndex:
    param: str
    target_type: str | None
    target_id: str | None
    url: str | None = None
    identifier_system: str | None = None
    identifier_value: str | None = None


@dataclass(frozen=True)
class DateIndex:
    param: str
    low: datetime | None  # None = open start
    high: datetime | None  # None = open end


@dataclass(frozen=True)
class NumberIndex:
    param: str
    value: Decimal
    low: Decimal
    high: Decimal


@dataclass(frozen=True)
class QuantityIndex:
    param: str
    value: Decimal
    low: Decimal
    high: Decimal
    system: str | None
    code: str | None
    unit: str | None


@dataclass(frozen=True)
class UriIndex:
    param: str
    value: str


IndexEntry = StringIndex | TokenIndex | ReferenceIndex | DateIndex | NumberIndex | QuantityIndex | UriIndex


# ---------------------------------------------------------------- queries (produced by the parser)

Prefix = Literal["eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap"]


@dataclass(frozen=True)
class SearchValue:
    """One OR-alternative of a parameter, already unescaped (``\\,`` ``\\|`` ``\\$``) and typed.

    Which fields are set depends on the parameter type:
    - string/uri: ``text`` (raw) and ``norm`` (normalised as above)
    - token: ``system`` (None = any system, "" = no system), ``code``; ``text`` for ``:text``
    - reference: ``target_type``/``target_id`` or ``url``; identifier system/value for ``:identifier``
    - date: ``prefix``, ``low``/``high`` (the search value's own range)
    - number/quantity: ``prefix``, ``number``, ``low``/``high``; quantity also ``system``/``code``
    """

    raw: str
    prefix: Prefix = "eq"
    text: str | None = None
    norm: str | None = None
    system: str | None = None
    code: str | None = None
    target_type: str | None = None
    target_id: str | None = None
    url: str | None = None
    low: datetime | Decimal | None = None
    high: datetime | Decimal | None = None
    number: Decimal | None = None


@dataclass(frozen=True)
class ParamClause:
    """``name[:modifier]=v1,v2`` -- values are OR'ed. Several clauses are AND'ed."""

    param: SearchParamDef
    values: tuple[SearchValue, ...]
    modifier: str | None = None  # exact contains missing not text identifier above below in not-in of-type


@dataclass(frozen=True)
class ChainClause:
    """``subject:Patient.name=x`` -- the reference ``param`` points at a resource (of ``target_types``)
    matching ``inner``."""

    param: SearchParamDef
    target_types: tuple[str, ...]
    inner: Clause


@dataclass(frozen=True)
class HasClause:
    """``_has:Observation:patient:code=x`` -- some ``source_type`` resource whose reference param
    ``ref_param`` points at this resource matches ``inner``."""

    source_type: str
    ref_param: SearchParamDef
    inner: Clause


@dataclass(frozen=True)
class IdClause:
    """``_id=a,b`` (and ``_id:not``)."""

    ids: tuple[str, ...]
    negate: bool = False


@dataclass(frozen=True)
class LastUpdatedClause:
    """``_lastUpdated=ge2024`` -- one prefix/range per clause; repeats are AND'ed, commas OR'ed."""

    values: tuple[SearchValue, ...]


@dataclass(frozen=True)
class ClauseGroup:
    """Clauses AND'ed, over ``resource_types`` only when given (empty: the enclosing query's types)."""

    clauses: tuple[Clause, ...]
    resource_types: tuple[str, ...] = ()


@dataclass(frozen=True)
class AnyOfClause:
    """The OR of ``groups`` (none: matches nothing). Not produced by the parser: access control adds it to confine
    a query to what a token may see (a Patient compartment, a granular scope) before the store runs it."""

    groups: tuple[ClauseGroup, ...]


Clause = ParamClause | ChainClause | HasClause | IdClause | LastUpdatedClause | AnyOfClause


@dataclass(frozen=True)
class SortKey:
    param: str  # a search param code, or "_id" / "_lastUpdated"
    descending: bool = False
    param_def: SearchParamDef | None = None


@dataclass(frozen=True)
class Include:
    """``_include=Source:param[:Target]`` or ``_revinclude=...``; ``iterate`` for ``:iterate``/``:recurse``."""

    source_type: str  # "*" for _include=*
    param: SearchParamDef | None  # None for wildcard
    target_type: str | None = None
    reverse: bool = False
    iterate: bool = False


SummaryMode = Literal["true", "false", "count", "data", "text"]
TotalMode = Literal["none", "estimate", "accurate"]


@dataclass(frozen=True)
class SearchQuery:
    """A parsed, validated search over one type (or several for system-level search)."""

    resource_types: tuple[str, ...]  # one type for type-level search; all (or _type) for system search
    clauses: tuple[Clause, ...] = ()
    sort: tuple[SortKey, ...] = ()
    count: int = 20
    cursor: str | None = None  # opaque, produced by the store for next/previous pages
    includes: tuple[Include, ...] = ()
    summary: SummaryMode | None = None
    elements: tuple[str, ...] = ()
    total: TotalMode | None = None
    contained: str | None = None
    # parameters ignored under Prefer: handling=lenient, reported back in an OperationOutcome
    ignored: tuple[str, ...] = ()
    # the canonical query string (without paging params), used for self/next links
    canonical: str = ""
    extra: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
