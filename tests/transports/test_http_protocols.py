"""KServe v1 and the TorchServe-compatible routes, on the inference app in process."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import torchport
from tests.inprocess import InProcess


def test_kserve_v1_instances_to_predictions(served: InProcess, mlp_package: Path) -> None:
    rows = np.random.default_rng(1).standard_normal((3, 32)).astype(np.float32)
    response = served.http.post("/v1/models/mlp:predict", json={"instances": rows.tolist()})
    assert response.status_code == 200, response.text
    predictions = np.array(response.json()["predictions"], np.float32)
    with torchport.load(mlp_package) as m:
        np.testing.assert_allclose(predictions, m.predict({"input": rows})["output"], rtol=1e-6)
    status = served.http.get("/v1/models/mlp").json()
    assert status == {"name": "mlp", "ready": True}


def test_kserve_v1_several_outputs_come_back_per_row(served: InProcess) -> None:
    image = np.zeros((1, 8, 8)).tolist()
    response = served.http.post(
        "/v1/models/digits/versions/1:predict", json={"instances": [image, image]}
    )
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2
    assert set(predictions[0]) == {"probabilities", "label"}
    assert abs(sum(predictions[0]["probabilities"]) - 1) < 1e-5


def test_torchserve_ping_and_raw_text(served: InProcess, minilm_package: Path) -> None:
    assert served.http.get("/ping").json() == {"status": "Healthy"}
    response = served.http.post(
        "/predictions/minilm",
        content=b"hello world",
        headers={"Content-Type": "text/plain"},
    )
    assert response.status_code == 200, response.text
    embedding = np.array(response.json(), np.float32)
    with torchport.load(minilm_package) as m:
        want = m.predict({"text": ["hello world"]})["embedding"][0]
    np.testing.assert_allclose(embedding, want, rtol=1e-5, atol=1e-6)


def test_torchserve_json_sample_and_batch(served: InProcess) -> None:
    sample = [0.25] * 32
    one = served.http.post("/predictions/mlp/1", json=sample)
    assert one.status_code == 200, one.text
    assert np.array(one.json()).shape == (8,)
    batch = served.http.post("/predictions/mlp", json={"input": [sample, sample]})
    assert np.array(batch.json()["output"]).shape == (2, 8)
    np.testing.assert_allclose(batch.json()["output"][0], one.json(), rtol=1e-5, atol=1e-6)
