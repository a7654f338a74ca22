"""`torchport export`: each runtime answers like the eager model, checked by parity; a model
that cannot be exported, or whose export differs, is named and refused."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

import torchport
from tests.cli.test_cli import assert_one_line_error, cli
from tests.e2e.server import running
from tests.export.conftest import Exporter
from torchport.agreement import Tolerance
from torchport.archive import ModelKind, read_package
from torchport.archive.hashing import sha256_file
from torchport.export import ExportFailed, ParityFailed, export_package
from torchport.export.parity import compare, parity_cases
from torchport.export.tensor_file import parse_tensors
from torchport.runtime import example_inputs
from torchport.types import Datatype, Signature

# Which runtimes each example is checked on (AOTInductor compiles C++ for a minute: mlp only).
CASES = [
    ("mlp", "torchscript"),
    ("mlp", "exported"),
    ("mlp", "onnx"),
    ("mlp", "aoti"),
    ("digits", "torchscript"),
    ("digits", "exported"),
    ("digits", "onnx"),
    ("minilm", "exported"),
    ("minilm", "onnx"),
]


@pytest.mark.parametrize("target", ["torchscript", "exported"])
def test_a_package_of_an_exported_program_exports_again(tmp_path: Path, target: str) -> None:
    # `torchport.package(module)` stores a torch.export program, whose loaded module
    # refuses `.eval()`: exporting it must not trip over that.
    import torch

    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(4, 3)).eval()
    source = tmp_path / "tiny.tpa"
    x = np.ones((2, 4), np.float32)
    torchport.package(module, name="tiny", example={"input": x}, out=source)
    assert read_package(source).manifest.model.kind is ModelKind.EXPORTED
    result = export_package(source, target, tmp_path / f"tiny-{target}.tpa")
    assert result.parity.passed, result.parity


@pytest.mark.parametrize(("model", "target"), CASES)
def test_every_runtime_answers_like_the_eager_model(
    exported: Exporter, request: pytest.FixtureRequest, model: str, target: str
) -> None:
    source: Path = request.getfixturevalue(f"{model}_package")
    result = exported(model, target)
    assert result.parity.passed, result.parity
    assert result.parity.cases >= 4
    assert {1, 3, 8} <= set(result.parity.batch_sizes)
    assert result.out is not None
    manifest = read_package(result.out).manifest
    assert manifest.model.kind is ModelKind(target)
    assert manifest.export is not None
    assert manifest.export.source_digest == sha256_file(source)
    assert manifest.export.source_kind is ModelKind.CODE
    assert "weights.safetensors" not in manifest.files  # the exported file holds the weights
    original = read_package(source).manifest
    assert manifest.signature == original.signature
    assert manifest.handler == original.handler
    # The exported package, loaded as users load it, answers a new batch like the original.
    inputs = parity_cases(manifest.signature, [example_inputs(manifest, 0)], batch_sizes=(5,))[-1]
    with torchport.load(source) as eager, torchport.load(result.out) as other:
        want, have = eager.predict(inputs), other.predict(inputs)
    report = compare(manifest.signature, [want], [have])
    assert report.passed, report


def test_an_export_runs_on_the_server(
    exported: Exporter, tmp_path_factory: pytest.TempPathFactory, digits_package: Path
) -> None:
    package = exported("digits", "onnx").out
    assert package is not None
    x = np.random.default_rng(0).uniform(0, 1, (3, 1, 8, 8)).astype(np.float32)
    with torchport.load(digits_package) as eager:
        want = eager.predict({"input": x})
    with running(tmp_path_factory, "export-serve", [package]) as server:
        import httpx

        body = {
            "inputs": [
                {
                    "name": "input",
                    "shape": [3, 1, 8, 8],
                    "datatype": "FP32",
                    "data": x.ravel().tolist(),
                }
            ]
        }
        r = httpx.post(f"{server.url}/v2/models/digits/infer", json=body, timeout=60)
        assert r.status_code == 200, r.text
        outputs = {o["name"]: o for o in r.json()["outputs"]}
        assert outputs["label"]["data"] == want["label"].tolist()
        np.testing.assert_allclose(
            np.array(outputs["probabilities"]["data"]).reshape(3, 10),
            want["probabilities"],
            atol=1e-4,
        )


def test_an_onnx_export_runs_in_onnxruntime_without_torch(
    exported: Exporter, tmp_path: Path
) -> None:
    result = exported("mlp", "onnx")
    assert result.out is not None
    with zipfile.ZipFile(result.out) as z:
        (tmp_path / "model.onnx").write_bytes(z.read("model.onnx"))
    example = result.manifest.examples[0]
    (tmp_path / "example.json").write_text(json.dumps(example.model_dump()))
    script = """
