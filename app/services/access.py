"""Scope enforcement for the FHIR router: decisions, query narrowing and resource admission, framework-free.

``AccessGuard`` turns an ``AuthContext`` decision (``app.auth.context``) into what the router needs:

- ``require``: the Decision for an interaction on a type, or ``Forbidden`` (403) with the reason;
- ``narrow_search``: a ``SearchQuery`` confined *before* it runs -- an ``AnyOfClause`` (OR of the decision's access
  paths: each Patient-compartment alternative AND the granular constraints of the scope) is added, system searches
  keep only the types the token may search, and every chained (``subject:Patient.name``) and ``_has`` target type
  must be searchable and is narrowed the same way inside the chain;
- ``confine``: the clause alone, for read/update/delete by id (``_id`` AND the clause: a miss is 404, whether the
  resource is elsewhere or nowhere, so existence outside the compartment is never revealed);
- ``admits``: whether a resource *body* is inside a decision's paths, checked in memory on the indexer's entries.
  Used where there is no query to narrow: the content a write would store (writes must land inside the
  compartment), a vread'ed or historic version, and resources pulled in by ``_include``/``_revinclude``.

Policy choices (documented in the README's auth section):
- read/vread/history/update/patch/delete of a resource outside the compartment answer 404, never 403;
- ``_include``/``_revinclude`` that name a type the token cannot read are refused (403); included resources of
  a multi-target parameter (``Observation:subject``) that the token cannot read, or that fall outside its
  compartment, are dropped from the page;
- type and system ``_history`` cannot be narrowed by a compartment (history is not a search), so a confined
  token is refused them (403); instance history is allowed when the resource is in the compartment, listing
  only the versions that were;
- ``$translate`` reads terminology, not patient data: any scope with ``r`` on ConceptMap allows it, in any
  context, without compartment.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from app.auth.context import AccessPath, AuthContext, Decision
from app.auth.scopes import Interaction, permitting_grants
from app.fhir import search as fhir_search
from app.fhir.errors import BadRequest, Forbidden
from app.fhir.query import (
    AnyOfClause,
    ChainClause,
    Clause,
    ClauseGroup,
    HasClause,
    ParamClause,
    ReferenceIndex,
    SearchQuery,
    StringIndex,
    TokenIndex,
)
from app.fhir.store import StoredResource

__all__ = ["NON_PATIENT_OPERATIONS", "AccessGuard"]

# Operations that read no patient data: allowed by a grant on their type in any context, no compartment.
NON_PATIENT_OPERATIONS: frozenset[str] = frozenset({"translate"})
_NOTHING = AnyOfClause(())


class AccessGuard:
    """Decisions and narrowing for one registry; pure except for the caches (bounded)."""

    def __init__(self, registry: Any, indexer: Any = None, *, cache_size: int = 4096) -> None:
        self.registry = registry
        self._indexer = indexer
        self._decisions: dict[tuple[Any, ...], Decision] = {}
        self._cache_size = cache_size
        self._all_types = frozenset(registry.resource_types)

    @property
    def indexer(self) -> Any:
        if self._indexer is None:
            from app.fhir.indexing import default_indexer

            self._indexer = default_indexer()
        return self._indexer

    # ------------------------------------------------------------------ decisions

    def decide(
        self, auth: AuthContext, interaction: Interaction | str, rtype: str, *, access: str | None = None
    ) -> Decision:
        """``auth.decide`` memoised per (scopes, patient, interaction, type): the hot read path asks it per request."""
        key = (auth.scope, auth.patient, auth.fixed_patient, str(interaction), rtype, access)
        decision = self._decisions.get(key)
        if decision is None:
            decision = auth.decide(interaction, rtype, access=access)
            if len(self._decisions) >= self._cache_size:
                self._decisions.clear()
            self._decisions[key] = decision
        return decision

    def require(
        self, auth: AuthContext, interaction: Interaction | str, rtype: str, *, access: str | None = None
    ) -> Decision:
        decision = self.decide(auth, interaction, rtype, access=access)
        if not decision:
            raise Forbidden(f"Insufficient scope for {Interaction(interaction).value} on {rtype}: {decision.reason}")
        return decision

    def require_operation(self, auth: AuthContext, name: str, rtype: str | None, access: str) -> Decision | None:
        """Operations: the letters on the type (or on every type for a system-level one)."""
        target = rtype or "*"
        if name in NON_PATIENT_OPERATIONS:
            grants = permitting_grants(auth.grants, Interaction.OPERATION, target, access=access)
            if not grants:
                raise Forbidden(f"Insufficient scope for ${name} on {target}: it needs '{access}' on {target}")
            return None
        if rtype is None:
            raise Forbidden(f"${name} at system level needs system-wide access this token does not have")
        return self.require(auth, Interaction.OPERATION, rtype, access=access)

    # ------------------------------------------------------------------ narrowing

    def confine(self, decision: Decision, rtype: str) -> AnyOfClause | None:
        """The clause confining ``rtype`` to ``decision``'s paths; None when unrestricted."""
        if decision.unrestricted:
            return None
        groups = tuple(g for path in decision.paths for g in self._groups(path, rtype))
        return AnyOfClause(groups) if groups else _NOTHING

    @staticmethod
    def is_own_patient(decision: Decision, rtype: str, rid: str) -> bool:
        """True for ``Patient/<the patient in context>`` under a path with no other constraint: that resource is in
        its own compartment by definition, so reading it needs no narrowed query (the hot path of patient apps)."""
        return rtype == "Patient" and any(
            p.compartment is not None and p.compartment.patient_id == rid and not p.constraints for p in decision.paths
        )

    @functools.lru_cache(maxsize=2048)  # noqa: B019 - the guard lives as long as the app; keys are small
    def _groups(self, path: AccessPath, rtype: str) -> tuple[ClauseGroup, ...]:
        constraints: dict[str, list[str]] = {}
        for name, value in path.constraints:
            constraints.setdefault(name, []).append(value)
        try:
            extra = self._clauses(rtype, constraints) if constraints else ()
        except BadRequest:
            return ()  # a constraint we cannot evaluate allows nothing (fail closed)
        if path.compartment is None:
            return (ClauseGroup(extra),)
        out = []
        for alternative in path.compartment.search_alternatives():
            try:
                clauses = self._clauses(rtype, {k: [v] for k, v in alternative.items()})
            except BadRequest:
                continue  # a compartment parameter this server does not index: that way in does not exist here
            out.append(ClauseGroup((*clauses, *extra)))
        return tuple(out)

    def _clauses(self, rtype: str, params: Mapping[str, list[str]]) -> tuple[Clause, ...]:
        query = fhir_search.parse_search((rtype,), params, self.registry, lenient=False)
        if not query.clauses:
            raise BadRequest(f"{sorted(params)} gives no search clause on {rtype}")
        return query.clauses

    def narrow_search(
        self,
        auth: AuthContext,
        query: SearchQuery,
        *,
        interaction: Interaction = Interaction.SEARCH_TYPE,
        explicit_types: bool = True,
    ) -> SearchQuery:
        """Check and confine a search before it runs. ``explicit_types`` False (a system search without
        ``_type``): types the token may not search are dropped instead of refused."""
        kept: list[str] = []
        groups: list[ClauseGroup] = []
        restricted = False
        multi = len(query.resource_types) > 1
        for rtype in query.resource_types:
            decision = self.decide(auth, interaction, rtype)
            if not decision:
                if explicit_types:
                    raise Forbidden(f"Insufficient scope to search {rtype}: {decision.reason}")
                continue
            kept.append(rtype)
            clause = self.confine(decision, rtype)
            if clause is None:
                groups.append(ClauseGroup((), (rtype,) if multi else ()))
            else:
                restricted = True
                groups.extend(replace(g, resource_types=(rtype,)) if multi else g for g in clause.groups)
        if not kept:
            raise Forbidden("Insufficient scope: the token may search none of the requested resource types")
        clauses = [self._narrow_clause(auth, c) for c in query.clauses]
        self._check_includes(auth, query)
        if restricted:
            clauses.append(AnyOfClause(tuple(groups)))
        return replace(query, resource_types=tuple(kept), clauses=tuple(clauses))

    def _narrow_clause(self, auth: AuthContext, clause: Clause) -> Clause:
        if isinstance(clause, ChainClause):
            targets = [t for t in (clause.target_types or clause.param.targets) if t in self._all_types]
            inner = self._narrow_clause(auth, clause.inner)
            groups: list[ClauseGroup] = []
            restricted = False
            for t in targets:
                decision = self.decide(auth, Interaction.SEARCH_TYPE, t)
                if not decision:
                    raise Forbidden(
                        f"Insufficient scope for the chained parameter {clause.param.code}: it searches {t} "
                        f"({decision.reason}); name a readable target type ({clause.param.code}:Type.param)"
                    )
                confined = self.confine(decision, t)
                if confined is None:
                    groups.append(ClauseGroup((inner,), (t,)))
                else:
                    restricted = True
                    groups.extend(ClauseGroup((inner, *g.clauses), (t,)) for g in confined.groups)
            if restricted:
                return replace(clause, inner=AnyOfClause(tuple(groups)))
            return replace(clause, inner=inner)
        if isinstance(clause, HasClause):
            decision = self.decide(auth, Interaction.SEARCH_TYPE, clause.source_type)
            if not decision:
                raise Forbidden(
                    f"Insufficient scope for _has:{clause.source_type}: it searches {clause.source_type} "
                    f"({decision.reason})"
                )
            inner = self._narrow_clause(auth, clause.inner)
            confined = self.confine(decision, clause.source_type)
            if confined is not None:
                inner = AnyOfClause(tuple(ClauseGroup((inner, *g.clauses)) for g in confined.groups))
            return replace(clause, inner=inner)
        return clause

    def _check_includes(self, auth: AuthContext, query: SearchQuery) -> None:
        for inc in query.includes:
            if inc.reverse:
                named = [inc.source_type] if inc.source_type != "*" else []
            elif inc.target_type:
                named = [inc.target_type]
            elif inc.param is not None and len(inc.param.targets) == 1:
                named = list(inc.param.targets)
            else:
                named = []  # several possible targets: unreadable ones are dropped from the page
            for t in named:
                decision = self.decide(auth, Interaction.READ, t)
                if not decision:
                    what = "_revinclude" if inc.reverse else "_include"
                    raise Forbidden(f"Insufficient scope for {what} of {t}: {decision.reason}")

    def filter_included(self, auth: AuthContext, included: Sequence[StoredResource]) -> list[StoredResource]:
        """Included resources the token may read (type granted, inside its paths); the rest are dropped."""
        out = []
        for stored in included:
            decision = self.decide(auth, Interaction.READ, stored.resource_type)
            if decision and (decision.unrestricted or self.admits(decision, stored.as_dict())):
                out.append(stored)
        return out

    # ------------------------------------------------------------------ in-memory admission

    def admits(self, decision: Decision, resource: Mapping[str, Any]) -> bool:
        """Is ``resource`` (a body) inside one of ``decision``'s paths? Uses the same index entries the store
        searches, so the answer agrees with ``confine``."""
        if decision.unrestricted:
            return True
        if not decision.allowed:
            return False
        entries = self.indexer.index(dict(resource))
        rtype = str(resource.get("resourceType", ""))
        return any(self._path_admits(path, rtype, resource, entries) for path in decision.paths)

    def _path_admits(self, path: AccessPath, rtype: str, resource: Mapping[str, Any], entries: Sequence[Any]) -> bool:
        narrowing = path.compartment
        if narrowing is not None:
            inside = rtype == "Patient" and resource.get("id") == narrowing.patient_id
            if not inside:
                params = set(narrowing.params)
                inside = any(
                    isinstance(e, ReferenceIndex)
                    and e.param in params
                    and e.target_type == "Patient"
                    and e.target_id == narrowing.patient_id
                    for e in entries
                )
            if not inside:
                return False
        for name, value in path.constraints:
            try:
                clauses = self._clauses(rtype, {name: [value]})
            except BadRequest:
                return False
            if not all(_clause_matches(c, entries) for c in clauses):
                return False
        return True


def _clause_matches(clause: Clause, entries: Iterable[Any]) -> bool:
    """In-memory evaluation of the simple clauses a granular scope can hold (token, reference, string, _id is
    not one); anything else is not admitted (fail closed)."""
    if not isinstance(clause, ParamClause) or clause.modifier not in (None, "exact"):
        return False
    code = clause.param.code
    for e in entries:
        if getattr(e, "param", None) != code:
            continue
        for v in clause.values:
            if isinstance(e, TokenIndex):
                system_ok = v.system is None or (v.system == "" and not e.system) or v.system == e.system
                if system_ok and (v.code in (None, "") or v.code == e.code) and (v.system is not None or v.code):
                    return True
            elif isinstance(e, ReferenceIndex):
                if v.target_id and v.target_id == e.target_id and (not v.target_type or v.target_type == e.target_type):
                    return True
                if v.url and v.url == e.url:
                    return True
            elif isinstance(e, StringIndex):
                if clause.modifier == "exact":
                    if e.exact == (v.text or v.raw):
                        return True
                elif v.norm is not None and e.norm.startswith(v.norm):
                    return True
    return False
