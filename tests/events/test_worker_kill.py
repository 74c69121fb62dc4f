"""Fault tests with a real worker process (``python -m app.workers``) killed with SIGKILL between the steps of a
projection, then restarted: the final Odoo state is right, nothing is duplicated, nothing is lost.

The Odoo double runs in the test process, so a hook inside it can kill the worker at an exact step: the Odoo call
it is making still commits, but the worker never sees the reply (the worst moment: Odoo did it, we do not know).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from tests.events.resources import MASTER, invoice, payment, put
from tests.fakes.odoo17 import FakeOdoo17

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 120  # a bound so a broken build fails instead of hanging; not a speed assertion


def worker_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTERLACE_")}
    env.update(
        INTERLACE_DATA_DIR=str(settings.data_dir),
        INTERLACE_DATABASE_URL=settings.database_url,
        INTERLACE_REDIS_URL=settings.redis_url,
        INTERLACE_EVENTS_PREFIX=settings.events_prefix,
        INTERLACE_EVENTS_BACKOFF_MS="20",
        INTERLACE_EVENTS_BACKOFF_MAX_MS="200",
        INTERLACE_EVENTS_CLAIM_IDLE_MS="300",
        INTERLACE_EVENTS_LOCK_MS="1500",
        INTERLACE_EVENTS_RELAY_POLL_MS="20",
        INTERLACE_ODOO_URL=settings.odoo_url,
        INTERLACE_ODOO_DB=settings.odoo_db,
        INTERLACE_ODOO_LOGIN=settings.odoo_login,
        INTERLACE_ODOO_API_KEY=settings.odoo_api_key,
        INTERLACE_ODOO_PAYMENT_LEASE="1",
        INTERLACE_LOG_LEVEL="WARNING",
    )
    return env


class Workers:
    """Starts worker processes one after another; ``current`` is the live one."""

    def __init__(self, settings: Settings, log_dir: Path) -> None:
        self.env = worker_env(settings)
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[bytes]] = []

    @property
    def current(self) -> subprocess.Popen[bytes]:
        return self.started[-1]

    def start(self) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"worker-{len(self.started)}.log", "wb")  # noqa: SIM115 - closed in stop_all
        proc = subprocess.Popen([sys.executable, "-m", "app.workers"], cwd=REPO, env=self.env, stdout=log, stderr=log)
        proc.log = log  # type: ignore[attr-defined]
        self.started.append(proc)
        return proc

    def kill_current(self, _fake: Any = None) -> None:
        os.kill(self.current.pid, signal.SIGKILL)

    def restart_when_dead(self) -> None:
        if self.current.poll() is not None:
            self.start()

    def stop_all(self) -> None:
        for proc in self.started:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            proc.log.close()  # type: ignore[attr-defined]


@pytest.fixture
def workers(settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    w = Workers(settings, tmp_path)
    yield w
    w.stop_all()


def wait_until(done: Callable[[], bool], workers: Workers) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not done():
        workers.restart_when_dead()
        if time.monotonic() > deadline:
            logs = "\n".join(
                p.read_text(errors="replace")[-2000:] for p in sorted(workers.log_dir.glob("worker-*.log"))
            )
            raise AssertionError(f"the projection did not finish; worker logs:\n{logs}")
        time.sleep(0.05)


def out_invoices(odoo: FakeOdoo17) -> list[dict[str, Any]]:
    return [m for m in odoo.rows("account.move") if m.get("move_type") == "out_invoice"]


def settled(backbone: Any, odoo: FakeOdoo17, n: int) -> bool:
    states = {(s.resource_type, s.status, s.payment_state) for s in backbone.states.list("erp", limit=1000)}
    paid = [s for s in backbone.states.list("erp", resource_type="Invoice", limit=1000) if s.payment_state == "paid"]
    pays = backbone.states.list("erp", resource_type="PaymentReconciliation", status="projected", limit=1000)
    return len(paid) == n and len(pays) == n and ("Invoice", "dead", None) not in states


@pytest.mark.parametrize(
    ("model", "method"),
    [
        ("account.move", "create"),  # the invoice exists in Odoo, its external id does not
        ("ir.model.data", "create"),  # the binding is being written
        ("account.move", "action_post"),  # posted, but the worker never learns it
        ("account.payment.register", "action_create_payments"),  # money booked, payment not bound yet
        ("account.move", "read"),  # between any two steps
    ],
)
def test_a_worker_killed_mid_projection_and_restarted_leaves_odoo_exactly_right(
    backbone: Any, odoo: FakeOdoo17, workers: Workers, model: str, method: str
) -> None:
    odoo.before_call(workers.kill_current, model=model, method=method)
    put(backbone.services.store, *MASTER, invoice(), payment())
    workers.start()
    wait_until(lambda: settled(backbone, odoo, 1), workers)
    assert len(workers.started) == 2  # it was killed once, and the second worker finished the job
    [move] = out_invoices(odoo)
    assert len(odoo.rows("account.payment")) == 1
    [row] = odoo.execute("account.move", "read", [move["id"]], ["state", "payment_state"])
    assert (row["state"], row["payment_state"]) == ("posted", "paid")
    assert backbone.bus.count_dead("erp") == 0


def test_repeated_kills_across_many_resources_lose_and_duplicate_nothing(
    backbone: Any, odoo: FakeOdoo17, workers: Workers
) -> None:
    n = 4
    put(backbone.services.store, *MASTER)
    for i in range(n):
        put(backbone.services.store, invoice(f"inv-{i}", base=100 + i), payment(f"pr{i}", f"inv-{i}", 190 + i))
    for model, method in [
        ("account.move", "create"),
        ("account.payment.register", "action_create_payments"),
        ("ir.model.data", "write"),
        ("account.move", "action_post"),
    ]:
        odoo.before_call(workers.kill_current, model=model, method=method)
    workers.start()
    wait_until(lambda: settled(backbone, odoo, n), workers)
    assert len(workers.started) >= 3
    moves = out_invoices(odoo)
    assert sorted(m["ref"] for m in moves) == sorted(f"Invoice/inv-{i}" for i in range(n))
    payments = odoo.rows("account.payment")
    assert len(payments) == n
    assert backbone.bus.count_dead("erp") == 0


def test_sigterm_stops_the_worker_gracefully(backbone: Any, odoo: FakeOdoo17, workers: Workers) -> None:
    put(backbone.services.store, *MASTER, invoice())
    proc = workers.start()
    wait_until(lambda: bool(out_invoices(odoo)) and backbone.bus.pending("erp") == 0, workers)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=DEADLINE_S) == 0
