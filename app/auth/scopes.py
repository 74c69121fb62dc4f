"""SMART on FHIR scopes as typed grants, and the one question every route asks: is this interaction permitted?

Grammar (SMART App Launch 1.0 and 2.x, https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html):

- v1: ``(patient|user|system)/(Type|*).(read|write|*)``  -- read = r+s, write = c+u+d, ``*`` = all
- v2: ``(patient|user|system)/(Type|*).<cruds>[?param=value&...]`` -- letters in the order c r u d s, each at most
  once; the query is a *granular* constraint (e.g. ``?category=http://.../observation-category|laboratory``)
- context scopes: ``openid fhirUser profile launch launch/patient launch/encounter offline_access online_access``

Each resource scope becomes a ``ScopeGrant``. Interactions map onto the five permission letters (``ACCESS``):
read/vread/instance history need ``r``, search and type/system history ``s``, create ``c``, update/patch ``u``,
delete ``d``; an operation names the letters it needs. ``narrow`` intersects what a client asks for with what it
was registered for, so scopes can only ever narrow. Everything here is pure and stdlib-only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal
from urllib.parse import parse_qsl, quote

__all__ = [
    "ACCESS",
    "CONTEXT_SCOPES",
    "LETTERS",
    "Interaction",
    "ParsedScopes",
    "ScopeError",
    "ScopeGrant",
    "access_for",
    "narrow",
    "parse_scope",
    "parse_scopes",
    "permits",
    "permitting_grants",
    "render_scopes",
]

Context = Literal["patient", "user", "system"]
LETTERS = "cruds"
CONTEXT_SCOPES: frozenset[str] = frozenset(
    {
        "openid",
        "fhirUser",
        "profile",
        "launch",
        "launch/patient",
        "launch/encounter",
        "offline_access",
        "online_access",
    }
)
_V1_ACTIONS = {"read": "rs", "write": "cud", "*": LETTERS}
_RESOURCE_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]{0,63})\.([a-z*]+)(?:\?(.*))?$")
_V2_ORDER = {c: i for i, c in enumerate(LETTERS)}


class ScopeError(ValueError):
    """A scope that looks like a SMART resource scope but is malformed (the message says what is wrong)."""


class Interaction(StrEnum):
    """FHIR RESTful interactions (http://hl7.org/fhir/R4/http.html), plus operations."""

    READ = "read"
    VREAD = "vread"
    HISTORY_INSTANCE = "history-instance"
    HISTORY_TYPE = "history-type"
    HISTORY_SYSTEM = "history-system"
    SEARCH_TYPE = "search-type"
    SEARCH_SYSTEM = "search-system"
    CREATE = "create"
    UPDATE = "update"
    PATCH = "patch"
    DELETE = "delete"
    OPERATION = "operation"


# The SMART v2 letter each interaction needs. Conditional create/update/delete need their own letter *and* "s"
# (they search first): the router asks twice. Operations need what they do, named by the caller.
ACCESS: dict[Interaction, str] = {
    Interaction.READ: "r",
    Interaction.VREAD: "r",
    Interaction.HISTORY_INSTANCE: "r",
    Interaction.HISTORY_TYPE: "s",
    Interaction.HISTORY_SYSTEM: "s",
    Interaction.SEARCH_TYPE: "s",
    Interaction.SEARCH_SYSTEM: "s",
    Interaction.CREATE: "c",
    Interaction.UPDATE: "u",
    Interaction.PATCH: "u",
    Interaction.DELETE: "d",
}


@dataclass(frozen=True, order=True)
class ScopeGrant:
    """One resource scope: in ``context``, ``resource_type`` (or ``*``) with the ``permissions`` letters, limited
    to resources matching every ``(param, value)`` of ``constraints`` (a granular v2 scope; empty = no limit)."""

    context: Context
    resource_type: str  # "*" = every type
    permissions: frozenset[str]
    constraints: tuple[tuple[str, str], ...] = ()
    version: Literal[1, 2] = 2

    def covers_type(self, resource_type: str) -> bool:
        return self.resource_type == "*" or self.resource_type == resource_type

    def allows(self, letters: str, resource_type: str) -> bool:
        return self.covers_type(resource_type) and set(letters) <= self.permissions

    def intersect(self, other: ScopeGrant) -> ScopeGrant | None:
        """What both grants allow (None when nothing): same context, the narrower type, common letters, and the
        constraints of both (a resource then has to match all of them). Keeps ``self``'s v1/v2 spelling."""
        if self.context != other.context:
            return None
        if self.resource_type == "*":
            rtype = other.resource_type
        elif other.resource_type in ("*", self.resource_type):
            rtype = self.resource_type
        else:
            return None
        letters = self.permissions & other.permissions
        if not letters:
            return None
        constraints = tuple(sorted(set(self.constraints) | set(other.constraints)))
        # spelled like ``self`` (the requested scope) where that syntax can say it: see to_scope
        return ScopeGrant(self.context, rtype, frozenset(letters), constraints, self.version)

    def to_scope(self) -> str:
        """The scope string: v1 spelling when the grant came from v1 and v1 can say it, else v2."""
        base = f"{self.context}/{self.resource_type}."
        if self.version == 1 and not self.constraints:
            for action, letters in (("*", LETTERS), ("read", "rs"), ("write", "cud")):
                if self.permissions == frozenset(letters):
                    return base + action
        text = base + "".join(c for c in LETTERS if c in self.permissions)
        if self.constraints:
            text += "?" + "&".join(f"{quote(k, safe='')}={quote(v, safe='|:/.-_')}" for k, v in self.constraints)
        return text


@dataclass(frozen=True)
class ParsedScopes:
    grants: tuple[ScopeGrant, ...]
    context: frozenset[str]  # recognised non-resource scopes (openid, launch/patient, offline_access, ...)
    unknown: tuple[str, ...]  # not SMART scopes: ignored, never granted

    @property
    def has_patient_scopes(self) -> bool:
        return any(g.context == "patient" for g in self.grants)


def _letters(action: str, scope: str) -> tuple[frozenset[str], Literal[1, 2]]:
    if action in _V1_ACTIONS:
        return frozenset(_V1_ACTIONS[action]), 1
    if not action or any(c not in _V2_ORDER for c in action):
        raise ScopeError(f"scope {scope!r}: permissions must be read, write, * or letters of 'cruds'")
    positions = [_V2_ORDER[c] for c in action]
    if positions != sorted(set(positions)):
        raise ScopeError(f"scope {scope!r}: permission letters must appear once each, in the order c r u d s")
    return frozenset(action), 2


def parse_scope(scope: str) -> ScopeGrant | None:
    """The grant for one resource scope; None for a context scope; ScopeError for a malformed resource scope."""
    if scope in CONTEXT_SCOPES:
        return None
    m = _RESOURCE_SCOPE.match(scope)
    if m is None:
        if scope.startswith(("patient/", "user/", "system/")):
            raise ScopeError(f"scope {scope!r} is not <patient|user|system>/<Type|*>.<permissions>[?query]")
        return None
    context, rtype, action, query = m.group(1), m.group(2), m.group(3), m.group(4)
    letters, version = _letters(action, scope)
    constraints: tuple[tuple[str, str], ...] = ()
    if query is not None:
        if version == 1:
            raise ScopeError(f"scope {scope!r}: query constraints need v2 permission letters (e.g. .rs?...)")
        try:
            pairs = parse_qsl(query, keep_blank_values=False, strict_parsing=True)
        except ValueError:
            raise ScopeError(f"scope {scope!r}: the query after '?' is not param=value[&param=value]") from None
        constraints = tuple(sorted(set(pairs)))
    return ScopeGrant(context, rtype, letters, constraints, version)  # type: ignore[arg-type]


def parse_scopes(scopes: str | Iterable[str]) -> ParsedScopes:
    """Parse a space-separated scope string (or an iterable of scopes). Malformed resource scopes raise
    ScopeError; unrecognised scopes are reported in ``unknown`` (a server ignores scopes it does not know)."""
    items = scopes.split() if isinstance(scopes, str) else list(scopes)
    grants: list[ScopeGrant] = []
    context: set[str] = set()
    unknown: list[str] = []
    for item in items:
        grant = parse_scope(item)
        if grant is not None:
            grants.append(grant)
        elif item in CONTEXT_SCOPES:
            context.add(item)
        else:
            unknown.append(item)
    return ParsedScopes(tuple(dict.fromkeys(grants)), frozenset(context), tuple(dict.fromkeys(unknown)))


def narrow(requested: str | Iterable[str], registered: str | Iterable[str]) -> ParsedScopes:
    """What a client gets: each requested grant intersected with each registered grant; context scopes only when
    registered too. A request can never widen the registration (scope escalation yields less, not more)."""
    want, allowed = parse_scopes(requested), parse_scopes(registered)
    out: list[ScopeGrant] = []
    for asked in want.grants:
        for granted in allowed.grants:
            both = asked.intersect(granted)
            if both is not None and both not in out:
                out.append(both)
    # Drop grants another granted one already contains (e.g. patient/Observation.r beside patient/*.rs).
    kept = [g for g in out if not any(o is not g and _contains(o, g) for o in out)]
    return ParsedScopes(tuple(kept), want.context & allowed.context, want.unknown)


def _contains(big: ScopeGrant, small: ScopeGrant) -> bool:
    return (
        big.context == small.context
        and big.resource_type in ("*", small.resource_type)
        and big.permissions >= small.permissions
        and set(big.constraints) <= set(small.constraints)
        and (big != small)
    )


def render_scopes(parsed: ParsedScopes) -> str:
    """The space-separated scope string of granted scopes (context scopes first, in a stable order)."""
    parts = sorted(parsed.context) + [g.to_scope() for g in parsed.grants]
    return " ".join(parts)


def access_for(interaction: Interaction | str, access: str | None = None) -> str:
    """The permission letters ``interaction`` needs; an operation names them itself (e.g. ``$everything``: "rs")."""
    action = Interaction(interaction)
    if action is Interaction.OPERATION:
        if not access or any(c not in _V2_ORDER for c in access):
            raise ValueError("an operation must name the permission letters it needs (a subset of 'cruds')")
        return access
    return access if access is not None else ACCESS[action]


def permitting_grants(
    grants: Sequence[ScopeGrant],
    interaction: Interaction | str,
    resource_type: str,
    *,
    access: str | None = None,
    contexts: Iterable[str] = ("patient", "user", "system"),
) -> tuple[ScopeGrant, ...]:
    """The grants that allow ``interaction`` on ``resource_type``, every needed letter from one grant (a v2 grant
    is a unit: ``.r`` plus ``?category=x.s`` does not make ``.rs`` without the constraint)."""
    letters = access_for(interaction, access)
    wanted = set(contexts)
    return tuple(g for g in grants if g.context in wanted and g.allows(letters, resource_type))


def permits(
    grants: Sequence[ScopeGrant],
    interaction: Interaction | str,
    resource_type: str,
    *,
    access: str | None = None,
) -> bool:
    """True when some grant allows ``interaction`` on ``resource_type`` (granular constraints and the patient
    compartment still have to be applied to the query: see ``app.auth.context.AuthContext.decide``)."""
    return bool(permitting_grants(grants, interaction, resource_type, access=access))
