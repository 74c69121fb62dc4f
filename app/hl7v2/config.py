"""Translation settings. Immutable, passed per call (no process-wide defaults, unlike hl7apy's set_default_version)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field

# Namespace for the deterministic uuid5 fullUrls and derived keys. Changing it changes every derived id: never do.
INTERLACE_NS = uuid.UUID("6f1c3b5e-2a7d-5c39-9d0e-5b7a1f0c4e21")


@dataclass(frozen=True)
class Hl7Config:
    # Zone for time stamps sent without an offset (v2: "local time of the sender"). IANA name, per sender if needed.
    default_zone: str = "UTC"
    # Per sending facility/application zone overrides: {"MSH-4 namespace or MSH-3": "Europe/Berlin"}.
    sender_zones: Mapping[str, str] = field(default_factory=dict)
    # Assigning authority -> Identifier.system. Keys are HD.1 namespace ids or HD.2 universal ids (case-sensitive).
    authority_systems: Mapping[str, str] = field(default_factory=dict)
    # Coding system names (CWE.3) -> URI, added to / overriding the built-in table in vocab.CODE_SYSTEMS.
    code_systems: Mapping[str, str] = field(default_factory=dict)
    # Versions accepted (MSH-12.1). Others -> AR 203.
    versions: tuple[str, ...] = ("2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2")
    # Processing ids accepted (MSH-11.1: P production, D debugging, T training). Others -> AR 202.
    processing_ids: tuple[str, ...] = ("P", "D", "T")
    # Identifiers without an assigning authority are local to the sender: scope them with urn:id:<sender>.
    scope_unqualified_identifiers: bool = True
    namespace: uuid.UUID = INTERLACE_NS
    # Where the vocabulary ConceptMaps come from (app.fhir.terminology): None = the repository's terminology/.
    terminology_dir: str | None = None
    # A site's ConceptMap overrides file, used instead of <terminology_dir>/site-overrides.json; its entries win.
    site_overrides: str | None = None

    def zone_for(self, *senders: str) -> str:
        for s in senders:
            if s and s in self.sender_zones:
                return self.sender_zones[s]
        return self.default_zone


DEFAULT_CONFIG = Hl7Config()
