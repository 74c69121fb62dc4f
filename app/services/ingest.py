"""HL7v2 ingest: one inbound message in, its ACK out; the raw bytes are durably stored before any ACK.

The use case behind the MLLP listener and ``POST /hl7v2`` (STYLE.md, Flow 1):

1. Read the header (MSH) cheaply; whatever it says, store the raw bytes in the ``MessageStore`` first.
2. A resend (same sending application + facility + MSH-10) gets the stored ACK again and creates nothing.
3. ACK after commit (default): translate (``app.hl7v2``, pure) and execute the transaction Bundle through the FHIR
   router (one store transaction, all or nothing); AA only after that commit. A translation or validation error
   answers AE with an ERR segment; what cannot be processed at all (no MSH, unsupported type/event/version) AR.
   A transient store failure answers AR too: v2 senders retry on AR, and the retry reprocesses the stored message.
4. ACK on receipt: answer once the raw message is stored; ``process_pending`` (worker threads) translates behind,
   in arrival order, and failures land as ``error`` records instead of an AE.
5. Enhanced mode (MSH-15/16, table 0155) is honoured: the accept ACK (CA/CE/CR) once stored, else the
   application ACK, else nothing.

Every outcome is kept with its status and error; nothing here raises for a bad message, so one bad message
never blocks the next. Logs carry record ids and control ids only, never message content (PHI).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from app.fhir.errors import Conflict, FhirError, Issue, NotFound, StoreUnavailable, operation_outcome
from app.hl7v2 import ack as ack_mod
from app.hl7v2.config import Hl7Config
from app.hl7v2.errors import Hl7Error, InternalError, Location, ParseError
from app.hl7v2.messages import lookup
from app.hl7v2.parser import Message, parse
from app.hl7v2.segments.msh import Header, read_header
from app.hl7v2.translate import check_header, translate
from app.services.ports import MessageHeaderFacts, MessageRecord, MessageStore
from app.services.rest import FhirRequest, FhirRouter

log = logging.getLogger("interlace.ingest")

__all__ = ["Hl7Ingest", "IngestError", "StoreRejected", "StoreBusy", "split_batch", "header_facts"]

COMMIT = "commit"
RECEIPT = "receipt"
# A message still failing transiently after this many attempts is parked as ``error`` (reprocess brings it back).
MAX_ATTEMPTS = 5
# Final outcomes whose stored ACK a resend gets again. ``error`` answered AR (transient) is retried instead.
_FINAL = frozenset({"processed", "rejected", "error"})


class IngestError(Hl7Error):
    """Root of the failures that happen after translation (committing the Bundle)."""


class StoreRejected(IngestError):
    """The store refused the translated Bundle (validation, a conditional match that is ambiguous ...): AE."""

    code = 207
    ack_code = "AE"


class StoreBusy(IngestError):
    """The store is unavailable or the write kept conflicting: AR, so that the sender retries."""

    code = 207
    ack_code = "AR"


@dataclass
class Outcome:
    """What processing one stored message came to."""

    status: str  # processed | error | rejected
    error: Hl7Error | None = None
    outcome: dict[str, Any] | None = None  # OperationOutcome of the failure
    resources: list[dict[str, Any]] = field(default_factory=list)
    transient: bool = False  # retry later: nothing was committed


@dataclass
class _Head:
    """The header read before storing: the parsed message when it parses, and why not when it does not."""

    facts: MessageHeaderFacts
    message: Message | None = None
    header: Header | None = None
    error: Hl7Error | None = None

    @property
    def is_ack(self) -> bool:
        return self.facts.message_code.upper() == "ACK"


def header_facts(header: Header) -> MessageHeaderFacts:
    return MessageHeaderFacts(
        sending_application=header.sending_application,
        sending_facility=header.sending_facility,
        control_id=header.control_id,
        message_code=header.message_code,
        trigger_event=header.trigger,
        version=header.version,
    )


def _raw_facts(raw: bytes) -> MessageHeaderFacts:
    """Best effort from the bytes of an MSH line that did not parse: for listing and dedupe only."""
    pos = raw.find(b"MSH")
    if pos < 0 or pos > 16 or len(raw) < pos + 8:
        return MessageHeaderFacts()
    line = re.split(rb"[\r\n]", raw[pos:], maxsplit=1)[0].decode("latin-1")
    fs, cs = line[3], line[4]
    if fs.isalnum() or cs.isalnum():
        return MessageHeaderFacts()
    f = line.split(fs)

    def fld(n: int, comp: int = 1) -> str:  # MSH-n: f[n - 1] because MSH-1 is the separator itself
        parts = f[n - 1].split(cs) if n - 1 < len(f) else [""]
        return parts[comp - 1].strip() if comp - 1 < len(parts) else ""

    return MessageHeaderFacts(
        sending_application=fld(3),
        sending_facility=fld(4),
        control_id=fld(10),
        message_code=fld(9).upper()[:16],
        trigger_event=fld(9, 2).upper()[:16],
        version=fld(12)[:16],
    )


def _fhir_to_hl7(exc: FhirError) -> Hl7Error:
    """An ERR for a store failure: the OperationOutcome's first diagnostics, with where in the Bundle it was."""
    issue = exc.issues[0] if exc.issues else None
    text = issue.diagnostics if issue else str(exc)
    if issue and issue.expression:
        text = f"{text} ({issue.expression[0]})"
    cls = StoreBusy if isinstance(exc, StoreUnavailable | Conflict) else StoreRejected
    return cls(text[:500], location=Location())


