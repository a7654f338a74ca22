"""The C++ runner (examples/cpp): built against the torch wheel's libtorch, it runs exported
models with no Python and prints what the Python model computes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.export.conftest import Exporter
from torchport.export.tensor_file import format_tensors, parse_tensors
from torchport.runtime import open_runner

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def runner_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/cpp built once per test session, exactly as the README builds it."""
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is needed to build examples/cpp (apt-get install cmake g++)")
    build = tmp_path_factory.mktemp("cpp-build")
    prefix = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.utils.cmake_prefix_path)"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    for command in (
        ["cmake", "-S", str(ROOT / "examples" / "cpp"), "-B", str(build),
         f"-DCMAKE_PREFIX_PATH={prefix}"],
        ["cmake", "--build", str(build), "-j2"],
    ):  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return build / "torchport-run"


def run_cpp(
    binary: Path, package: Path, member: str, args: tuple[np.ndarray, ...], work: Path
) -> list[tuple[str, np.ndarray]]:
    with zipfile.ZipFile(package) as z:
        (work / member).write_bytes(z.read(member))
    inputs = work / "inputs.txt"
    inputs.write_text(format_tensors([(f"input_{i}", a) for i, a in enumerate(args)]))
    done = subprocess.run(
        [str(binary), str(work / member), str(inputs)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    return parse_tensors(done.stdout)


@pytest.mark.parametrize(("model", "target", "member"), [
    ("mlp", "aoti", "model_aoti.pt2"),
    ("mlp", "torchscript", "model.pt"),
    ("digits", "torchscript", "model.pt"),
])  # fmt: skip
def test_the_cpp_runner_prints_what_python_computes(
    runner_binary: Path,
    exported: Exporter,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    model: str,
    target: str,
    member: str,
) -> None:
    result = exported(model, target)
    assert result.out is not None
    outputs = run_cpp(runner_binary, result.out, member, result.example_args, tmp_path)
    source = open_runner(request.getfixturevalue(f"{model}_package"), warm_up=False)
    try:
        with torch.no_grad():
            want = source.handler.model(*(torch.from_numpy(a) for a in result.example_args))
    finally:
        source.close()
    [(name, have)] = outputs
    assert name == "output_0"
    assert have.shape == tuple(want.shape)
    np.testing.assert_allclose(have, want.numpy(), rtol=1e-5, atol=1e-5)


def test_the_cpp_runner_explains_bad_input(runner_binary: Path, tmp_path: Path) -> None:
    (tmp_path / "inputs.txt").write_text("tensor x float16 1 2\n1 2\n")
    done = subprocess.run(
        [str(runner_binary), str(tmp_path / "model.pt"), str(tmp_path / "inputs.txt")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("error: unsupported dtype 'float16'")
    usage = subprocess.run([str(runner_binary)], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2
    assert "usage: torchport-run" in usage.stderr


def test_tensor_files_round_trip() -> None:
    tensors = [
        ("ids", np.array([[101, 2023, 102]], np.int64)),
        ("x", np.linspace(-1, 1, 12, dtype=np.float32).reshape(2, 2, 3)),
        ("flags", np.array([True, False])),
    ]
    back = parse_tensors("# made by a robot\n" + format_tensors(tensors))
    for (name, want), (got_name, got) in zip(tensors, back, strict=True):
        assert got_name == name
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
