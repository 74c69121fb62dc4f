"""Shared by tests/hl7v2/test_golden.py and scripts/update_golden.py: how a golden .hl7 becomes its .bundle.json.

Fixed inputs keep the output reproducible: the Provenance ``recorded`` instant, a message reference, and a config
whose TZFAC sender lives in America/New_York (the zone-less time stamps golden uses it).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.hl7v2 import Hl7Config, translate

GOLDEN_DIR = Path(__file__).parent / "golden"
RECEIVED_AT = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
CONFIG = Hl7Config(sender_zones={"TZFAC": "America/New_York"})


def golden_inputs() -> list[Path]:
    return sorted(GOLDEN_DIR.glob("*.hl7"))


def expected_path(hl7: Path) -> Path:
    return hl7.with_name(hl7.stem + ".bundle.json")


def render(hl7: Path) -> dict[str, Any]:
    t = translate(hl7.read_bytes(), config=CONFIG, message_ref=f"Binary/{hl7.stem}", received_at=RECEIVED_AT)
    return t.bundle


def dumps(bundle: dict[str, Any]) -> str:
    return json.dumps(bundle, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
