"""Open Inference Protocol v2 over REST, with standard clients, against the real server."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.http as triton

import torchport
from tests.conftest import EVERY_DATATYPE
from tests.e2e.server import ServerProcess


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> triton.InferenceServerClient:
    return triton.InferenceServerClient(f"127.0.0.1:{server.http_port}")


def test_health_and_metadata_with_tritonclient(client: triton.InferenceServerClient) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("mlp", "1")
    assert not client.is_model_ready("mlp", "9")
    meta = client.get_server_metadata()
    assert meta["name"] == "torchport"
    assert "binary_tensor_data" in meta["extensions"]
    model = client.get_model_metadata("digits")
    assert model["versions"] == ["1"]
    assert model["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 1, 8, 8]}]
    assert [o["name"] for o in model["outputs"]] == ["probabilities", "label"]
    assert client.get_model_metadata("digits", "1")["versions"] == ["1"]


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infer_equals_the_embedded_model(
    client: triton.InferenceServerClient, mlp_package: Path, binary: bool
) -> None:
    x = np.random.default_rng(5).standard_normal((4, 32)).astype(np.float32)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x, binary_data=binary)
    wanted = [triton.InferRequestedOutput("output", binary_data=binary)]
    result = client.infer("mlp", [tensor], outputs=wanted, request_id="req-42")
    with torchport.load(mlp_package) as m:
        want = m.predict({"input": x})["output"]
    np.testing.assert_array_equal(result.as_numpy("output"), want)
    response = result.get_response()
    assert response["id"] == "req-42"
    assert (response["model_name"], response["model_version"]) == ("mlp", "1")


@pytest.mark.parametrize("binary", [True, False])
def test_every_datatype_round_trips(client: triton.InferenceServerClient, binary: bool) -> None:
    inputs = []
    for datatype, array in EVERY_DATATYPE.items():
        batch = np.concatenate([array, array])  # a batch of two rows
        tensor = triton.InferInput(datatype.lower(), list(batch.shape), datatype)
        tensor.set_data_from_numpy(batch, binary_data=binary)
        inputs.append(tensor)
    outputs = [triton.InferRequestedOutput(d.lower(), binary_data=binary) for d in EVERY_DATATYPE]
    result = client.infer("echo", inputs, outputs=outputs)
    for datatype, array in EVERY_DATATYPE.items():
        got = result.as_numpy(datatype.lower())
        want = np.concatenate([array, array])
        assert got.shape == want.shape, datatype
        if datatype == "BYTES":
            # JSON carries BYTES as UTF-8 strings; binary as raw bytes.
            as_bytes = [x.encode() if isinstance(x, str) else bytes(x) for x in got.reshape(-1)]
            assert as_bytes == list(want.reshape(-1))
        else:
            assert got.dtype == want.dtype, datatype
            np.testing.assert_array_equal(got, want)


def test_requested_outputs_subset_and_default_binary_output(
    client: triton.InferenceServerClient,
) -> None:
    x = np.zeros((2, 1, 8, 8), np.float32)
    tensor = triton.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    only_label = client.infer("digits", [tensor], outputs=[triton.InferRequestedOutput("label")])
    assert [o["name"] for o in only_label.get_response()["outputs"]] == ["label"]
    everything = client.infer("digits", [tensor])  # no outputs named: all, as binary
    assert {o["name"] for o in everything.get_response()["outputs"]} == {"probabilities", "label"}
    assert everything.as_numpy("label").dtype == np.int64


def test_text_model_with_bytes_input(
    client: triton.InferenceServerClient, minilm_package: Path
) -> None:
    texts = np.array([b"torchport serves models", "naïve café".encode()], dtype=object)
    tensor = triton.InferInput("text", [2], "BYTES")
    tensor.set_data_from_numpy(texts)
    got = client.infer("minilm", [tensor], model_version="1").as_numpy("embedding")
    with torchport.load(minilm_package) as m:
        want = m.predict({"text": texts})["embedding"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_json_request_with_nested_data_parameters_and_id(server: ServerProcess) -> None:
    body = {
        "id": "abc",
        "parameters": {"custom": 1},
        "inputs": [
            {"name": "input", "shape": [2, 32], "datatype": "FP32", "data": [[0.0] * 32] * 2}
        ],
        "outputs": [{"name": "output"}],
    }
    response = httpx.post(f"{server.url}/v2/models/mlp/versions/1/infer", json=body)
    assert response.status_code == 200
    doc = response.json()
    assert doc["id"] == "abc"
    assert doc["outputs"][0]["shape"] == [2, 8]
    assert len(doc["outputs"][0]["data"]) == 16
