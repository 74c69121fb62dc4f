"""Parsing and validating R4 resources with the fhir.resources R4B models, plus reference helpers.

The wire speaks R4 (4.0.1); the models are R4B (4.3.0), which can represent every R4 type except the ones R4B
removed (the MedicinalProduct* family, *EvidenceSynthesis, Substance* information types). ``parse_resource``
validates with the model but returns the client's own dict: re-serialising through the model would reorder and
rewrite the JSON, and we store and serve what the client sent.

The pydantic models are lenient where FHIR JSON is strict (``"active": "yes"`` passes, ``null`` passes), so a
second, model-guided walk enforces the JSON rules of http://hl7.org/fhir/R4/json.html: JSON types of primitives,
no ``null`` outside primitive-array alignment, no empty objects or arrays.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from decimal import Decimal
from functools import cache
from typing import Any

import orjson
import pydantic
from fhir.resources.R4B import get_fhir_model_class

from app.fhir.errors import InvalidResource, Issue, UnprocessableEntity

# Every concrete resource type of FHIR R4 4.0.1 (http://hl7.org/fhir/R4/resourcelist.html).
R4_RESOURCE_TYPES: frozenset[str] = frozenset(
    """
    Account ActivityDefinition AdverseEvent AllergyIntolerance Appointment AppointmentResponse AuditEvent Basic Binary
    BiologicallyDerivedProduct BodyStructure Bundle CapabilityStatement CarePlan CareTeam CatalogEntry ChargeItem
    ChargeItemDefinition Claim ClaimResponse ClinicalImpression CodeSystem Communication CommunicationRequest
    CompartmentDefinition Composition ConceptMap Condition Consent Contract Coverage CoverageEligibilityRequest
    CoverageEligibilityResponse DetectedIssue Device DeviceDefinition DeviceMetric DeviceRequest DeviceUseStatement
    DiagnosticReport DocumentManifest DocumentReference EffectEvidenceSynthesis Encounter Endpoint EnrollmentRequest
    EnrollmentResponse EpisodeOfCare EventDefinition Evidence EvidenceVariable ExampleScenario ExplanationOfBenefit
    FamilyMemberHistory Flag Goal GraphDefinition Group GuidanceResponse HealthcareService ImagingStudy Immunization
    ImmunizationEvaluation ImmunizationRecommendation ImplementationGuide InsurancePlan Invoice Library Linkage List
    Location Measure MeasureReport Media Medication MedicationAdministration MedicationDispense MedicationKnowledge
    MedicationRequest MedicationStatement MedicinalProduct MedicinalProductAuthorization
    MedicinalProductContraindication MedicinalProductIndication MedicinalProductIngredient
    MedicinalProductInteraction MedicinalProductManufactured MedicinalProductPackaged MedicinalProductPharmaceutical
    MedicinalProductUndesirableEffect MessageDefinition MessageHeader MolecularSequence NamingSystem NutritionOrder
    Observation ObservationDefinition OperationDefinition OperationOutcome Organization OrganizationAffiliation
    Parameters Patient PaymentNotice PaymentReconciliation Person PlanDefinition Practitioner PractitionerRole
    Procedure Provenance Questionnaire QuestionnaireResponse RelatedPerson RequestGroup ResearchDefinition
    ResearchElementDefinition ResearchStudy ResearchSubject RiskAssessment RiskEvidenceSynthesis Schedule
    SearchParameter ServiceRequest Slot Specimen SpecimenDefinition StructureDefinition StructureMap Subscription
    Substance SubstanceNucleicAcid SubstancePolymer SubstanceProtein SubstanceReferenceInformation
    SubstanceSourceMaterial SubstanceSpecification SupplyDelivery SupplyRequest Task TerminologyCapabilities
    TestReport TestScript ValueSet VerificationResult VisionPrescription
    """.split()
)

# R4 types whose structure R4B redefined (the evidence-based-medicine module): R4 content of these types may
# fail the R4B model although it is valid R4, so a failure is reported as 422 (cannot represent), not 400.
R4B_RESHAPED_TYPES: frozenset[str] = frozenset({"Evidence", "EvidenceVariable"})

ID_RE = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


def model_class(resource_type: str) -> type[pydantic.BaseModel] | None:
    """The R4B model class for a resource or datatype name, None if R4B has none."""
    try:
        return get_fhir_model_class(resource_type)
    except (ValueError, KeyError):
        return None


@cache
def resource_types() -> frozenset[str]:
    """The R4 resource types this server can represent (R4 types that also exist as R4B models).

    Checks that R4B declares the model type instead of loading ~130 model modules (seconds at start-up);
    tests pin the agreement with ``get_fhir_model_class``.
    """
    from fhir.resources.R4B import fhirtypes

    return frozenset(t for t in R4_RESOURCE_TYPES if hasattr(fhirtypes, t + "Type"))


def is_valid_id(value: str) -> bool:
    return bool(ID_RE.match(value))


# ---------------------------------------------------------------- pydantic errors -> OperationOutcome issues

# pydantic / fhir_core error type -> OperationOutcome issue code (http://hl7.org/fhir/valueset-issue-type.html).
# Anything not listed is reported as "invalid".
ISSUE_CODE_BY_ERROR_TYPE: dict[str, str] = {
    "missing": "required",
    "model_field_validation.missing": "required",
    "extra_forbidden": "structure",
    "list_type": "structure",
    "dict_type": "structure",
    "model_type": "structure",
    "model_attributes_type": "structure",
    "fhir-validation-wrong-resource-type": "structure",
    "json-null": "structure",
    "json-empty": "structure",
    "json-type": "value",
    "code-invalid": "code-invalid",
    "string_type": "value",
    "string_pattern_mismatch": "value",
    "string_too_short": "value",
    "string_too_long": "value",
    "bool_type": "value",
    "bool_parsing": "value",
    "int_type": "value",
    "int_parsing": "value",
    "int_from_float": "value",
    "float_type": "value",
    "float_parsing": "value",
    "decimal_type": "value",
    "decimal_parsing": "value",
    "finite_number": "value",
    "greater_than": "value",
    "greater_than_equal": "value",
    "less_than": "value",
    "less_than_equal": "value",
    "date_type": "value",
    "date_parsing": "value",
    "date_from_datetime_parsing": "value",
    "date_from_datetime_inexact": "value",
    "datetime_type": "value",
    "datetime_parsing": "value",
    "datetime_from_date_parsing": "value",
    "time_type": "value",
    "time_parsing": "value",
    "url_type": "value",
    "url_parsing": "value",
    "value_error": "value",
    "assertion_error": "invariant",
}

_MESSAGES: dict[str, str] = {
    "missing": "required element is missing",
    "model_field_validation.missing": "required element is missing",
    "extra_forbidden": "unknown element",
    "list_type": "must be a JSON array",
    "dict_type": "must be a JSON object",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
}


def fhirpath(resource_type: str, loc: tuple[int | str, ...]) -> str:
    """``('name', 0, 'given', 0)`` -> ``Patient.name[0].given[0]``; ``_birthDate`` is the element ``birthDate``."""
    out = resource_type
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "resource_type":
            out += ".resourceType"
        else:
            name = part[1:] if part.startswith("_") and len(part) > 1 else part
            out += "." + name
    return out


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float | Decimal):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _issue_from_error(resource_type: str, err: Any) -> Issue:
    etype = str(err.get("type", ""))
    loc = tuple(p for p in err.get("loc", ()) if isinstance(p, int) or _is_element_name(p))
    expression = fhirpath(resource_type, loc)
    message = _MESSAGES.get(etype) or str(err.get("msg", "invalid value"))
    message = message.removeprefix("Value error, ").strip()
    if etype in {"string_type", "bool_type", "int_type", "float_type", "decimal_type", "json-type"} and "input" in err:
        message = f"{message} (got {_json_kind(err['input'])})"
    code = ISSUE_CODE_BY_ERROR_TYPE.get(etype, "invalid")
    return Issue(
        code=code, diagnostics=f"{expression}: {message}", expression=(expression,), details_code="invalid-resource"
    )


def _is_element_name(part: Any) -> bool:
    # pydantic puts union/validator tags into ``loc`` (e.g. "function-after[...]"); those are not elements.
    return isinstance(part, str) and re.fullmatch(r"_?[A-Za-z][A-Za-z0-9_]*", part) is not None


# ---------------------------------------------------------------- JSON rules the models do not enforce

_KIND_STRING, _KIND_BOOL, _KIND_INT, _KIND_DECIMAL = "string", "boolean", "integer", "decimal"


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(base type, is_list) of a field annotation: strips Optional, Annotated and List."""
    is_list = False
    ann = annotation
    for _ in range(6):
        origin = typing.get_origin(ann)
        if origin is typing.Annotated:
            ann = typing.get_args(ann)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(ann) if a is not type(None)]
            if len(args) != 1:
                return ann, is_list
            ann = args[0]
        elif origin in (list, typing.List):  # noqa: UP006 - the models spell it typing.List
            is_list = True
            ann = typing.get_args(ann)[0]
        else:
            break
    return ann, is_list


