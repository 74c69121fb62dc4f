"""v2 data types -> FHIR data types (IG datatype maps)."""

from __future__ import annotations

from zoneinfo import ZoneInfo

import pytest

from app.hl7v2 import datatypes as dt
from app.hl7v2.config import Hl7Config
from app.hl7v2.context import Context
from app.hl7v2.parser import parse

UTC = ZoneInfo("UTC")
BERLIN = ZoneInfo("Europe/Berlin")


def ctx_for(field_text: str, config: Hl7Config | None = None) -> tuple[Context, object]:
    msg = parse(f"MSH|^~\\&|APP|FAC|||||ADT^A01|C|P|2.5.1\rZZZ|{field_text}".encode())
    ctx = Context(msg, config or Hl7Config(), code="ADT", trigger="A01", sender="FAC")
    seg = msg.segment("ZZZ")
    assert seg is not None
    return ctx, seg[1][1]


@pytest.mark.parametrize(
    ("v2", "kind", "fhir"),
    [
        ("2024", "dateTime", "2024"),
        ("202403", "dateTime", "2024-03"),
        ("20240315", "dateTime", "2024-03-15"),
        ("20240315+0200", "dateTime", "2024-03-15"),  # an offset never shifts a date
        ("2024031508", "dateTime", "2024-03-15T08:00:00Z"),
        ("202403150830", "dateTime", "2024-03-15T08:30:00Z"),
        ("20240315083015.1234", "dateTime", "2024-03-15T08:30:15.1234Z"),
        ("20240315083015-0500", "dateTime", "2024-03-15T08:30:15-05:00"),
        ("198808181126+0215", "dateTime", "1988-08-18T11:26:00+02:15"),
        ("20240315083015-0500", "date", "2024-03-15"),
        ("20240315", "instant", "2024-03-15T00:00:00Z"),
        ("2024", "instant", None),
        ("20241315", "dateTime", None),
        ("2024-03-15", "dateTime", None),
        ("", "dateTime", None),
    ],
)
def test_time_stamps_keep_precision_and_offset(v2: str, kind: str, fhir: str | None) -> None:
    assert dt.ts(v2, UTC, kind) == fhir


def test_zone_less_times_take_the_configured_zone_with_daylight_saving() -> None:
    assert dt.ts("202401151200", BERLIN) == "2024-01-15T12:00:00+01:00"
    assert dt.ts("202407151200", BERLIN) == "2024-07-15T12:00:00+02:00"


@pytest.mark.parametrize(("v2", "num"), [("+1.50", 1.5), (".5", 0.5), ("007", 7), ("-3", -3), ("1e3", 1000.0)])
def test_nm_values_are_normalised(v2: str, num: float) -> None:
    assert dt.decimal(v2) == num


@pytest.mark.parametrize("v2", ["", "abc", "1.2.3", "NaN", "Infinity"])
def test_non_numbers_are_rejected(v2: str) -> None:
    assert dt.decimal(v2) is None


def test_cx_with_iso_oid_authority_uses_urn_oid() -> None:
    ctx, rep = ctx_for("123^^^HOSP&1.2.840.99&ISO^MR")
    assert dt.cx(rep, ctx) == {  # type: ignore[arg-type]
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
        "system": "urn:oid:1.2.840.99",
        "value": "123",
        "assigner": {"display": "HOSP"},
    }


def test_cx_with_a_namespace_only_gets_a_stable_urn_id() -> None:
    ctx, rep = ctx_for("123^^^General Hosp^MR")
    assert dt.cx(rep, ctx)["system"] == "urn:id:General_Hosp"  # type: ignore[arg-type,index]


def test_cx_authority_mapping_is_configurable() -> None:
    cfg = Hl7Config(authority_systems={"HOSP": "https://hosp.example/mrn"})
    ctx, rep = ctx_for("123^^^HOSP&1.2.840.99&ISO^MR", cfg)
    assert dt.cx(rep, ctx)["system"] == "https://hosp.example/mrn"  # type: ignore[arg-type,index]


def test_cx_without_authority_is_scoped_to_the_sender() -> None:
    ctx, rep = ctx_for("123^^^^MR")
    assert dt.cx(rep, ctx)["system"] == "urn:id:FAC"  # type: ignore[arg-type,index]


