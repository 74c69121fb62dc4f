"""Throughput of the HL7v2 hot path (parse + translate, and parse alone) on the golden messages.

Usage: .venv/bin/python scripts/bench_hl7v2.py [seconds-per-message=1.0]
Reports the best of several rounds (least disturbed by other load) as messages per second on one core.
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.hl7v2 import parse, translate  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "tests" / "hl7v2" / "golden"
NAMES = ["sample-ADT01-23", "sample-ADT-A08-01", "sample-ADT-A01-01", "sample-ORU-R01-01", "sample-DFT-P03-01"]


def best_rate(fn: object, budget: float) -> float:
    number = 20
    rounds = max(3, int(budget / 0.05))
    best = min(timeit.repeat(fn, number=number, repeat=rounds))  # type: ignore[arg-type]
    return number / best


def main() -> None:
    budget = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    print(f"{'message':34} {'bytes':>6} {'parse msg/s':>12} {'translate msg/s':>16}")
    for name in NAMES:
        raw = (GOLDEN / f"{name}.hl7").read_bytes()
        p = best_rate(lambda raw=raw: parse(raw), budget)
        t = best_rate(lambda raw=raw: translate(raw), budget)
        print(f"{name:34} {len(raw):>6} {p:>12,.0f} {t:>16,.0f}")


if __name__ == "__main__":
    main()