def _internal_outcome(text: str) -> dict[str, Any]:
    return operation_outcome([Issue(code="exception", diagnostics=text, details_code="hl7v2-207")])


class Hl7Ingest:
    """The ingest use case over a ``MessageStore`` and the FHIR router (which owns the resource store).

    Thread-safe: it keeps no per-message state; the MLLP handler calls ``receive`` from worker threads.
    """

    def __init__(
        self,
        messages: MessageStore,
        router: FhirRouter,
        *,
        config: Hl7Config | None = None,
        claim_seconds: float = 30.0,
    ) -> None:
        self.messages = messages
        self.router = router
        self.config = config or Hl7Config()
        self.claim_seconds = claim_seconds

    # ------------------------------------------------------------------------------------------ receiving
    def receive(self, raw: bytes, *, peer: str, ack_mode: str = COMMIT) -> bytes:
        """Store, (maybe) process, and return the ACK to send: ``b""`` means send nothing (an inbound ACK, or
        enhanced mode saying not to answer)."""
        if ack_mode not in (COMMIT, RECEIPT):
            raise ValueError(f"ack_mode must be {COMMIT!r} or {RECEIPT!r}")
        raw = bytes(raw)
        head = self._read_head(raw)
        try:
            return self._receive(raw, head, peer=peer, ack_mode=ack_mode)
        except (StoreUnavailable, OSError) as exc:
            # Nothing durable (or no outcome recorded): AR, which v2 senders retry.
            log.error("ingest.store_unavailable control_id=%s error=%s", head.facts.control_id, type(exc).__name__)
            return self._ack(raw, head, StoreBusy("the message store is unavailable; resend later"))

    def _receive(self, raw: bytes, head: _Head, *, peer: str, ack_mode: str) -> bytes:
        if head.error is not None:
            return self._reject(raw, head, peer=peer, ack_mode=ack_mode)
        inline = ack_mode == COMMIT or self._needs_application_ack(head)
        if inline:
            rec, original = self.messages.add(
                raw, head.facts, peer=peer, ack_mode=ack_mode, claim_seconds=self.claim_seconds
            )
        else:
            ack = self._accept_reply(raw, head)
            rec, original = self.messages.add(
                raw, head.facts, peer=peer, ack_mode=ack_mode, ack=ack or None, ack_code=_code(ack)
            )
        if original is not None and not _same_content(raw, original.raw):
            return self._reused_control_id(raw, head, rec, original)
        if original is not None:
            return self._duplicate(raw, head, rec, original)
        if not inline:
            log.info("ingest.queued id=%s control_id=%s", rec.id, head.facts.control_id)
            return rec.ack or b""
        return self._process_and_answer(raw, head, rec)

    def _process_and_answer(self, raw: bytes, head: _Head, rec: MessageRecord) -> bytes:
        out = self._process(rec, head.message)
        # A transient failure is recorded as error + AR: a resend (v2 senders resend on AR) processes it again.
        ack = self._reply_after_processing(raw, head, out.error)
        self.messages.finish(
            rec.id, status=out.status, ack_code=_code(ack), ack=ack or None, error=out.outcome, resources=out.resources
        )
        log.info("ingest.%s id=%s control_id=%s ack=%s", out.status, rec.id, head.facts.control_id, _code(ack))
        return ack

    def _reject(self, raw: bytes, head: _Head, *, peer: str, ack_mode: str) -> bytes:
        """Not processable: kept as ``rejected`` (AR) or ``error`` (AE, e.g. a bad MSH field), never processed."""
        err = head.error
        assert err is not None
        ack = b"" if head.is_ack else self._reply_rejected(raw, head, err)
        status = "rejected" if err.ack_code == "AR" or head.is_ack else "error"
        rec, original = self.messages.add(
            raw,
            head.facts,
            peer=peer,
            ack_mode=ack_mode,
            status=status,
            ack=ack or None,
            ack_code=_code(ack),
            error=err.to_fhir_error().to_outcome(),
        )
        if original is not None and not _same_content(raw, original.raw):
            log.warning("ingest.control_id_reused id=%s first=%s", rec.id, original.id)
            error = err.to_fhir_error().to_outcome()
            self.messages.finish(rec.id, status=status, ack_code=_code(ack), ack=ack or None, error=error)
            return ack
        if original is not None:
            return self._duplicate(raw, head, rec, original)
        log.info("ingest.%s id=%s control_id=%s code=%d", status, rec.id, head.facts.control_id, err.code)
        return ack

    def _reused_control_id(self, raw: bytes, head: _Head, rec: MessageRecord, original: MessageRecord) -> bytes:
        """Same sender and MSH-10 but different content: a sender that reuses control ids (a counter reset, say),
        not a resend. Swallowing it would lose data, so it is processed as a message of its own (inline, whatever
        the ACK mode), keeping ``duplicate_of`` as a pointer to the delivery it collided with."""
        log.warning("ingest.control_id_reused id=%s first=%s", rec.id, original.id)
        claimed = self.messages.claim(rec.id, seconds=self.claim_seconds, statuses=("duplicate",))
        if claimed is None:  # cannot happen: nobody else knows this record yet
            return self._ack(raw, head, StoreBusy("the message could not be claimed for processing"))
        return self._process_and_answer(raw, head, claimed)

    def _duplicate(self, raw: bytes, head: _Head, rec: MessageRecord, original: MessageRecord) -> bytes:
        """A resend: answer what the first delivery got, without creating anything again."""
        resend_stored = original.ack is not None and (
            (original.status in _FINAL and original.ack_code != "AR")
            or original.status == "rejected"
            or original.ack_mode == RECEIPT  # acknowledged on receipt; the worker owns the processing
        )
        if resend_stored:
            ack = original.ack or b""
        elif original.ack_mode == RECEIPT and original.status == "received":
            ack = self._accept_reply(raw, head)  # the first delivery was stored but its ACK never recorded
            self.messages.set_ack(original.id, ack_code=_code(ack), ack=ack or None)
        else:
            # The first delivery never got a final answer (a crash before its commit, or a transient failure):
            # process it now, unless someone else is doing exactly that.
            claimed = self.messages.claim(original.id, seconds=self.claim_seconds, statuses=("received", "error"))
            if claimed is None:
                ack = self._ack(raw, head, StoreBusy("the first delivery of this message is being processed"))
            else:
                ack = self._process_and_answer(original.raw, self._read_head(original.raw), claimed)
        self.messages.finish(rec.id, status="duplicate", ack_code=_code(ack), ack=ack or None)
        log.info("ingest.duplicate id=%s of=%s control_id=%s", rec.id, original.id, head.facts.control_id)
        return ack

    # ------------------------------------------------------------------------------------------ processing
    def _read_head(self, raw: bytes) -> _Head:
        try:
            msg = parse(raw)
            header = read_header(msg)
        except Hl7Error as exc:
            return _Head(_raw_facts(raw), error=exc)
        except Exception as exc:  # a parser bug must still end in an answer
            return _Head(_raw_facts(raw), error=ParseError(f"unreadable message: {type(exc).__name__}"))
        head = _Head(header_facts(header), message=msg, header=header)
        if head.is_ack:
            head.error = ParseError("an ACK is not processed (and never acknowledged)", location=Location("MSH", 1, 9))
            return head
        try:
            check_header(header, self.config)
            lookup(header.message_code, header.trigger)
        except Hl7Error as exc:
            head.error = exc
        return head

    def _process(self, rec: MessageRecord, msg: Message | None = None) -> Outcome:
        """Translate and commit one stored message. Never raises."""
        try:
            translation = translate(
                msg if msg is not None else rec.raw,
                config=self.config,
                message_ref=rec.reference,
                received_at=rec.received_at,
            )
        except Hl7Error as exc:
            status = "rejected" if exc.ack_code == "AR" else "error"
            return Outcome(status, exc, exc.to_fhir_error().to_outcome())
        except Exception as exc:  # translate wraps mapping bugs already; this is the last line of defence
            bug = InternalError(f"translation failed: {type(exc).__name__}")
            return Outcome("error", bug, bug.to_fhir_error().to_outcome())
        entries = [self._stable_provenance(e, rec) for e in translation.bundle["entry"]]
        try:
            response = self.router.transaction(FhirRequest("POST", ""), entries)
        except FhirError as exc:
            failure = _fhir_to_hl7(exc)
            transient = isinstance(failure, StoreBusy)
            log.warning("ingest.commit_failed id=%s status=%d transient=%s", rec.id, exc.status, transient)
            return Outcome("error", failure, exc.to_outcome(), transient=transient)
        except Exception as exc:
            log.error("ingest.commit_crashed id=%s error=%s", rec.id, type(exc).__name__)
            crash = StoreRejected(f"committing the resources failed: {type(exc).__name__}")
            return Outcome("error", crash, _internal_outcome(crash.message))
        return Outcome("processed", resources=_produced(response.json()))

    @staticmethod
    def _stable_provenance(entry: dict[str, Any], rec: MessageRecord) -> dict[str, Any]:
        """The Provenance of a message is ``Provenance/<message id>``, written by PUT: reprocessing the same stored
        message updates it instead of adding another."""
        if entry.get("resource", {}).get("resourceType") != "Provenance" or entry["request"]["method"] != "POST":
            return entry
        resource = {**entry["resource"], "id": rec.id}
        return {**entry, "resource": resource, "request": {"method": "PUT", "url": f"Provenance/{rec.id}"}}

    # ------------------------------------------------------------------------------------------ ACKs
    def _ack(self, raw: bytes, head: _Head, err: Hl7Error | None) -> bytes:
        """An original-mode ACK (AA/AE/AR) for this outcome, from the parsed MSH when there is one."""
        code = ack_mod.ack_code(err)
        errors = [err] if err else []
        if head.message is not None:
            try:
                return ack_mod.build_ack(head.message, code, errors=errors)
            except Exception:  # an MSH too broken to echo: answer from the raw bytes
                pass
        return ack_mod.minimal_ack(raw, code, err)

    @staticmethod
    def _needs_application_ack(head: _Head) -> bool:
        """Enhanced mode asking only for an application ACK: on a receipt listener it is processed inline,
        because this connection is the only way back to the sender."""
        h = head.header
        if h is None or not h.enhanced_mode:
            return False
        return not ack_mod.should_send(h.accept_ack_type, "CA") and h.application_ack_type not in ("", "NE")

    def _accept_reply(self, raw: bytes, head: _Head) -> bytes:
        """The answer once the message is durably stored (receipt mode): AA in original mode, else CA if MSH-15
        asks for it."""
        h = head.header
        if h is None or not h.enhanced_mode:
            return self._ack(raw, head, None)
        if head.message is not None and ack_mod.should_send(h.accept_ack_type, "CA"):
            return ack_mod.build_ack(head.message, "CA")
        return b""

    def _reply_rejected(self, raw: bytes, head: _Head, err: Hl7Error) -> bytes:
        h = head.header
        if h is None or not h.enhanced_mode or head.message is None:
            return self._ack(raw, head, err)
        if ack_mod.should_send(h.accept_ack_type, ack_mod.ack_code(err, accept=True)):
            return ack_mod.accept_ack(head.message, err) or b""
        return ack_mod.application_ack(head.message, err) or b""

    def _reply_after_processing(self, raw: bytes, head: _Head, err: Hl7Error | None) -> bytes:
        h = head.header
        if h is None or not h.enhanced_mode or head.message is None:
            return self._ack(raw, head, err)
        # Stored safely: the accept ACK is CA whatever processing found; the application outcome is in the store.
        if ack_mod.should_send(h.accept_ack_type, "CA"):
            return ack_mod.build_ack(head.message, "CA")
        return ack_mod.application_ack(head.message, err) or b""

    # ------------------------------------------------------------------------------------------ workers, operations
    def process_pending(self, limit: int = 50) -> int:
        """Receipt mode: translate and commit up to ``limit`` stored ``received`` messages, oldest first. Returns how
        many were taken. Failures are recorded as ``error``; transient ones are retried by a later call."""
        records = self.messages.claim_pending(limit, seconds=self.claim_seconds)
        for rec in records:
            try:
                out = self._process(rec)
                if out.transient and rec.attempts < MAX_ATTEMPTS:
                    self.messages.release(rec.id)
                    continue
                if rec.ack_mode == RECEIPT:  # the sender has its ACK already
                    self.messages.finish(
                        rec.id, status=out.status, error=out.outcome, resources=out.resources, keep_ack=True
                    )
                else:  # a commit-mode message a crash left behind: record the ACK a resend will get
                    ack = self._reply_after_processing(rec.raw, self._read_head(rec.raw), out.error)
                    self.messages.finish(
                        rec.id,
                        status=out.status,
                        ack_code=_code(ack),
                        ack=ack or None,
                        error=out.outcome,
                        resources=out.resources,
                    )
                log.info("ingest.worker.%s id=%s control_id=%s", out.status, rec.id, rec.header.control_id)
            except Exception as exc:  # the store went away mid-way: the lease expires and another call retries
                log.error("ingest.worker_failed id=%s error=%s", rec.id, type(exc).__name__)
        return len(records)

    def reprocess(self, id: str) -> MessageRecord:
        """Translate and commit a stored message again (e.g. after a mapping fix). NotFound / Conflict (being
        processed now) / StoreUnavailable (transient failure, nothing changed)."""
        rec = self.messages.get(id)
        if rec is None:
            raise NotFound(f"no HL7v2 message {id}")
        if rec.status == "duplicate":
            raise Conflict(f"message {id} is a resend; reprocess the first delivery {rec.duplicate_of}")
        claimed = self.messages.claim(
            id, seconds=self.claim_seconds, statuses=("received", "processed", "error", "rejected")
        )
        if claimed is None:
            raise Conflict(f"message {id} is being processed right now; try again shortly")
        head = self._read_head(claimed.raw)
        if head.error is not None:
            err = head.error
            status = "rejected" if err.ack_code == "AR" else "error"
            out = Outcome(status, err, err.to_fhir_error().to_outcome())
        else:
            out = self._process(claimed, head.message)
        if out.transient:
            self.messages.release(id)
            raise StoreUnavailable("the store is unavailable; nothing was changed, reprocess again later")
        if claimed.ack_mode == RECEIPT:
            return self.messages.finish(
                id, status=out.status, error=out.outcome, resources=out.resources, keep_ack=True
            )
        # The ACK a resend of this message gets from now on: the outcome of this run.
        ack = b"" if head.is_ack else self._reply_after_processing(claimed.raw, head, out.error)
        log.info("ingest.reprocessed id=%s status=%s", id, out.status)
        return self.messages.finish(
            id, status=out.status, ack_code=_code(ack), ack=ack or None, error=out.outcome, resources=out.resources
        )

    def reprocess_all(self, status: str = "error", limit: int = 1000) -> list[MessageRecord]:
        """Reprocess every message in ``status`` (oldest first, at most ``limit``); each on its own, so one that still
        fails does not stop the rest. Returns the records as they are afterwards."""
        if status == "duplicate":
            raise ValueError("duplicates are not processed; reprocess their first delivery")
        out = []
        for id in self.messages.ids_with_status(status, limit):
            try:
                out.append(self.reprocess(id))
            except FhirError as exc:
                log.warning("ingest.reprocess_skipped id=%s status=%d", id, exc.status)
        return out

    # ------------------------------------------------------------------------------------------ HTTP batches
    def receive_batch(self, body: bytes, *, peer: str, ack_mode: str = COMMIT) -> bytes:
        """``POST /hl7v2``: one message, or an FHS/BHS batch of them. A batch is answered by a batch of ACKs
        (BHS ... BTS, inside FHS ... FTS when the request had them); one message by its ACK."""
        batch = split_batch(body)
        if batch is None:
            return self.receive(body, peer=peer, ack_mode=ack_mode)
        acks = [a for a in (self.receive(m, peer=peer, ack_mode=ack_mode) for m in batch.messages) if a]
        return batch.reply(acks)


