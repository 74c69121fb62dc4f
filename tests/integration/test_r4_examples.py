"""The official R4 examples (npm hl7.fhir.r4.examples@4.0.1, 5,306 resources) load through the real server:
every one the R4B models can represent is accepted and reads back equal apart from ``meta``; the rest are refused
with an OperationOutcome that says why; nothing causes a server error."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path

import pytest
import requests
from fhir.resources.R4B import get_fhir_model_class

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _load_script(name: str):
    loader = importlib.machinery.SourceFileLoader(name, str(ROOT / "scripts" / name))
    spec = importlib.util.spec_from_loader(name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_official_r4_examples_load_and_read_back_equal(live_server: str) -> None:
    script = _load_script("load_examples")
    files = script.example_files(script.fetch_examples(ROOT / script.CACHE))
    assert len(files) == 5306
    summary = script.load(live_server, files, token=None, progress=False)
    print(
        f"\nR4 examples: {summary['total']} total, {summary['accepted']} accepted, {summary['refused']} refused\n"
        + "\n".join(f"  {count:5d}  {reason}" for reason, count in summary["reasons"])
    )
    assert summary["server_errors"] == []
    assert summary["mismatched"] == []
    assert summary["accepted"] + summary["refused"] == 5306
    # the R4B models represent nearly all of R4; refusals are the documented R4/R4B differences
    assert summary["accepted"] >= 5000
    for reason, _count in summary["reasons"]:
        assert reason.split()[0] in {"400", "404", "422"}, reason


def test_capability_statement_lists_only_types_the_models_can_represent(live_server: str) -> None:
    statement = requests.get(f"{live_server}/metadata", timeout=30).json()
    types = [r["type"] for r in statement["rest"][0]["resource"]]
    assert "Patient" in types and "Observation" in types
    for name in types:
        get_fhir_model_class(name)  # raises for a type R4B cannot represent
