"""parse_search: raw query multidict -> SearchQuery (app.fhir.search)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from urllib.parse import parse_qs

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.fhir.errors import BadRequest
from app.fhir.query import (
    ChainClause,
    HasClause,
    IdClause,
    Include,
    LastUpdatedClause,
    ParamClause,
    SearchParamDef,
    SearchQuery,
)
from app.fhir.search import parse_search


def _p(code: str, ptype: str, targets: tuple[str, ...] = (), expression: str | None = "x") -> SearchParamDef:
    return SearchParamDef(code, ptype, expression, targets, url=f"http://example.org/SearchParameter/{code}")  # type: ignore[arg-type]


_RESOURCE_LEVEL = [
    _p("_id", "token"),
    _p("_lastUpdated", "date"),
    _p("_tag", "token"),
    _p("_profile", "uri"),
    _p("_security", "token"),
    _p("_text", "string", expression=None),
]
_TYPES: dict[str, list[SearchParamDef]] = {
    "Patient": [
        _p("name", "string"),
        _p("family", "string"),
        _p("birthdate", "date"),
        _p("gender", "token"),
        _p("identifier", "token"),
        _p("organization", "reference", ("Organization",)),
        _p("general-practitioner", "reference", ("Organization", "Practitioner")),
        _p("link", "reference", ("Patient", "RelatedPerson")),
    ],
    "Practitioner": [_p("name", "string"), _p("identifier", "token")],
    "Organization": [_p("name", "string"), _p("identifier", "token"), _p("partof", "reference", ("Organization",))],
    "Observation": [
        _p("code", "token"),
        _p("subject", "reference", ("Group", "Device", "Patient", "Location")),
        _p("patient", "reference", ("Patient",)),
        _p("encounter", "reference", ("Encounter",)),
        _p("date", "date"),
        _p("value-quantity", "quantity"),
        _p("code-value-quantity", "composite"),
    ],
    "RiskAssessment": [_p("probability", "number")],
    "ValueSet": [_p("url", "uri")],
    "Group": [_p("code", "token")],
    "Device": [_p("type", "token")],
    "Location": [_p("name", "string")],
    "Encounter": [_p("status", "token"), _p("subject", "reference", ("Patient", "Group"))],
    "RelatedPerson": [_p("name", "string")],
    "Provenance": [_p("target", "reference", ("Patient", "Observation", "Organization"))],
}


class StubRegistry:
    """The shape of app.fhir.registry.SearchParamRegistry over a handful of parameters."""

    def __init__(self) -> None:
        self._params = {t: {p.code: p for p in [*_RESOURCE_LEVEL, *ps]} for t, ps in _TYPES.items()}
        self.resource_types = frozenset(self._params)

    def params_for(self, resource_type: str) -> Mapping[str, SearchParamDef]:
        return self._params.get(resource_type, {})

    def get(self, resource_type: str, code: str) -> SearchParamDef | None:
        return self._params.get(resource_type, {}).get(code)


REG = StubRegistry()


def q(query: str, types: tuple[str, ...] = ("Patient",), **kwargs) -> SearchQuery:
    return parse_search(types, parse_qs(query, keep_blank_values=True), REG, **kwargs)


def only(query: str, types: tuple[str, ...] = ("Patient",), **kwargs):
    parsed = q(query, types, **kwargs)
    assert len(parsed.clauses) == 1, parsed.clauses
    return parsed.clauses[0]


def bad(query: str, types: tuple[str, ...] = ("Patient",), **kwargs) -> BadRequest:
    with pytest.raises(BadRequest) as info:
        q(query, types, **kwargs)
    return info.value


# ---------------------------------------------------------------- string / uri


def test_string_value_keeps_text_and_normalises_case_and_accents() -> None:
    clause = only("name=%C3%89lodie%20%20Smith")
    assert isinstance(clause, ParamClause)
    assert clause.param.code == "name" and clause.modifier is None
    (value,) = clause.values
    assert value.text == "Élodie  Smith"
    assert value.norm == "elodie smith"


@pytest.mark.parametrize("modifier", ["exact", "contains"])
def test_string_modifiers_are_kept_on_the_clause(modifier: str) -> None:
    clause = only(f"name:{modifier}=Eve")
    assert isinstance(clause, ParamClause) and clause.modifier == modifier


def test_commas_or_values_and_escaped_comma_stays_literal() -> None:
    clause = only(r"name=a\,b,c")
    assert isinstance(clause, ParamClause)
    assert [v.text for v in clause.values] == ["a,b", "c"]


def test_repeated_parameter_ands_into_separate_clauses() -> None:
    parsed = q("name=a&name=b")
    assert [c.values[0].text for c in parsed.clauses] == ["a", "b"]  # type: ignore[union-attr]


def test_uri_value_is_taken_verbatim() -> None:
    clause = only("url=http://example.org/ValueSet/x", ("ValueSet",))
    assert isinstance(clause, ParamClause)
    assert clause.values[0].text == "http://example.org/ValueSet/x"


def test_uri_below_modifier_is_accepted() -> None:
    clause = only("url:below=http://example.org/", ("ValueSet",))
    assert isinstance(clause, ParamClause) and clause.modifier == "below"


# ---------------------------------------------------------------- token


@pytest.mark.parametrize(
    ("raw", "system", "code"),
    [
        ("http://loinc.org|1234-5", "http://loinc.org", "1234-5"),
        ("|1234-5", "", "1234-5"),
        ("http://loinc.org|", "http://loinc.org", None),
        ("1234-5", None, "1234-5"),
        (r"a\|b", None, "a|b"),
    ],
)
def test_token_forms(raw: str, system: str | None, code: str | None) -> None:
    clause = parse_search(["Observation"], {"code": [raw]}, REG).clauses[0]
    assert isinstance(clause, ParamClause)
    assert (clause.values[0].system, clause.values[0].code) == (system, code)


def test_token_text_modifier_normalises_text() -> None:
    clause = only("code:text=Blood%20Pressure", ("Observation",))
    assert isinstance(clause, ParamClause) and clause.modifier == "text"
    assert clause.values[0].norm == "blood pressure"


def test_token_not_modifier() -> None:
    clause = only("gender:not=male")
    assert isinstance(clause, ParamClause) and clause.modifier == "not"


@pytest.mark.parametrize("modifier", ["above", "below", "in", "not-in", "of-type"])
def test_token_modifiers_that_need_terminology_are_refused(modifier: str) -> None:
    assert bad(f"gender:{modifier}=male").issues[0].details_code == "unknown-modifier"


def test_token_with_two_pipes_is_malformed() -> None:
    err = bad("gender=a|b|c")
    assert err.issues[0].expression == ("gender",)
    assert err.issues[0].details_code == "invalid-search-value"


def test_modifier_not_valid_for_the_type_is_rejected_with_the_param_name() -> None:
    err = bad("gender:exact=male")
    assert err.status == 400
    assert err.issues[0].expression == ("gender:exact",)
    assert err.issues[0].details_code == "unknown-modifier"


# ---------------------------------------------------------------- reference


def test_reference_type_and_id() -> None:
    clause = only("subject=Patient/123", ("Observation",))
    assert isinstance(clause, ParamClause)
    assert (clause.values[0].target_type, clause.values[0].target_id) == ("Patient", "123")


def test_reference_version_is_dropped() -> None:
    clause = only("subject=Patient/123/_history/4", ("Observation",))
    assert (clause.values[0].target_type, clause.values[0].target_id) == ("Patient", "123")  # type: ignore[union-attr]


def test_bare_id_takes_the_single_target_type() -> None:
    clause = only("organization=abc")
    assert (clause.values[0].target_type, clause.values[0].target_id) == ("Organization", "abc")  # type: ignore[union-attr]


def test_bare_id_with_several_targets_has_no_type() -> None:
    clause = only("subject=abc", ("Observation",))
    assert (clause.values[0].target_type, clause.values[0].target_id) == (None, "abc")  # type: ignore[union-attr]


def test_type_modifier_sets_the_target_type_not_a_modifier() -> None:
    clause = only("subject:Patient=abc", ("Observation",))
    assert isinstance(clause, ParamClause) and clause.modifier is None
    assert (clause.values[0].target_type, clause.values[0].target_id) == ("Patient", "abc")


def test_type_modifier_contradicting_the_value_is_rejected() -> None:
    err = bad("subject:Patient=Group/1", ("Observation",))
    assert err.issues[0].expression == ("subject:Patient",)


def test_type_modifier_outside_the_targets_is_rejected() -> None:
    assert bad("organization:Patient=1").issues[0].expression == ("organization:Patient",)


def test_reference_to_a_type_outside_the_targets_is_rejected() -> None:
    assert bad("organization=Patient/1").issues[0].details_code == "invalid-search-value"


def test_absolute_reference_elsewhere_is_a_url() -> None:
    clause = only("subject=http://other.org/fhir/Patient/1", ("Observation",))
    assert clause.values[0].url == "http://other.org/fhir/Patient/1"  # type: ignore[union-attr]
    assert clause.values[0].target_id is None  # type: ignore[union-attr]


def test_absolute_reference_into_this_server_is_relative() -> None:
    clause = only("subject=https://me.org/fhir/Patient/1", ("Observation",), base_url="https://me.org/fhir/")
    assert (clause.values[0].target_type, clause.values[0].target_id) == ("Patient", "1")  # type: ignore[union-attr]


def test_identifier_modifier_reads_a_token() -> None:
    clause = only("subject:identifier=urn:oid:1.2|MRN7", ("Observation",))
    assert isinstance(clause, ParamClause) and clause.modifier == "identifier"
    assert (clause.values[0].system, clause.values[0].code) == ("urn:oid:1.2", "MRN7")


def test_malformed_reference_is_rejected() -> None:
    assert bad("organization=not an id").issues[0].expression == ("organization",)


# ---------------------------------------------------------------- date / number / quantity


@pytest.mark.parametrize("prefix", ["eq", "ne", "lt", "gt", "le", "ge", "sa", "eb", "ap"])
def test_every_date_prefix(prefix: str) -> None:
    clause = only(f"birthdate={prefix}2024-02")
    assert isinstance(clause, ParamClause)
    value = clause.values[0]
    assert value.prefix == prefix
    assert (value.low, value.high) == (datetime(2024, 2, 1), datetime(2024, 3, 1))


def test_date_without_prefix_is_eq() -> None:
    assert only("birthdate=2024").values[0].prefix == "eq"  # type: ignore[union-attr]


def test_date_with_offset_is_converted_to_utc_even_when_plus_arrived_as_space() -> None:
    encoded = only("birthdate=ge2024-01-01T10:00:00%2B01:00").values[0]  # type: ignore[union-attr]
    spaced = only("birthdate=ge2024-01-01T10:00:00+01:00").values[0]  # '+' decoded to ' ' by the query string
    assert encoded.low == spaced.low == datetime(2024, 1, 1, 9, 0)


@pytest.mark.parametrize("raw", ["x", "2024-13", "ge", "2024-01-01T25:00", "zz2024"])
def test_malformed_date_is_rejected_with_the_param_name(raw: str) -> None:
    err = bad(f"birthdate={raw}")
    assert err.issues[0].expression == ("birthdate",)
    assert err.issues[0].details_code == "invalid-search-value"


def test_number_with_prefix_and_implicit_precision() -> None:
    value = only("probability=gt0.8", ("RiskAssessment",)).values[0]  # type: ignore[union-attr]
    assert value.prefix == "gt"
    assert (value.number, value.low, value.high) == (Decimal("0.8"), Decimal("0.75"), Decimal("0.85"))


def test_number_that_is_not_a_number_is_rejected() -> None:
    assert bad("probability=abc", ("RiskAssessment",)).issues[0].expression == ("probability",)


@pytest.mark.parametrize(
    ("raw", "prefix", "number", "system", "code"),
    [
        ("5.4|http://unitsofmeasure.org|mg", "eq", "5.4", "http://unitsofmeasure.org", "mg"),
        ("le5.4||mg", "le", "5.4", None, "mg"),
        ("ap100", "ap", "100", None, None),
    ],
)
def test_quantity_forms(raw: str, prefix: str, number: str, system: str | None, code: str | None) -> None:
    clause = parse_search(["Observation"], {"value-quantity": [raw]}, REG).clauses[0]
    value = clause.values[0]  # type: ignore[union-attr]
    assert (value.prefix, value.number, value.system, value.code) == (prefix, Decimal(number), system, code)


def test_quantity_with_two_parts_is_rejected() -> None:
    assert bad("value-quantity=5.4|mg", ("Observation",)).issues[0].expression == ("value-quantity",)


# ---------------------------------------------------------------- :missing


@pytest.mark.parametrize("value", ["true", "false"])
def test_missing_modifier(value: str) -> None:
    clause = only(f"birthdate:missing={value}")
    assert isinstance(clause, ParamClause) and clause.modifier == "missing"
    assert clause.values[0].code == value


def test_missing_with_a_non_boolean_stays_an_error_even_when_lenient() -> None:
    assert bad("birthdate:missing=maybe", lenient=True).issues[0].expression == ("birthdate:missing",)


# ---------------------------------------------------------------- chains and _has


def test_chain_with_type_modifier() -> None:
    clause = only("subject:Patient.name=eve", ("Observation",))
    assert isinstance(clause, ChainClause)
    assert clause.param.code == "subject" and clause.target_types == ("Patient",)
    assert isinstance(clause.inner, ParamClause) and clause.inner.values[0].norm == "eve"


def test_chain_without_type_takes_the_targets_that_have_the_param() -> None:
    clause = only("subject.name:exact=Eve", ("Observation",))
    assert isinstance(clause, ChainClause)
    assert clause.target_types == ("Patient", "Location")
    assert isinstance(clause.inner, ParamClause) and clause.inner.modifier == "exact"


def test_chain_to_id() -> None:
    clause = only("subject:Patient._id=1", ("Observation",))
    assert isinstance(clause, ChainClause) and clause.inner == IdClause(("1",))


def test_chain_on_a_non_reference_param_is_rejected() -> None:
    assert bad("code.name=x", ("Observation",)).issues[0].expression == ("code.name",)


def test_chain_deeper_than_one_level_is_unsupported() -> None:
    err = bad("subject:Patient.organization.name=x", ("Observation",))
    assert err.issues[0].details_code == "unsupported-search-param"


def test_chain_to_an_unknown_param_is_rejected() -> None:
    assert bad("subject.nonsense=x", ("Observation",)).issues[0].details_code == "unknown-search-param"


def test_has_clause() -> None:
    clause = only("_has:Observation:patient:code=1234-5")
    assert isinstance(clause, HasClause)
    assert clause.source_type == "Observation" and clause.ref_param.code == "patient"
    assert isinstance(clause.inner, ParamClause) and clause.inner.values[0].code == "1234-5"


def test_nested_has() -> None:
    clause = only("_has:Observation:patient:_has:Provenance:target:_tag=x")
    assert isinstance(clause, HasClause) and isinstance(clause.inner, HasClause)
    assert clause.inner.source_type == "Provenance"


def test_has_through_a_param_that_cannot_point_here_is_rejected() -> None:
    assert bad("_has:Observation:encounter:code=x").issues[0].details_code == "invalid-search-value"


def test_has_with_unknown_source_type_is_rejected() -> None:
    assert bad("_has:Nope:patient:code=x").issues[0].expression == ("_has:Nope:patient:code",)


def test_has_missing_parts_is_rejected() -> None:
    assert bad("_has:Observation:patient=x").status == 400


# ---------------------------------------------------------------- _id, _lastUpdated, Resource params


def test_id_clause_and_not() -> None:
    assert only("_id=b,a") == IdClause(("a", "b"))
    assert only("_id:not=a") == IdClause(("a",), negate=True)


def test_invalid_id_is_rejected() -> None:
    assert bad("_id=a%20b").issues[0].expression == ("_id",)


def test_last_updated_clause() -> None:
    clause = only("_lastUpdated=ge2024-01-01,lt2023")
    assert isinstance(clause, LastUpdatedClause)
    assert [v.prefix for v in clause.values] == ["ge", "lt"]


@pytest.mark.parametrize(("name", "ptype"), [("_tag", "token"), ("_security", "token"), ("_profile", "uri")])
def test_meta_params_are_ordinary_registry_params(name: str, ptype: str) -> None:
    clause = only(f"{name}=http://x.org|y")
    assert isinstance(clause, ParamClause) and clause.param.type == ptype


# ---------------------------------------------------------------- unknown / unsupported / lenient


def test_unknown_param_is_a_bad_request_naming_it() -> None:
    err = bad("shoe-size=12")
    assert err.status == 400
    assert err.issues[0].expression == ("shoe-size",)
    assert err.issues[0].details_code == "unknown-search-param"
    assert "shoe-size" in err.diagnostics


@pytest.mark.parametrize("query", ["code-value-quantity=x$1", "_text=hello"])
def test_unsupported_param_types_are_rejected(query: str) -> None:
    err = bad(query, ("Observation",))
    assert err.issues[0].details_code == "unsupported-search-param"


def test_lenient_drops_unknown_params_and_modifiers_and_lists_them() -> None:
    parsed = q("shoe-size=12&name:sounds-like=x&name=eve&_text=x", lenient=True)
    assert parsed.ignored == ("shoe-size", "name:sounds-like", "_text")
    assert len(parsed.clauses) == 1
    assert "shoe-size" not in parsed.canonical


def test_lenient_keeps_malformed_values_of_known_params_as_errors() -> None:
    assert bad("birthdate=notadate", lenient=True).status == 400


def test_empty_values_are_ignored() -> None:
    parsed = q("name=&gender=male")
    assert len(parsed.clauses) == 1


# ---------------------------------------------------------------- result parameters


def test_sort_keys() -> None:
    parsed = q("_sort=-birthdate,name,_lastUpdated")
    assert [(s.param, s.descending) for s in parsed.sort] == [
        ("birthdate", True),
        ("name", False),
        ("_lastUpdated", False),
    ]
    assert parsed.sort[0].param_def is not None and parsed.sort[0].param_def.type == "date"


def test_sort_by_unknown_param_is_rejected() -> None:
    assert bad("_sort=shoe-size").issues[0].expression == ("_sort",)


@pytest.mark.parametrize(("raw", "count"), [("", 20), ("_count=5", 5), ("_count=5000", 1000)])
def test_count_default_and_cap(raw: str, count: int) -> None:
    assert q(raw).count == count


def test_count_zero_means_summary_count() -> None:
    parsed = q("_count=0")
    assert parsed.count == 0 and parsed.summary == "count"


@pytest.mark.parametrize("raw", ["-1", "ten", "1.5"])
def test_bad_count_is_rejected(raw: str) -> None:
    assert bad(f"_count={raw}").issues[0].expression == ("_count",)


def test_custom_default_and_max_count() -> None:
    assert q("", default_count=7).count == 7
    assert q("_count=50", max_count=10).count == 10


def test_cursor_is_passed_through() -> None:
    assert q("_cursor=opaque%2Btoken").cursor == "opaque+token"


def test_includes() -> None:
    parsed = q(
        "_include=Patient:organization&_include:iterate=Organization:partof"
        "&_revinclude=Observation:subject&_include=*&_revinclude:recurse=Provenance:target"
    )
    assert {(i.source_type, i.param.code if i.param else None, i.reverse, i.iterate) for i in parsed.includes} == {
        ("Patient", "organization", False, False),
        ("Organization", "partof", False, True),
        ("Observation", "subject", True, False),
        ("*", None, False, False),
        ("Provenance", "target", True, True),
    }


def test_include_with_target_type() -> None:
    (inc,) = q("_include=Patient:general-practitioner:Practitioner").includes
    assert inc == Include("Patient", REG.get("Patient", "general-practitioner"), "Practitioner")


@pytest.mark.parametrize(
    "raw",
    [
        "_include=Patient",  # no param
        "_include=Observation:subject",  # not the searched type
        "_include=Patient:general-practitioner:Observation",  # not a target
        "_revinclude=Observation:encounter",  # never points at Patient
        "_include=Nope:x",
    ],
)
def test_invalid_includes_are_rejected(raw: str) -> None:
    assert bad(raw).issues[0].expression[0].startswith(("_include", "_revinclude"))


def test_include_of_a_non_reference_param_is_unknown() -> None:
    assert bad("_include=Patient:name").issues[0].details_code == "unknown-search-param"


@pytest.mark.parametrize("mode", ["true", "false", "count", "data", "text"])
def test_summary_modes(mode: str) -> None:
    assert q(f"_summary={mode}").summary == mode


def test_bad_summary_is_rejected() -> None:
    assert bad("_summary=maybe").issues[0].expression == ("_summary",)


def test_elements_accept_plain_and_type_prefixed_names() -> None:
    assert q("_elements=name,Patient.gender,name").elements == ("name", "gender")


def test_total_and_contained() -> None:
    parsed = q("_total=accurate&_contained=both")
    assert (parsed.total, parsed.contained) == ("accurate", "both")
    assert bad("_total=lots").issues[0].expression == ("_total",)


def test_format_and_pretty_are_ignored_silently() -> None:
    parsed = q("_format=json&_pretty=true&name=x")
    assert parsed.ignored == () and "_format" not in parsed.canonical and "_pretty" not in parsed.canonical


# ---------------------------------------------------------------- system search and _type

ALL = tuple(sorted(_TYPES))


def test_system_search_accepts_only_common_params() -> None:
    parsed = q("_lastUpdated=ge2024&_tag=x", ALL)
    assert len(parsed.clauses) == 2
    assert bad("name=x", ALL).issues[0].details_code == "unknown-search-param"


def test_type_narrows_a_system_search() -> None:
    parsed = q("_type=Practitioner,Patient&name=eve", ALL)
    assert parsed.resource_types == ("Patient", "Practitioner")
    assert "_type=Patient,Practitioner" in parsed.canonical


def test_type_outside_the_searchable_types_is_rejected() -> None:
    assert bad("_type=Nope", ALL).issues[0].expression == ("_type",)


def test_unknown_resource_type_is_rejected() -> None:
    with pytest.raises(BadRequest):
        parse_search(["Nope"], {}, REG)


# ---------------------------------------------------------------- canonical form


def test_canonical_is_independent_of_order_and_excludes_paging() -> None:
    a = q("name=b,a&gender=male&_count=5&_cursor=abc&_format=json&birthdate=eq2024")
    b = q("birthdate=2024&gender=male&name=a,b")
    assert a.canonical == b.canonical == "birthdate=2024&gender=male&name=a,b"


def test_canonical_normalises_reference_spellings() -> None:
    a = q("subject:Patient=1", ("Observation",)).canonical
    b = q("subject=Patient/1", ("Observation",)).canonical
    assert a == b == "subject=Patient/1"


def test_canonical_differs_for_different_criteria() -> None:
    assert q("name=a").canonical != q("name:exact=a").canonical
    assert q("name=a&name=b").canonical != q("name=a,b").canonical


_PARAMS = [
    "name=eve",
    "gender=http://hl7.org/fhir/administrative-gender|female",
    "birthdate=ge2000-01-01T00:00:00%2B02:00",
    "organization=Organization/o1",
    "_has:Observation:patient:code=1234-5",
    "_include=Patient:organization",
    "_sort=-birthdate",
    r"family=a\,b",
    "_id=x,y",
]


@settings(max_examples=40, deadline=None)
@given(st.permutations(_PARAMS))
def test_canonical_is_stable_under_permutation_and_round_trips(params: list[str]) -> None:
    canonical = q("&".join(params)).canonical
    assert canonical == q("&".join(_PARAMS)).canonical
    assert q(canonical).canonical == canonical  # a next link parses back to the same criteria


def test_canonical_elements_ignore_order() -> None:
    assert q("_elements=name,gender").canonical == q("_elements=gender,name").canonical


@pytest.mark.parametrize("key", ["_count:x", "_summary:exact", "_sort:desc"])
def test_result_parameters_take_no_modifier(key: str) -> None:
    assert bad(f"{key}=1").issues[0].details_code == "unknown-modifier"
    assert q(f"{key}=1", lenient=True).ignored == (key,)


# ---------------------------------------------------------------- with the real registry


def test_real_registry_observation_query() -> None:
    from app.fhir.registry import default_registry

    registry = default_registry()
    query = parse_search(
        ["Observation"],
        {
            "patient": ["Patient/123"],
            "code": ["http://loinc.org|8480-6,http://loinc.org|8462-4"],
            "date": ["ge2024-01-01", "lt2024-07-01"],
            "value-quantity": ["gt100|http://unitsofmeasure.org|mm[Hg]"],
            "subject:Patient.name": ["doe"],
            "_include": ["Observation:performer"],
            "_sort": ["-date"],
            "_count": ["50"],
        },
        registry,
    )
    assert len(query.clauses) == 6 and query.count == 50
    chain = next(c for c in query.clauses if isinstance(c, ChainClause))
    assert chain.target_types == ("Patient",)
    assert query.includes[0].param is not None and query.includes[0].param.code == "performer"


_KEYS = st.sampled_from(
    [
        "name",
        "name:exact",
        "gender",
        "gender:not",
        "birthdate",
        "organization",
        "organization:Organization",
        "general-practitioner.name",
        "_has:Observation:patient:code",
        "_id",
        "_lastUpdated",
        "_tag",
        "_sort",
        "_count",
        "_include",
        "_revinclude:iterate",
        "_summary",
        "_elements",
        "_total",
        "nonsense",
        "name:nonsense",
    ]
)
_VALUES = st.text(alphabet="ab12-|,\\:/.$ eglt*TZ+", max_size=16)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_KEYS, st.lists(_VALUES, min_size=1, max_size=3), max_size=5), st.booleans())
def test_any_query_parses_or_is_a_bad_request(params: dict[str, list[str]], lenient: bool) -> None:
    try:
        parsed = parse_search(["Patient"], params, REG, lenient=lenient)
    except BadRequest as exc:
        assert exc.issues[0].expression  # always names the parameter
        return
    assert parse_search(["Patient"], parse_qs(parsed.canonical), REG, lenient=lenient).canonical == parsed.canonical