import builtins, json, sys
real_import = builtins.__import__
def guarded(name, *args, **kwargs):
    if name == "torch" or name.startswith("torch."):
        raise ImportError("torch must not be imported here")
    return real_import(name, *args, **kwargs)
builtins.__import__ = guarded
import numpy as np
import onnxruntime as ort
example = json.load(open("example.json"))
session = ort.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
x = np.array(example["inputs"]["input"], np.float32)
[y] = session.run(None, {session.get_inputs()[0].name: x})
np.testing.assert_allclose(y, np.array(example["outputs"]["output"]), atol=1e-5)
assert "torch" not in sys.modules
print("ok", y.shape)
"""
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok (2, 8)")  # the example's two rows


def test_a_model_that_cannot_be_exported_names_the_cause_and_what_works(
    branchy_package: Path, tmp_path: Path
) -> None:
    with pytest.raises(ExportFailed) as failed:
        export_package(branchy_package, "exported", tmp_path / "x.tpa")
    message = str(failed.value)
    assert message.startswith("torch.export failed:")
    assert "data-dependent" in message.lower() or "guard" in message.lower(), message
    assert "run but do not match: torchscript" in message, message
    assert not (tmp_path / "x.tpa").exists()


def test_an_export_that_differs_is_not_written_and_the_server_refuses_it(
    branchy_package: Path, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    out = tmp_path / "branchy.torchscript.tpa"
    with pytest.raises(ParityFailed) as failed:
        export_package(branchy_package, "torchscript", out)
    assert "does not match the original model: output 'output'" in str(failed.value)
    assert not failed.value.parity.passed
    assert not out.exists()

    kept = export_package(branchy_package, "torchscript", out, keep_failed=True)
    assert kept.out == out
    assert not kept.parity.passed
    manifest = read_package(out).manifest
    assert manifest.export is not None
    assert not manifest.export.parity.passed
    with running(tmp_path_factory, "export-refused", []) as server:
        import httpx

        r = httpx.post(
            f"{server.management_url}/models/branchy",
            content=out.read_bytes(),
            headers=server.auth,
            timeout=60,
        )
        assert r.status_code == 400
        body = r.json()
        assert body["field"] == "export.parity"
        assert "parity check" in body["error"]
        assert "not registered" in body["error"]
        models = httpx.get(f"{server.management_url}/models", headers=server.auth).json()
        assert models["models"] == []


def test_tolerances_are_per_datatype_and_exact_for_integers() -> None:
    sig = Signature.model_validate(
        {
            "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 2]}],
            "outputs": [
                {"name": "y", "datatype": "FP32", "shape": [-1, 2]},
                {"name": "k", "datatype": "INT64", "shape": [-1]},
            ],
        }
    )
    want = {"y": np.array([[1.0, 100.0]], np.float32), "k": np.array([3])}
    near = {"y": np.array([[1.00005, 100.009]], np.float32), "k": np.array([3])}
    report = compare(sig, [want], [near])
    assert report.passed
    assert report.outputs[0].max_abs_error == pytest.approx(0.009, rel=1e-2)
    off_by_one = {"y": want["y"], "k": np.array([4])}
    report = compare(sig, [want], [off_by_one])
    assert not report.passed
    assert [o.passed for o in report.outputs] == [True, False]
    assert report.outputs[1].mismatched == 1
    loose = compare(sig, [want], [{"y": want["y"] + 0.5, "k": want["k"]}], Tolerance(1.0, 0.0))
    assert loose.passed
    assert Datatype.FP32 in {Datatype(s.datatype) for s in sig.outputs}


def test_the_cli_prints_the_report_and_refuses_a_failing_export(
    mlp_package: Path, branchy_package: Path, tmp_path: Path
) -> None:
    done = cli("export", mlp_package, "--to", "exported", "-o", tmp_path / "m.tpa", "--check",
               "--write-inputs", tmp_path / "inputs.txt")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "parity passed" in done.stdout
    [(name, x)] = parse_tensors((tmp_path / "inputs.txt").read_text())
    assert (name, x.shape, x.dtype) == ("input_0", (2, 32), np.float32)
    assert "max abs error" in done.stdout
    failing = cli("export", branchy_package, "--to", "torchscript", "-o", tmp_path / "b.tpa")
    assert_one_line_error(failing, "does not match the original model", "nothing was written")
    assert not (tmp_path / "b.tpa").exists()
    assert_one_line_error(cli("export", mlp_package, "--to", "tflite"), "--to 'tflite'")
    assert_one_line_error(cli("export", tmp_path / "none.tpa", "--to", "onnx"), "does not exist")


def test_an_aoti_export_records_its_device_and_runs_nowhere_else(
    exported: Exporter, tmp_path: Path
) -> None:
    from torchport.archive import unpack_package, write_package
    from torchport.errors import ModelLoadError

    result = exported("mlp", "aoti")
    manifest = read_package(result.out).manifest
    assert manifest.model.compiled_for == "cpu"
    assert manifest.export is not None
    assert manifest.export.checked_on == "cpu"
    # The same kernels said to be compiled for a GPU: refused on this CPU, naming what to do.
    files = tmp_path / "files"
    unpacked = unpack_package(result.out, files).manifest
    entry = unpacked.model.model_copy(update={"compiled_for": "cuda"})
    cuda_only = tmp_path / "cuda-only.tpa"
    write_package(cuda_only, unpacked.model_copy(update={"model": entry}),
                  {n: files / n for n in unpacked.files})  # fmt: skip
    with pytest.raises(ModelLoadError, match=(
        r"model_aoti.pt2 was compiled by AOTInductor for cuda and this version runs on cpu: "
        r"set device to cuda, or export the package again for cpu "
        r"\(torchport export --to aoti --device cpu\)"
    )):  # fmt: skip
        torchport.load(cuda_only)


def test_export_for_a_device_this_machine_lacks_is_one_clear_line(
    mlp_package: Path, tmp_path: Path
) -> None:
    import torch

    out = tmp_path / "x.tpa"
    if not torch.cuda.is_available():
        done = cli("export", mlp_package, "--to", "aoti", "--device", "cuda", "-o", out)
        assert_one_line_error(done, "device cuda is not available", "no GPU")
    assert_one_line_error(
        cli("export", mlp_package, "--to", "aoti", "--device", "auto", "-o", out),
        "device auto: export for a named device",
    )
    assert_one_line_error(
        cli("export", mlp_package, "--to", "torchscript", "--device", "tpu", "-o", out),
        "device 'tpu': use cpu, cuda, cuda:N or auto",
    )
    assert not out.exists()


@pytest.mark.skipif(
    not __import__("torch").cuda.is_available(),
    reason="needs a GPU: CUDA paths run only where one is present",
)
def test_an_aoti_export_for_the_gpu_runs_there_and_answers_like_the_cpu(
    mlp_package: Path, tmp_path: Path
) -> None:
    result = export_package(mlp_package, "aoti", tmp_path / "gpu.tpa", device="cuda")
    manifest = read_package(result.out).manifest
    assert manifest.model.compiled_for == "cuda"
    assert manifest.runtime.device == "cuda"
    assert manifest.export is not None
    assert manifest.export.checked_on == "cuda:0"
    x = {"input": np.random.default_rng(0).standard_normal((5, 32)).astype(np.float32)}
    with torchport.load(mlp_package) as cpu, torchport.load(result.out, device="cuda") as gpu:
        np.testing.assert_allclose(gpu.predict(x)["output"], cpu.predict(x)["output"],
                                   atol=1e-4, rtol=1e-4)  # fmt: skip
