"""Fixtures for the MLLP tests: a server running on its own thread (helpers live in samples.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from app.mllp.server import MllpServer

from .samples import ack_handler


class ThreadedServer:
    """An MllpServer on its own event loop in a thread, for synchronous socket tests (hypothesis)."""

    def __init__(self, **kwargs: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.server = MllpServer(ack_handler, host="127.0.0.1", port=0, **kwargs)
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(timeout=5), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def threaded_server() -> Iterator[ThreadedServer]:
    # lone_fs_grace is long so the test's own EOF, not the grace timer, ends a frame that lacks its CR.
    with ThreadedServer(max_frame_bytes=2048, idle_timeout=30, read_timeout=30, lone_fs_grace=10) as ts:
        yield ts
