"""What an inference request may load: by default nothing (only the management port
changes what is loaded); with `load_on_request`, a bounded number of versions, one load
at a time, and a failed load is not retried on every request."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
from tritonclient.utils import InferenceServerException

from tests.inprocess import InProcess, in_process

BODY = {"inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": [0.0] * 32}]}
DIGITS = {
    "inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [0.0] * 64}]
}


def three_versions(
    tmp_path: Path, mlp_package: Path, **settings: Any
) -> Callable[[], Iterator[InProcess]]:
    def serve() -> Iterator[InProcess]:
        with in_process(tmp_path / "store", [mlp_package], **settings) as server:
            for _ in range(2):  # v2 and v3, registered and not promoted: not loaded
                server.management.upload(mlp_package, actor="test")
            yield server

    return serve


@pytest.fixture
def strict(tmp_path: Path, mlp_package: Path) -> Iterator[InProcess]:
    yield from three_versions(tmp_path, mlp_package)()


def states(server: InProcess) -> dict[int, str]:
    return {s.version: s.state for s in server.registry.states() if s.model == "mlp"}


def test_by_default_a_request_never_loads_a_version(strict: InProcess) -> None:
    refused = strict.http.post("/v2/models/mlp/versions/2/infer", json=BODY)
    assert refused.status_code == 503, refused.text
    assert refused.json()["field"] == "version"
    assert "version 2 is not loaded" in refused.json()["error"]
    assert "POST /models/mlp/versions/2/load" in refused.json()["error"]
    for path in ("/predictions/mlp/2", "/v1/models/mlp/versions/2:predict"):
        body = [[0.0] * 32] if path.startswith("/pred") else {"instances": [[0.0] * 32]}
        assert strict.http.post(path, json=body).status_code == 503
    client = triton_grpc.InferenceServerClient(strict.grpc_address)
    tensor = triton_grpc.InferInput("input", [1, 32], "FP32")
    tensor.set_data_from_numpy(np.zeros((1, 32), np.float32))
    with pytest.raises(InferenceServerException) as failed:
        client.infer("mlp", [tensor], model_version="2")
    assert failed.value.status() == str(grpc.StatusCode.UNAVAILABLE)
    assert "is not loaded" in failed.value.message()
    assert states(strict) == {1: "READY", 2: "UNLOADED", 3: "UNLOADED"}


def test_the_management_port_loads_and_unloads_one_version(strict: InProcess) -> None:
    loaded = strict.admin.post("/models/mlp/versions/2/load", headers=strict.auth)
    assert loaded.status_code == 200, loaded.text
    assert strict.http.post("/v2/models/mlp/versions/2/infer", json=BODY).status_code == 200
    assert strict.http.post("/v2/models/mlp/infer", json=BODY).json()["model_version"] == "1"
    assert states(strict) == {1: "READY", 2: "READY", 3: "UNLOADED"}
    unloaded = strict.admin.post("/models/mlp/versions/2/unload", headers=strict.auth)
    assert unloaded.status_code == 200, unloaded.text
    assert strict.http.post("/v2/models/mlp/versions/2/infer", json=BODY).status_code == 503
    default = strict.admin.post("/models/mlp/versions/1/unload", headers=strict.auth)
    assert default.status_code == 409
    assert "is the default" in default.json()["error"]
    assert strict.admin.post("/models/mlp/versions/9/load", headers=strict.auth).status_code == 404
    assert strict.admin.post("/models/mlp/versions/2/load").status_code == 401


def test_loads_on_request_when_allowed_are_capped(tmp_path: Path, mlp_package: Path) -> None:
    serve = three_versions(tmp_path, mlp_package, load_on_request=True, max_loaded_on_request=1)
    for server in serve():
        assert server.http.post("/v2/models/mlp/versions/2/infer", json=BODY).status_code == 200
        capped = server.http.post("/v2/models/mlp/versions/3/infer", json=BODY)
        assert capped.status_code == 503
        assert "max_loaded_on_request" in capped.json()["error"]
        assert states(server) == {1: "READY", 2: "READY", 3: "UNLOADED"}
        # An operator's unload frees the place; a promote takes the version off the count.
        server.admin.post("/models/mlp/versions/2/unload", headers=server.auth)
        assert server.http.post("/v2/models/mlp/versions/3/infer", json=BODY).status_code == 200
        server.management.promote("mlp", 3)
        assert server.http.post("/v2/models/mlp/versions/2/infer", json=BODY).status_code == 200


def test_a_failed_load_is_not_retried_on_every_request(
    tmp_path: Path, digits_package: Path
) -> None:
    settings = {"load_on_request": True, "load_retry_seconds": 600}
    with in_process(tmp_path / "store", [digits_package], **settings) as server:
        info = server.management.upload(digits_package, actor="test").version  # v2
        blob = server.store.package_path(info)
        blob.write_bytes(blob.read_bytes()[:-100])  # the disk lost its tail: v2 cannot load
        opened = 0
        original = server.registry._open

        def counting(*args: Any) -> Any:
            nonlocal opened
            opened += 1
            return original(*args)

        server.registry._open = counting  # type: ignore[method-assign]
        first = server.http.post("/v2/models/digits/versions/2/infer", json=DIGITS)
        assert first.status_code == 503
        assert "version 2 failed to load" in first.json()["error"]
        for _ in range(5):
            again = server.http.post("/v2/models/digits/versions/2/infer", json=DIGITS)
            assert again.status_code == 503
            assert "the next try is in" in again.json()["error"]
        assert opened == 1
        # The default, loaded before the disk broke, still answers.
        assert server.http.post("/v2/models/digits/infer", json=DIGITS).status_code == 200
        # An operator's load tries again at once (and says why it failed).
        retried = server.admin.post("/models/digits/versions/2/load", headers=server.auth)
        assert retried.status_code == 503
        assert opened == 2