# ---------------------------------------------------------------------------------------------- helpers


def _code(ack: bytes | None) -> str | None:
    """MSA-1 of an ACK we built (CR-separated, MSA is the second segment)."""
    if not ack:
        return None
    for line in ack.split(b"\r"):
        if line[:3] == b"MSA" and len(line) > 4:
            return line[4:].split(line[3:4], 1)[0].decode("ascii", "replace")[:4] or None
    return None


def _same_content(a: bytes, b: bytes) -> bool:
    """Whether two deliveries carry the same message: equal but for line endings and MSH-7 (some engines
    restamp the send time when they resend)."""
    return a == b or _content_key(a) == _content_key(b)


def _content_key(raw: bytes) -> bytes:
    text = raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r").strip(b"\r \t\x00\xef\xbb\xbf")
    first, sep, rest = text.partition(b"\r")
    if first[:3] == b"MSH" and len(first) > 3:
        fields = first.split(first[3:4])
        if len(fields) > 6:
            fields[6] = b""  # MSH-7 (fields[1] is MSH-2: MSH-1 is the separator itself)
        first = first[3:4].join(fields)
    return first + sep + rest


def _produced(bundle: dict[str, Any] | None) -> list[dict[str, Any]]:
    """``[{"reference": "Patient/1", "versionId": "2", "outcome": "created"}]`` from a transaction-response."""
    out = []
    for entry in (bundle or {}).get("entry", []):
        response = entry.get("response", {})
        location = (response.get("location") or "").lstrip("/")
        if not location:
            continue
        ref, _, version = location.partition("/_history/")
        status = str(response.get("status", ""))
        out.append(
            {
                "reference": ref,
                "versionId": version or None,
                "outcome": "created" if status.startswith("201") else "updated",
            }
        )
    return out


