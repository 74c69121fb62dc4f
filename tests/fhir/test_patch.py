"""JSON Patch on resources (app.fhir.patch)."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from app.fhir.errors import BadRequest, FhirError, UnprocessableEntity
from app.fhir.patch import apply_patch, parse_patch

PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {"versionId": "3"},
    "active": True,
    "name": [{"family": "Doe", "given": ["Jane"]}],
}


def fails(patch: Any, resource: dict[str, Any] | None = None) -> FhirError:
    with pytest.raises(FhirError) as info:
        apply_patch(resource or PATIENT, patch)
    return info.value


def test_patch_applies_and_leaves_the_input_alone() -> None:
    before = copy.deepcopy(PATIENT)
    result = apply_patch(
        PATIENT,
        [
            {"op": "test", "path": "/active", "value": True},
            {"op": "replace", "path": "/active", "value": False},
            {"op": "add", "path": "/name/0/given/-", "value": "Q"},
            {"op": "add", "path": "/gender", "value": "female"},
            {"op": "copy", "from": "/name/0", "path": "/name/-"},
            {"op": "remove", "path": "/meta"},
        ],
    )
    assert result["active"] is False and result["gender"] == "female"
    assert result["name"] == [{"family": "Doe", "given": ["Jane", "Q"]}] * 2
    assert "meta" not in result
    assert PATIENT == before


def test_patch_body_as_bytes() -> None:
    body = orjson.dumps([{"op": "replace", "path": "/active", "value": False}])
    assert apply_patch(PATIENT, body)["active"] is False


def test_failed_test_operation_is_unprocessable_and_names_the_operation() -> None:
    err = fails(
        [{"op": "replace", "path": "/active", "value": False}, {"op": "test", "path": "/active", "value": True}]
    )
    assert isinstance(err, UnprocessableEntity) and err.status == 422
    assert err.issues[0].expression == ("/1",) and err.issues[0].details_code == "patch-failed"


def test_operation_on_a_missing_path_is_unprocessable() -> None:
    err = fails([{"op": "remove", "path": "/birthDate"}])
    assert err.status == 422 and "/birthDate" in err.diagnostics


@pytest.mark.parametrize(
    "patch",
    [
        b"not json",
        b'{"op": "add"}',
        [],
        ["add"],
        [{"op": "delete", "path": "/active"}],
        [{"op": "add", "value": 1}],
        [{"op": "replace", "path": "/active"}],
        [{"op": "move", "path": "/x"}],
    ],
)
def test_malformed_patch_documents_are_bad_requests(patch: Any) -> None:
    err = fails(patch)
    assert isinstance(err, BadRequest) and err.status == 400
    assert err.issues[0].details_code == "invalid-patch"


def test_pointer_without_leading_slash_is_unprocessable_or_bad() -> None:
    err = fails([{"op": "add", "path": "gender", "value": "male"}])
    assert err.status in (400, 422)


@pytest.mark.parametrize(
    "op",
    [
        {"op": "replace", "path": "/id", "value": "p2"},
        {"op": "remove", "path": "/id"},
        {"op": "replace", "path": "/resourceType", "value": "Person"},
    ],
)
def test_changing_identity_is_unprocessable(op: dict[str, Any]) -> None:
    err = fails([op])
    assert isinstance(err, UnprocessableEntity)
    assert err.issues[0].details_code == "patch-changes-identity"


def test_result_is_revalidated() -> None:
    err = fails([{"op": "add", "path": "/active", "value": "yes"}, {"op": "add", "path": "/shoeSize", "value": 42}])
    assert isinstance(err, UnprocessableEntity) and err.status == 422
    assert sorted(e for i in err.issues for e in i.expression) == ["Patient.active", "Patient.shoeSize"]


def test_replacing_the_whole_document_is_checked_too() -> None:
    err = fails([{"op": "replace", "path": "", "value": {"resourceType": "Patient", "id": "p1", "active": 1}}])
    assert err.status == 422


def test_diagnostics_do_not_echo_values() -> None:
    err = fails([{"op": "test", "path": "/name/0/family", "value": "SECRET-NAME"}])
    assert b"SECRET" not in orjson.dumps(err.to_outcome())
    assert b"Doe" not in orjson.dumps(err.to_outcome())


def test_parse_patch_returns_the_operations() -> None:
    ops = parse_patch(b'[{"op": "remove", "path": "/a"}]')
    assert ops == [{"op": "remove", "path": "/a"}]
