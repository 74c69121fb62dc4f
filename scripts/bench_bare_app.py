"""The ceiling for scripts/bench_fhir: a bare Flask app under the same gunicorn settings as Interlace.

It answers a fixed 1.7 KB Patient for any read or search and acknowledges any POST after decoding its JSON body,
so the difference to Interlace is exactly what Interlace does on top of Flask + gunicorn.
"""

from __future__ import annotations

import json

from flask import Flask, Response, request

PATIENT = json.dumps(
    {
        "resourceType": "Patient",
        "id": "bench-p1",
        "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00.000000+00:00"},
        "identifier": [{"system": "urn:bench", "value": "1"}],
        "active": True,
        "name": [{"use": "official", "family": "Benchmark", "given": ["Patricia", "Anne"]}],
        "telecom": [{"system": "phone", "value": "+1 555 0100", "use": "home"}],
        "gender": "female",
        "birthDate": "1970-01-01",
        "address": [
            {"use": "home", "line": ["1 Bench Street"], "city": "Springfield", "postalCode": "12345", "country": "US"}
        ],
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">' + "x" * 900 + "</div>"},
    }
).encode()

app = Flask(__name__)


@app.get("/fhir/<path:path>")
def read(path: str) -> Response:
    return Response(PATIENT, content_type="application/fhir+json")


@app.post("/fhir/")
@app.post("/fhir")
def post() -> Response:
    body = request.get_json(force=True)
    entries = len(body.get("entry", [])) if isinstance(body, dict) else 0
    return Response(
        json.dumps({"resourceType": "Bundle", "type": "transaction-response", "total": entries}),
        content_type="application/fhir+json",
    )
