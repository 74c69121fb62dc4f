"""AuthContext: decisions and the narrowing the router applies BEFORE the query (patient compartment, granular
constraints), for patient/ scopes and for clients bound to a fixed patient."""

from __future__ import annotations

from app.auth.context import AccessPath, AuthContext, CompartmentNarrowing, compartment_narrowing
from app.auth.scopes import Interaction, parse_scopes

IX = Interaction


def ctx(scope: str, **kw) -> AuthContext:
    return AuthContext(client_id="app", subject="app", scope=scope, grants=parse_scopes(scope).grants, **kw)


def test_system_scope_is_unrestricted():
    decision = ctx("system/*.rs").decide(IX.SEARCH_TYPE, "Observation")
    assert decision.allowed and decision.unrestricted
    assert decision.paths == (AccessPath(),)


def test_patient_scope_confines_search_to_the_patient_compartment():
    decision = ctx("patient/Observation.rs", patient="123").decide(IX.SEARCH_TYPE, "Observation")
    assert decision.allowed and not decision.unrestricted
    (path,) = decision.paths
    assert path.compartment is not None
    assert path.compartment.reference == "Patient/123"
    assert "subject" in path.compartment.params and "performer" in path.compartment.params
    assert {"subject": "Patient/123"} in path.compartment.search_alternatives()


def test_patient_resource_itself_is_matched_by_id():
    (path,) = ctx("patient/*.rs", patient="123").decide(IX.READ, "Patient").paths
    assert path.compartment is not None
    assert path.compartment.search_alternatives()[0] == {"_id": "123"}


def test_patient_scope_without_a_patient_in_context_is_refused():
    decision = ctx("patient/*.rs").decide(IX.READ, "Observation")
    assert not decision.allowed
    assert "needs a patient" in decision.reason


def test_types_outside_the_patient_compartment_are_unreachable_with_patient_scopes():
    decision = ctx("patient/*.rs", patient="123").decide(IX.READ, "Organization")
    assert not decision.allowed
    assert compartment_narrowing("Organization", "123") is None


def test_a_client_bound_to_a_patient_is_confined_even_with_system_scopes():
    decision = ctx("system/*.rs", patient="p1", fixed_patient=True).decide(IX.SEARCH_TYPE, "Condition")
    (path,) = decision.paths
    assert path.compartment == CompartmentNarrowing("p1", "Condition", path.compartment.params)
    assert path.compartment.params  # Condition is in the compartment (subject, asserter)


def test_granular_constraints_are_returned_for_the_router_to_apply():
    scope = "patient/Observation.rs?category=laboratory"
    (path,) = ctx(scope, patient="1").decide(IX.SEARCH_TYPE, "Observation").paths
    assert path.constraints == (("category", "laboratory"),)


def test_an_unrestricted_grant_makes_constrained_paths_moot():
    decision = ctx("user/Observation.rs?category=vital-signs user/Observation.rs").decide(IX.READ, "Observation")
    assert decision.paths == (AccessPath(),)


def test_several_constrained_grants_are_alternative_paths():
    scope = "user/Observation.rs?category=vital-signs user/Observation.rs?category=laboratory"
    decision = ctx(scope).decide(IX.SEARCH_TYPE, "Observation")
    assert {p.constraints for p in decision.paths} == {(("category", "vital-signs"),), (("category", "laboratory"),)}


def test_refusal_names_the_missing_permission_for_the_403():
    decision = ctx("patient/Observation.rs", patient="1").decide(IX.CREATE, "Observation")
    assert not decision and "'c' on Observation" in decision.reason


def test_from_claims_reads_our_token_and_an_external_scope_claim():
    ours = AuthContext.from_claims(
        {
            "iss": "https://as",
            "sub": "u1",
            "client_id": "app",
            "scope": "launch/patient patient/*.rs",
            "patient": "9",
            "fhirUser": "Practitioner/7",
            "jti": "j1",
            "exp": 1700000000,
        }
    )
    assert ours.client_id == "app" and ours.patient == "9" and ours.fhir_user == "Practitioner/7"
    assert ours.has("launch/patient") and ours.token_id == "j1" and ours.expires_at == 1700000000
    foreign = AuthContext.from_claims(
        {"iss": "https://idp", "sub": "svc", "azp": "svc", "scp": ["system/*.rs", "bogus/scope.x", "email"]},
        scope_claim="scp",
    )
    assert foreign.client_id == "svc"
    assert [g.to_scope() for g in foreign.grants] == ["system/*.rs"]
