"""The Patient compartment (http://hl7.org/fhir/CompartmentDefinition/patient, R4), from the vendored definition.

A resource is in Patient/x's compartment when any of the listed reference parameters of its type points at
Patient/x (and Patient/x itself is in its own compartment). Used to narrow searches for patient-scoped tokens.
"""

from __future__ import annotations

import functools
from pathlib import Path
from types import MappingProxyType
from typing import Any

from app.fhir.registry import DEFAULT_PROFILES_DIR, PATIENT_COMPARTMENT_FILE, load_json


@functools.cache
def _patient_compartment(profiles_dir: Path | None = None) -> MappingProxyType[str, tuple[str, ...]]:
    base = Path(profiles_dir) if profiles_dir is not None else DEFAULT_PROFILES_DIR
    definition: dict[str, Any] = load_json(base / PATIENT_COMPARTMENT_FILE)
    return MappingProxyType(
        {r["code"]: tuple(r.get("param", ())) for r in definition.get("resource", ()) if r.get("param")}
    )


def patient_compartment_params(resource_type: str, *, profiles_dir: Path | None = None) -> tuple[str, ...]:
    """Search parameter codes linking a ``resource_type`` resource to a Patient (empty: not in the compartment).

    ``Patient`` itself lists ``link`` (a Patient linked to another); the patient's own resource is matched by id.
    """
    return _patient_compartment(profiles_dir).get(resource_type, ())


def patient_compartment_types(*, profiles_dir: Path | None = None) -> frozenset[str]:
    """The resource types that can be in a Patient compartment."""
    return frozenset(_patient_compartment(profiles_dir))
