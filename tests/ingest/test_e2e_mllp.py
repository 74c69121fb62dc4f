"""End to end: the REAL ``interlace serve`` and MLLP listener processes, python-hl7's asyncio MLLP client over a real
socket, and the FHIR API to read what the messages became."""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hl7
import pytest
import requests
from hl7.mllp import open_hl7_connection

from . import samples

pytestmark = [pytest.mark.slow, pytest.mark.interop]

START_TIMEOUT_S = 90.0  # hang guards only, never speed assertions
STOP_TIMEOUT_S = 40.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def clean_env(data_dir: Path, database_url: str = "", **extra: str) -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("INTERLACE_") and k not in {"DATABASE_URL", "REDIS_URL"}
    }
    env.update(INTERLACE_DATA_DIR=str(data_dir), INTERLACE_AUTH="off", PYTHONUNBUFFERED="1", **extra)
    if database_url:
        env["DATABASE_URL"] = database_url
    return env


@dataclass
class Proc:
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"process ignored signal {sig}; log:\n{self.log()}") from None
        return self.process.returncode


def start(cmd: list[str], env: dict[str, str], workdir: Path, name: str) -> Proc:
    log_path = workdir / f"{name}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(cmd, cwd=workdir, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    return Proc(process, log_path)


def wait_until(ready: Any, proc: Proc, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.process.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.process.returncode}; log:\n{proc.log()}")
        try:
            if ready():
                return
        except (OSError, requests.RequestException):
            pass
        time.sleep(0.1)
    raise AssertionError(f"{what} did not come up; log:\n{proc.log()}")


def port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


@dataclass
class Stack:
    fhir: str
    commit_port: int
    receipt_port: int
    http: requests.Session
    workdir: Path
    data_dir: Path
    database_url: str  # "" = the SQLite file in data_dir


def start_listener(workdir: Path, data_dir: Path, mode: str, name: str, database_url: str = "") -> tuple[Proc, int]:
    port = free_port()
    env = clean_env(data_dir, database_url, INTERLACE_MLLP_PORT=str(port), INTERLACE_MLLP_ACK_MODE=mode)
    listener = start([sys.executable, "-m", "app.mllp.main"], env, workdir, name)
    try:
        wait_until(lambda: port_open(port), listener, f"MLLP listener ({mode})")
    except BaseException:
        listener.stop(signal.SIGKILL)
        raise
    return listener, port