@cache
def _field_table(cls: type[pydantic.BaseModel]) -> dict[str, tuple[str | type | None, bool]]:
    """alias -> (kind or model class or None for 'any resource', is_list) for the elements of ``cls``."""
    table: dict[str, tuple[str | type | None, bool]] = {}
    for name, f in cls.model_fields.items():
        alias = f.alias or name
        if name == "fhir_comments":
            continue
        base, is_list = _unwrap(f.annotation)
        kind: str | type | None
        if base is bool:
            kind = _KIND_BOOL
        elif base is int:
            kind = _KIND_INT
        elif base is Decimal or base is float:
            kind = _KIND_DECIMAL
        elif base in (str, date, datetime, time) or (isinstance(base, type) and issubclass(base, str)):
            kind = _KIND_STRING
        elif hasattr(base, "get_model_klass"):
            if getattr(base, "__name__", "") == "ResourceType":
                kind = None  # a nested resource: the model follows its own resourceType
            else:
                try:
                    kind = base.get_model_klass()
                except Exception:  # noqa: BLE001 - unknown helper types are simply not walked
                    continue
        else:
            continue
        table[alias] = (kind, is_list)
    return table


# Model code lists that are not R4 required bindings. The models take ``enum_values`` from the element's short
# text, so each list was checked against the R4 StructureDefinitions and value sets: every other list on an R4
# element is an R4 required binding whose R4 codes it contains.
_NOT_REQUIRED_BINDINGS: frozenset[tuple[str, str]] = frozenset(
    {
        ("CapabilityStatement", "format"),  # "xml | json | ttl | mime type": any MIME type
        ("Expression", "language"),  # extensible in R4
    }
)


