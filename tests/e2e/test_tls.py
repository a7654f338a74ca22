"""Separate binds and TLS: management listens where it is told (loopback by default,
whatever `--host` says), and with a certificate every port speaks TLS only — checked with
httpx and Triton's own HTTP and gRPC clients, against a certificate the test makes."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.cli.test_cli import assert_one_line_error, run
from tests.e2e.server import ServerProcess


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key (PEM files)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "torchport test")])
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
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, mlp_package: Path
) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("tls")
    cert, key = make_certificate(root)
    server = ServerProcess(
        root / "store",
        [mlp_package],
        TORCHPORT_TLS_CERT=str(cert),
        TORCHPORT_TLS_KEY=str(key),
    ).start()
    try:
        yield server
    finally:
        server.stop()


X = np.random.default_rng(0).standard_normal((2, 32)).astype(np.float32)


def test_rest_and_management_answer_over_tls_only(tls_server: ServerProcess) -> None:
    assert tls_server.url.startswith("https://")
    ready = httpx.get(f"{tls_server.url}/v2/health/ready", verify=tls_server.verify)
    assert ready.status_code == 200
    models = httpx.get(
        f"{tls_server.management_url}/models", headers=tls_server.auth, verify=tls_server.verify
    )
    assert models.status_code == 200
    assert [m["name"] for m in models.json()["models"]] == ["mlp"]
    plain = f"http://127.0.0.1:{tls_server.management_port}/models"
    with pytest.raises(httpx.TransportError):  # the token is never read in clear
        httpx.get(plain, headers=tls_server.auth)
    with pytest.raises(httpx.ConnectError):  # and a client checks whom it talks to
        httpx.get(f"{tls_server.url}/v2/health/ready")


def test_tritonclient_http_and_grpc_infer_over_tls(
    tls_server: ServerProcess, mlp_package: Path
) -> None:
    import torchport

    with torchport.load(mlp_package) as model:
        want = model.predict({"input": X})["output"]
    cert = tls_server.env["TORCHPORT_TLS_CERT"]
    http_client = triton_http.InferenceServerClient(
        f"127.0.0.1:{tls_server.http_port}",
        ssl=True,
        ssl_context_factory=lambda: ssl.create_default_context(cafile=cert),
    )
    tensor = triton_http.InferInput("input", list(X.shape), "FP32")
    tensor.set_data_from_numpy(X)
    got = http_client.infer("mlp", [tensor]).as_numpy("output")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    grpc_client = triton_grpc.InferenceServerClient(
        tls_server.grpc_address, ssl=True, root_certificates=cert
    )
    gtensor = triton_grpc.InferInput("input", list(X.shape), "FP32")
    gtensor.set_data_from_numpy(X)
    got = grpc_client.infer("mlp", [gtensor]).as_numpy("output")
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    plain = triton_grpc.InferenceServerClient(tls_server.grpc_address)
    with pytest.raises(Exception, match="UNAVAILABLE|Socket closed|handshake"):
        plain.is_server_live(client_timeout=5)


def test_management_stays_on_loopback_when_inference_is_elsewhere(
    tmp_path_factory: pytest.TempPathFactory, mlp_package: Path
) -> None:
    # 127.0.0.2 stands for a public address: all of 127/8 is this machine's, nothing leaves.
    server = ServerProcess(
        tmp_path_factory.mktemp("binds") / "store", [mlp_package], TORCHPORT_HOST="127.0.0.2"
    ).start()
    try:
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 200
        assert server.management_url.startswith("http://127.0.0.1:")
        assert httpx.get(f"{server.management_url}/models", headers=server.auth).status_code == 200
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.2:{server.management_port}/models", headers=server.auth)
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{server.http_port}/v2/health/ready")
    finally:
        server.stop()


def test_bad_tls_settings_are_one_line_errors(tmp_path: Path) -> None:
    cert, key = make_certificate(tmp_path)
    store = str(tmp_path / "store")
    assert_one_line_error(
        run("serve", "--store", store, "--tls-cert", str(cert)),
        "tls_cert and tls_key go together",
    )
    assert_one_line_error(
        run("serve", "--store", store, "--tls-cert", str(key), "--tls-key", str(key)),
        "cannot use tls_cert",
    )
    assert_one_line_error(
        run("serve", "--store", store, "--tls-cert", str(cert), "--tls-key", str(tmp_path / "x")),
        "No such file",
    )
