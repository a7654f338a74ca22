"""`torchport bench` in its short mode: every runtime asked for is measured, and the
fastest can be written back as the package to serve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import torchport
from tests.cli.test_cli import assert_one_line_error, cli
from torchport.archive import read_package


def test_bench_measures_each_runtime_and_saves_the_fastest(
    mlp_package: Path, tmp_path: Path
) -> None:
    fastest = tmp_path / "fastest.tpa"
    done = cli("bench", mlp_package, "--quick", "-r", "eager", "-r", "torchscript", "-r",
               "onnx", "--save-fastest", fastest, "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [r["runtime"] for r in report["results"]] == ["eager", "torchscript", "onnx"]
    for r in report["results"]:
        assert r["ok"], r
        assert 0 < r["p50_ms"] <= r["p99_ms"]
        assert r["rows_per_s"] > 0
        assert r["best_batch_size"] in (1, 8, 32)
    by_name = {r["runtime"]: r for r in report["results"]}
    assert by_name["eager"]["parity_max_abs_error"] is None
    assert by_name["onnx"]["parity_max_abs_error"] < 1e-4
    best = max(report["results"], key=lambda r: r["rows_per_s"])["runtime"]
    assert report["fastest"] == best
    assert report["saved"] == str(fastest)
    kind = read_package(fastest).manifest.model.kind.value
    assert kind == {"eager": "code", "torchscript": "torchscript", "onnx": "onnx"}[best]
    with torchport.load(fastest) as m, torchport.load(mlp_package) as original:
        x = {"input": np.ones((2, 32), np.float32)}
        assert abs(m.predict(x)["output"] - original.predict(x)["output"]).max() < 1e-4


def test_bench_shows_a_table_and_names_a_runtime_that_cannot_run(
    mlp_package: Path, branchy_package: Path
) -> None:
    done = cli("bench", mlp_package, "--quick", "-r", "eager", "-r", "compiled")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    # The header's cells may wrap onto two lines (the figures' widths vary from run to run).
    assert any(line.split()[:1] == ["runtime"] for line in lines)
    assert {"p50", "p99"} <= set(done.stdout.split())
    rows = [line.split()[0] for line in lines if line.startswith(("eager", "compiled"))]
    assert rows == ["eager", "compiled"]
    branchy = cli("bench", branchy_package, "--quick", "-r", "eager", "-r", "exported", "--json")
    assert branchy.returncode == 0, branchy.stderr
    eager, exported = json.loads(branchy.stdout)["results"]
    assert eager["ok"]
    assert not exported["ok"]
    assert exported["reason"].startswith("torch.export failed")
    assert_one_line_error(cli("bench", mlp_package, "-r", "tensorrt"), "unknown runtime 'tensorrt'")


def test_bench_measures_on_the_device_and_precision_asked_and_saves_them(
    mlp_package: Path, tmp_path: Path
) -> None:
    fastest = tmp_path / "fastest.tpa"
    done = cli("bench", mlp_package, "--quick", "--device", "cpu", "--precision", "bf16",
               "-r", "eager", "-r", "onnx", "--save-fastest", fastest, "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["device"], report["precision"]) == ("cpu", "bf16")
    eager, onnx = report["results"]
    assert eager["ok"]
    assert not onnx["ok"]
    assert "runs in the precision it was exported in" in onnx["reason"]
    assert report["fastest"] == "eager"
    runtime = read_package(fastest).manifest.runtime
    assert runtime.precision == "bf16"
    assert runtime.device is None  # measured on the CPU: the server's device still decides
    with torchport.load(fastest) as m:
        assert m._runner.precision == "bf16"
    assert_one_line_error(
        cli("bench", mlp_package, "--precision", "fp8"), "--precision 'fp8': choose fp32"
    )