@cache
def _required_codes(cls: type[pydantic.BaseModel]) -> dict[str, frozenset[str]]:
    """alias -> the codes of its required binding, where the model lists them all (a trailing ``+`` in
    ``enum_values`` marks an incomplete list, which is not checked)."""
    out: dict[str, frozenset[str]] = {}
    for name, f in cls.model_fields.items():
        extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
        codes = extra.get("enum_values")
        if (cls.__name__, f.alias or name) in _NOT_REQUIRED_BINDINGS:
            continue
        if isinstance(codes, list) and codes and "+" not in codes:
            out[f.alias or name] = frozenset(str(c) for c in codes)
    return out


def _code_problems(item: Any, codes: frozenset[str], loc: tuple[Any, ...]) -> Iterator[dict]:
    if isinstance(item, str) and item not in codes:
        shown = sorted(codes)
        listing = ", ".join(shown[:12]) + (", ..." if len(shown) > 12 else "")
        yield {"type": "code-invalid", "loc": loc, "msg": f"not a code of the required value set ({listing})"}


def _json_problems(value: dict[str, Any], cls: type[pydantic.BaseModel], loc: tuple[Any, ...]) -> Iterator[dict]:
    table = _field_table(cls)
    codes = _required_codes(cls)
    if not value:
        yield {"type": "json-empty", "loc": loc, "msg": "empty objects are not allowed"}
        return
    for key, item in value.items():
        if key in ("resourceType", "fhir_comments"):
            continue
        here = (*loc, key)
        if item is None:
            yield {"type": "json-null", "loc": here, "msg": "null is not allowed (omit the element instead)"}
            continue
        spec = table.get(key)
        if spec is None:
            continue  # unknown keys are reported by the model
        kind, is_list = spec
        if is_list:
            if not isinstance(item, list):
                continue  # the model reports list_type
            if not item:
                yield {"type": "json-empty", "loc": here, "msg": "empty arrays are not allowed"}
                continue
            sibling = key[1:] if key.startswith("_") else "_" + key
            aligned = isinstance(value.get(sibling), list)
            for i, elem in enumerate(item):
                if elem is None:
                    if not aligned:
                        yield {"type": "json-null", "loc": (*here, i), "msg": "null is not allowed here"}
                    continue
                yield from _check_value(elem, kind, (*here, i))
                if key in codes:
                    yield from _code_problems(elem, codes[key], (*here, i))
        elif not isinstance(item, list):
            yield from _check_value(item, kind, here)
            if key in codes:
                yield from _code_problems(item, codes[key], here)


