"""MLLP over TLS with a self-signed certificate made in the test."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from app.mllp.client import MllpClient, MllpConnectionClosed
from app.mllp.fallback import local_minimal_ack
from app.mllp.server import MllpServer, PeerInfo, server_ssl_context

from .samples import make_message, msa, run


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    d = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return d / "cert.pem", d / "key.pem"


def test_messages_over_tls_are_acked_and_the_handler_sees_a_tls_peer(cert_files: tuple[Path, Path]) -> None:
    cert, key = cert_files
    peers: list[PeerInfo] = []

    async def handler(message: bytes, peer: PeerInfo) -> bytes:
        peers.append(peer)
        return local_minimal_ack(message, "AA")

    async def scenario() -> list[bytes]:
        client_ctx = ssl.create_default_context(cafile=str(cert))
        async with MllpServer(handler, host="127.0.0.1", port=0, ssl_context=server_ssl_context(cert, key)) as srv:
            async with MllpClient("127.0.0.1", srv.port, ssl_context=client_ctx, server_hostname="localhost") as c:
                return [await c.send(make_message(f"TLS{i}")) for i in range(3)]

    acks = run(scenario())
    assert [msa(a) for a in acks] == [("AA", "TLS0"), ("AA", "TLS1"), ("AA", "TLS2")]
    assert peers and all(p.tls for p in peers)


def test_plain_client_cannot_talk_to_a_tls_listener(cert_files: tuple[Path, Path]) -> None:
    cert, key = cert_files

    async def scenario() -> None:
        ctx = server_ssl_context(cert, key)
        async with MllpServer(local_ack, host="127.0.0.1", port=0, ssl_context=ctx, read_timeout=2) as srv:
            async with MllpClient("127.0.0.1", srv.port, timeout=10) as client:
                with pytest.raises((MllpConnectionClosed, ConnectionResetError)):  # server drops the handshake
                    await client.send(make_message("PLAIN"))
            assert srv.stats.messages == 0

    run(scenario())


async def local_ack(message: bytes, peer: PeerInfo) -> bytes:
    return local_minimal_ack(message, "AA")
