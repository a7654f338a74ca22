"""Bad requests get a 4xx JSON error naming the field and the problem; never a 500 or a
hang (the inference app, in process)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.inprocess import InProcess

ROW = [0.0] * 32


def infer_body(**tensor: object) -> dict[str, object]:
    base = {"name": "input", "shape": [1, 32], "datatype": "FP32", "data": ROW}
    return {"inputs": [{**base, **tensor}]}


def bytes_nested_990_deep() -> bytes:
    data = "[" * 990 + '"a"' + "]" * 990  # written out: json.dumps itself would recurse
    tensor = f'{{"name": "text", "shape": [1], "datatype": "BYTES", "data": {data}}}'
    return f'{{"inputs": [{tensor}]}}'.encode()


CASES = [
    ("POST", "/v2/models/nope/infer", {"json": infer_body()}, 404, "model 'nope' not found"),
    ("POST", "/v2/models/mlp/versions/9/infer", {"json": infer_body()}, 404, "no version 9"),
    ("POST", "/v2/models/mlp/versions/x/infer", {"json": infer_body()}, 400, "version 'x'"),
    ("GET", "/v2/models/nope", {}, 404, "model 'nope' not found"),
    ("POST", "/v2/models/mlp/infer", {"content": b"{not json"}, 400, "not valid JSON"),
    (
        "POST",
        "/v2/models/mlp/infer",
        {"json": {"inputs": []}},
        400,
        "'inputs' must be a non-empty list",
    ),
    (
        "POST",
        "/v2/models/mlp/infer",
        {"json": infer_body(datatype="FP99")},
        400,
        "'FP99' is not an OIP datatype",
    ),
    (
        "POST",
        "/v2/models/mlp/infer",
        {"json": infer_body(datatype="INT64", data=[0] * 32)},
        400,
        "expected datatype FP32, got INT64",
    ),
    (
        "POST",
        "/v2/models/mlp/infer",
        {"json": infer_body(shape=[1, 31], data=[0.0] * 31)},
        400,
        "expected shape [-1, 32], got [1, 31]",
    ),
    (
        "POST",
        "/v2/models/mlp/infer",
        {"json": infer_body(data=[0.0] * 31)},
        400,
        "needs 32 elements, 'data' holds 31",
    ),
    (
        "POST",
        "/v2/models/mlp/infer",
        {"json": infer_body(shape=[1, -32])},
        400,
        "non-negative integers",
    ),
    (
        "POST",
        "/v2/models/mlp/infer",
        {"json": infer_body(shape=[1 << 20, 1 << 20])},
        400,
        "too many elements",
    ),
    (
        "POST",
        "/v2/models/mlp/infer",
        {"json": infer_body(data=["a"] * 32)},
        400,
        "expected FP32 data, got strings",
    ),
    (
        "POST",
        "/v2/models/mlp/infer",
        {"json": infer_body(name="inptu")},
        400,
        "unexpected input 'inptu'",
    ),
    (
        "POST",
        "/v2/models/mlp/infer",
        {"json": {**infer_body(), "outputs": [{"name": "nope"}]}},
        400,
        "unknown output 'nope'",
    ),
    (
        "POST",
        "/v2/models/mlp/infer",
        {"json": infer_body(parameters={"binary_data_size": 128})},
        400,
        "binary_data_size 128 does not fit",
    ),
    ("POST", "/v1/models/mlp:predict", {"json": {"rows": []}}, 400, '{"instances": [...]}'),
    # `"²".isdigit()` is true and `int("²")` fails: versions are ASCII digits only.
    *(
        (method, path, {"json": body}, 400, "'²' is not a version number")
        for method, path, body in (
            ("POST", "/v2/models/mlp/versions/%C2%B2/infer", infer_body()),
            ("GET", "/v2/models/mlp/versions/%C2%B2", None),
            ("POST", "/predictions/mlp/%C2%B2", ROW),
            ("POST", "/v1/models/mlp/versions/%C2%B2:predict", {"instances": [ROW]}),
        )
    ),
    # Past Python's 4,300-digit limit, `int()` itself raises.
    *(
        (method, path, {"json": body}, 400, "is not a version number")
        for method, path, body in (
            ("POST", "/v2/models/mlp/versions/" + "9" * 5000 + "/infer", infer_body()),
            ("POST", "/predictions/mlp/" + "9" * 5000, ROW),
        )
    ),
    (
        "POST",
        "/v2/models/mlp/infer",
        {"json": infer_body(shape=[0, 1 << 63], data=[])},
        400,
        "has too many elements",
    ),
    (
        "POST",
        "/v2/models/mlp/infer",
        {"json": infer_body(shape=[1] * 40)},
        400,
        "shape has 40 dimensions, at most 32",
    ),
    (
        "POST",
        "/v2/models/minilm/infer",
        {"content": bytes_nested_990_deep()},
        400,
        "nested deeper than 32 dimensions",
    ),
    ("POST", "/predictions/nope", {"json": ROW}, 404, "model 'nope' not found"),
    ("GET", "/v2/nothing/here", {}, 404, "no such route"),
    ("DELETE", "/v2/models/mlp/infer", {}, 405, "method not allowed"),
]


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "message"), CASES)
def test_bad_requests_get_a_json_4xx_naming_the_problem(
    served: InProcess,
    method: str,
    path: str,
    kwargs: dict[str, object],
    status: int,
    message: str,
) -> None:
    response = served.http.request(method, path, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == status, response.text
    body = response.json()
    if path.startswith("/predictions/"):  # TorchServe's routes answer as TorchServe does
        assert body["code"] == status
        assert body["type"] in ("ModelNotFoundException", "BadRequestException")
        assert message in body["message"], body
    else:
        assert message in body["error"], body


def test_the_binary_header_length_is_checked(served: InProcess) -> None:
    header = json.dumps(infer_body(parameters={"binary_data_size": 128}, data=None)).encode()
    for value, message in (
        ("abc", "not a number"),
        ("999999", "outside the body"),
        ("0", "outside the body"),
    ):
        response = served.http.post(
            "/v2/models/mlp/infer",
            content=header + b"\0" * 128,
            headers={"Inference-Header-Content-Length": value},
        )
        assert response.status_code == 400, response.text
        assert message in response.json()["error"]
    trailing = served.http.post(
        "/v2/models/mlp/infer",
        content=header + b"\0" * 130,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert trailing.status_code == 400
    assert (
        "does not fit" in trailing.json()["error"]
        or "after the last tensor" in trailing.json()["error"]
    )


def test_a_binary_shape_past_numpy_s_limit_is_refused(served: InProcess) -> None:
    header = json.dumps(
        infer_body(shape=[0, (1 << 63) - 1], data=None, parameters={"binary_data_size": 0})
    ).encode()
    response = served.http.post(
        "/v2/models/mlp/infer",
        content=header,
        headers={"Inference-Header-Content-Length": str(len(header))},
    )
    assert response.status_code == 400, response.text
    assert "has too many elements" in response.json()["error"]


def test_an_oversized_body_is_refused_with_413(served: InProcess) -> None:
    big = b"[" + b"0.0," * (2 * 1024 * 1024) + b"0.0]"
    response = served.http.post("/v2/models/mlp/infer", content=big)
    assert response.status_code == 413
    assert "over the limit" in response.json()["error"]
    assert served.http.get("/v2/health/ready").status_code == 200


def test_text_that_is_not_utf8_is_refused(served: InProcess) -> None:
    response = served.http.post(
        "/predictions/minilm",
        content=b"\xff\xfe\xfd",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert response.status_code == 400
    assert "not UTF-8" in response.json()["message"]  # TorchServe's error shape


def test_an_oip_id_in_unicode_comes_back_in_the_body_and_a_new_request_id_is_made(
    served: InProcess,
) -> None:
    body = {**infer_body(), "id": "🚀 é"}
    response = served.http.post("/v2/models/mlp/infer", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["id"] == "🚀 é"
    assert response.headers["X-Request-ID"].isascii()


def test_an_empty_batch_is_refused(served: InProcess) -> None:
    body = {"inputs": [{"name": "text", "shape": [0], "datatype": "BYTES", "data": []}]}
    response = served.http.post("/v2/models/minilm/infer", json=body)
    assert response.status_code == 400
    assert "empty batch" in response.json()["error"]


def test_a_fault_inside_an_inference_route_is_one_json_500_and_the_next_request_is_served(
    served: InProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The inference routes skip Starlette's error middleware: their own fallback answers.
    real = served.dataplane.infer
    monkeypatch.setattr(served.dataplane, "infer", _fails_once(real))
    broken = served.http.post("/v2/models/mlp/infer", json=infer_body())
    assert broken.status_code == 500
    assert broken.json() == {"error": "internal error: RuntimeError", "code": "internal"}
    after = served.http.post("/v2/models/mlp/infer", json=infer_body())
    assert after.status_code == 200, after.text
    counted = {}
    for (name, labels), n in served.scrape().items():
        if name == "torchport_requests_total" and dict(labels)["model"] == "mlp":
            counted[dict(labels)["outcome"]] = n
    assert counted["internal"] == 1


def _fails_once(real: Any) -> Any:
    calls = 0

    async def infer(request: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        return await real(request)

    return infer