def _check_value(item: Any, kind: str | type | None, loc: tuple[Any, ...]) -> Iterator[dict]:
    if kind is None:
        if isinstance(item, dict):
            rtype = item.get("resourceType")
            nested = model_class(rtype) if isinstance(rtype, str) and rtype in resource_types() else None
            if nested is None:
                yield {
                    "type": "json-type",
                    "loc": (*loc, "resourceType"),
                    "msg": f"{rtype!r} is not a resource type this server can represent",
                }
            else:
                yield from _json_problems(item, nested, loc)
        return
    if isinstance(kind, type):
        if isinstance(item, dict):
            yield from _json_problems(item, kind, loc)
        return
    ok = {
        _KIND_BOOL: isinstance(item, bool),
        _KIND_INT: isinstance(item, int) and not isinstance(item, bool),
        _KIND_DECIMAL: isinstance(item, int | float) and not isinstance(item, bool),
        _KIND_STRING: isinstance(item, str),
    }[kind]
    if not ok:
        yield {"type": "json-type", "loc": loc, "msg": f"must be a JSON {_JSON_WORD[kind]}", "input": item}


_JSON_WORD = {_KIND_BOOL: "boolean", _KIND_INT: "integer", _KIND_DECIMAL: "number", _KIND_STRING: "string"}


# ---------------------------------------------------------------- parse_resource


def decode_json(body: bytes | str) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidResource(f"body is not valid JSON: {exc}", details_code="invalid-json") from None


def parse_resource(body: bytes | str | dict[str, Any], *, expected_type: str | None = None) -> dict[str, Any]:
    """Decode (if needed) and validate one R4 resource; return the client's own dict, unchanged.

    Raises InvalidResource (400) for bad JSON, a missing/unknown/mismatched resourceType, or content that breaks
    the R4 structure (one issue per problem, each with a FHIRPath ``expression``), and UnprocessableEntity (422)
    for an R4 type that the R4B models cannot represent.
    """
    resource = body if isinstance(body, dict) else decode_json(body)
    if not isinstance(resource, dict):
        raise InvalidResource(f"a resource must be a JSON object, got {_json_kind(resource)}")
    rtype = resource.get("resourceType")
    if not isinstance(rtype, str) or not rtype:
        raise InvalidResource(
            "resourceType is missing", expression=["resourceType"], issue_code="required", details_code="no-type"
        )
    if rtype not in R4_RESOURCE_TYPES:
        raise InvalidResource(
            f"resourceType {rtype!r} is not a FHIR R4 resource type",
            expression=["resourceType"],
            details_code="unknown-type",
        )
    if expected_type is not None and rtype != expected_type:
        raise InvalidResource(
            f"resourceType {rtype!r} does not match the expected type {expected_type!r}",
            expression=["resourceType"],
            issue_code="invalid",
            details_code="type-mismatch",
        )
    cls = model_class(rtype) if rtype in resource_types() else None
    if cls is None:
        raise UnprocessableEntity(
            f"resourceType {rtype!r} is an R4 type that this server cannot represent (it was removed in R4B)",
            expression=["resourceType"],
            issue_code="not-supported",
            details_code="unsupported-type",
        )
    errors: list[dict[str, Any]] = []
    try:
        cls.model_validate(resource)
    except pydantic.ValidationError as exc:
        errors.extend(_without_model_gaps(resource, exc.errors(include_url=False)))
    except (KeyError, TypeError, ValueError) as exc:
        # fhir_core raises a bare KeyError ('R4.FooType') for a nested resource of an unknown type; the JSON walk
        # below locates it, so this generic issue is only kept when the walk finds nothing.
        errors.append({"type": "value_error", "loc": (), "msg": f"cannot be validated ({type(exc).__name__})"})
    json_errors = list(_json_problems(resource, cls, ()))
    if json_errors and errors and errors[-1].get("msg", "").startswith("cannot be validated"):
        errors.pop()
    errors.extend(json_errors)
    if errors:
        issues = _dedupe(_issue_from_error(rtype, e) for e in errors)
        first = issues[0].diagnostics
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        if rtype in R4B_RESHAPED_TYPES:
            raise UnprocessableEntity(
                f"invalid {rtype}: {first}{more}; {rtype} changed shape between R4 and R4B, and this server "
                "validates with the R4B model",
                issues=issues,
                details_code="unsupported-type",
            )
        raise InvalidResource(f"invalid {rtype}: {first}{more}", issues=issues)
    return resource


