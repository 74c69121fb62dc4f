"""Extended operations served by ``FhirRouter`` (registered by ``(resource type or None, name)``).

``ConceptMap/$translate`` (http://hl7.org/fhir/R4/conceptmap-operation-translate.html) translates with the
ConceptMaps stored on this server first, then the vendored ones in ``terminology/`` (site overrides, the
v2 -> FHIR maps, the official maps); ``ConceptMap/{id}/$translate`` uses that one map.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import orjson

from app.fhir import model as fhir_model
from app.fhir import search as fhir_search
from app.fhir import terminology as fhir_terminology
from app.fhir.errors import BadRequest, NotFound
from app.fhir.store import StoreSession, iter_pages
from app.fhir.terminology import ConceptMapIndex, Match, Terminology, TranslateRequest

if TYPE_CHECKING:
    from app.services.rest import FhirRequest, FhirResponse, FhirRouter, Operation

TRANSLATE_DEFINITION = "http://hl7.org/fhir/OperationDefinition/ConceptMap-translate"
_HTTP_PARAMS = frozenset({"_format", "_pretty"})


def _parameters(req: FhirRequest) -> TranslateRequest:
    if req.method == "GET":
        return TranslateRequest.from_query({k: v for k, v in req.query.items() if k not in _HTTP_PARAMS})
    body: Any = req.resource
    if body is None:
        if not req.body or not req.body.strip():
            # POST without a body: the parameters may still be in the URL
            return TranslateRequest.from_query({k: v for k, v in req.query.items() if k not in _HTTP_PARAMS})
        try:
            body = orjson.loads(req.body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise BadRequest("$translate: POST a Parameters resource")
    return TranslateRequest.from_parameters(body)


def _stored_maps(router: FhirRouter, s: StoreSession, criteria: dict[str, list[str]]) -> list[ConceptMapIndex]:
    query = fhir_search.parse_search(
        ("ConceptMap",),
        {**criteria, "_count": [str(router.max_count)]},
        router.registry,
        default_count=router.max_count,
        max_count=router.max_count,
    )
    out = []
    for stored in iter_pages(s, query):
        resource = stored.as_dict()
        out.append(ConceptMapIndex(resource, stored.reference))
    return out


def translate_operation(terminology: Terminology | Callable[[], Terminology] | None = None) -> Operation:
    """The ``$translate`` Operation over ``terminology`` (default: the repository's ``terminology/``)."""
    from app.services.rest import FhirResponse, Operation

    def term() -> Terminology:
        if isinstance(terminology, Terminology):
            return terminology
        return terminology() if terminology is not None else fhir_terminology.load()

    def handler(
        router: FhirRouter, req: FhirRequest, rtype: str | None, rid: str | None, session: StoreSession | None
    ) -> FhirResponse:
        params = _parameters(req)
        params.check()
        vocab = term()
        only: list[ConceptMapIndex] | None = None
        stored: list[ConceptMapIndex] = []
        with router._session(session, write=False) as s:
            if rid is not None:
                only = [_instance_map(s, vocab, rid)]
            elif params.concept_map is not None:
                fhir_model.parse_resource(dict(params.concept_map), expected_type="ConceptMap")
                only = [ConceptMapIndex(params.concept_map, "conceptMap")]
            elif params.url:
                only = _stored_maps(router, s, {"url": [params.url]})
                if not only:
                    named = vocab.concept_map(url=params.url)
                    if named is None:
                        raise NotFound(f"No ConceptMap with url {params.url}", details_code="unknown-concept-map")
                    only = [named]
            else:
                systems = {c.get("system") for c in params.codings}
                if None in systems:
                    raise BadRequest("$translate needs the code's system unless a ConceptMap (url or id) is given")
                side = "target-system" if params.reverse else "source-system"
                for system in sorted(s for s in systems if s):
                    stored += _stored_maps(router, s, {side: [system]})
        matches: list[Match] = []
        for coding in params.codings:
            matches += vocab.translate(
                coding["code"],
                coding.get("system"),
                source=params.source,
                target=params.target,
                target_system=params.target_system,
                reverse=params.reverse,
                extra=stored,
                only=only,
            )
        return FhirResponse(200, {}, fhir_terminology.translate_result(_unique(matches)))

    return Operation("translate", handler, TRANSLATE_DEFINITION, type_level=True, instance_level=True)


def _instance_map(s: StoreSession, vocab: Terminology, rid: str) -> ConceptMapIndex:
    """The stored ConceptMap ``rid``, else the vendored one with that id (vendored maps are not stored resources)."""
    try:
        stored = s.read("ConceptMap", rid)
    except NotFound:
        named = vocab.concept_map(id=rid)
        if named is None:
            raise
        return named
    return ConceptMapIndex(stored.as_dict(), stored.reference)


def _unique(matches: list[Match]) -> list[Match]:
    seen: set[tuple[Any, ...]] = set()
    out = []
    for m in matches:
        key = (m.equivalence, tuple(sorted(m.concept.items())), m.source)
        if key not in seen:
            seen.add(key)
            out.append(m)
    return out


def default_operations(
    terminology: Terminology | Callable[[], Terminology] | None = None,
) -> Mapping[tuple[str | None, str], Operation]:
    return {("ConceptMap", "translate"): translate_operation(terminology)}


__all__ = ["TRANSLATE_DEFINITION", "default_operations", "translate_operation"]
