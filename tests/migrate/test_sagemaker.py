"""`torchport import model.tar.gz`: a SageMaker PyTorch model (artifacts and, optionally,
`code/inference.py`) becomes a package whose `/invocations` answers as SageMaker's own
PyTorch inference toolkit answers — checked against that toolkit, run for real."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from benchmarks.peers.torchserve import ensure_venv

from tests.inprocess import InProcess, in_process
from tests.migrate.archives import write
from torchport.archive import read_package
from torchport.errors import PackageError, UnsafeContent
from torchport.migrate import import_archive, import_sagemaker

REFERENCE = Path(__file__).with_name("sagemaker_reference.py")

ALL_FOUR = """
import json
import os

import numpy as np
import torch


def model_fn(model_dir):
    return torch.jit.load(os.path.join(model_dir, "model.pt"))


def input_fn(body, content_type):
    if content_type == "application/json":
        return torch.tensor(json.loads(body)["inputs"], dtype=torch.float32)
    if content_type == "application/x-npy":
        return torch.from_numpy(np.load(__import__("io").BytesIO(body)))
    raise ValueError("unsupported content type " + content_type)


def predict_fn(data, model):
    with torch.no_grad():
        return torch.softmax(model(data), dim=1)


def output_fn(prediction, accept):
    if accept == "application/x-npy":
        buffer = __import__("io").BytesIO()
        np.save(buffer, prediction.numpy())
        return buffer.getvalue(), accept
    return json.dumps({"probabilities": prediction.tolist()}), "application/json"
"""

MODEL_FN_ONLY = """
import os

import torch

from helpers import scale


def model_fn(model_dir):
    model = torch.jit.load(os.path.join(model_dir, "model.pt"))
    return torch.jit.script(scale(model)) if False else model
"""

HELPERS = """
def scale(model):
    return model