def _resolve(value: Any, loc: tuple[Any, ...]) -> Any:
    for part in loc:
        if isinstance(part, int) and isinstance(value, list) and -len(value) <= part < len(value):
            value = value[part]
        elif isinstance(part, str) and isinstance(value, dict) and part in value:
            value = value[part]
        else:
            return None
    return value


def _without_model_gaps(resource: dict[str, Any], errors: list[Any]) -> Iterator[Any]:
    """Drop the model's false alarms, checking the content another way.

    fhir.resources' Extension has no ``_valueString``-style primitive extension fields, so valid R4 such as a
    translation on an extension's value (used throughout the official v2 code systems) is "extra". Such an
    element is validated as the Element it is instead.
    """
    element_cls = model_class("Element")
    for err in errors:
        loc = tuple(err.get("loc", ()))
        key = loc[-1] if loc else None
        if (
            err.get("type") == "extra_forbidden"
            and isinstance(key, str)
            and key.startswith("_value")
            and element_cls is not None
        ):
            parent = _resolve(resource, loc[:-1])
            extension_fields = _field_table(model_class("Extension"))  # type: ignore[arg-type]
            if isinstance(parent, dict) and "url" in parent and key[1:] in extension_fields:
                value = parent[key]
                try:
                    element_cls.model_validate(value)
                except pydantic.ValidationError as exc:
                    for inner in exc.errors(include_url=False):
                        yield {**inner, "loc": (*loc, *inner.get("loc", ()))}
                if isinstance(value, dict):
                    yield from _json_problems(value, element_cls, loc)
                continue
        yield err


def _dedupe(issues: Iterator[Issue]) -> list[Issue]:
    """One issue per element: the model and the JSON walk often flag the same element."""
    seen: set[tuple[str, ...]] = set()
    out: list[Issue] = []
    for issue in issues:
        key = issue.expression
        if key not in seen:
            seen.add(key)
            out.append(issue)
    return out


# ---------------------------------------------------------------- references

_REF_RE = re.compile(
    r"^(?:(?P<base>[A-Za-z][A-Za-z0-9+.\-]*://[^?#]*?)/)?"
    r"(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/(?P<version>[A-Za-z0-9\-.]{1,64}))?/?$"
)


@dataclass(frozen=True)
class ReferenceParts:
    """A literal resource reference taken apart: ``[base/]Type/id[/_history/version]``."""

    resource_type: str
    id: str
    version: str | None = None
    base: str | None = None  # the absolute service base, None for a relative reference

    @property
    def relative(self) -> str:
        return f"{self.resource_type}/{self.id}"


def split_reference(reference: str, *, known_types: frozenset[str] | None = None) -> ReferenceParts | None:
    """``Patient/1/_history/2`` -> ReferenceParts('Patient', '1', '2'); absolute URLs keep their base.

    Returns None for anything that is not a literal resource reference (``#contained``, ``urn:uuid:...``,
    canonical URLs, or a type not in ``known_types`` -- by default the R4 resource types).
    """
    m = _REF_RE.match(reference.strip())
    if not m:
        return None
    rtype = m.group("type")
    if rtype not in (known_types if known_types is not None else R4_RESOURCE_TYPES):
        return None
    return ReferenceParts(rtype, m.group("id"), m.group("version"), m.group("base"))


def local_reference(reference: str, base_url: str) -> str:
    """An absolute reference into our own ``base_url`` made relative (``https://x/fhir/Patient/1`` -> ``Patient/1``)."""
    base = base_url.rstrip("/") + "/"
    if base_url and reference.startswith(base):
        return reference[len(base) :]
    return reference