@dataclass
class Batch:
    """An FHS/BHS batch split into its messages, with what the reply batch echoes."""

    messages: list[bytes]
    fhs: list[str] | None = None  # fields of the FHS line, when there was one
    bhs: list[str] | None = None

    def reply(self, acks: list[bytes]) -> bytes:
        now = datetime.now(UTC).strftime("%Y%m%d%H%M%S+0000")
        out: list[bytes] = []

        def header(seg: str, fields: list[str] | None) -> str:
            f = fields or [seg, "|", "^~\\&"]
            fs = f[1]
            enc = f[2] if len(f) > 2 else "^~\\&"

            def get(n: int) -> str:  # XHS-n
                return f[n] if n < len(f) else ""

            # swap sender and receiver; XHS-11 new control id; XHS-12 references the request's control id
            parts = [seg, enc, get(5), get(6), get(3), get(4), now, "", "", "", ack_mod.new_control_id(), get(11)]
            return fs.join(parts)

        fs = (self.bhs or self.fhs or ["", "|"])[1]
        if self.fhs is not None:
            out.append(header("FHS", self.fhs).encode("latin-1", "replace"))
        out.append(header("BHS", self.bhs).encode("latin-1", "replace"))
        out.extend(a.rstrip(b"\r\n") for a in acks)
        out.append(f"BTS{fs}{len(acks)}".encode())
        if self.fhs is not None:
            out.append(f"FTS{fs}1".encode())
        return b"\r".join(out) + b"\r"


