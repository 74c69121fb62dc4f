"""Interoperability: python-hl7's asyncio MLLP client and server (an independent implementation)
talking to ours."""

from __future__ import annotations

import asyncio

import hl7
import pytest
from hl7.mllp import open_hl7_connection, start_hl7_server

from app.mllp.client import MllpClient
from app.mllp.server import MllpServer

from .samples import ack_handler, make_message, msa, run

pytestmark = pytest.mark.interop


def test_python_hl7_client_gets_acks_from_our_server() -> None:
    async def scenario() -> list[hl7.Message]:
        async with MllpServer(ack_handler, host="127.0.0.1", port=0) as srv:
            reader, writer = await open_hl7_connection("127.0.0.1", srv.port)
            acks = []
            for i in range(3):
                writer.writemessage(hl7.parse(make_message(f"PYHL7-{i}").decode("ascii")))
                await writer.drain()
                acks.append(await reader.readmessage())
            writer.close()
            await writer.wait_closed()
            return acks

    acks = run(scenario())
    assert [(str(a.segment("MSA")[1]), str(a.segment("MSA")[2])) for a in acks] == [
        ("AA", f"PYHL7-{i}") for i in range(3)
    ]
    assert str(acks[0].segment("MSH")[9]) == "ACK^A01^ACK"
    assert str(acks[0].segment("MSH")[3]) == "RECVAPP"  # sender and receiver swapped


def test_our_client_talks_to_a_python_hl7_server() -> None:
    async def on_connect(reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        try:
            while not reader.at_eof():
                message = await reader.readmessage()
                writer.writemessage(message.create_ack())
                await writer.drain()
        except asyncio.IncompleteReadError:
            pass
        finally:
            writer.close()

    async def scenario() -> list[bytes]:
        server = await start_hl7_server(on_connect, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with MllpClient("127.0.0.1", port) as client:
                return [await client.send(make_message(f"OURS-{i}")) for i in range(3)]
        finally:
            server.close()
            await server.wait_closed()

    acks = run(scenario())
    assert [msa(a) for a in acks] == [("AA", f"OURS-{i}") for i in range(3)]
