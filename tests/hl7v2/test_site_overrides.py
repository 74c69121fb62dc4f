"""Site overrides in terminology/ change what HL7v2 codes map to, per Hl7Config, without touching the mappers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.fhir import terminology
from app.hl7v2 import Hl7Config, translate, vocab

MSH = "MSH|^~\\&|APP|LAB1|HUB|HUBFAC|20240101120000||ADT^A01|C1|P|2.5.1\r"
PID = "PID|1||MRN1^^^HOSP&1.2.3&ISO^MR||Doe^Jane||19800101|{sex}\r"
PV1 = "PV1|1|{pclass}|W1^1^A^HOSP||||||||||||||||V1^^^HOSP&1.2.3&ISO^VN\r"
V2 = "http://terminology.hl7.org/CodeSystem/v2-"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"


def a01(sex: str, pclass: str = "I") -> bytes:
    return (MSH + "EVN|A01|20240101120000\r" + PID.format(sex=sex) + PV1.format(pclass=pclass)).encode()


def resource(raw: bytes, rtype: str, config: Hl7Config | None = None) -> dict[str, Any]:
    bundle = translate(raw, config=config).bundle
    return next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == rtype)


def overrides(tmp_path: Path, *maps: dict[str, Any]) -> Hl7Config:
    path = tmp_path / "site-overrides.json"
    path.write_text(
        json.dumps({"resourceType": "Bundle", "type": "collection", "entry": [{"resource": m} for m in maps]})
    )
    return Hl7Config(site_overrides=str(path))


def site_map(table: str, target: str, elements: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "ConceptMap",
        "url": f"https://site.example/ConceptMap/{table}",
        "status": "active",
        "group": [{"source": V2 + table, "target": target, "element": elements}],
    }


def test_a_local_sex_code_maps_only_once_the_site_overrides_it(tmp_path: Path) -> None:
    assert "gender" not in resource(a01("X"), "Patient")
    config = overrides(
        tmp_path,
        site_map(
            "0001",
            "http://hl7.org/fhir/administrative-gender",
            [{"code": "X", "target": [{"code": "unknown", "equivalence": "equivalent"}]}],
        ),
    )
    assert resource(a01("X"), "Patient", config)["gender"] == "unknown"
    assert resource(a01("F"), "Patient", config)["gender"] == "female"  # the other codes keep the IG map


def test_an_override_redirects_an_official_code_and_supplies_its_display(tmp_path: Path) -> None:
    assert resource(a01("F", "E"), "Encounter")["class"]["code"] == "EMER"
    config = overrides(
        tmp_path,
        site_map(
            "0004",
            ACT,
            [{"code": "E", "target": [{"code": "ACUTE", "display": "inpatient acute", "equivalence": "inexact"}]}],
        ),
    )
    assert resource(a01("F", "E"), "Encounter", config)["class"] == {
        "system": ACT,
        "code": "ACUTE",
        "display": "inpatient acute",
    }


def test_an_unmatched_override_switches_the_mapping_off(tmp_path: Path) -> None:
    config = overrides(
        tmp_path,
        site_map(
            "0001",
            "http://hl7.org/fhir/administrative-gender",
            [{"code": "U", "target": [{"equivalence": "unmatched"}]}],
        ),
    )
    assert resource(a01("U"), "Patient")["gender"] == "unknown"
    assert "gender" not in resource(a01("U"), "Patient", config)


def test_vocab_tables_read_the_bound_terminology_and_fall_back_to_the_default(tmp_path: Path) -> None:
    config = overrides(
        tmp_path,
        site_map(
            "0001",
            "http://hl7.org/fhir/administrative-gender",
            [{"code": "x", "target": [{"code": "unknown", "equivalence": "equivalent"}]}],
        ),
    )
    assert vocab.GENDER.get("X") is None
    with vocab.bound(config):
        assert vocab.GENDER.get("X") == "unknown"  # v2 side is case-insensitive
        assert "x" in vocab.GENDER
    assert vocab.GENDER.get("X") is None
    assert vocab.current() is terminology.load()
