"""Request ids and structured logs: one JSON line per request, the id returned to the client."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest

from tests.e2e.server import ServerProcess, oip_body, running
from torchport.tensors import to_raw
from torchport.transports.grpc.convert import pb, stub


@pytest.fixture(scope="module")
def lserver(tmp_path_factory: pytest.TempPathFactory, mlp_package: Path) -> Iterator[ServerProcess]:
    with running(
        tmp_path_factory,
        "logs",
        [mlp_package],
        TORCHPORT_ACCESS_LOG="true",
        TORCHPORT_LOG_FORMAT="json",
    ) as proc:
        yield proc


def request_lines(server: ServerProcess, request_id: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = []
        for line in server.output().splitlines():
            if line.startswith("{"):
                doc = json.loads(line)
                if doc.get("logger") == "torchport.requests" and doc["request_id"] == request_id:
                    lines.append(doc)
        if lines:
            return lines
        time.sleep(0.05)
    return []


def test_a_client_request_id_comes_back_and_is_logged(lserver: ServerProcess) -> None:
    x = np.ones((1, 32), np.float32)
    response = httpx.post(
        f"{lserver.url}/v2/models/mlp/infer",
        json=oip_body("input", x),
        headers={"X-Request-ID": "req-abc"},
    )
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "req-abc"
    [line] = request_lines(lserver, "req-abc")
    assert line["level"] == "info"
    assert (line["model"], line["version"], line["protocol"], line["outcome"]) == (
        "mlp", "1", "oip_rest", "ok",
    )  # fmt: skip
    assert line["duration_ms"] > 0


def test_the_oip_id_serves_when_there_is_no_header_else_one_is_made(
    lserver: ServerProcess,
) -> None:
    body = {**oip_body("input", np.ones((1, 32), np.float32)), "id": "oip-7"}
    response = httpx.post(f"{lserver.url}/v2/models/mlp/infer", json=body)
    assert response.headers["X-Request-ID"] == "oip-7"
    assert response.json()["id"] == "oip-7"
    made = httpx.post(f"{lserver.url}/v1/models/mlp:predict", json={"instances": [[0.0] * 32]})
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-ID"])
    [line] = request_lines(lserver, made.headers["X-Request-ID"])
    assert line["protocol"] == "kserve_v1"


def test_a_refused_request_carries_its_id_and_is_logged_with_its_outcome(
    lserver: ServerProcess,
) -> None:
    response = httpx.post(
        f"{lserver.url}/v2/models/nope/infer",
        json=oip_body("input", np.ones((1, 32), np.float32)),
        headers={"X-Request-ID": "req-404"},
    )
    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
    assert response.headers["X-Request-ID"] == "req-404"
    [line] = request_lines(lserver, "req-404")
    assert (line["model"], line["outcome"]) == ("", "not_found")


def test_grpc_request_ids_travel_as_metadata(lserver: ServerProcess) -> None:
    request = pb.ModelInferRequest(model_name="mlp")
    request.inputs.add(name="input", datatype="FP32", shape=[1, 32])
    request.raw_input_contents.append(to_raw(np.zeros((1, 32), np.float32)))
    with grpc.insecure_channel(lserver.grpc_address) as channel:
        _, call = stub(channel).ModelInfer.with_call(
            request, metadata=(("x-request-id", "grpc-1"),)
        )
    assert ("x-request-id", "grpc-1") in list(call.trailing_metadata())
    [line] = request_lines(lserver, "grpc-1")
    assert (line["protocol"], line["outcome"]) == ("oip_grpc", "ok")
