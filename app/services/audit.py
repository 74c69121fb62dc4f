"""Access decisions as FHIR AuditEvents (who, what, when, outcome), written to the FHIR store in batches.

The router calls ``AuditTrail.record(request, response)`` once per interaction a token made (a batch entry is an
interaction of its own; a transaction is one). Building the AuditEvent dict is cheap (~15 us); storing one is not
(~0.5 ms: validation, ~9 index rows, history, outbox -- as much CPU as the read it records). So records are
queued and a background thread writes them every ``interval`` seconds (or as soon as ``batch`` are waiting), and
*successful reads and searches* of one client with the same interaction queued in that window are written as one
AuditEvent: one ``entity`` per access (the resource read, or the query), ``period`` spanning the window.
Refusals and writes are always events of their own. Measured with the Flask test client (SQLite, one process):
one AuditEvent per read costs +150-200% of read time; grouped, the audit cost is within noise.

A crash loses at most the last ``interval`` of records; a deployment that needs write-ahead audit can set
``interval=0``, which writes synchronously in the request. Nothing here logs resource content (PHI).
"""

from __future__ import annotations

import base64
import logging
import threading
from collections import deque
from datetime import UTC, datetime
from typing import Any

from app.fhir.store import ResourceStore

__all__ = ["AuditTrail", "audit_event", "interaction_of"]

log = logging.getLogger("interlace.audit")

_ACTION = {"GET": "R", "HEAD": "R", "POST": "C", "PUT": "U", "PATCH": "U", "DELETE": "D"}
_REST = {
    "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
    "code": "rest",
    "display": "RESTful Operation",
}
_INTERACTION_SYSTEM = "http://hl7.org/fhir/restful-interaction"
CLIENT_SYSTEM = "urn:interlace:oauth-client"


def interaction_of(method: str, path: str, query: dict[str, list[str]] | None = None) -> tuple[str, str | None]:
    """(restful-interaction code, ``Type/id`` or ``Type`` or None) of a request, from its method and path."""
    parts = [p for p in path.strip("/").split("/") if p]
    n = len(parts)
    if n == 0:
        return ("search-system" if method == "GET" else "batch", None)
    if parts[-1].startswith("$"):
        return ("operation", "/".join(parts[:-1]) or None)
    if parts[0] == "_history":
        return ("history-system", None)
    if parts[0] in ("_search",):
        return ("search-system", None)
    rtype = parts[0]
    if n == 1:
        code = {"GET": "search-type", "POST": "create", "PUT": "update", "DELETE": "delete", "PATCH": "patch"}
        return (code.get(method, method.lower()), rtype)
    if parts[1] == "_search":
        return ("search-type", rtype)
    if parts[1] == "_history":
        return ("history-type", rtype)
    target = f"{rtype}/{parts[1]}"
    if n == 2:
        code = {"GET": "read", "HEAD": "read", "PUT": "update", "DELETE": "delete", "PATCH": "patch"}
        return (code.get(method, method.lower()), target)
    if n == 3:
        return ("history-instance", target)
    return ("vread", target)


