"""Every HTTP route fuzzed from the server's own OpenAPI documents: Schemathesis (its
coverage, fuzzing and stateful phases, bounded examples per operation and a time cap)
against a real server, on the inference port and, with the token, the management port.
It passes when no request got a 5xx and the server answers health afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from openapi_spec_validator import validate

from tests.e2e.server import TOKEN, ServerProcess

# CI runs a bounded pass; `FUZZ_SECONDS=600 pytest tests/fuzz` runs a long one.
SECONDS = int(os.environ.get("FUZZ_SECONDS", "30"))
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))


@pytest.fixture(scope="module")
def fuzzed(
    tmp_path_factory: pytest.TempPathFactory, mlp_package: Path, minilm_package: Path
) -> Iterator[ServerProcess]:
    server = ServerProcess(
        tmp_path_factory.mktemp("fuzz") / "store", [mlp_package, minilm_package]
    ).start()
    try:
        yield server
    finally:
        server.stop()


def test_the_openapi_documents_are_valid_openapi_3_1(fuzzed: ServerProcess) -> None:
    inference = httpx.get(f"{fuzzed.url}/openapi.json").json()
    validate(inference)
    assert inference["openapi"] == "3.1.0"
    infer = inference["paths"]["/v2/models/mlp/infer"]["post"]
    tensor = infer["requestBody"]["content"]["application/json"]["schema"]["properties"]
    [spec] = tensor["inputs"]["items"]["oneOf"]
    assert spec["properties"]["name"] == {"const": "input"}
    assert spec["properties"]["datatype"] == {"const": "FP32"}
    assert "/predictions/minilm" in inference["paths"]
    one = httpx.get(f"{fuzzed.url}/v2/models/minilm/openapi.json").json()
    validate(one)
    assert all("minilm" in path for path in one["paths"])
    assert httpx.get(f"{fuzzed.url}/v2/models/nope/openapi.json").status_code == 404
    management = httpx.get(f"{fuzzed.management_url}/openapi.json", headers=fuzzed.auth)
    validate(management.json())
    assert httpx.get(f"{fuzzed.management_url}/openapi.json").status_code == 401


def fuzz(url: str, report: Path, *options: str) -> dict[str, object]:
    done = subprocess.run(
        [
            Path(sys.executable).parent / "schemathesis", "run", url,
            "--checks", "not_a_server_error",
            "--max-examples", str(EXAMPLES), "--max-time", str(SECONDS),
            "--seed", "20", "--workers", "2", "--generation-database", "none", "--no-color",
            "--report", "json", "--report-json-path", str(report),
            *options,
        ],
        capture_output=True, text=True, timeout=SECONDS + 300,
        cwd=report.parent,  # its cache of crashes goes there, not into the work tree
    )  # fmt: skip
    result: dict[str, object] = json.loads(report.read_text())
    # A crash inside the fuzzer itself (seen: CPython's AST recursion check tripping in
    # Hypothesis while it builds a strategy) is a "Runtime Error" of the tool's; anything
    # the server did (a 5xx, a dropped connection) is a failure or another kind of error.
    errors = result.get("errors") or []
    assert isinstance(errors, list)
    own = all(e.get("title") == "Runtime Error" for e in errors)
    assert done.returncode == 0 or (own and not result.get("failures")), done.stdout[-6000:]
    return result


def test_no_inference_request_gets_a_5xx(fuzzed: ServerProcess, tmp_path: Path) -> None:
    report = fuzz(f"{fuzzed.url}/openapi.json", tmp_path / "inference.json")
    cases = report["test_cases"]
    assert isinstance(cases, dict)
    assert cases["generated"] > 1000
    assert cases["with_failures"] == 0
    assert httpx.get(f"{fuzzed.url}/v2/health/live").status_code == 200


def test_no_management_request_gets_a_5xx(fuzzed: ServerProcess, tmp_path: Path) -> None:
    report = fuzz(
        f"{fuzzed.management_url}/openapi.json",
        tmp_path / "management.json",
        "-H", f"Authorization: Bearer {TOKEN}",
        # A config with `compile: true` recompiles the version, which takes minutes, not a
        # fuzz case's seconds; config bodies are checked by their own tests.
        "--exclude-path-regex", "/config$",
    )  # fmt: skip
    cases = report["test_cases"]
    assert isinstance(cases, dict)
    assert cases["generated"] > 500
    assert cases["with_failures"] == 0
    assert httpx.get(f"{fuzzed.url}/v2/health/live").status_code == 200