@contextmanager
def fresh_database(kind: str) -> Iterator[str]:
    """The URL of a fresh database: "" for SQLite (a file in the data dir), else a new PostgreSQL database."""
    if kind == "sqlite":
        yield ""
        return
    import psycopg

    admin_url = os.environ.get("INTERLACE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
    admin_url = admin_url.replace("postgresql+psycopg://", "postgresql://")
    name = f"interlace_e2e_mllp_{secrets.token_hex(5)}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield admin_url.rsplit("/", 1)[0] + "/" + name
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with fresh_database(request.param) as database_url:
        yield from _stack(tmp_path_factory, database_url)


def _stack(tmp_path_factory: pytest.TempPathFactory, database_url: str) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("e2e-mllp")
    data_dir = workdir / "data"
    http_port = free_port()
    interlace = Path(sys.executable).with_name("interlace")
    server_cmd = [str(interlace)] if interlace.exists() else [sys.executable, "-m", "app.cli"]
    server = start(
        [*server_cmd, "serve", "--host", "127.0.0.1", "--port", str(http_port), "--workers", "1"],
        clean_env(data_dir, database_url),
        workdir,
        "server",
    )
    procs = [server]
    session = requests.Session()
    fhir = f"http://127.0.0.1:{http_port}/fhir"
    try:
        # the server migrates the database at start; the listeners need that schema
        wait_until(lambda: session.get(f"{fhir}/metadata", timeout=30).status_code == 200, server, "interlace serve")
        ports = {}
        for mode in ("commit", "receipt"):
            listener, ports[mode] = start_listener(workdir, data_dir, mode, f"mllp-{mode}", database_url)
            procs.append(listener)
        yield Stack(fhir, ports["commit"], ports["receipt"], session, workdir, data_dir, database_url)
        for proc in procs[1:]:
            assert proc.stop() == 0, proc.log()  # SIGTERM: graceful, exit status 0
            assert "Traceback" not in proc.log()
    finally:
        session.close()
        for proc in reversed(procs):
            proc.stop()


async def exchange(port: int, messages: list[bytes | str]) -> list[hl7.Message]:
    """Send each message on ONE connection and read its ACK (bytes are sent as they are, even when not HL7)."""
    reader, writer = await open_hl7_connection("127.0.0.1", port)
    acks = []
    try:
        for message in messages:
            if isinstance(message, bytes):
                writer.writeblock(message)
            else:
                writer.writemessage(hl7.parse(message))
            await writer.drain()
            acks.append(await asyncio.wait_for(reader.readmessage(), 60))
    finally:
        writer.close()
        await writer.wait_closed()
    return acks


def send(port: int, messages: list[bytes | str]) -> list[tuple[str, str]]:
    acks = asyncio.run(exchange(port, messages))
    return [(str(a.segment("MSA")[1]), str(a.segment("MSA")[2])) for a in acks]


def search(stack: Stack, path: str) -> list[dict[str, Any]]:
    response = stack.http.get(f"{stack.fhir}/{path}", timeout=30)
    assert response.status_code == 200, response.text
    return [e["resource"] for e in response.json().get("entry", []) if e.get("search", {}).get("mode") == "match"]


def test_commit_mode_messages_become_fhir_resources(stack: Stack) -> None:
    acks = send(stack.commit_port, [samples.adt_a01().decode(), samples.oru_r01().decode()])

    assert acks == [("AA", "CTRL0001"), ("AA", "CTRL0100")]
    [patient] = search(stack, "Patient?identifier=MRN1001")
    assert patient["name"][0]["family"] == "Doe"
    encounters = search(stack, f"Encounter?subject=Patient/{patient['id']}")
    assert len(encounters) == 1
    observations = search(stack, f"Observation?subject=Patient/{patient['id']}")
    assert len(observations) == 3
    assert {o["code"]["coding"][0]["code"] for o in observations} == {"2093-3", "2571-8", "13457-7"}


def test_a_resent_control_id_creates_no_duplicate(stack: Stack) -> None:
    message = samples.adt_a01("E2E-DUP", mrn="MRN2002", visit="V2002").decode()
    assert send(stack.commit_port, [message, message]) == [("AA", "E2E-DUP"), ("AA", "E2E-DUP")]

    [patient] = search(stack, "Patient?identifier=MRN2002")
    assert len(search(stack, f"Encounter?subject=Patient/{patient['id']}")) == 1
    assert len(search(stack, f"Provenance?target=Patient/{patient['id']}")) == 1


def test_a_malformed_message_is_answered_and_the_next_still_gets_aa(stack: Stack) -> None:
    acks = send(
        stack.commit_port,
        [
            b"definitely not HL7",
            samples.bad_content("E2E-BAD").decode(),
            samples.adt_a01("E2E-NEXT", mrn="MRN3003", visit="V3003").decode(),
        ],
    )

    assert [code for code, _ in acks] == ["AR", "AE", "AA"]
    assert acks[1:] == [("AE", "E2E-BAD"), ("AA", "E2E-NEXT")]
    assert len(search(stack, "Patient?identifier=MRN3003")) == 1


def test_receipt_mode_acks_first_and_the_resources_follow(stack: Stack) -> None:
    acks = send(stack.receipt_port, [samples.oru_r01("E2E-RCPT", mrn="MRN4004", filler="F4004").decode()])
    assert acks == [("AA", "E2E-RCPT")]

    deadline = time.monotonic() + 60  # a hang guard: the worker polls every 0.2 s
    while not (found := search(stack, "Patient?identifier=MRN4004")) and time.monotonic() < deadline:
        time.sleep(0.2)
    [patient] = found
    assert len(search(stack, f"Observation?subject=Patient/{patient['id']}")) == 3


async def flood(port: int, prefix: str, senders: int, until_acked: int, kill: Any) -> set[str]:
    """``senders`` connections each sending numbered messages; once ``until_acked`` ACKs are in, ``kill()`` the
    listener. Returns the control ids that were answered AA (the ones that must survive)."""
    acked: set[str] = set()
    enough = asyncio.Event()

    async def sender(n: int) -> None:
        try:
            reader, writer = await open_hl7_connection("127.0.0.1", port)
        except OSError:
            return
        try:
            for i in range(10_000):
                control_id = f"{prefix}-{n}-{i}"
                writer.writeblock(samples.adt_a01(control_id, mrn=f"K{n}{i:05d}", visit=f"KV{n}{i:05d}"))
                await writer.drain()
                ack = await asyncio.wait_for(reader.readmessage(), 60)
                if str(ack.segment("MSA")[1]) == "AA":
                    acked.add(str(ack.segment("MSA")[2]))
                if len(acked) >= until_acked:
                    enough.set()
        except (OSError, asyncio.IncompleteReadError, hl7.ParseException, TimeoutError):
            return  # the listener died under us: whatever was not answered AA may be lost
        finally:
            writer.close()

    tasks = [asyncio.create_task(sender(n)) for n in range(senders)]
    await asyncio.wait_for(enough.wait(), START_TIMEOUT_S)
    kill()
    await asyncio.gather(*tasks)
    return acked


@pytest.mark.parametrize("mode", ["commit", "receipt"])
def test_a_listener_killed_mid_load_loses_no_acknowledged_message(stack: Stack, mode: str) -> None:
    from app.adapters.message_store import SqlMessageStore
    from app.config import Settings
    from app.services.ports import MessageQuery

    listener, port = start_listener(stack.workdir, stack.data_dir, mode, f"mllp-kill-{mode}", stack.database_url)
    try:
        acked = asyncio.run(
            flood(port, f"KILL{mode[0].upper()}", senders=4, until_acked=20, kill=lambda: listener.process.kill())
        )
    finally:
        listener.stop(signal.SIGKILL)
    assert len(acked) >= 20

    url = Settings(data_dir=stack.data_dir, database_url=stack.database_url).effective_database_url
    messages = SqlMessageStore(url, pool_size=1)
    try:
        stored = messages.search(MessageQuery(count=500, control_id=None)).records
        by_control = {r.header.control_id: r for r in stored}
        assert acked <= by_control.keys()  # durable before the ACK
        if mode == "commit":
            assert {by_control[c].status for c in acked} == {"processed"}  # AA only after the commit
        else:
            # a restarted receipt listener's worker translates what the killed one had only stored
            restarted, _ = start_listener(stack.workdir, stack.data_dir, mode, "mllp-restarted", stack.database_url)
            try:
                deadline = time.monotonic() + START_TIMEOUT_S
                while time.monotonic() < deadline:
                    status = {messages.get(by_control[c].id).status for c in acked}  # type: ignore[union-attr]
                    if status == {"processed"}:
                        break
                    time.sleep(0.2)
                assert status == {"processed"}
            finally:
                assert restarted.stop() == 0
        for control_id in sorted(acked)[:3]:
            n, i = control_id.split("-")[1:]
            assert len(search(stack, f"Patient?identifier=K{n}{int(i):05d}")) == 1
    finally:
        messages.close()