def audit_event(
    *,
    client_id: str,
    subject: str,
    fhir_user: str | None,
    method: str,
    path: str,
    query: dict[str, list[str]],
    status: int,
    reason: str = "",
    recorded: datetime | None = None,
    entries: list[str] | None = None,
) -> dict[str, Any]:
    """An R4 AuditEvent for one access decision. ``status`` is the HTTP answer: < 400 allowed, 401/403/429
    refused (outcome 4, minor failure), other errors 8."""
    interaction, target = interaction_of(method, path, query)
    when = (recorded or datetime.now(UTC)).isoformat().replace("+00:00", "Z")
    outcome = "0" if status < 400 else ("4" if status in (401, 403, 404, 429) else "8")
    agent: dict[str, Any] = {
        "type": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
                    "code": "datacollector" if method != "GET" else "dataprocessor",
                }
            ]
        },
        "who": {"identifier": {"system": CLIENT_SYSTEM, "value": client_id or "anonymous"}},
        "altId": client_id or "anonymous",
        "requestor": True,
    }
    if subject and subject != client_id:
        agent["name"] = subject
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": _REST,
        "subtype": [{"system": _INTERACTION_SYSTEM, "code": interaction}],
        "action": "E"
        if interaction in ("operation", "batch", "search-system", "search-type")
        else _ACTION.get(method, "E"),
        "recorded": when,
        "outcome": outcome,
        "agent": [agent],
        "source": {"observer": {"display": "Interlace FHIR server"}},
    }
    if fhir_user:
        event["agent"].append({"who": {"reference": fhir_user}, "requestor": False})
    if reason:
        event["outcomeDesc"] = reason[:1000]
    entities: list[dict[str, Any]] = []
    if target is not None and "/" in target:
        entities.append({"what": {"reference": target}})
    elif target is not None or query:
        text = path.strip("/") + ("?" + "&".join(f"{k}={v}" for k, vs in sorted(query.items()) for v in vs))
        entities.append({"query": base64.b64encode(text.encode("utf-8")).decode("ascii"), "name": target or "system"})
    for ref in entries or ():
        entities.append({"what": {"reference": ref}})
    if entities:
        event["entity"] = entities
    return event


def group_reads(events: list[dict[str, Any]], max_entities: int = 200) -> list[dict[str, Any]]:
    """Merge successful read/search events of the same agent and interaction into one event per group (every
    access stays an ``entity``; ``period`` covers them); everything else passes through unchanged, in order."""
    out: list[dict[str, Any]] = []
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for event in events:
        if event.get("outcome") != "0" or event.get("action") not in ("R", "E") or "entity" not in event:
            out.append(event)
            continue
        key = (repr(event["agent"]), event["subtype"][0]["code"])
        merged = groups.get(key)
        if merged is None or len(merged["entity"]) >= max_entities:
            merged = groups[key] = {**event, "entity": list(event["entity"])}
            merged["period"] = {"start": event["recorded"], "end": event["recorded"]}
            out.append(merged)
            continue
        merged["entity"].extend(event["entity"])
        merged["period"]["end"] = merged["recorded"] = event["recorded"]
    return out


class AuditTrail:
    """Queue of AuditEvents written to ``store`` by a background thread (``interval`` 0: written at once)."""

    def __init__(self, store: ResourceStore, *, interval: float = 0.25, batch: int = 200, max_queue: int = 100_000):
        self.store = store
        self.interval = interval
        self.batch = batch
        self._queue: deque[dict[str, Any]] = deque(maxlen=max_queue)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def record(self, req: Any, response: Any) -> None:
        """Router hook: one AuditEvent for ``req`` (which carries the AuthContext) answered by ``response``."""
        auth = req.auth
        reason = ""
        if response.status >= 400 and isinstance(response.body, dict):
            issues = response.body.get("issue") or [{}]
            reason = str(issues[0].get("diagnostics", ""))
        self.add(
            audit_event(
                client_id=auth.client_id,
                subject=auth.subject,
                fhir_user=auth.fhir_user,
                method=req.method,
                path=req.path,
                query=req.query,
                status=response.status,
                reason=reason,
            )
        )

    def add(self, event: dict[str, Any]) -> None:
        if self.interval <= 0:
            self._write([event])
            return
        self._queue.append(event)
        if self._thread is None:
            self._start()
        if len(self._queue) >= self.batch:
            self._wake.set()

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="interlace-audit", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            self.flush()

    def flush(self) -> int:
        """Write every queued decision now; the number of decisions written."""
        written = 0
        with self._lock:
            while self._queue:
                chunk = []
                while self._queue and len(chunk) < self.batch:
                    chunk.append(self._queue.popleft())
                self._write(group_reads(chunk))
                written += len(chunk)
        return written

    def _write(self, events: list[dict[str, Any]]) -> None:
        try:
            with self.store.session(write=True) as s:
                for event in events:
                    s.create(event)
        except Exception as exc:  # the audit trail must not take requests down; never log the events (PHI)
            log.error("could not write %d audit events: %s", len(events), type(exc).__name__)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5)
        self.flush()
