"""JSON Patch (RFC 6902) on a resource, for the FHIR patch interaction (http://hl7.org/fhir/R4/http.html#patch).

- a patch document that is not a JSON array of valid operations -> 400 BadRequest (``invalid-patch``);
- an operation that cannot be applied (failed ``test``, missing path) -> 422 UnprocessableEntity
  (``patch-failed``), with the failing operation as ``expression`` (``/2`` = the third operation);
- a result that changes ``resourceType`` or ``id`` -> 422 (``patch-changes-identity``);
- a result that is not a valid resource -> 422 carrying the validation issues (``invalid-resource``).

Diagnostics name operations and paths, never the values inside the resource.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import jsonpatch
import jsonpointer

from app.fhir.errors import BadRequest, InvalidResource, UnprocessableEntity
from app.fhir.model import decode_json, parse_resource

JSON_PATCH_MEDIA_TYPE = "application/json-patch+json"
_OPS = frozenset({"add", "remove", "replace", "move", "copy", "test"})


def parse_patch(body: bytes | str | Sequence[Any]) -> list[dict[str, Any]]:
    """Decode and check the shape of a JSON Patch document (every op an object with a known ``op`` and a
    ``path``; ``from`` for move/copy; ``value`` for add/replace/test)."""
    if isinstance(body, bytes | str):
        try:
            ops = decode_json(body)
        except InvalidResource as exc:
            raise BadRequest(exc.diagnostics.replace("body", "patch body", 1), details_code="invalid-patch") from None
    else:
        ops = list(body)
    if not isinstance(ops, list) or not ops:
        raise BadRequest("a JSON Patch document is a non-empty JSON array of operations", details_code="invalid-patch")
    for i, op in enumerate(ops):
        where = [f"/{i}"]
        if not isinstance(op, dict):
            raise BadRequest(f"operation {i} is not a JSON object", expression=where, details_code="invalid-patch")
        name = op.get("op")
        if name not in _OPS:
            raise BadRequest(
                f"operation {i}: 'op' must be one of {', '.join(sorted(_OPS))}",
                expression=where,
                details_code="invalid-patch",
            )
        required = ["path"] + (["from"] if name in ("move", "copy") else [])
        for member in required:
            if not isinstance(op.get(member), str):
                raise BadRequest(
                    f"operation {i} ({name}): '{member}' is required", expression=where, details_code="invalid-patch"
                )
        if name in ("add", "replace", "test") and "value" not in op:
            raise BadRequest(
                f"operation {i} ({name}): 'value' is required", expression=where, details_code="invalid-patch"
            )
    return ops


def apply_patch(
    resource: dict[str, Any], patch: bytes | str | Sequence[Any], *, validate: bool = True
) -> dict[str, Any]:
    """Apply ``patch`` to a copy of ``resource`` and return the validated result (``resource`` is not changed)."""
    ops = parse_patch(patch)
    doc: Any = copy.deepcopy(resource)
    for i, op in enumerate(ops):
        try:
            doc = jsonpatch.JsonPatch([op]).apply(doc, in_place=True)
        except jsonpatch.JsonPatchTestFailed:
            raise UnprocessableEntity(
                f"patch operation {i}: test failed at {op['path']}",
                expression=[f"/{i}"],
                details_code="patch-failed",
            ) from None
        except jsonpatch.InvalidJsonPatch as exc:
            raise BadRequest(
                f"patch operation {i}: {exc}", expression=[f"/{i}"], details_code="invalid-patch"
            ) from None
        except (jsonpatch.JsonPatchConflict, jsonpointer.JsonPointerException):
            raise UnprocessableEntity(
                f"patch operation {i} ({op['op']}) cannot be applied at {op['path']}: no such location",
                expression=[f"/{i}"],
                details_code="patch-failed",
            ) from None
    if not isinstance(doc, dict):
        raise UnprocessableEntity("the patched document is not a resource", details_code="patch-failed")
    for member in ("resourceType", "id"):
        if doc.get(member) != resource.get(member):
            raise UnprocessableEntity(
                f"a patch may not change {member}", expression=[member], details_code="patch-changes-identity"
            )
    if validate:
        try:
            parse_resource(doc, expected_type=str(resource.get("resourceType")))
        except InvalidResource as exc:
            raise UnprocessableEntity(
                f"the patched resource is not valid: {exc.diagnostics}",
                issues=exc.issues,
                details_code="invalid-resource",
            ) from None
    return doc
