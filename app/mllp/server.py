"""Asyncio MLLP listener: frames in, one handler call per message, the handler's ACK out.

Shape (after Medplum's Hl7Server/Hl7Connection and python-hl7's asyncio streams): the server owns
sockets, timers and framing; what a message means is the injected ``MllpHandler``'s business. Per
connection, messages are handled strictly in order and one at a time (MLLP is request/response). The
sender always gets an answer for a complete frame: the handler's ACK, or a fallback AE (handler raised)
or AR (handler timed out, frame too large). Logs carry peer, connection number and control id only:
never message content, never exception text (it may quote PHI).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

from app.mllp.fallback import ack_code, control_id, fallback_ack
from app.mllp.framing import Frame, FrameDecoder, FramingError, FramingErrorKind, encode

log = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
LINGER_SECONDS = 2.0  # after a fatal error: drain the peer's unread bytes so our AR is not lost to a RST


@dataclass(frozen=True)
class PeerInfo:
    """Who sent a message. ``connection_id`` numbers connections per server (for log correlation)."""

    host: str
    port: int
    connection_id: int
    tls: bool = False


class MllpHandler(Protocol):
    """Turns one de-framed message into the bytes of its ACK.

    Return ``b""`` to send no reply at all (an inbound ACK must never be acknowledged). Raising is
    allowed: the server answers AE and keeps the connection.
    """

    async def __call__(self, message: bytes, peer: PeerInfo, /) -> bytes: ...


@dataclass
class MllpStats:
    """Counters for metrics; monotonically increasing except ``connections_active``."""

    connections_total: int = 0
    connections_active: int = 0
    connections_rejected: int = 0  # over max_connections
    messages: int = 0  # complete frames handed to the handler
    acks_sent: int = 0
    handler_errors: int = 0  # exceptions and timeouts, answered with a fallback ACK
    framing_errors: int = 0  # junk (not whitespace), oversize, abandoned, truncated
    oversize: int = 0
    idle_timeouts: int = 0
    read_timeouts: int = 0  # slow senders (a started frame not completed in time)
    internal_errors: int = 0  # bugs in this module that ended a connection (never the listener)

    def snapshot(self) -> dict[str, int]:
        return asdict(self)


def server_ssl_context(
    certfile: str | Path, keyfile: str | Path | None = None, *, cafile: str | Path | None = None
) -> ssl.SSLContext:
    """TLS context for the listener; with ``cafile``, clients must present a certificate it signed."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(certfile), str(keyfile) if keyfile else None)
    if cafile:
        ctx.load_verify_locations(str(cafile))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


class _Close(Exception):
    """Internal: end this connection (the reason was already logged and counted)."""


