"""The ingest use case on every store backend: durability, ACK codes, duplicates, receipt mode, reprocessing."""

from __future__ import annotations

from typing import Any

import pytest

from app.adapters.message_store import SqlMessageStore
from app.fhir.errors import StoreUnavailable
from app.hl7v2.config import Hl7Config
from app.services.ingest import Hl7Ingest, header_facts
from app.services.ports import MessageHeaderFacts, MessageQuery
from app.services.rest import FhirRouter

from . import samples
from .conftest import err_lines, msa, search

PATIENT_ID = "urn:id:HOSP|MRN1001"


def only(records: list[Any], **where: Any) -> Any:
    found = [r for r in records if all(getattr(r, k) == v for k, v in where.items())]
    assert len(found) == 1, found
    return found[0]


def all_records(messages: SqlMessageStore) -> list[Any]:
    return messages.search(MessageQuery(count=500)).records


def patients(router: FhirRouter) -> list[dict[str, Any]]:
    return search(router, "Patient", identifier="MRN1001")


def test_adt_a01_answers_aa_after_its_resources_are_committed(ingest: Hl7Ingest, router: FhirRouter) -> None:
    ack = ingest.receive(samples.adt_a01(), peer="test")

    assert msa(ack) == ("AA", "CTRL0001")
    [patient] = patients(router)
    assert patient["name"][0]["family"] == "Doe"
    [rec] = all_records(ingest.messages)
    assert rec.status == "processed" and rec.ack_code == "AA" and rec.ack == ack
    assert rec.raw == samples.adt_a01()
    assert rec.header == MessageHeaderFacts("SENDAPP", "SENDFAC", "CTRL0001", "ADT", "A01", "2.5")
    produced = {r["reference"].split("/")[0] for r in rec.resources}
    assert {"Patient", "Encounter", "Provenance"} <= produced
    assert f"Patient/{patient['id']}" in {r["reference"] for r in rec.resources}


def test_provenance_points_at_the_stored_message(ingest: Hl7Ingest, router: FhirRouter) -> None:
    ingest.receive(samples.adt_a01(), peer="test")
    [rec] = all_records(ingest.messages)

    [provenance] = search(router, "Provenance")
    assert provenance["id"] == rec.id
    assert provenance["entity"][0]["what"]["reference"] == f"hl7v2/messages/{rec.id}"
    targets = {t["reference"].split("/")[0] for t in provenance["target"]}
    assert "Patient" in targets


def test_resend_of_a_processed_control_id_gets_the_stored_ack_and_creates_nothing(
    ingest: Hl7Ingest, router: FhirRouter
) -> None:
    first = ingest.receive(samples.adt_a01(), peer="test")
    again = ingest.receive(samples.adt_a01(), peer="test")

    assert again == first
    assert len(patients(router)) == 1
    assert len(search(router, "Provenance")) == 1
    records = all_records(ingest.messages)
    original = only(records, status="processed")
    dup = only(records, status="duplicate")
    assert dup.duplicate_of == original.id and dup.ack == first and dup.resources == []


def test_a_resend_with_a_new_send_time_and_crlf_is_still_a_duplicate(ingest: Hl7Ingest, router: FhirRouter) -> None:
    first = ingest.receive(samples.adt_a01(), peer="test")
    restamped = samples.adt_a01().replace(b"|20240102030405||ADT", b"|20240102040000||ADT").replace(b"\r", b"\r\n")

    assert ingest.receive(restamped, peer="test") == first
    assert [r.status for r in all_records(ingest.messages)] == ["duplicate", "processed"]


def test_a_reused_control_id_with_new_content_is_processed_not_swallowed(ingest: Hl7Ingest, router: FhirRouter) -> None:
    ingest.receive(samples.adt_a01(), peer="test")
    other_patient = samples.adt_a01(mrn="MRN7007", visit="V7007")  # same sender, same MSH-10

    assert msa(ingest.receive(other_patient, peer="test", ack_mode="receipt")) == ("AA", "CTRL0001")
    assert len(search(router, "Patient", identifier="MRN7007")) == 1
    records = all_records(ingest.messages)
    assert [r.status for r in records] == ["processed", "processed"]
    assert records[0].duplicate_of == records[1].id  # kept as a pointer to the delivery it collided with


def test_same_control_id_from_another_sender_is_not_a_duplicate(ingest: Hl7Ingest) -> None:
    ingest.receive(samples.adt_a01(), peer="test")
    other = samples.adt_a01().replace(b"|SENDFAC|", b"|OTHERFAC|", 1)
    assert msa(ingest.receive(other, peer="test")) == ("AA", "CTRL0001")
    assert [r.status for r in all_records(ingest.messages)] == ["processed", "processed"]


