"""Golden files: each tests/hl7v2/golden/<name>.hl7 must translate to exactly <name>.bundle.json.

Regenerate with ``scripts/update_golden.py`` after an intended mapping change and review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from app.hl7v2.messages import REGISTRY
from app.hl7v2.parser import parse
from tests.hl7v2.goldens import expected_path, golden_inputs, render

INPUTS = golden_inputs()


@pytest.mark.parametrize("hl7", INPUTS, ids=lambda p: p.stem)
def test_translation_matches_golden_bundle(hl7: Path) -> None:
    expected = expected_path(hl7)
    assert expected.exists(), f"missing {expected.name}: run scripts/update_golden.py"
    assert render(hl7) == json.loads(expected.read_text(encoding="utf-8"))


@pytest.mark.parametrize("hl7", INPUTS, ids=lambda p: p.stem)
def test_every_produced_resource_is_a_valid_r4b_resource(hl7: Path) -> None:
    for entry in render(hl7)["entry"]:
        resource = entry["resource"]
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def _references(node: Any) -> list[str]:
    if isinstance(node, dict):
        out = [node["reference"]] if isinstance(node.get("reference"), str) else []
        for v in node.values():
            out += _references(v)
        return out
    if isinstance(node, list):
        return [r for item in node for r in _references(item)]
    return []


@pytest.mark.parametrize("hl7", INPUTS, ids=lambda p: p.stem)
def test_every_intra_bundle_reference_resolves_to_an_entry(hl7: Path) -> None:
    bundle = render(hl7)
    full_urls = {e["fullUrl"] for e in bundle["entry"]}
    assert len(full_urls) == len(bundle["entry"]), "duplicate fullUrl"
    for ref in _references([e["resource"] for e in bundle["entry"]]):
        if ref.startswith("urn:uuid:"):
            assert ref in full_urls


@pytest.mark.parametrize("hl7", INPUTS, ids=lambda p: p.stem)
def test_every_entry_is_a_conditional_write_or_the_provenance(hl7: Path) -> None:
    for entry in render(hl7)["entry"]:
        req = entry["request"]
        if entry["resource"]["resourceType"] == "Provenance":
            assert req == {"method": "POST", "url": "Provenance"}
        elif req["method"] == "PUT":
            assert req["url"].startswith(entry["resource"]["resourceType"] + "?identifier=")
        else:
            assert req["method"] == "POST" and req["ifNoneExist"].startswith("identifier=")


def test_golden_set_covers_every_message_type_in_the_brief() -> None:
    sent = set()
    for hl7 in INPUTS:
        msh = parse(hl7.read_bytes()).msh
        sent.add((msh[9][1].c(1), msh[9][1].c(2)))
    brief = {("ADT", t) for t in ("A01", "A02", "A03", "A04", "A05", "A06", "A07", "A08", "A11", "A13", "A28", "A31")}
    brief |= {("ADT", "A40"), ("ORU", "R01"), ("ORM", "O01"), ("OML", "O21"), ("DFT", "P03"), ("BAR", "P01")}
    brief |= {("SIU", t) for t in ("S12", "S13", "S14", "S15")} | {("VXU", "V04"), ("MDM", "T02")}
    assert brief <= sent
    assert brief <= set(REGISTRY)


def test_golden_set_exercises_every_mapped_segment() -> None:
    seen = {seg.name for hl7 in INPUTS for seg in parse(hl7.read_bytes()).segments}
    mapped = {"MSH", "EVN", "PID", "PD1", "NK1", "PV1", "PV2", "IN1", "IN2", "GT1", "AL1", "DG1", "PR1", "OBR"}
    mapped |= {"OBX", "NTE", "ORC", "SCH", "AIS", "AIG", "AIL", "AIP", "FT1", "RXA", "RXR", "TXA", "MRG", "SPM"}
    assert mapped <= seen
