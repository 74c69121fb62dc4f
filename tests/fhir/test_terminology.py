"""app.fhir.terminology: the vendored files, translation precedence and $translate parameter handling (pure)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from app.fhir import model
from app.fhir import terminology as t
from app.fhir.errors import BadRequest

REPO = Path(__file__).resolve().parents[2]
V2 = "http://terminology.hl7.org/CodeSystem/v2-"
GENDER = "http://hl7.org/fhir/administrative-gender"
VENDORED_TABLES = (
    "0001 0002 0003 0004 0007 0008 0009 0017 0023 0038 0052 0062 0063 0069 0074 0076 0078 0085 0092 0103 0104 0116 "
    "0119 0123 0127 0128 0131 0155 0162 0163 0190 0200 0201 0202 0203 0207 0211 0217 0270 0271 0276 0277 0278 0292 "
    "0322 0357 0396 0443 0487 0488"
).split()


def cmap(
    source: str, target: str, elements: list[tuple[str, str | None, str]], *, url: str = "urn:test:cm", **extra: Any
) -> dict[str, Any]:
    return {
        "resourceType": "ConceptMap",
        "url": url,
        "status": "active",
        "group": [
            {
                "source": source,
                "target": target,
                "element": [
                    {"code": c, "target": [{"equivalence": eq, **({"code": tc} if tc else {})}]}
                    for c, tc, eq in elements
                ],
            }
        ],
        **extra,
    }


def write_dir(tmp_path: Path, **files: list[dict[str, Any]]) -> Path:
    for name, resources in files.items():
        bundle = {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": r} for r in resources]}
        (tmp_path / f"{name.replace('_', '-')}.json").write_text(json.dumps(bundle))
    return tmp_path


# ---------------------------------------------------------------- the vendored files


def test_every_listed_v2_table_is_vendored_with_its_codes_and_displays() -> None:
    term = t.load()
    for table in VENDORED_TABLES:
        assert term.has_system(V2 + table), table
    assert t.lookup(V2 + "0001", "F") == "Female"
    assert t.has_code(V2 + "0203", "MR")
    assert not t.has_code(V2 + "0001", "female")
    assert t.lookup("http://unknown.example", "F") is None


def test_every_vendored_and_generated_concept_map_is_a_valid_r4_resource() -> None:
    for name in ("conceptmaps.json", "v2-to-fhir-maps.json", "site-overrides.json"):
        bundle = json.loads((REPO / "terminology" / name).read_text(encoding="utf-8"))
        assert bundle["entry"], name
        for entry in bundle["entry"]:
            model.parse_resource(entry["resource"], expected_type="ConceptMap")


def test_the_generated_v2_to_fhir_maps_match_their_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    spec = importlib.util.spec_from_file_location("generate_v2_maps", REPO / "scripts" / "generate_v2_maps.py")
    assert spec is not None and spec.loader is not None
    generator = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "generate_v2_maps", generator)  # dataclasses resolve annotations through it
    spec.loader.exec_module(generator)
    assert generator.render(REPO) == (REPO / "terminology" / "v2-to-fhir-maps.json").read_text(encoding="utf-8")


def test_v2_to_fhir_maps_use_the_tables_own_spelling_of_codes() -> None:
    # table 0278 spells its codes "Booked", "Cancelled"; the map keeps that, lookups upper-case on their own
    found = t.translate("Booked", V2 + "0278")
    assert [(m.concept["code"], m.equivalence) for m in found] == [("booked", "wider")]
    assert t.load().index(V2 + "0278", "http://hl7.org/fhir/appointmentstatus")["BOOKED"][1] == "booked"


def test_the_official_specimen_map_translates_v2_0487_to_snomed() -> None:
    found = t.translate("ACNE", V2 + "0487")
    assert [(m.concept["system"], m.concept["code"]) for m in found] == [("http://snomed.info/sct", "309068002")]


def test_the_shipped_site_overrides_example_is_retired_and_changes_nothing() -> None:
    assert t.translate("X", V2 + "0001") == []
    by_url = t.translate(
        "X", V2 + "0001", conceptmap_url="https://interlace.dev/fhir/ConceptMap/site-overrides-example"
    )
    assert [m.concept["code"] for m in by_url] == ["unknown"]


# ---------------------------------------------------------------- precedence and semantics


def test_site_overrides_win_per_code_and_leave_other_codes_to_the_lower_tiers(tmp_path: Path) -> None:
    base = write_dir(
        tmp_path,
        v2_to_fhir_maps=[cmap(V2 + "0001", GENDER, [("F", "female", "equivalent"), ("M", "male", "equivalent")])],
        site_overrides=[cmap(V2 + "0001", GENDER, [("F", "other", "inexact")], url="urn:site")],
    )
    term = t.load(base)
    assert [(m.concept["code"], m.source) for m in term.translate("F", V2 + "0001")] == [("other", "urn:site")]
    assert [m.concept["code"] for m in term.translate("M", V2 + "0001")] == ["male"]
    assert term.index(V2 + "0001", GENDER) == {
        "F": (GENDER, "other", None, "inexact"),
        "M": (GENDER, "male", None, "equivalent"),
    }


def test_an_unmatched_override_switches_a_mapping_off(tmp_path: Path) -> None:
    base = write_dir(
        tmp_path,
        v2_to_fhir_maps=[cmap(V2 + "0001", GENDER, [("U", "unknown", "equivalent")])],
        site_overrides=[cmap(V2 + "0001", GENDER, [("U", None, "unmatched")], url="urn:site")],
    )
    term = t.load(base)
    found = term.translate("U", V2 + "0001")
    assert [(m.equivalence, m.usable) for m in found] == [("unmatched", False)]
    assert term.index(V2 + "0001", GENDER)["U"][1] is None
    assert t.translate_result(found)["parameter"][0] == {"name": "result", "valueBoolean": False}


def test_an_overrides_file_outside_the_directory_replaces_the_directorys_own(tmp_path: Path) -> None:
    base = write_dir(tmp_path, site_overrides=[cmap(V2 + "0001", GENDER, [("F", "other", "inexact")])])
    elsewhere = tmp_path / "site.json"
    elsewhere.write_text(json.dumps(cmap(V2 + "0001", GENDER, [("F", "unknown", "inexact")])))
    assert [m.concept["code"] for m in t.load(base, site_overrides=elsewhere).translate("F", V2 + "0001")] == [
        "unknown"
    ]


def test_extra_maps_form_the_top_tier_and_only_restricts_to_the_given_maps() -> None:
    term = t.Terminology(tiers=[[cmap(V2 + "0001", GENDER, [("F", "female", "equivalent")], url="urn:base")]])
    stored = cmap(V2 + "0001", GENDER, [("F", "other", "inexact")], url="urn:stored")
    assert [m.source for m in term.translate("F", V2 + "0001", extra=[stored])] == ["urn:stored"]
    unrelated = cmap("urn:other", GENDER, [("1", "male", "equivalent")], url="urn:unrelated")
    assert term.translate("F", V2 + "0001", only=[unrelated]) == []


def test_reverse_translation_inverts_wider_and_narrower() -> None:
    term = t.Terminology(tiers=[[cmap(V2 + "0001", GENDER, [("A", "other", "wider"), ("O", "other", "wider")])]])
    found = term.translate("other", GENDER, reverse=True)
    assert sorted((m.concept["code"], m.equivalence) for m in found) == [("A", "narrower"), ("O", "narrower")]


def test_source_target_and_target_system_narrow_the_maps() -> None:
    gender_map = cmap(V2 + "0001", GENDER, [("F", "female", "equivalent")], targetUri="urn:vs:gender")
    other_map = cmap(V2 + "0001", "urn:other", [("F", "W", "equivalent")], url="urn:cm2", targetUri="urn:vs:other")
    term = t.Terminology(tiers=[[gender_map, other_map]])
    assert {m.concept["code"] for m in term.translate("F", V2 + "0001")} == {"female", "W"}
    assert [m.concept["code"] for m in term.translate("F", V2 + "0001", target="urn:vs:other")] == ["W"]
    assert [m.concept["code"] for m in term.translate("F", V2 + "0001", target=GENDER)] == ["female"]
    assert [m.concept["code"] for m in term.translate("F", V2 + "0001", target_system="urn:other")] == ["W"]
    assert term.translate("F", V2 + "0001", source="urn:vs:unrelated") == []


def test_unmapped_provided_and_fixed_answer_for_codes_without_an_element() -> None:
    provided = cmap("urn:a", "urn:b", [("1", "one", "equivalent")], url="urn:p")
    provided["group"][0]["unmapped"] = {"mode": "provided"}
    fixed = cmap("urn:c", "urn:d", [("1", "one", "equivalent")], url="urn:f")
    fixed["group"][0]["unmapped"] = {"mode": "fixed", "code": "other", "display": "Other"}
    term = t.Terminology(tiers=[[provided, fixed]])
    assert [(m.concept, m.equivalence) for m in term.translate("7", "urn:a")] == [
        ({"system": "urn:b", "code": "7"}, "equal")
    ]
    assert [m.concept["code"] for m in term.translate("7", "urn:c")] == ["other"]
    assert [m.concept["code"] for m in term.translate("1", "urn:c")] == ["one"]


def test_a_malformed_override_fails_loading_and_names_the_file(tmp_path: Path) -> None:
    bad = {"resourceType": "ConceptMap", "url": "urn:bad", "group": {"element": []}}
    base = write_dir(tmp_path, site_overrides=[bad])
    with pytest.raises(ValueError, match="site-overrides.json entry 0"):
        t.load(base)


# ---------------------------------------------------------------- $translate parameters and result


def test_translate_request_from_query_reads_primitives_and_a_pipe_coding() -> None:
    req = t.TranslateRequest.from_query(
        {"code": ["F"], "system": [V2 + "0001"], "coding": [f"{GENDER}|male"], "reverse": ["true"], "target": ["x"]}
    )
    assert req.codings == ({"code": "F", "system": V2 + "0001"}, {"code": "male", "system": GENDER})
    assert req.reverse is True and req.target == "x"


@pytest.mark.parametrize(
    "query",
    [{"code": ["a", "b"], "system": ["s"]}, {"reverse": ["yes"], "code": ["a"]}, {"codeableConcept": ["x"]}],
)
def test_translate_request_from_query_rejects_bad_input(query: dict[str, list[str]]) -> None:
    with pytest.raises(BadRequest):
        t.TranslateRequest.from_query(query)


def test_translate_request_from_parameters_reads_coding_concept_and_map() -> None:
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "codeableConcept", "valueCodeableConcept": {"coding": [{"system": "s", "code": "1"}]}},
            {"name": "coding", "valueCoding": {"system": "s", "code": "2"}},
            {"name": "url", "valueUri": "urn:cm"},
            {"name": "reverse", "valueBoolean": True},
        ],
    }
    req = t.TranslateRequest.from_parameters(params)
    assert [c["code"] for c in req.codings] == ["2", "1"]
    assert req.url == "urn:cm" and req.reverse is True
    with pytest.raises(BadRequest):
        t.TranslateRequest(codings=()).check()


def test_translate_result_is_an_r4_parameters_resource() -> None:
    match = t.Match("equivalent", {"system": GENDER, "code": "female"}, "urn:cm")
    body = t.translate_result([match])
    model.parse_resource(body, expected_type="Parameters")
    assert body["parameter"][0] == {"name": "result", "valueBoolean": True}
    assert body["parameter"][2] == {
        "name": "match",
        "part": [
            {"name": "equivalence", "valueCode": "equivalent"},
            {"name": "concept", "valueCoding": {"system": GENDER, "code": "female"}},
            {"name": "source", "valueUri": "urn:cm"},
        ],
    }