def test_xpn_maps_family_given_prefix_suffix_and_use() -> None:
    ctx, rep = ctx_for("Doe^Jane^Q^Jr^Dr^MD^M")
    assert dt.xpn(rep) == {  # type: ignore[arg-type]
        "use": "maiden",
        "family": "Doe",
        "given": ["Jane", "Q"],
        "prefix": ["Dr"],
        "suffix": ["Jr", "MD"],
    }


def test_xtn_email_and_structured_phone() -> None:
    ctx, rep = ctx_for("^NET^Internet^jane@example.org")
    assert dt.xtn(rep) == {"system": "email", "value": "jane@example.org"}  # type: ignore[arg-type]
    ctx, rep = ctx_for("^WPN^PH^^1^555^1234567^89")
    assert dt.xtn(rep) == {"system": "phone", "value": "+1 (555) 1234567 ext. 89", "use": "work"}  # type: ignore[arg-type]


def test_cwe_maps_coding_system_names_to_uris_and_keeps_text() -> None:
    ctx, rep = ctx_for("8867-4^Heart rate^LN^HR^Pulse^99LOC^^^Heart rate text")
    assert dt.cwe(rep, ctx) == {  # type: ignore[arg-type]
        "coding": [
            {"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"},
            {"system": "urn:id:FAC.99LOC", "code": "HR", "display": "Pulse"},  # local table: sender-scoped
        ],
        "text": "Heart rate text",
    }


@pytest.mark.parametrize(
    ("name", "uri"),
    [
        ("SCT", "http://snomed.info/sct"),
        ("I10", "http://hl7.org/fhir/sid/icd-10"),
        ("CPT", "http://www.ama-assn.org/go/cpt"),
        ("C4", "http://www.ama-assn.org/go/cpt"),
        ("HL70001", "http://terminology.hl7.org/CodeSystem/v2-0001"),
        ("CVX", "http://hl7.org/fhir/sid/cvx"),
    ],
)
def test_code_system_names(name: str, uri: str) -> None:
    assert dt.code_system_uri(name) == uri


def test_bare_table_value_gets_the_v2_table_system() -> None:
    ctx, rep = ctx_for("F")
    assert dt.cwe(rep, ctx, "0001") == {  # type: ignore[arg-type]
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0001", "code": "F"}]
    }


@pytest.mark.parametrize(
    ("v2", "expected"),
    [
        ("<^0.5", ("valueQuantity", {"value": 0.5, "comparator": "<"})),
        ("^1^:^16", ("valueRatio", {"numerator": {"value": 1}, "denominator": {"value": 16}})),
        ("^2^-^5", ("valueRange", {"low": {"value": 2}, "high": {"value": 5}})),
        ("^7", ("valueQuantity", {"value": 7})),
        ("~^x^+^y", None),
    ],
)
def test_sn_becomes_quantity_ratio_or_range(v2: str, expected: object) -> None:
    ctx, rep = ctx_for(v2)
    result = dt.sn(rep, None, ctx)  # type: ignore[arg-type]
    if expected is None:
        assert result is None or result[0] == "valueString"
    else:
        assert result == expected


def test_xcn_creates_a_practitioner_only_when_it_has_an_id() -> None:
    ctx, rep = ctx_for("123^Who^Doctor^^^Dr^^^HOSP&1.2.3&ISO")
    ref = dt.xcn(rep, ctx)  # type: ignore[arg-type]
    assert ref is not None and ref["display"] == "Dr Doctor Who"
    practitioner = ctx.resource(ref["reference"])
    assert practitioner["identifier"] == [{"system": "urn:oid:1.2.3", "value": "123"}]
    ctx2, rep2 = ctx_for("^Who^Doctor")
    assert dt.xcn(rep2, ctx2) == {"display": "Doctor Who"}  # type: ignore[arg-type]
    assert ctx2.entries() == []


def test_ed_base64_becomes_attachment_data() -> None:
    ctx, rep = ctx_for("APP^AP^PDF^Base64^JVBERi0=")
    assert dt.ed(rep) == {"contentType": "application/pdf", "data": "JVBERi0="}  # type: ignore[arg-type]
