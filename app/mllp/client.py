"""A small asyncio MLLP client: one connection, one message at a time, reply frames read with the same
decoder the server uses. For tests, benchmarks and scripts; not a retrying interface engine."""

from __future__ import annotations

import asyncio
import ssl

from app.mllp.framing import Frame, FrameDecoder, FramingErrorKind, encode

DEFAULT_MAX_REPLY = 16 * 1024 * 1024


class MllpClientError(Exception):
    """Root of client errors."""


class MllpConnectionClosed(MllpClientError):
    """The server closed the connection before a complete reply arrived."""


class MllpClient:
    """``async with MllpClient(host, port) as c: ack = await c.send(msg)``; reconnects lazily after a
    close. Concurrent ``send`` calls on one client are serialised (MLLP is request/response)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        timeout: float | None = 30.0,
        max_reply_bytes: int = DEFAULT_MAX_REPLY,
    ) -> None:
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.server_hostname = server_hostname
        self.timeout = timeout
        self.max_reply_bytes = max_reply_bytes
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._decoder = FrameDecoder(max_reply_bytes)
        self._replies: list[bytes] = []
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        if self._writer is not None and not self._writer.is_closing():
            return
        hostname = self.server_hostname if self.ssl_context else None
        async with asyncio.timeout(self.timeout):
            self._reader, self._writer = await asyncio.open_connection(
                self.host, self.port, ssl=self.ssl_context, server_hostname=hostname
            )
        self._decoder = FrameDecoder(self.max_reply_bytes)
        self._replies = []

    async def send(self, message: bytes) -> bytes:
        """Send one message and return the payload of the reply frame (the ACK)."""
        async with self._lock:
            await self.connect()
            assert self._writer is not None
            self._writer.write(encode(message))
            try:
                async with asyncio.timeout(self.timeout):
                    await self._writer.drain()
                    return await self._next_reply()
            except BaseException:
                # A reply may still be on its way; it would be taken for the next message's: start over.
                await self.close()
                raise

    async def _next_reply(self) -> bytes:
        assert self._reader is not None
        while not self._replies:
            data = await self._reader.read(64 * 1024)
            items = self._decoder.feed(data) if data else self._decoder.finish()
            for item in items:
                if isinstance(item, Frame):
                    self._replies.append(item.payload)
                elif item.kind is FramingErrorKind.OVERSIZE:
                    raise MllpClientError(f"reply larger than {self.max_reply_bytes} bytes")
            if not data and not self._replies:
                raise MllpConnectionClosed("connection closed before a reply arrived")
        return self._replies.pop(0)

    async def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None and not writer.is_closing():
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, ssl.SSLError, OSError):
                pass

    async def __aenter__(self) -> MllpClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def send(
    host: str,
    port: int,
    message: bytes,
    *,
    ssl_context: ssl.SSLContext | None = None,
    timeout: float | None = 30.0,
) -> bytes:
    """One-shot: connect, send one message, return its ACK, close."""
    async with MllpClient(host, port, ssl_context=ssl_context, timeout=timeout) as client:
        return await client.send(message)
