"""A real `torchport serve` process on free loopback ports, for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

TOKEN = "test-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerProcess:
    def __init__(
        self,
        store: Path,
        packages: list[Path] | None = None,
        *,
        microservice: bool = False,
        prefix: tuple[str, ...] = (),
        location: str | None = None,
        **env: str,
    ) -> None:
        self.store = store
        self.location = location
        """The store to serve when not `store` (`s3://…`; `store` is then its cache)."""
        self.prefix = prefix
        """A command the server runs under (`unshare …`), which must exec it in place."""
        self.packages = packages or []
        self.microservice = microservice
        self.env = env
        self.http_port = free_port()
        self.grpc_port = free_port()
        self.management_port = free_port()
        self.proc: subprocess.Popen[str] | None = None
        self.log = store.parent / f"server-{self.http_port}.log"

    @property
    def scheme(self) -> str:
        return "https" if "TORCHPORT_TLS_CERT" in self.env else "http"

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What httpx checks the server's certificate against (its own, self-signed)."""
        cert = self.env.get("TORCHPORT_TLS_CERT")
        return ssl.create_default_context(cafile=cert) if cert else True

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host}:{self.http_port}"

    @property
    def host(self) -> str:
        return self.env.get("TORCHPORT_HOST", "127.0.0.1")

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def management_url(self) -> str:
        host = self.env.get("TORCHPORT_MANAGEMENT_HOST", "127.0.0.1")
        return f"{self.scheme}://{host}:{self.management_port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 120.0, until: str = "ready") -> ServerProcess:
        """Start the server and wait until it is `ready` (or only `live`; "": no wait)."""
        env = {**os.environ, "TORCHPORT_TOKEN": TOKEN, **self.env}
        if self.location is not None:
            env["TORCHPORT_STORE_CACHE"] = str(self.store)
        if self.microservice:  # as a SageMaker container is started: the port from the env
            env["SAGEMAKER_BIND_TO_PORT"] = str(self.http_port)
            where = ["--microservice"]
        else:
            where = [
                "--store", self.location or str(self.store),
                "--http-port", str(self.http_port),
                "--management-port", str(self.management_port),
            ]  # fmt: skip
        command = [
            *self.prefix,
            sys.executable, "-m", "torchport", "serve", *where,
            "--grpc-port", str(self.grpc_port),
            *map(str, self.packages),
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            command, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT, text=True
        )
        if not until:
            return self
        try:
            wait_ready(self.proc, self.url, self.log, timeout, self.verify, until)
        except RuntimeError:
            self.stop()
            raise
        return self

    def stop(self) -> int:
        if self.proc is None:
            return 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self.proc = None
        return code

    def output(self) -> str:
        return self.log.read_text()


def wait_ready(
    proc: subprocess.Popen[Any],
    url: str,
    log: Path,
    timeout: float = 120.0,
    verify: ssl.SSLContext | bool = True,
    until: str = "ready",
) -> None:
    """Wait until `url/v2/health/ready` (or `live`) answers 200; fail with the process's log
    if it exits first or is not ready in `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited early:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/v2/health/{until}", timeout=1, verify=verify).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the server was not ready in {timeout} s:\n{log.read_text()}")


@contextlib.contextmanager
def running(
    tmp_path_factory: pytest.TempPathFactory, name: str, packages: list[Path], **env: str
) -> Iterator[ServerProcess]:
    """A server on a fresh store of its own, stopped when the block ends."""
    proc = ServerProcess(tmp_path_factory.mktemp(name) / "store", packages, **env).start()
    try:
        yield proc
    finally:
        proc.stop()


def upload(server: ServerProcess, package: Path, name: str) -> int:
    """Upload `package` as the next version of `name`; its version number."""
    answer = httpx.post(
        f"{server.management_url}/models/{name}",
        content=package.read_bytes(),
        headers=server.auth,
        timeout=120,
    )
    assert answer.status_code == 201, answer.text
    return int(answer.json()["version"])


def oip_body(name: str, x: Any) -> dict[str, Any]:
    """An OIP v2 JSON request with one FP32 tensor."""
    data = x.reshape(-1).tolist()
    return {"inputs": [{"name": name, "shape": list(x.shape), "datatype": "FP32", "data": data}]}


def check_mlp_under_concurrency(
    server: ServerProcess, mlp_package: Path, *, seed: int, count: int, max_rows: int, threads: int
) -> None:
    """Concurrent `mlp` requests of mixed batch sizes each get the embedded model's answer."""
    import concurrent.futures

    import numpy as np

    import torchport

    rng = np.random.default_rng(seed)
    requests = [
        rng.standard_normal((int(rng.integers(1, max_rows + 1)), 32)).astype(np.float32)
        for _ in range(count)
    ]
    with torchport.load(mlp_package) as m:
        want = [m.predict({"input": x})["output"] for x in requests]

    def send(x: Any) -> Any:
        response = httpx.post(
            f"{server.url}/v2/models/mlp/infer", json=oip_body("input", x), timeout=60
        )
        assert response.status_code == 200, response.text
        out = response.json()["outputs"][0]
        return np.array(out["data"], np.float32).reshape(out["shape"])

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        got = list(pool.map(send, requests))
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(server: ServerProcess) -> Samples:
    """Every sample of the server's `/metrics`, by name and labels."""
    response = httpx.get(f"{server.url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return parse_samples(response.text)


def parse_samples(text: str) -> Samples:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)
