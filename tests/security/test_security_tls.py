"""TLS verification is on by default: the client refuses the dev backend behind a certificate from a
private CA (fast, without retrying), and accepts it given that CA (`verify=` / `--ca-bundle`).
The backend is the real dev server; TLS is added by a loopback proxy with a generated CA."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.convex import ConvexClient, ProtocolError, TokenSource
from agent.devserver.process import DevServerProcess

WHO = "users/queries/getCurrentUser"


def make_ca_and_cert(tmp: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (ca.pem, cert.pem, key.pem)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "connvo test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(
            "127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    paths = tmp / "ca.pem", tmp / "cert.pem", tmp / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                          serialization.NoEncryption())
    )  # fmt: skip
    return paths


@contextlib.asynccontextmanager
async def tls_proxy(server: DevServerProcess, cert: Path, key: Path) -> AsyncIterator[str]:
    """An HTTPS endpoint on loopback that pipes each connection to the dev backend."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    host, port = server.url.removeprefix("http://").split(":")

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    proxy = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
    try:
        yield f"https://127.0.0.1:{proxy.sockets[0].getsockname()[1]}"
    finally:
        proxy.close()


async def test_client_verifies_tls_by_default_and_accepts_a_ca_bundle(
    devserver: DevServerProcess, tmp_path: Path
) -> None:
    ca, cert, key = make_ca_and_cert(tmp_path)
    token = TokenSource(value=devserver.token("tls"))
    async with tls_proxy(devserver, cert, key) as url:
        devserver.reset_stats()
        started = time.monotonic()
        async with ConvexClient(url, token) as client:
            with pytest.raises(ProtocolError, match="TLS certificate verification failed"):
                await client.run(WHO, {})
        assert time.monotonic() - started < 5.0  # refused at once, not retried with backoff
        assert devserver.stats()["functions"].get(WHO, 0) == 0
        async with ConvexClient(url, token, verify=str(ca)) as client:
            assert (await client.run(WHO, {}))["_id"] == devserver.user_id("tls")


async def test_cli_ca_bundle(devserver: DevServerProcess, tmp_path: Path) -> None:
    """`connvo-agent run` over HTTPS: refused without `--ca-bundle`, joins and leaves with it."""
    ca, cert, key = make_ca_and_cert(tmp_path)
    meeting = devserver.meeting("bot")
    token_file = tmp_path / "token"
    token_file.write_text(devserver.token("bot"))
    async with tls_proxy(devserver, cert, key) as url:

        async def run(*extra: str) -> tuple[int, str]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "agent", "run", "--url", url, "--token-file",
                str(token_file), "--meeting", meeting, "--state-dir", str(tmp_path / "state"),
                "--ice-host", "127.0.0.1", "--audio", "none", "--video", "none",
                "--duration", "0.5", *extra,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            async with asyncio.timeout(30):
                _, err = await proc.communicate()
            assert proc.returncode is not None
            return proc.returncode, err.decode()

        code, err = await run()
        assert code == 1
        assert "TLS certificate verification failed" in err
        code, err = await run("--ca-bundle", str(ca))
        assert code == 0, err
        assert "left meeting" in err
