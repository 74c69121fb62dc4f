"""Who is calling and what they may do: ``AuthContext``, built from a validated access token's claims.

``AuthContext.decide(interaction, resource_type)`` answers with a ``Decision``: refused (with the reason for the
403 and the audit record), or allowed along one or more ``AccessPath``s. A path says how the query must be
narrowed *before* it runs: to the Patient compartment of the launch patient (``patient/`` scopes, or every scope
of a client bound to a fixed patient), and/or to the granular constraints of a v2 scope (``?category=...``). The
router ORs the paths; a path with neither is unrestricted. Pure: imports only ``app.fhir`` and ``app.auth``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from app.auth.scopes import CONTEXT_SCOPES as _CONTEXT_SCOPES
from app.auth.scopes import (
    Interaction,
    ScopeError,
    ScopeGrant,
    access_for,
    parse_scope,
    permitting_grants,
)
from app.fhir.compartments import patient_compartment_params

__all__ = ["AccessPath", "AuthContext", "CompartmentNarrowing", "Decision", "compartment_narrowing"]


@dataclass(frozen=True)
class CompartmentNarrowing:
    """Confine ``resource_type`` to Patient/``patient_id``'s compartment (official Patient CompartmentDefinition):
    a resource is in it when ANY of ``params`` references the patient; the Patient itself matches by ``_id``."""

    patient_id: str
    resource_type: str
    params: tuple[str, ...]

    @property
    def reference(self) -> str:
        return f"Patient/{self.patient_id}"

    def search_alternatives(self) -> tuple[dict[str, str], ...]:
        """One search-parameter set per way of being in the compartment (OR them): ``({"subject": "Patient/1"},
        {"performer": "Patient/1"}, ...)``; for Patient itself ``({"_id": "1"}, {"link": "Patient/1"})``."""
        if self.resource_type == "Patient":
            return ({"_id": self.patient_id},) + tuple({p: self.reference} for p in self.params)
        return tuple({p: self.reference} for p in self.params)


def compartment_narrowing(resource_type: str, patient_id: str) -> CompartmentNarrowing | None:
    """How to confine ``resource_type`` to the patient's compartment; None when the type is not in the Patient
    compartment at all (then nothing of that type is reachable through a patient-confined grant)."""
    params = patient_compartment_params(resource_type)
    if resource_type != "Patient" and not params:
        return None
    return CompartmentNarrowing(patient_id, resource_type, params)


@dataclass(frozen=True)
class AccessPath:
    """One way a request is allowed: every constraint must hold, inside ``compartment`` when there is one."""

    compartment: CompartmentNarrowing | None = None
    constraints: tuple[tuple[str, str], ...] = ()

    @property
    def unrestricted(self) -> bool:
        return self.compartment is None and not self.constraints


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str
    paths: tuple[AccessPath, ...] = ()
    grants: tuple[ScopeGrant, ...] = ()  # the grants that allowed it (for the audit record)

    @property
    def unrestricted(self) -> bool:
        return self.allowed and any(p.unrestricted for p in self.paths)

    def __bool__(self) -> bool:
        return self.allowed


@dataclass(frozen=True)
class AuthContext:
    """The caller of one request: client, subject, granted scopes, launch context, token identity."""

    client_id: str
    subject: str
    scope: str
    grants: tuple[ScopeGrant, ...]
    context_scopes: frozenset[str] = frozenset()
    patient: str | None = None  # launch context patient, or the patient a client is bound to
    fixed_patient: bool = False  # the client is bound to ``patient``: EVERY grant is confined to its compartment
    encounter: str | None = None
    fhir_user: str | None = None
    token_id: str | None = None
    expires_at: int | None = None  # epoch seconds
    issuer: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_claims(cls, claims: Mapping[str, Any], *, scope_claim: str = "scope") -> AuthContext:
        """From validated access-token claims (ours, or an external issuer's with its ``scope_claim``, which may
        hold a space-separated string or a list). Malformed scopes from a foreign issuer are skipped, not fatal."""
        raw = claims.get(scope_claim, "")
        items = raw.split() if isinstance(raw, str) else [str(s) for s in raw] if isinstance(raw, list) else []
        grants: list[ScopeGrant] = []
        context: set[str] = set()
        for item in items:
            try:
                grant = parse_scope(item)
            except ScopeError:
                continue
            if grant is not None:
                grants.append(grant)
            elif item in _CONTEXT_SCOPES:
                context.add(item)
        client_id = str(claims.get("client_id") or claims.get("azp") or claims.get("sub") or "")
        patient = claims.get("patient")
        exp = claims.get("exp")
        return cls(
            client_id=client_id,
            subject=str(claims.get("sub") or client_id),
            scope=" ".join(items),
            grants=tuple(dict.fromkeys(grants)),
            context_scopes=frozenset(context),
            patient=str(patient) if patient else None,
            fixed_patient=bool(claims.get("fixed_patient", False)),
            encounter=str(claims["encounter"]) if claims.get("encounter") else None,
            fhir_user=str(claims["fhirUser"]) if claims.get("fhirUser") else None,
            token_id=str(claims["jti"]) if claims.get("jti") else None,
            expires_at=int(exp) if isinstance(exp, int | float) else None,
            issuer=str(claims.get("iss") or ""),
        )

    def decide(self, interaction: Interaction | str, resource_type: str, *, access: str | None = None) -> Decision:
        """May this caller do ``interaction`` on ``resource_type`` (a concrete type; system-level interactions ask
        per type), and how must the query be narrowed? ``access`` names the letters an operation needs."""
        letters = access_for(interaction, access)
        grants = permitting_grants(self.grants, interaction, resource_type, access=access)
        if not grants:
            return Decision(
                False, f"no granted scope allows '{letters}' on {resource_type} (granted: {self.scope or 'none'})"
            )
        paths: list[AccessPath] = []
        refused: list[str] = []
        for grant in grants:
            confined = self.fixed_patient or grant.context == "patient"
            if not confined:
                paths.append(AccessPath(None, grant.constraints))
                continue
            if not self.patient:
                refused.append(f"{grant.to_scope()} needs a patient in context and the token carries none")
                continue
            narrowing = compartment_narrowing(resource_type, self.patient)
            if narrowing is None:
                refused.append(f"{resource_type} is not in the Patient compartment that {grant.to_scope()} confines to")
                continue
            paths.append(AccessPath(narrowing, grant.constraints))
        if not paths:
            return Decision(False, "; ".join(refused))
        unique = tuple(dict.fromkeys(paths))
        if any(p.unrestricted for p in unique):
            unique = (AccessPath(),)  # one unrestricted path makes the others moot
        return Decision(True, "allowed by " + " ".join(g.to_scope() for g in grants), unique, grants)

    def permits(self, interaction: Interaction | str, resource_type: str, *, access: str | None = None) -> bool:
        return self.decide(interaction, resource_type, access=access).allowed

    def has(self, scope: str) -> bool:
        """True for a granted context scope such as ``openid`` or ``launch/patient``."""
        return scope in self.context_scopes

    def granted_types(self) -> Iterable[str]:
        """Resource types named by the grants (``*`` when a wildcard grant exists)."""
        return sorted({g.resource_type for g in self.grants})
