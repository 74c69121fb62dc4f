"""SMART v1/v2 scope grammar -> typed grants, permits() per interaction, and narrowing by registration."""

from __future__ import annotations

import pytest

from app.auth.scopes import (
    Interaction,
    ScopeError,
    ScopeGrant,
    narrow,
    parse_scope,
    parse_scopes,
    permits,
    render_scopes,
)

IX = Interaction


def grants(text: str) -> tuple[ScopeGrant, ...]:
    return parse_scopes(text).grants


@pytest.mark.parametrize(
    ("scope", "context", "rtype", "letters", "version"),
    [
        ("patient/Observation.read", "patient", "Observation", "rs", 1),
        ("user/*.write", "user", "*", "cud", 1),
        ("system/*.*", "system", "*", "cruds", 1),
        ("patient/Observation.rs", "patient", "Observation", "rs", 2),
        ("system/*.cruds", "system", "*", "cruds", 2),
        ("user/Patient.r", "user", "Patient", "r", 2),
        ("system/Encounter.cud", "system", "Encounter", "cud", 2),
    ],
)
def test_v1_and_v2_scopes_parse_into_typed_grants(scope, context, rtype, letters, version):
    grant = parse_scope(scope)
    assert grant == ScopeGrant(context, rtype, frozenset(letters), (), version)


def test_granular_v2_scope_carries_its_query_constraints():
    grant = parse_scope(
        "patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
    )
    assert grant is not None
    assert grant.constraints == (("category", "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"),)
    assert parse_scope(grant.to_scope()) == grant  # round-trips


@pytest.mark.parametrize(
    "scope",
    [
        "patient/Observation.sr",  # letters out of order
        "patient/Observation.rr",  # repeated letter
        "patient/Observation.x",
        "patient/Observation.",
        "patient/observation.read",  # not a resource type
        "system/*.read?category=x",  # constraints need v2 letters
        "patient/Observation.rs?category",  # not param=value
    ],
)
def test_malformed_resource_scopes_are_refused_with_a_reason(scope):
    with pytest.raises(ScopeError):
        parse_scope(scope)


def test_context_scopes_are_recognised_and_unknown_scopes_reported_not_granted():
    parsed = parse_scopes("openid fhirUser launch launch/patient offline_access profile email patient/*.rs")
    assert parsed.context == {"openid", "fhirUser", "launch", "launch/patient", "offline_access", "profile"}
    assert parsed.unknown == ("email",)
    assert len(parsed.grants) == 1


@pytest.mark.parametrize(
    ("scopes", "interaction", "rtype", "expected"),
    [
        ("patient/Observation.read", IX.READ, "Observation", True),
        ("patient/Observation.read", IX.VREAD, "Observation", True),
        ("patient/Observation.read", IX.HISTORY_INSTANCE, "Observation", True),
        ("patient/Observation.read", IX.SEARCH_TYPE, "Observation", True),
        ("patient/Observation.read", IX.CREATE, "Observation", False),
        ("patient/Observation.read", IX.READ, "Condition", False),
        ("user/*.write", IX.CREATE, "Condition", True),
        ("user/*.write", IX.UPDATE, "Condition", True),
        ("user/*.write", IX.PATCH, "Condition", True),
        ("user/*.write", IX.DELETE, "Condition", True),
        ("user/*.write", IX.READ, "Condition", False),
        ("system/*.*", IX.HISTORY_SYSTEM, "Patient", True),
        ("system/Observation.r", IX.READ, "Observation", True),
        ("system/Observation.r", IX.SEARCH_TYPE, "Observation", False),
        ("system/Observation.s", IX.SEARCH_SYSTEM, "Observation", True),
        ("system/Observation.s", IX.HISTORY_TYPE, "Observation", True),
        ("system/Observation.s", IX.READ, "Observation", False),
        ("system/*.cud", IX.READ, "Patient", False),
        ("system/*.d", IX.DELETE, "Patient", True),
        ("system/*.u", IX.CREATE, "Patient", False),
        ("", IX.READ, "Patient", False),
    ],
)
def test_permits_maps_each_interaction_to_its_permission(scopes, interaction, rtype, expected):
    assert permits(grants(scopes), interaction, rtype) is expected


def test_operations_name_the_permissions_they_need():
    g = grants("patient/*.rs")
    assert permits(g, IX.OPERATION, "Patient", access="rs")  # $everything
    assert not permits(g, IX.OPERATION, "Patient", access="c")
    with pytest.raises(ValueError):
        permits(g, IX.OPERATION, "Patient")


def test_one_grant_must_carry_every_needed_letter():
    # r from one grant and s from another with a constraint is not an unconstrained rs
    g = grants("patient/Observation.r patient/Observation.s?category=laboratory")
    assert permits(g, IX.OPERATION, "Observation", access="r")
    assert not permits(g, IX.OPERATION, "Observation", access="rs")


def test_narrow_never_widens_the_registration():
    granted = narrow("system/*.cruds", "system/*.rs")
    assert render_scopes(granted) == "system/*.rs"
    assert not permits(granted.grants, IX.CREATE, "Patient")


def test_narrow_takes_the_narrower_type_and_common_letters():
    granted = narrow("system/Observation.read system/Patient.cruds", "system/*.rs")
    assert render_scopes(granted) == "system/Observation.read system/Patient.rs"


def test_narrow_keeps_the_constraints_of_the_registration():
    granted = narrow("patient/Observation.rs", "patient/Observation.rs?category=laboratory")
    assert render_scopes(granted) == "patient/Observation.rs?category=laboratory"


def test_narrow_refuses_another_context_and_unregistered_context_scopes():
    granted = narrow("user/*.rs patient/*.rs openid offline_access", "patient/*.read openid")
    assert render_scopes(granted) == "openid patient/*.rs"


def test_narrow_with_nothing_in_common_grants_nothing():
    granted = narrow("system/Patient.write", "system/Observation.read")
    assert granted.grants == () and render_scopes(granted) == ""


def test_narrow_drops_grants_contained_in_another_granted_one():
    granted = narrow("system/*.rs system/Observation.r", "system/*.cruds")
    assert render_scopes(granted) == "system/*.rs"