def test_translation_error_answers_ae_with_err_location_and_is_kept_as_error(
    ingest: Hl7Ingest, router: FhirRouter
) -> None:
    ack = ingest.receive(samples.bad_content(), peer="test")

    assert msa(ack) == ("AE", "CTRL0300")
    [err] = err_lines(ack)
    assert "PID^1^3" in err and "101" in err  # ERR-2 location, ERR-3 table 0357 code
    [rec] = all_records(ingest.messages)
    assert rec.status == "error" and rec.ack_code == "AE"
    assert rec.error["resourceType"] == "OperationOutcome"
    assert rec.error["issue"][0]["expression"] == ["PID-3"]
    assert search(router, "Patient") == []


@pytest.mark.parametrize(
    ("raw", "control_id"),
    [(samples.NOT_HL7, ""), (samples.unsupported_event(), "CTRL0200")],
    ids=["no-msh", "unsupported-event"],
)
def test_unprocessable_message_is_rejected_with_ar_and_kept(ingest: Hl7Ingest, raw: bytes, control_id: str) -> None:
    ack = ingest.receive(raw, peer="test")

    assert msa(ack) == ("AR", control_id)
    [rec] = all_records(ingest.messages)
    assert rec.status == "rejected" and rec.raw == raw and rec.error is not None


def test_a_bad_message_does_not_block_the_next(ingest: Hl7Ingest, router: FhirRouter) -> None:
    acks = [ingest.receive(m, peer="test") for m in (samples.NOT_HL7, samples.bad_content(), samples.adt_a01())]

    assert [msa(a)[0] for a in acks] == ["AR", "AE", "AA"]
    assert len(patients(router)) == 1


def test_an_inbound_ack_is_stored_but_never_answered(ingest: Hl7Ingest) -> None:
    inbound = b"MSH|^~\\&|A|B|C|D|20240101||ACK^A01^ACK|ACK001|P|2.5\rMSA|AA|X1\r"
    assert ingest.receive(inbound, peer="test") == b""
    [rec] = all_records(ingest.messages)
    assert rec.status == "rejected" and rec.ack is None


def test_oru_r01_yields_one_observation_per_obx(ingest: Hl7Ingest, router: FhirRouter) -> None:
    assert msa(ingest.receive(samples.oru_r01(), peer="test"))[0] == "AA"
    observations = search(router, "Observation")
    assert len(observations) == 3
    assert len(search(router, "DiagnosticReport")) == 1


def test_receipt_mode_acks_once_stored_and_the_worker_translates_later(ingest: Hl7Ingest, router: FhirRouter) -> None:
    ack = ingest.receive(samples.adt_a01(), peer="test", ack_mode="receipt")

    assert msa(ack) == ("AA", "CTRL0001")
    [rec] = all_records(ingest.messages)
    assert rec.status == "received" and rec.ack == ack
    assert patients(router) == []

    assert ingest.process_pending(10) == 1
    assert len(patients(router)) == 1
    [rec] = all_records(ingest.messages)
    assert rec.status == "processed" and rec.ack == ack and rec.resources
    assert ingest.process_pending(10) == 0


def test_receipt_mode_applies_messages_in_arrival_order(ingest: Hl7Ingest, router: FhirRouter) -> None:
    first = samples.adt_a01("ORD1")
    second = samples.adt_a01("ORD2").replace(b"ADT^A01^ADT_A01", b"ADT^A08^ADT_A01").replace(b"Doe^Jane", b"Roe^Jane")
    ingest.receive(first, peer="test", ack_mode="receipt")
    ingest.receive(second, peer="test", ack_mode="receipt")

    assert ingest.process_pending(1) == 1 and ingest.process_pending(1) == 1
    [patient] = patients(router)
    assert patient["name"][0]["family"] == "Roe"


def test_receipt_mode_failures_land_in_the_store_instead_of_an_ae(ingest: Hl7Ingest) -> None:
    ack = ingest.receive(samples.bad_content(), peer="test", ack_mode="receipt")
    assert msa(ack)[0] == "AA"  # the sender only learns that we have it
    ingest.process_pending(10)
    [rec] = all_records(ingest.messages)
    assert rec.status == "error" and rec.error["issue"][0]["expression"] == ["PID-3"]
    assert rec.ack == ack  # a resend still gets what the sender got
    assert ingest.receive(samples.bad_content(), peer="test", ack_mode="receipt") == ack


def test_receipt_mode_still_rejects_what_cannot_be_processed_at_once(ingest: Hl7Ingest) -> None:
    assert msa(ingest.receive(samples.unsupported_event(), peer="test", ack_mode="receipt"))[0] == "AR"
    assert ingest.process_pending(10) == 0


