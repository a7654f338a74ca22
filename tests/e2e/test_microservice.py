"""`torchport serve PACKAGE --microservice`: one model, read-only, every protocol plus the
SageMaker container contract, and a graceful stop on SIGTERM."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

import torchport
from tests.cli.test_cli import assert_one_line_error, run
from tests.e2e.server import ServerProcess, oip_body

NPY = "application/x-npy"


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    """A `.npy` file's header alone: version 1.0, padded to 64 bytes."""
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


ROWS = np.random.default_rng(0).standard_normal((3, 32)).astype(np.float32)


@contextlib.contextmanager
def microservice(
    tmp_path_factory: pytest.TempPathFactory, package: Path, **env: str
) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("microservice") / "unused", [package], microservice=True, **env
    ).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def mlp_service(
    tmp_path_factory: pytest.TempPathFactory, mlp_package: Path
) -> Iterator[ServerProcess]:
    with microservice(tmp_path_factory, mlp_package) as server:
        yield server


@pytest.fixture(scope="module")
def expected(mlp_package: Path) -> np.ndarray:
    with torchport.load(mlp_package) as model:
        return np.asarray(model.predict({"input": ROWS})["output"])


def refused(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) != 0


def test_one_model_on_every_protocol_and_no_management(
    mlp_service: ServerProcess, expected: np.ndarray
) -> None:
    url = mlp_service.url
    assert httpx.get(f"{url}/ping").json() == {"status": "Healthy"}
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    oip = httpx.post(f"{url}/v2/models/mlp/infer", json=oip_body("input", ROWS)).json()
    np.testing.assert_allclose(np.reshape(oip["outputs"][0]["data"], (3, 8)), expected, atol=1e-5)
    v1 = httpx.post(f"{url}/v1/models/mlp:predict", json={"instances": ROWS.tolist()}).json()
    np.testing.assert_allclose(v1["predictions"], expected, atol=1e-5)
    ts = httpx.post(f"{url}/predictions/mlp", json=ROWS[0].tolist()).json()
    np.testing.assert_allclose(ts, expected[0], atol=1e-5)
    with triton_grpc.InferenceServerClient(mlp_service.grpc_address) as client:
        tensor = triton_grpc.InferInput("input", [3, 32], "FP32")
        tensor.set_data_from_numpy(ROWS)
        got = client.infer("mlp", [tensor]).as_numpy("output")
        np.testing.assert_allclose(got, expected, atol=1e-5)
        with pytest.raises(triton_grpc.InferenceServerException) as denied:
            client.get_model_repository_index()
        assert denied.value.status() == "StatusCode.UNAUTHENTICATED"
        assert "read-only microservice" in denied.value.message()
    # Read-only: no management port, and no management routes on the inference port.
    assert refused(mlp_service.management_port)
    assert httpx.get(f"{url}/models").status_code == 404
    assert httpx.post(f"{url}/models/mlp", content=b"x").status_code in (404, 405)
    assert httpx.get(f"{url}/dashboard").status_code == 404


def test_invocations_speak_json_csv_and_npy(
    mlp_service: ServerProcess, expected: np.ndarray
) -> None:
    invocations = f"{mlp_service.url}/invocations"
    rows = httpx.post(invocations, json={"instances": ROWS.tolist()})
    assert rows.status_code == 200
    np.testing.assert_allclose(rows.json()["predictions"], expected, atol=1e-5)
    bare = httpx.post(invocations, json=ROWS.tolist())
    np.testing.assert_allclose(bare.json()["predictions"], expected, atol=1e-5)
    named = httpx.post(invocations, json={"input": ROWS.tolist()}).json()
    np.testing.assert_allclose(named["output"], expected, atol=1e-5)
    oip = httpx.post(invocations, json=oip_body("input", ROWS)).json()
    assert oip["model_name"] == "mlp"
    np.testing.assert_allclose(np.reshape(oip["outputs"][0]["data"], (3, 8)), expected, atol=1e-5)

    csv_body = "\n".join(",".join(repr(float(v)) for v in row) for row in ROWS) + "\n"
    csv = httpx.post(
        invocations,
        content=csv_body,
        headers={"Content-Type": "text/csv", "Accept": "text/csv"},
    )
    assert csv.status_code == 200
    assert csv.headers["content-type"].startswith("text/csv")
    got = np.array([[float(v) for v in line.split(",")] for line in csv.text.splitlines()])
    np.testing.assert_allclose(got, expected, atol=1e-5)

    buffer = io.BytesIO()
    np.save(buffer, ROWS)
    npy = httpx.post(
        invocations,
        content=buffer.getvalue(),
        headers={"Content-Type": "application/x-npy", "Accept": "application/x-npy"},
    )
    assert npy.status_code == 200
    answer = np.load(io.BytesIO(npy.content), allow_pickle=False)
    np.testing.assert_allclose(answer, expected, atol=1e-5)


