"""Fixtures that run the REAL server: ``interlace serve`` (gunicorn master + gthread workers) in a subprocess.

- ``start_server(database=..., auth=..., env=...)`` (function scope) starts one and stops it after the test.
- ``live_server`` (module scope) is the base URL of one shared server; parametrize it indirectly with
  ``"sqlite"`` (default) or ``"postgres"`` (a fresh database, dropped afterwards) to run tests on both stores.

Each server gets its own temp data dir (SQLite file, embedded Redis), binds port 0 and reports the port it got, so
servers never collide, also under pytest-xdist. When a test fails, the server's log is attached to its report.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

DEFAULT_TEST_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
_LISTENING = re.compile(r"Listening at: (http://\S+)")
_START_TIMEOUT_S = 90.0  # a hang guard, not a speed assertion: cold imports on a busy 2-core CI box are slow
_STOP_TIMEOUT_S = 40.0  # above gunicorn's graceful_timeout (20 s)


@dataclass
class ServerProcess:
    """A running ``interlace serve``; ``url`` is the FHIR base (``http://127.0.0.1:<port>/fhir``)."""

    process: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path
    database_url: str
    root_url: str = ""
    sessions: list[requests.Session] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"{self.root_url}/fhir"

    def __str__(self) -> str:
        return self.url

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def session(self) -> requests.Session:
        """A session closed when the server stops (no ResourceWarning for an unclosed socket)."""
        session = requests.Session()
        self.sessions.append(session)
        return session

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Send ``sig`` (SIGTERM: gunicorn's graceful stop) and wait; returns the exit status."""
        for session in self.sessions:
            session.close()
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                self._kill_orphaned_redis()
                raise AssertionError(f"interlace serve ignored signal {sig}; log:\n{self.log()}") from None
        if self.process.returncode < 0:
            self._kill_orphaned_redis()
        return self.process.returncode

    def _kill_orphaned_redis(self) -> None:
        # A master killed hard cannot stop its embedded Redis (own session, so no signal reached it either).
        try:
            os.kill(int((self.data_dir / "redis.pid").read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def _interlace_command() -> list[str]:
    script = Path(sys.executable).with_name("interlace")
    return [str(script)] if script.exists() else [sys.executable, "-m", "app.cli"]


def _clean_env(data_dir: Path, database_url: str, auth: bool, extra: dict[str, str]) -> dict[str, str]:
    # Nothing from the developer's own INTERLACE_*/DATABASE_URL/REDIS_URL may leak into the server under test.
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("INTERLACE_") and k not in {"DATABASE_URL", "REDIS_URL"}
    }
    env.update(
        INTERLACE_DATA_DIR=str(data_dir),
        INTERLACE_AUTH="on" if auth else "off",
        INTERLACE_LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    if database_url:
        env["DATABASE_URL"] = database_url
    env.update(extra)
    return env


def launch_server(
    workdir: Path,
    database_url: str = "",
    auth: bool = False,
    env: dict[str, str] | None = None,
    args: Sequence[str] = (),
) -> ServerProcess:
    """Start ``interlace serve --port 0`` and wait until ``/fhir/metadata`` answers."""
    data_dir = workdir / "data"
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*_interlace_command(), "serve", "--host", "127.0.0.1", "--port", "0", *args],
            cwd=workdir,
            env=_clean_env(data_dir, database_url, auth, env or {}),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = ServerProcess(process=process, data_dir=data_dir, log_path=log_path, database_url=database_url)
    try:
        _wait_until_serving(server)
    except BaseException:
        server.stop()  # SIGTERM: the master also stops its embedded Redis
        raise
    return server


def _wait_until_serving(server: ServerProcess) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    with requests.Session() as probe:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise AssertionError(f"interlace serve exited with {server.process.returncode}; log:\n{server.log()}")
            if not server.root_url and (match := _LISTENING.search(server.log())):
                server.root_url = match.group(1)
            if server.root_url:
                try:
                    response = probe.get(f"{server.url}/metadata", timeout=30)
                except (requests.ConnectionError, requests.Timeout):
                    pass  # workers still booting, or a cold first request on a busy machine
                else:
                    if response.status_code == 200:
                        return
                    status, body = response.status_code, response.text[:2000]
                    raise AssertionError(f"GET /fhir/metadata answered {status}: {body}\nlog:\n{server.log()}")
            time.sleep(0.1)
    raise AssertionError(f"interlace serve did not answer /fhir/metadata in time; log:\n{server.log()}")


# -- PostgreSQL: a fresh database per server ---------------------------------------------------------------


def postgres_admin_url() -> str:
    return os.environ.get("INTERLACE_TEST_POSTGRES_URL", DEFAULT_TEST_POSTGRES_URL)


@contextmanager
def fresh_postgres_database() -> Iterator[str]:
    """Create a uniquely named database and drop it afterwards; skip (fail under CI) when PostgreSQL is down."""
    import psycopg

    admin_url = postgres_admin_url()
    try:
        admin = psycopg.connect(admin_url, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL not reachable at INTERLACE_TEST_POSTGRES_URL ({exc.__class__.__name__})")
    name = f"interlace_it_{secrets.token_hex(6)}"
    try:
        with admin:
            admin.execute(f'CREATE DATABASE "{name}"')
            try:
                yield _with_database(admin_url, name)
            finally:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        admin.close()


def _with_database(url: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@contextmanager
def _server(workdir: Path, database: str, **kwargs: Any) -> Iterator[ServerProcess]:
    with ExitStack() as stack:
        database_url = stack.enter_context(fresh_postgres_database()) if database == "postgres" else ""
        server = launch_server(workdir, database_url=database_url, **kwargs)
        try:
            yield server
        finally:
            server.stop()


# -- fixtures ---------------------------------------------------------------------------------------------


@pytest.fixture
def start_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Factory: ``start_server(database="sqlite"|"postgres", auth=False, env={...}, args=[...])``."""
    with ExitStack() as stack:
        started: list[ServerProcess] = []
        request.node.interlace_servers = started

        def start(database: str = "sqlite", **kwargs: Any) -> ServerProcess:
            workdir = tmp_path / f"server{len(started)}"
            workdir.mkdir()
            server = stack.enter_context(_server(workdir, database, **kwargs))
            started.append(server)
            return server

        yield start


# Servers behind the live_server URLs, so a failing test's report can carry the server log.
_LIVE: dict[str, ServerProcess] = {}


@pytest.fixture(scope="module")
def live_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (``http://127.0.0.1:<port>/fhir``) of one server for the module, auth off.

    ``request.param`` picks the store: "sqlite" (default) or "postgres" (fresh database), e.g.
    ``@pytest.mark.parametrize("live_server", ["sqlite", "postgres"], indirect=True)``.
    """
    database = getattr(request, "param", "sqlite")
    workdir = tmp_path_factory.mktemp(f"live-{database}")
    with _server(workdir, database) as server:
        _LIVE[server.url] = server
        try:
            yield server.url
        finally:
            del _LIVE[server.url]
    shutil.rmtree(workdir, ignore_errors=True)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A postgres-parametrized live server needs the postgres marker, so `-m "not postgres"` deselects it.
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("live_server") == "postgres":
            item.add_marker(pytest.mark.postgres)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed:
        servers = list(getattr(item, "interlace_servers", []))
        live = _LIVE.get(getattr(item, "funcargs", {}).get("live_server", ""))
        if live is not None:
            servers.append(live)
        for index, server in enumerate(servers):
            report.sections.append((f"interlace serve log #{index}", server.log()[-20000:]))
    return report
