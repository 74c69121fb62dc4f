"""translate()/receive(): identity (resends update, never duplicate), merges, statuses, errors -> AE/AR."""

from __future__ import annotations

from typing import Any

import pytest

from app.fhir.errors import operation_outcome
from app.hl7v2 import receive, translate
from app.hl7v2.errors import Hl7Error, ReceiverUnavailable, RequiredFieldMissing
from app.hl7v2.messages import REGISTRY, Registration

MSH = "MSH|^~\\&|APP|FAC|HUB|HUBFAC|20240101120000||{type}|{cid}|P|2.5.1\r"
PID = "PID|1||MRN1^^^HOSP&1.2.3&ISO^MR||Doe^Jane||19800101|F\r"
PV1 = "PV1|1|I|W1^1^A^HOSP||||||||||||||||V1^^^HOSP&1.2.3&ISO^VN" + "|" * 25 + "20240101100000+0000{end}\r"


def adt(trigger: str, cid: str = "C1", *, end: str = "", extra: str = "") -> bytes:
    pv1 = PV1.replace("{end}", f"|{end}" if end else "")
    return (MSH.format(type=f"ADT^{trigger}", cid=cid) + f"EVN|{trigger}|20240101120000\r" + PID + pv1 + extra).encode()


def entries(raw: bytes, rtype: str) -> list[dict[str, Any]]:
    return [e for e in translate(raw).bundle["entry"] if e["resource"]["resourceType"] == rtype]


def test_a01_then_a08_update_the_same_patient_and_encounter_by_business_identifier() -> None:
    a01, a08 = translate(adt("A01", "C1")), translate(adt("A08", "C2"))
    for rtype in ("Patient", "Encounter"):
        e1 = next(e for e in a01.bundle["entry"] if e["resource"]["resourceType"] == rtype)
        e2 = next(e for e in a08.bundle["entry"] if e["resource"]["resourceType"] == rtype)
        assert e1["fullUrl"] == e2["fullUrl"]
        assert e1["request"] == e2["request"]
        assert e1["request"]["method"] == "PUT"
    patient = entries(adt("A01"), "Patient")[0]
    assert patient["request"]["url"] == "Patient?identifier=urn:oid:1.2.3|MRN1"


def test_a_resend_of_the_same_message_yields_the_same_bundle_except_provenance_time() -> None:
    one, two = translate(adt("A01")).bundle, translate(adt("A01")).bundle
    assert [e["fullUrl"] for e in one["entry"]] == [e["fullUrl"] for e in two["entry"]]
    assert one["entry"][:-1] == two["entry"][:-1]