"""


def _tiny() -> torch.jit.ScriptModule:
    torch.manual_seed(1)
    return torch.jit.script(torch.nn.Sequential(torch.nn.Linear(4, 3)).eval())


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _model_pt() -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(_tiny(), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sagemaker")
    model = _model_pt()
    return {
        "four": _tar(root / "four.tar.gz", {
            "model.pt": model, "code/inference.py": ALL_FOUR.encode(),
        }),
        "model_fn": _tar(root / "model_fn.tar.gz", {
            "model.pt": model, "code/inference.py": MODEL_FN_ONLY.encode(),
            "code/helpers.py": HELPERS.encode(),
        }),
        "none": _tar(root / "none.tar.gz", {"model.pt": model}),
    }  # fmt: skip


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


ROWS = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]], dtype=np.float32)
JSON, NPY, CSV = "application/json", "application/x-npy", "text/csv"
CASES: dict[str, list[tuple[bytes, dict[str, str]]]] = {
    "four": [
        (json.dumps({"inputs": ROWS.tolist()}).encode(), {"Content-Type": JSON}),
        (_npy(ROWS), {"Content-Type": NPY, "Accept": NPY}),
    ],
    "model_fn": [
        (json.dumps(ROWS.tolist()).encode(), {"Content-Type": JSON}),
        (json.dumps(ROWS.tolist()).encode(), {"Content-Type": JSON, "Accept": CSV}),
        (_npy(ROWS), {"Content-Type": NPY, "Accept": NPY}),
    ],
    "none": [
        (json.dumps(ROWS.tolist()).encode(), {"Content-Type": JSON, "Accept": "*/*"}),
        (_npy(ROWS), {"Content-Type": NPY, "Accept": f"{NPY}, {JSON}"}),
    ],
}


def _reference(
    model_dir: Path, cases: list[tuple[bytes, dict[str, str]]]
) -> list[dict[str, object]]:
    python = ensure_venv() / "bin" / "python"
    request = {
        "model_dir": str(model_dir),
        "requests": [{"body": base64.b64encode(b).decode(), "headers": h} for b, h in cases],
    }
    done = subprocess.run([str(python), str(REFERENCE)], input=json.dumps(request),
                          capture_output=True, text=True, check=True, timeout=300)  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def _same(content_type: str, theirs: bytes, ours: bytes) -> None:
    """The same answer: the same bytes, or (floats computed apart) the same numbers."""
    if ours == theirs:
        return
    if content_type == NPY:
        np.testing.assert_allclose(
            np.load(io.BytesIO(ours)), np.load(io.BytesIO(theirs)), rtol=1e-6
        )
        return
    assert content_type == JSON, (theirs, ours)
    mine, expected = json.loads(ours), json.loads(theirs)
    if isinstance(expected, dict):
        assert mine.keys() == expected.keys()
        mine, expected = list(mine.values()), list(expected.values())
    np.testing.assert_allclose(np.array(mine), np.array(expected), rtol=1e-6)


@pytest.fixture(scope="module")
def served(
    archives: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, InProcess]]:
    out = tmp_path_factory.mktemp("sagemaker-tpa")
    servers: dict[str, InProcess] = {}
    import contextlib

    with contextlib.ExitStack() as stack:
        for name, archive in archives.items():
            package = import_sagemaker(archive, out / f"{name}.tpa").path
            servers[name] = stack.enter_context(
                in_process(out / f"store-{name}", [package], sagemaker=True)
            )
        yield servers


@pytest.mark.parametrize("name", ["four", "model_fn", "none"])
def test_invocations_answer_as_sagemakers_pytorch_toolkit(
    name: str, archives: dict[str, Path], served: dict[str, InProcess], tmp_path: Path
) -> None:
    with tarfile.open(archives[name]) as tar:
        tar.extractall(tmp_path / "model", filter="data")
    theirs = _reference(tmp_path / "model", CASES[name])
    for (body, headers), expected in zip(CASES[name], theirs, strict=True):
        ours = served[name].http.post("/invocations", content=body, headers=headers)
        assert ours.status_code == expected["status"] == 200, ours.text
        content_type = str(expected["content_type"])
        assert ours.headers["content-type"].split(";")[0] == content_type
        _same(content_type, base64.b64decode(str(expected["body"])), ours.content)


def test_what_the_toolkit_cannot_read_is_a_4xx_not_a_traceback(
    served: dict[str, InProcess],
) -> None:
    http = served["model_fn"].http
    unsupported = http.post(
        "/invocations", content=b"hello", headers={"Content-Type": "text/plain"}
    )
    assert unsupported.status_code == 415
    assert "text/plain is not supported" in unsupported.text
    refused = http.post("/invocations", content=b"[[1,2,3,4]]",
                        headers={"Content-Type": JSON, "Accept": "image/png"})  # fmt: skip
    assert refused.status_code == 406
    broken = http.post("/invocations", content=b"[[1,2,", headers={"Content-Type": JSON})
    assert broken.status_code == 400
    # The toolkit's default input_fn reads CSV as a structured array torch cannot take (its
    # answer is a 500 and a traceback): here a 400 saying so.
    rows = b"1,2,3,4\n0.5,-1,0,2\n"  # columns of ints and floats: a structured array
    csv = http.post("/invocations", content=rows, headers={"Content-Type": CSV})
    assert csv.status_code == 400
    assert "could not be read" in csv.text
    pickled = np.array([{"a": 1}], dtype=object)
    buffer = io.BytesIO()
    np.save(buffer, pickled, allow_pickle=True)
    unpickled = http.post("/invocations", content=buffer.getvalue(), headers={"Content-Type": NPY})
    assert unpickled.status_code == 400  # never unpickled (the toolkit would)
    assert "Traceback" not in unpickled.text


def test_the_package_keeps_the_script_its_helpers_and_the_artifacts(
    archives: dict[str, Path], tmp_path: Path
) -> None:
    imported = import_archive(archives["model_fn"], tmp_path / "m.tpa")
    manifest = read_package(imported.path).manifest
    assert manifest.name == "m" or manifest.name == "model_fn"
    assert manifest.handler is not None
    assert (manifest.handler.api, manifest.handler.file) == ("sagemaker", "code/inference.py")
    assert manifest.model.kind.value == "handler"
    assert {"code/helpers.py", "model.pt"} <= set(manifest.files)
    default = read_package(import_sagemaker(archives["none"], tmp_path / "n.tpa").path).manifest
    assert default.model.kind.value == "torchscript"


def test_an_example_is_recorded_and_checked(archives: dict[str, Path], tmp_path: Path) -> None:
    example = tmp_path / "rows.json"
    example.write_text(json.dumps(ROWS.tolist()))
    imported = import_sagemaker(archives["model_fn"], tmp_path / "m.tpa", example=example)
    recorded = read_package(imported.path).manifest.examples
    assert len(recorded) == 1
    assert recorded[0].outputs["status"] == [200]


def test_a_pickled_model_without_model_fn_and_requirements_are_refused(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(torch.nn.Linear(4, 3), buffer)
    pickled = _tar(tmp_path / "p.tar.gz", {"model.pth": buffer.getvalue()})
    with pytest.raises(UnsafeContent, match="not TorchScript"):
        import_sagemaker(pickled, tmp_path / "p.tpa")
    reqs = _tar(tmp_path / "r.tar.gz", {"model.pt": _model_pt(),
                                        "code/requirements.txt": b"transformers\n"})  # fmt: skip
    with pytest.raises(UnsafeContent, match="never installs packages"):
        import_sagemaker(reqs, tmp_path / "r.tpa")
    with pytest.raises(PackageError, match="neither a TorchServe .mar nor a SageMaker"):
        import_archive(write(tmp_path / "x.tar.gz", "not a tar"), tmp_path / "x.tpa")
    link = tmp_path / "l.tar.gz"
    with tarfile.open(link, "w:gz") as tar:
        info = tarfile.TarInfo("model.pt")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(UnsafeContent, match="not a regular file"):
        import_sagemaker(link, tmp_path / "l.tpa")
