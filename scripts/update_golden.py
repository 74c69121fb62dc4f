"""Regenerate tests/hl7v2/golden/*.bundle.json from the .hl7 files next to them.

Usage: .venv/bin/python scripts/update_golden.py [name-substring ...]
Prints which files changed; review the diff (git diff tests/hl7v2/golden) before committing.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.hl7v2.goldens import dumps, expected_path, golden_inputs, render  # noqa: E402


def main(argv: list[str]) -> int:
    changed = 0
    for hl7 in golden_inputs():
        if argv and not any(a in hl7.name for a in argv):
            continue
        out = expected_path(hl7)
        text = dumps(render(hl7))
        old = out.read_text(encoding="utf-8") if out.exists() else None
        if old != text:
            out.write_text(text, encoding="utf-8")
            changed += 1
            print(("updated " if old is not None else "created ") + str(out.relative_to(Path.cwd())))
    print(f"{changed} golden file(s) written")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