def test_enhanced_mode_accept_ack_once_stored(ingest: Hl7Ingest, router: FhirRouter) -> None:
    ack = ingest.receive(samples.adt_a01(extra_msh="|||AL|NE"), peer="test")
    assert msa(ack) == ("CA", "CTRL0001")
    assert len(patients(router)) == 1


def test_enhanced_mode_application_ack_only(ingest: Hl7Ingest) -> None:
    ack = ingest.receive(samples.adt_a01(extra_msh="|||NE|AL"), peer="test", ack_mode="receipt")
    assert msa(ack) == ("AA", "CTRL0001")  # processed inline: this connection is the only way back
    assert all_records(ingest.messages)[0].status == "processed"


def test_enhanced_mode_never_means_no_reply_but_the_message_is_kept(ingest: Hl7Ingest, router: FhirRouter) -> None:
    assert ingest.receive(samples.adt_a01(extra_msh="|||NE|NE"), peer="test") == b""
    assert all_records(ingest.messages)[0].status == "processed"
    assert len(patients(router)) == 1


class FlakyRouter:
    """The real router, but the first ``failures`` transactions fail as if the database were down."""

    def __init__(self, router: FhirRouter, failures: int = 1) -> None:
        self.router = router
        self.failures = failures

    def transaction(self, *args: Any, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("the database is unavailable; retry later")
        return self.router.transaction(*args, **kwargs)


def test_transient_store_failure_answers_ar_and_the_resend_processes_the_message(
    messages: SqlMessageStore, router: FhirRouter
) -> None:
    ingest = Hl7Ingest(messages, FlakyRouter(router))  # type: ignore[arg-type]

    assert msa(ingest.receive(samples.adt_a01(), peer="test"))[0] == "AR"
    assert patients(router) == []
    assert msa(ingest.receive(samples.adt_a01(), peer="test"))[0] == "AA"
    assert len(patients(router)) == 1
    records = all_records(messages)
    assert only(records, status="processed").ack_code == "AA"
    assert only(records, status="duplicate").ack_code == "AA"


def test_a_message_stored_before_a_crash_is_processed_when_the_sender_resends(
    ingest: Hl7Ingest, router: FhirRouter
) -> None:
    raw = samples.adt_a01()
    from app.hl7v2.parser import parse
    from app.hl7v2.segments.msh import read_header

    # what a listener killed between storing and committing leaves behind: a received record, no ACK
    ingest.messages.add(raw, header_facts(read_header(parse(raw))), peer="test", ack_mode="commit")

    assert msa(ingest.receive(raw, peer="test"))[0] == "AA"
    assert len(patients(router)) == 1
    assert only(all_records(ingest.messages), status="processed").ack_code == "AA"


def test_reprocess_after_a_configuration_fix(messages: SqlMessageStore, router: FhirRouter) -> None:
    raw = samples.adt_a01().replace(b"|P|2.5", b"|P|2.9", 1)
    strict = Hl7Ingest(messages, router)
    assert msa(strict.receive(raw, peer="test"))[0] == "AR"  # version 2.9 not accepted

    fixed = Hl7Ingest(messages, router, config=Hl7Config(versions=(*Hl7Config().versions, "2.9")))
    [rec] = fixed.reprocess_all(status="rejected")

    assert rec.status == "processed" and rec.error is None and rec.ack_code == "AA"
    assert len(patients(router)) == 1
    assert msa(fixed.receive(raw, peer="test"))[0] == "AA"  # a resend now gets the new outcome


def test_reprocess_of_a_processed_message_updates_instead_of_duplicating(ingest: Hl7Ingest, router: FhirRouter) -> None:
    ingest.receive(samples.oru_r01(), peer="test")
    [rec] = all_records(ingest.messages)

    again = ingest.reprocess(rec.id)

    assert again.status == "processed" and again.attempts == 2
    assert len(search(router, "Observation")) == 3
    assert len(search(router, "Provenance")) == 1
    assert {r["outcome"] for r in again.resources} == {"updated"}


def test_batch_is_answered_with_a_batch_of_acks(ingest: Hl7Ingest) -> None:
    body = (
        b"BHS|^~\\&|SENDAPP|SENDFAC|INTERLACE|HOSP|20240101||||B001\r"
        + samples.adt_a01("B1")
        + samples.bad_content("B2")
        + b"BTS|2\r"
    )
    reply = ingest.receive_batch(body, peer="test")

    lines = reply.decode().split("\r")
    assert lines[0].startswith("BHS|^~\\&|INTERLACE|HOSP|SENDAPP|SENDFAC|")
    assert lines[0].split("|")[11] == "B001"  # BHS-12 references the request batch
    assert [line.split("|")[1:3] for line in lines if line.startswith("MSA")] == [["AA", "B1"], ["AE", "B2"]]
    assert "BTS|2" in lines
