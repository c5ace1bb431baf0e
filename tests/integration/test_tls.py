"""TLS on the serving port, with certificates generated per run (a CA, a server certificate for
127.0.0.1, a client certificate): server-only TLS, mutual TLS, and plaintext clients refused."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from common.settings import ServerSettings
from common.v1 import search_pb2, search_pb2_grpc
from quarry.cli import main
from quarry.client import channel
from tests.conftest import ServerThread

pytestmark = pytest.mark.integration
TOKEN = "tls-admin-token"


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        b = b.add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
    return b.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca_key = _key()
    ca = _cert("quarry test CA", ca_key, None, ca_key, ca=True)
    out: dict[str, Path] = {}

    def write(name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None) -> None:
        out[f"{name}.crt"] = d / f"{name}.crt"
        out[f"{name}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            out[f"{name}.key"] = d / f"{name}.key"
            out[f"{name}.key"].write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )

    write("ca", ca, None)
    for who in ("server", "client"):
        k = _key()
        write(who, _cert(who, k, ca, ca_key), k)
    return out


def _search(ch: grpc.Channel) -> search_pb2.SearchResponse:
    return search_pb2_grpc.SearchServiceStub(ch).Search(
        search_pb2.SearchRequest(collection="tiny", query="paris"), timeout=10
    )


def _server(tiny_snapshot: Path, pki: dict[str, Path], *, mutual: bool) -> ServerThread:
    server = ServerSettings(
        port=0,
        tls_cert=pki["server.crt"],
        tls_key=pki["server.key"],
        tls_client_ca=pki["ca.crt"] if mutual else None,
    )
    return ServerThread([tiny_snapshot], admin_token=TOKEN, server=server)


def test_server_tls(tiny_snapshot: Path, pki: dict[str, Path]) -> None:
    srv = _server(tiny_snapshot, pki, mutual=False)
    try:
        with channel(srv.target, ca=pki["ca.crt"]) as ch:
            assert _search(ch).hits
        with grpc.insecure_channel(srv.target) as ch, pytest.raises(grpc.RpcError) as info:
            _search(ch)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        res = CliRunner().invoke(
            main,
            ["admin", "status", "--target", srv.target, "--token", TOKEN, "--tls-ca", str(pki["ca.crt"])],
        )
        assert res.exit_code == 0 and "tiny" in res.output, res.output
    finally:
        srv.close()


def test_mutual_tls_needs_a_client_certificate(tiny_snapshot: Path, pki: dict[str, Path]) -> None:
    srv = _server(tiny_snapshot, pki, mutual=True)
    try:
        with channel(srv.target, ca=pki["ca.crt"]) as ch, pytest.raises(grpc.RpcError) as info:
            _search(ch)
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        with channel(srv.target, ca=pki["ca.crt"], cert=pki["client.crt"], key=pki["client.key"]) as ch:
            assert _search(ch).hits
    finally:
        srv.close()


def test_tls_settings_are_validated(pki: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="go together"):
        ServerSettings(tls_cert=pki["server.crt"])
    with pytest.raises(ValueError, match=r"needs server\.tls_cert"):
        ServerSettings(tls_client_ca=pki["ca.crt"])
    with pytest.raises(ValueError, match="needs --tls-ca"):
        channel("127.0.0.1:1", cert=pki["client.crt"], key=pki["client.key"])
