"""TLS on every listener (CONTRACT §8: `ssl:...` endpoint strings), over real loopback sockets."""

from __future__ import annotations

import datetime
import ipaddress
import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol, quoteStringArgument, wrapClientTLS
from twisted.internet.protocol import Protocol
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.http_headers import Headers

from gateway import tap
from gateway.protocol.framing import FrameDecoder, encode_frame
from gateway.protocol.signing import compact, sign
from tests.lots.harness import HASH, PASSWORD
from tests.ports import free_port

# Twisted hands pyOpenSSL objects to pyOpenSSL, which warns; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning")

HOST = "127.0.0.1"
LOGIN = {"parkUserName": "lot001", "parkUserPwd": PASSWORD}


def self_signed(path: Path) -> bytes:
    """Write a key and a self-signed certificate for 127.0.0.1 to one PEM file; return the certificate."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cpmi-gateway test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(HOST)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(key_pem + certificate_pem)
    return certificate_pem


def write_config(tmp_path: Path, pem: Path, uplink: int, downlink: int, api: int) -> str:
    files = f"privateKey={quoteStringArgument(str(pem))}:certKey={quoteStringArgument(str(pem))}"
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
[gateway]
signing_key = "{tmp_path / "gateway.key"}"
[listen]
uplink = "ssl:{uplink}:interface={HOST}:{files}"
downlink = "ssl:{downlink}:interface={HOST}:{files}"
api = "ssl:{api}:interface={HOST}:{files}"
[journal]
path = "{tmp_path / "journal"}"
[[lot]]
park_code = "P001"
username = "lot001"
password = "{HASH}"
secret = "k"
"""
    )
    return str(path)


class LotClient(Protocol):
    """A lot's downlink connection that logs in and waits for the REPLY."""

    def __init__(self) -> None:
        self.decoder = FrameDecoder(2**20)
        self.reply: Deferred[dict[str, Any]] = Deferred()

    def connectionMade(self) -> None:
        login = {
            "token": "",
            "code": "login",
            "oprNum": "tls-bind-1",
            "signature": sign(compact(LOGIN), "", "k"),
            "data": LOGIN,
        }
        self.transport.write(encode_frame(login))  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        for payload in self.decoder.feed(data):
            assert isinstance(payload, bytes)
            frame = json.loads(payload)
            if frame.get("oprNum") == "tls-bind-1" and not self.reply.called:
                self.reply.callback(frame)


@pytest_twisted.ensureDeferred
async def test_every_listener_speaks_tls(tmp_path: Path) -> None:
    """With `ssl:` listeners, a lot logs in over HTTPS, the API answers /healthz over HTTPS,
    and a lot binds on the TLS downlink; each peer verifies the gateway's certificate."""
    pem = tmp_path / "gateway.pem"
    trust_root = Certificate.loadPEM(self_signed(pem))
    uplink, downlink, api = free_port(), free_port(), free_port()
    options = tap.Options()
    options.parseOptions(["--config", write_config(tmp_path, pem, uplink, downlink, api)])
    service = tap.makeService(options, reactor)
    service.startService()
    client = HTTPClient(
        Agent(
            reactor,
            contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust_root),
            pool=HTTPConnectionPool(reactor, persistent=False),
        )
    )
    lot = LotClient()
    try:
        param = {
            "token": "",
            "code": "login",
            "oprNum": "tls-login-1",
            "signature": sign(compact(LOGIN), "", "k"),
            "data": LOGIN,
        }
        response = await client.post(
            f"https://{HOST}:{uplink}/uplink",
            data=urllib.parse.urlencode({"param": json.dumps(param)}).encode(),
            headers=Headers({"Content-Type": ["application/x-www-form-urlencoded"]}),
        )
        assert response.code == 200
        login = json.loads(await response.content())
        assert login["resultCode"] == "0000", login
        assert len(login["data"]["token"]) == 32

        health = await client.get(f"https://{HOST}:{api}/healthz")
        assert health.code == 200
        assert json.loads(await health.content()) == {"status": "ok"}

        endpoint = wrapClientTLS(
            optionsForClientTLS(HOST, trustRoot=trust_root), TCP4ClientEndpoint(reactor, HOST, downlink)
        )
        await connectProtocol(endpoint, lot)
        bound = await lot.reply
        assert bound["resultCode"] == "0000", bound
        assert len(bound["data"]["token"]) == 32
    finally:
        if lot.transport is not None:
            lot.transport.loseConnection()
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_a_client_that_does_not_trust_the_certificate_is_refused(tmp_path: Path) -> None:
    """The listeners really are TLS: a client checking against other roots fails the handshake."""
    pem = tmp_path / "gateway.pem"
    self_signed(pem)
    other = Certificate.loadPEM(self_signed(tmp_path / "other.pem"))
    uplink, downlink, api = free_port(), free_port(), free_port()
    options = tap.Options()
    options.parseOptions(["--config", write_config(tmp_path, pem, uplink, downlink, api)])
    service = tap.makeService(options, reactor)
    service.startService()
    client = HTTPClient(
        Agent(
            reactor,
            contextFactory=BrowserLikePolicyForHTTPS(trustRoot=other),
            pool=HTTPConnectionPool(reactor, persistent=False),
        )
    )
    try:
        try:
            await client.get(f"https://{HOST}:{api}/healthz")
        except Exception as error:  # ResponseNeverReceived wrapping an SSL.Error
            assert "certificate verify failed" in repr(getattr(error, "reasons", error))
        else:
            raise AssertionError("an untrusted certificate was accepted")
    finally:
        await service.stopService()