@pytest.mark.parametrize(
    ("content", "headers", "status", "field", "words"),
    [
        (b"\x89PNG", {"Content-Type": "image/png"}, 415, "Content-Type", "is FP32"),
        (b"[]", {"Accept": "text/html"}, 406, "Accept", "cannot answer in 'text/html'"),
        (b"1,2,3\n", {"Content-Type": "text/csv"}, 400, "input", "CSV row 1 has 3 values"),
        (b"1,x\n", {"Content-Type": "text/csv"}, 400, "body", "not a number"),
        (b"not npy", {"Content-Type": "application/x-npy"}, 400, "body", "not a .npy array"),
        # Headers that claim more than the body holds, or more than numpy can address.
        (npy_header((1 << 40,)), {"Content-Type": NPY}, 400, "body", "has too many elements"),
        (npy_header((1 << 70,)), {"Content-Type": NPY}, 400, "body", "has too many elements"),
        (npy_header((4, 32)), {"Content-Type": NPY}, 400, "body", "the body holds 0"),
        (npy_header((1,), "|O"), {"Content-Type": NPY}, 400, "body", "Python objects"),
        (b"1" * 140_000, {"Content-Type": "text/csv"}, 400, "body", "field larger than"),
        (b'{"nope": [1]}', {"Content-Type": "application/json"}, 400, "nope", "unknown input"),
        (b"{", {"Content-Type": "application/json"}, 400, "body", "not valid JSON"),
        (b"", {"Content-Type": "application/json"}, 400, "body", "empty"),
    ],
)
def test_invocations_explain_what_they_cannot_read(
    mlp_service: ServerProcess,
    content: bytes,
    headers: dict[str, str],
    status: int,
    field: str,
    words: str,
) -> None:
    r = httpx.post(f"{mlp_service.url}/invocations", content=content, headers=headers)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field
    assert words in r.json()["error"]


def test_invocations_of_a_text_model_take_the_raw_body(
    tmp_path_factory: pytest.TempPathFactory, minilm_package: Path, digits_package: Path
) -> None:
    with torchport.load(minilm_package) as model:
        want = model.predict({"text": np.array([b"a robot reads this"], dtype=object)})
    with microservice(tmp_path_factory, minilm_package) as server:
        r = httpx.post(
            f"{server.url}/invocations",
            content="a robot reads this",
            headers={"Content-Type": "text/plain"},
        )
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["predictions"], want["embedding"], atol=1e-5)
    # Several outputs: CSV puts them side by side; one .npy array cannot hold them.
    x = np.random.default_rng(1).uniform(0, 1, (2, 1, 8, 8)).astype(np.float32)
    with torchport.load(digits_package) as model:
        digits = model.predict({"input": x})
    with microservice(tmp_path_factory, digits_package) as server:
        csv = httpx.post(
            f"{server.url}/invocations",
            content="\n".join(",".join(map(str, row.ravel().tolist())) for row in x),
            headers={"Content-Type": "text/csv", "Accept": "text/csv"},
        )
        assert csv.status_code == 200, csv.text
        lines = [line.split(",") for line in csv.text.splitlines()]
        assert [len(line) for line in lines] == [11, 11]
        assert [int(line[10]) for line in lines] == digits["label"].tolist()
        np.testing.assert_allclose(
            [[float(v) for v in line[:10]] for line in lines], digits["probabilities"], atol=1e-5
        )
        npy = httpx.post(
            f"{server.url}/invocations",
            json={"instances": x.tolist()},
            headers={"Accept": "application/x-npy"},
        )
        assert npy.status_code == 406
        assert "2 outputs" in npy.json()["error"]


def test_sigterm_turns_readiness_off_then_drains_requests_in_flight(
    tmp_path_factory: pytest.TempPathFactory, slow_package: Path
) -> None:
    server = ServerProcess(
        tmp_path_factory.mktemp("drain") / "unused",
        [slow_package],
        microservice=True,
        TORCHPORT_UNREADY_SECONDS="2.5",
        TORCHPORT_DRAIN_SECONDS="20",
    ).start()
    assert server.proc is not None
    x = np.ones((1, 4), np.float32)

    def infer() -> int:
        r = httpx.post(f"{server.url}/v2/models/slow/infer", json=oip_body("x", x), timeout=30)
        return r.status_code

    channel = grpc.insecure_channel(server.grpc_address)
    health = health_pb2_grpc.HealthStub(channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
    assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        before = [pool.submit(infer) for _ in range(3)]
        time.sleep(0.05)  # inside their 0.2 s batch
        stopped_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        # Not ready at once, yet still answering while load balancers catch up.
        assert httpx.get(f"{server.url}/v2/health/ready").status_code == 503
        assert httpx.get(f"{server.url}/ping").status_code == 503
        assert httpx.get(f"{server.url}/v2/health/live").status_code == 200
        assert infer() == 200
        # gRPC too: probes see NOT_SERVING, a watcher is told and its stream ends (it
        # must not hold the shutdown up for the drain time), calls are still answered.
        not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
        assert health.Check(health_pb2.HealthCheckRequest()).status == not_serving
        grpc_client = triton_grpc.InferenceServerClient(server.grpc_address)
        inputs = [triton_grpc.InferInput("x", [1, 4], "FP32")]
        inputs[0].set_data_from_numpy(x)
        np.testing.assert_array_equal(grpc_client.infer("slow", inputs).as_numpy("output"), x * 2)
        assert [reply.status for reply in watch] == [not_serving]
        # Requests that arrive just before the port closes (a quarter second before, room
        # for a busy machine to connect and send) are still in flight after it.
        time.sleep(max(0.0, stopped_at + 2.25 - time.monotonic()))
        late = [pool.submit(infer) for _ in range(2)]
        assert [f.result() for f in before + late] == [200] * 5
    code = server.proc.wait(30)
    channel.close()
    assert code == 0, server.output()
    assert time.monotonic() - stopped_at < 15
    assert refused(server.http_port)
    assert refused(server.grpc_port)


def test_a_microservice_takes_exactly_one_package(mlp_package: Path, digits_package: Path) -> None:
    assert_one_line_error(
        run("serve", "--microservice", mlp_package, digits_package), "exactly one package"
    )
    assert_one_line_error(run("serve", "--microservice"), "exactly one package")


def test_the_grpc_health_check_follows_readiness(mlp_service: ServerProcess) -> None:
    with grpc.insecure_channel(mlp_service.grpc_address) as channel:
        status = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert status.status == health_pb2.HealthCheckResponse.SERVING