def test_references_inside_the_bundle_use_the_urn_uuids() -> None:
    bundle = translate(adt("A01")).bundle
    patient_url = next(e["fullUrl"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    encounter = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Encounter")
    assert patient_url.startswith("urn:uuid:")
    assert encounter["subject"] == {"reference": patient_url}


@pytest.mark.parametrize(
    ("trigger", "end", "status"),
    [("A01", "", "in-progress"), ("A03", "20240102", "finished"), ("A11", "", "cancelled"), ("A05", "", "planned")]
    + [("A08", "", "in-progress"), ("A08", "20240102", "finished")],
)
def test_encounter_status_follows_event_and_discharge_time(trigger: str, end: str, status: str) -> None:
    assert entries(adt(trigger, end=end), "Encounter")[0]["resource"]["status"] == status


def test_a40_retires_the_old_record_and_links_both_ways() -> None:
    raw = (MSH.format(type="ADT^A40^ADT_A39", cid="M1") + PID + "MRG|OLD9^^^HOSP&1.2.3&ISO^MR\r").encode()
    patients = entries(raw, "Patient")
    survivor, old = patients[0], patients[1]
    assert old["request"]["url"] == "Patient?identifier=urn:oid:1.2.3|OLD9"
    assert old["resource"]["active"] is False
    assert old["resource"]["link"] == [{"other": {"reference": survivor["fullUrl"]}, "type": "replaced-by"}]
    assert survivor["resource"]["link"] == [{"other": {"reference": old["fullUrl"]}, "type": "replaces"}]


ORU = (
    "ORC|RE|P1^EHR|F1^LAB\r"
    "OBR|1|P1^EHR|F1^LAB|24331-1^Lipid^LN|||20240101080000+0000||||||||||||||||||{obr25}\r"
    "OBX|1|NM|2093-3^Chol^LN|1|{value}|mg/dL^^UCUM|||||{obx11}\r"
)


def oru(cid: str, value: str, obx11: str, obr25: str) -> bytes:
    return (
        MSH.format(type="ORU^R01^ORU_R01", cid=cid) + PID + ORU.format(value=value, obx11=obx11, obr25=obr25)
    ).encode()


def test_a_corrected_result_updates_the_preliminary_observation_and_report() -> None:
    prelim, corrected = oru("R1", "190", "P", "P"), oru("R2", "195", "C", "C")
    for rtype in ("Observation", "DiagnosticReport"):
        first, second = entries(prelim, rtype)[0], entries(corrected, rtype)[0]
        assert first["fullUrl"] == second["fullUrl"] and first["request"] == second["request"]
    assert entries(prelim, "Observation")[0]["resource"]["status"] == "preliminary"
    assert entries(corrected, "Observation")[0]["resource"]["status"] == "corrected"
    assert entries(corrected, "Observation")[0]["resource"]["valueQuantity"]["value"] == 195
    assert entries(corrected, "DiagnosticReport")[0]["resource"]["status"] == "corrected"


def test_oru_creates_the_patient_only_if_absent_so_thin_pids_never_wipe_adt_data() -> None:
    patient = entries(oru("R1", "1", "F", "F"), "Patient")[0]
    assert patient["request"] == {
        "method": "POST",
        "url": "Patient",
        "ifNoneExist": "identifier=urn:oid:1.2.3|MRN1",
    }


def test_diagnostic_report_lists_only_its_own_observations() -> None:
    raw = (
        oru("R3", "1", "F", "F")
        + ORU.replace("P1", "P2").replace("F1", "F2").format(value="2", obx11="F", obr25="F").encode()
    )
    reports = entries(raw, "DiagnosticReport")
    observations = entries(raw, "Observation")
    assert len(reports) == 2 and len(observations) == 2
    assert reports[0]["resource"]["result"] == [{"reference": observations[0]["fullUrl"]}]
    assert reports[1]["resource"]["result"] == [{"reference": observations[1]["fullUrl"]}]


def test_dft_yields_one_charge_item_per_ft1_with_price_and_currency() -> None:
    raw = (
        MSH.format(type="DFT^P03^DFT_P03", cid="D1")
        + PID
        + "FT1|1|T1||20240101||CG|99213^Visit^C4|||2|50.00&EUR\r"
        + "FT1|2|T2||20240101||CG|99214^Visit^C4|||1||70&USD\r"
    ).encode()
    items = entries(raw, "ChargeItem")
    assert [i["request"]["url"] for i in items] == [
        "ChargeItem?identifier=urn:id:FAC|T1",
        "ChargeItem?identifier=urn:id:FAC|T2",
    ]
    assert items[0]["resource"]["priceOverride"] == {"value": 50.0, "currency": "EUR"}
    assert items[0]["resource"]["quantity"] == {"value": 2}
    assert items[1]["resource"]["priceOverride"] == {"value": 70, "currency": "USD"}
    assert items[0]["resource"]["code"]["coding"][0]["system"] == "http://www.ama-assn.org/go/cpt"


def test_ft1_unit_price_times_quantity_is_the_charge_total_exactly() -> None:
    raw = (
        MSH.format(type="DFT^P03^DFT_P03", cid="D2")
        + PID
        + "FT1|1|T3||20240101||CG|99213^Visit^C4|||3||40.10&USD\r"  # FT1-12 unit price only
        + "FT1|2|T4||20240101||CG|99214^Visit^C4|||3|100&USD|40.10&USD\r"  # FT1-11 extended price wins
    ).encode()
    items = entries(raw, "ChargeItem")
    assert items[0]["resource"]["priceOverride"] == {"value": 120.3, "currency": "USD"}
    assert items[1]["resource"]["priceOverride"] == {"value": 100, "currency": "USD"}


def test_provenance_targets_every_other_entry_and_points_at_the_stored_message() -> None:
    t = translate(adt("A01"), message_ref="Binary/msg-1")
    prov = t.bundle["entry"][-1]["resource"]
    assert prov["resourceType"] == "Provenance"
    assert [r["reference"] for r in prov["target"]] == [e["fullUrl"] for e in t.bundle["entry"][:-1]]
    assert prov["entity"][0]["what"]["reference"] == "Binary/msg-1"
    assert t.header.control_id == "C1" and t.header.message_code == "ADT" and t.header.trigger == "A01"
    assert t.message_header()["eventCoding"]["code"] == "A01"


def test_v23_message_type_without_structure_is_derived() -> None:
    raw = adt("A04").replace(b"|2.5.1\r", b"|2.3\r")
    assert translate(raw).header.structure == "ADT_A01"


@pytest.mark.parametrize(
    ("raw", "code", "ack"),
    [
        (adt("A01").replace(b"ADT^A01", b"ZZZ^Z99"), 200, "AR"),
        (adt("A01").replace(b"ADT^A01", b"ADT^A99"), 201, "AR"),
        (adt("A01").replace(b"|P|2.5.1", b"|X|2.5.1"), 202, "AR"),
        (adt("A01").replace(b"|P|2.5.1", b"|P|3.0"), 203, "AR"),
        (adt("A01").replace(PID.encode(), b""), 101, "AE"),
        (adt("A01").replace(b"MRN1^^^HOSP&1.2.3&ISO^MR", b""), 101, "AE"),
        (adt("A01").replace(b"|C1|", b"||"), 101, "AE"),
        (b"not hl7 at all", 100, "AR"),
    ],
)
def test_failures_become_typed_errors_and_the_right_ack(raw: bytes, code: int, ack: str) -> None:
    receipt = receive(raw)
    assert receipt.error is not None and receipt.translation is None
    assert receipt.error.code == code and receipt.error.ack_code == ack
    reply = receipt.ack(control_id="A1")
    assert reply is not None
    segs = reply.decode().split("\r")
    assert segs[1].startswith(f"MSA|{ack}|")
    assert any(s.startswith("ERR|") and f"|{code}^" in s for s in segs)


def test_success_is_acknowledged_aa_with_the_inbound_control_id() -> None:
    receipt = receive(adt("A01", "CTL-9"))
    assert receipt.error is None and receipt.translation is not None
    assert receipt.ack(control_id="A2") is not None
    assert receipt.ack(control_id="A2").decode().split("\r")[1] == "MSA|AA|CTL-9"  # type: ignore[union-attr]


def test_a_failure_after_translation_is_acknowledged_with_the_callers_error() -> None:
    receipt = receive(adt("A01"))
    reply = receipt.ack(Hl7Error("could not map the stored data"))
    assert reply is not None and b"MSA|AE|C1" in reply
    reply = receipt.ack(ReceiverUnavailable("store is down"))
    assert reply is not None and b"MSA|AR|C1" in reply


def test_the_stored_message_can_be_named_by_identifier() -> None:
    t = translate(adt("A01"), message_ref={"system": "urn:interlace:message", "value": "42"})
    what = t.bundle["entry"][-1]["resource"]["entity"][0]["what"]
    assert what["identifier"] == {"system": "urn:interlace:message", "value": "42"}


def test_an_inbound_ack_is_never_acknowledged() -> None:
    receipt = receive((MSH.format(type="ACK^A01^ACK", cid="K1") + "MSA|AA|C1\r").encode())
    assert not receipt.should_reply
    assert receipt.ack() is None


def test_a_mapping_bug_becomes_an_internal_error_ae(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(msg: object, ctx: object) -> None:
        raise KeyError("boom")

    monkeypatch.setitem(REGISTRY, ("ADT", "A01"), Registration(broken, frozenset(), "ADT_A01"))
    receipt = receive(adt("A01"))
    assert receipt.error is not None and receipt.error.code == 207 and receipt.error.ack_code == "AE"


def test_errors_convert_to_operation_outcome_issues_with_stable_codes() -> None:
    receipt = receive(adt("A01").replace(PID.encode(), b""))
    assert isinstance(receipt.error, RequiredFieldMissing)
    outcome = operation_outcome([receipt.error.to_issue()])
    issue = outcome["issue"][0]
    assert issue["code"] == "required"
    assert issue["details"]["coding"][0]["code"] == "hl7v2-101"
    assert issue["expression"] == ["PID"]
    assert receipt.error.to_fhir_error().status == 422


def test_unknown_z_segments_do_not_break_group_detection() -> None:
    raw = oru("R9", "5", "F", "F").replace(b"OBX|", b"ZRS|local\rOBX|")
    assert len(entries(raw, "Observation")) == 1
    assert entries(raw, "DiagnosticReport")[0]["resource"]["result"]


def test_two_obx_reusing_one_instance_id_merge_into_one_valid_observation_with_a_warning() -> None:
    raw = (
        MSH.format(type="ORU^R01^ORU_R01", cid="R5")
        + PID
        + "OBR|1|P1|F1|X^Y^LN\r"
        + "OBX|1|NM|A^A^LN||5"
        + "|" * 16
        + "SAME\r"  # OBX-21 observation instance id
        + "OBX|2|ST|B^B^LN||text"
        + "|" * 16
        + "SAME\r"
    ).encode()
    t = translate(raw)
    observations = [e["resource"] for e in t.bundle["entry"] if e["resource"]["resourceType"] == "Observation"]
    assert len(observations) == 1
    assert [k for k in observations[0] if k.startswith("value")] == ["valueQuantity"]
    assert any("same Observation" in w.message for w in t.warnings)
