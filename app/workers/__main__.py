"""``python -m app.workers``: the event worker without the CLI (what ``interlace worker`` runs)."""

from __future__ import annotations

import logging
import sys

from app.config import load_settings
from app.workers.events import run_worker

if __name__ == "__main__":
    settings = load_settings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(run_worker(settings))