class _Connection:
    def __init__(self, peer: PeerInfo, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.peer = peer
        self.reader = reader
        self.writer = writer
        self.busy = False  # a message is being handled or its ACK written: shutdown waits for it
        self.task: asyncio.Task[None] | None = None


class MllpServer:
    """``await start()``, then ``await close()`` for a graceful stop (or use ``async with``).

    - ``port=0`` binds a free port; ``self.port`` holds the real one after ``start()``.
    - ``max_frame_bytes``: larger frames are answered AR (MSA-2 from their MSH), then the connection closes.
    - ``idle_timeout``: close a connection with no frame in progress after this long (None: never).
    - ``read_timeout``: a frame must complete this long after its VT (slow senders); also bounds the TLS
      handshake and writing an ACK to a peer that does not read.
    - ``handler_timeout``: None waits for the handler; otherwise it is cancelled and the sender gets AR.
    - ``shutdown_timeout``: how long ``close()`` waits for messages being handled before cancelling them.
    - ``lone_fs_grace``: quiet time after an FS without CR before the frame is taken as complete.
    """

    def __init__(
        self,
        handler: MllpHandler,
        *,
        host: str = "127.0.0.1",
        port: int = 2575,
        ssl_context: ssl.SSLContext | None = None,
        max_frame_bytes: int = 4 * 1024 * 1024,
        idle_timeout: float | None = 300.0,
        read_timeout: float = 30.0,
        max_connections: int = 512,
        handler_timeout: float | None = None,
        shutdown_timeout: float = 10.0,
        lone_fs_grace: float = 0.5,
        backlog: int = 512,
    ) -> None:
        if max_frame_bytes < 1 or max_connections < 1 or read_timeout <= 0:
            raise ValueError("max_frame_bytes, max_connections and read_timeout must be positive")
        self.handler = handler
        self.host = host
        self.port = port
        self.ssl_context = ssl_context
        self.max_frame_bytes = max_frame_bytes
        self.idle_timeout = idle_timeout
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.handler_timeout = handler_timeout
        self.shutdown_timeout = shutdown_timeout
        self.lone_fs_grace = lone_fs_grace
        self.backlog = backlog
        self.stats = MllpStats()
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._ids = itertools.count(1)
        self._closing = False
        self._closed = asyncio.Event()

    # -- lifecycle ----------------------------------------------------------------------------------
    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._on_connect,
            self.host,
            self.port,
            ssl=self.ssl_context,
            backlog=self.backlog,
            ssl_handshake_timeout=self.read_timeout if self.ssl_context else None,
        )
        self.port = self._server.sockets[0].getsockname()[1]  # the real one when port=0
        log.info("mllp.listening host=%s port=%d tls=%s", self.host, self.port, self.ssl_context is not None)

    async def serve_forever(self) -> None:
        """Run until ``close()`` is called (from a signal handler, say)."""
        if self._server is None:
            await self.start()
        await self._closed.wait()

    async def close(self, timeout: float | None = None) -> None:
        """Stop accepting, let messages being handled finish and their ACKs be written (at most
        ``timeout``, default ``shutdown_timeout``), then close every connection."""
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        timeout = self.shutdown_timeout if timeout is None else timeout
        if self._server is not None:
            self._server.close()
        # Idle connections sit in a read: no message of theirs is in flight, so end them now. Busy ones
        # notice _closing after writing their ACK.
        for conn in list(self._connections):
            if not conn.busy and conn.task is not None:
                conn.task.cancel()
        tasks = [c.task for c in self._connections if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            if pending:
                log.warning("mllp.shutdown_timeout cancelled=%d", len(pending))
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending)
        if self._server is not None:
            await self._server.wait_closed()
        log.info("mllp.stopped port=%d", self.port)
        self._closed.set()

    async def __aenter__(self) -> MllpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def closing(self) -> bool:
        return self._closing

    # -- per connection -----------------------------------------------------------------------------
    async def _on_connect(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peername = writer.get_extra_info("peername") or ("?", 0)
        peer = PeerInfo(
            host=str(peername[0]),
            port=int(peername[1]),
            connection_id=next(self._ids),
            tls=writer.get_extra_info("sslcontext") is not None,
        )
        if self._closing or len(self._connections) >= self.max_connections:
            self.stats.connections_rejected += 1
            log.warning("mllp.connection_rejected peer=%s:%d conn=%d", peer.host, peer.port, peer.connection_id)
            await self._close_writer(writer)
            return
        conn = _Connection(peer, reader, writer)
        conn.task = asyncio.current_task()
        self._connections.add(conn)
        self.stats.connections_total += 1
        self.stats.connections_active += 1
        log.info("mllp.connection_open peer=%s:%d conn=%d", peer.host, peer.port, peer.connection_id)
        try:
            await self._serve(conn)
        except _Close:
            pass
        except asyncio.CancelledError:
            pass  # shutdown; the task ends here so that start_server's bookkeeping sees a clean exit
        except (ConnectionError, ssl.SSLError, OSError) as exc:
            log.info("mllp.connection_lost conn=%d error=%s", peer.connection_id, type(exc).__name__)
        except Exception as exc:  # a bug in this module must not take the listener down
            self.stats.internal_errors += 1
            log.error("mllp.connection_failed conn=%d error=%s at=%s", peer.connection_id, *_describe(exc))
        finally:
            self._connections.discard(conn)
            self.stats.connections_active -= 1
            await self._close_writer(writer)
            log.info("mllp.connection_closed peer=%s:%d conn=%d", peer.host, peer.port, peer.connection_id)

    async def _serve(self, conn: _Connection) -> None:
        decoder = FrameDecoder(self.max_frame_bytes)
        frame_seq, deadline = 0, 0.0
        loop = asyncio.get_running_loop()
        while not self._closing:
            timeout = self.idle_timeout
            if decoder.in_frame:
                if decoder.frames_started != frame_seq:  # slow-sender clock starts at each new frame
                    frame_seq, deadline = decoder.frames_started, loop.time() + self.read_timeout
                left = max(0.0, deadline - loop.time())
                timeout = min(left, self.lone_fs_grace) if decoder.pending_fs else left
            try:
                async with asyncio.timeout(timeout):
                    data = await conn.reader.read(READ_CHUNK)
            except TimeoutError:
                if decoder.pending_fs:  # FS without CR and then silence: the sender is waiting for us
                    await self._process(conn, decoder.assume_end())
                    continue
                if decoder.in_frame:
                    self.stats.read_timeouts += 1
                    log.warning("mllp.read_timeout conn=%d", conn.peer.connection_id)
                else:
                    self.stats.idle_timeouts += 1
                    log.info("mllp.idle_timeout conn=%d", conn.peer.connection_id)
                return
            if not data:
                await self._process(conn, decoder.finish(), at_eof=True)
                return
            await self._process(conn, decoder.feed(data))

    async def _process(self, conn: _Connection, items: list[Frame | FramingError], *, at_eof: bool = False) -> None:
        for item in items:
            if self._closing:
                return  # not started: the sender gets no ACK and resends to the next instance
            if isinstance(item, Frame):
                await self._handle_frame(conn, item)
            else:
                await self._framing_error(conn, item, at_eof=at_eof)

    async def _handle_frame(self, conn: _Connection, frame: Frame) -> None:
        peer, raw = conn.peer, frame.payload
        ctrl = control_id(raw)
        self.stats.messages += 1
        conn.busy = True
        try:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(self.handler_timeout):
                    ack = await self.handler(raw, peer)
                if not isinstance(ack, bytes | bytearray):
                    raise TypeError(f"handler returned {type(ack).__name__}, expected bytes")
                wire = encode(bytes(ack)) if ack else b""
            except TimeoutError:
                self.stats.handler_errors += 1
                log.error("mllp.handler_timeout conn=%d control_id=%s", peer.connection_id, ctrl)
                ack = fallback_ack(raw, "AR")  # transient: the sender may retry later
                wire = encode(ack)
            except Exception as exc:
                self.stats.handler_errors += 1
                name, where = _describe(exc)
                log.error(
                    "mllp.handler_error conn=%d control_id=%s error=%s at=%s", peer.connection_id, ctrl, name, where
                )
                ack = fallback_ack(raw, "AE")
                wire = encode(ack)
            if wire:
                await self._write(conn, wire)
                self.stats.acks_sent += 1
            log.info(
                "mllp.message peer=%s:%d conn=%d control_id=%s ack=%s bytes=%d ms=%.1f",
                peer.host,
                peer.port,
                peer.connection_id,
                ctrl,
                ack_code(bytes(ack)) if ack else "none",
                len(raw),
                (time.perf_counter() - started) * 1000,
            )
        finally:
            conn.busy = False

    async def _framing_error(self, conn: _Connection, err: FramingError, *, at_eof: bool) -> None:
        cid = conn.peer.connection_id
        if err.kind is FramingErrorKind.JUNK and err.whitespace_only and not err.fatal:
            log.debug("mllp.junk conn=%d bytes=%d whitespace=true", cid, err.size)
            return
        self.stats.framing_errors += 1
        if err.kind is FramingErrorKind.OVERSIZE:
            self.stats.oversize += 1
            log.warning(
                "mllp.frame_too_large conn=%d control_id=%s limit=%d", cid, control_id(err.head), self.max_frame_bytes
            )
            conn.busy = True
            try:
                await self._write(conn, encode(fallback_ack(err.head, "AR")))
                self.stats.acks_sent += 1
            finally:
                conn.busy = False
            await self._linger(conn, at_eof=at_eof)
            raise _Close
        log.warning("mllp.framing_error conn=%d kind=%s bytes=%d", cid, err.kind.value, err.size)
        if err.fatal:  # a junk flood: the peer is not speaking MLLP (unframed HL7, say)
            await self._linger(conn, at_eof=at_eof)
            raise _Close

    async def _write(self, conn: _Connection, wire: bytes) -> None:
        conn.writer.write(wire)
        # A peer that never reads its ACKs must not pin the connection forever.
        async with asyncio.timeout(self.read_timeout):
            await conn.writer.drain()

    async def _linger(self, conn: _Connection, *, at_eof: bool) -> None:
        """Half-close and swallow what the peer still sends, briefly: closing a socket with unread input
        makes the kernel send RST, which can destroy the AR we just wrote before the peer reads it."""
        if at_eof:
            return
        with contextlib.suppress(OSError, RuntimeError, NotImplementedError):
            if conn.writer.can_write_eof():
                conn.writer.write_eof()
        with contextlib.suppress(TimeoutError, ConnectionError, OSError, ssl.SSLError):
            async with asyncio.timeout(min(LINGER_SECONDS, self.read_timeout)):
                while await conn.reader.read(READ_CHUNK):
                    pass

    @staticmethod
    async def _close_writer(writer: asyncio.StreamWriter) -> None:
        if writer.is_closing():
            return
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()


def _describe(exc: BaseException) -> tuple[str, str]:
    """Exception type and innermost code location: enough to debug, with no message text (PHI)."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}:{frames[-1].name}" if frames else "?"
    return type(exc).__name__, where