def split_batch(body: bytes) -> Batch | None:
    """None when ``body`` is one message; else its messages (each from MSH up to the next MSH/BTS/FTS)."""
    text = body.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not (text.startswith(b"FHS") or text.startswith(b"BHS")):
        return None
    batch = Batch(messages=[])
    current: list[bytes] = []

    def flush() -> None:
        if current:
            batch.messages.append(b"\r".join(current) + b"\r")
            current.clear()

    for line in re.split(rb"\r\n|\r|\n", text):
        tag = line[:3]
        if not line.strip():
            continue
        if tag in (b"FHS", b"BHS"):
            flush()
            fields = _header_fields(line)
            if tag == b"FHS":
                batch.fhs = fields
            else:
                batch.bhs = fields
        elif tag in (b"BTS", b"FTS"):
            flush()
        elif tag == b"MSH":
            flush()
            current.append(line)
        elif current:
            current.append(line)
    flush()
    return batch


def _header_fields(line: bytes) -> list[str]:
    """FHS/BHS fields, numbered like MSH: [seg, separator, encoding characters, XHS-3, ...]."""
    text = line.decode("latin-1")
    if len(text) < 4:
        return [text[:3], "|", "^~\\&"]
    fs = text[3]
    parts = text.split(fs)
    return [parts[0], fs, *parts[1:]]
