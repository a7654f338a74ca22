"""`torchport.load(...).predict`: the same answers as the eager module, and clear refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import torchport
from tests.helpers import edit_manifest, rewrite
from torchport.errors import IntegrityError, InvalidInput, NotFound, PackageError, UnsafeContent
from torchport.examples.mlp.model import build as build_mlp
from torchport.service import Management
from torchport.store import SQLiteStore


def seeded_mlp() -> torch.nn.Module:
    torch.manual_seed(0)  # the seed the example builder uses
    return build_mlp().eval()


def test_predict_equals_calling_the_module_eagerly(
    mlp_package: Path, mlp_input: np.ndarray
) -> None:
    with torch.inference_mode():
        want = seeded_mlp()(torch.from_numpy(mlp_input)).numpy()
    with torchport.load(mlp_package) as m:
        out = m.predict({"input": mlp_input})
    assert set(out) == {"output"}
    assert isinstance(out["output"], np.ndarray)
    np.testing.assert_array_equal(out["output"], want)


def test_signature_is_visible_before_predicting(mlp_package: Path) -> None:
    with torchport.load(mlp_package) as m:
        [spec] = m.signature.inputs
        assert (spec.name, spec.datatype.value, spec.shape) == ("input", "FP32", [-1, 32])
        assert m.signature.outputs[0].shape == [-1, 8]
        assert "mlp" in repr(m)


def test_torch_tensors_lists_and_a_bare_array_are_accepted(
    mlp_package: Path, mlp_input: np.ndarray
) -> None:
    with torchport.load(mlp_package) as m:
        want = m.predict({"input": mlp_input})["output"]
        np.testing.assert_array_equal(
            m.predict({"input": torch.from_numpy(mlp_input)})["output"], want
        )
        np.testing.assert_allclose(m.predict({"input": mlp_input.tolist()})["output"], want)
        np.testing.assert_array_equal(m.predict(mlp_input)["output"], want)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        (
            {"inptu": np.zeros((1, 32), np.float32)},
            r"unexpected input 'inptu' \(expected inputs: input\)",
        ),
        ({}, "missing input 'input'"),
        (
            {"input": np.zeros((1, 31), np.float32)},
            r"tensor 'input': expected shape \[-1, 32\], got \[1, 31\]",
        ),
        (
            {"input": np.zeros((32,), np.float32)},
            r"tensor 'input': expected shape \[-1, 32\], got \[32\]",
        ),
        (
            {"input": np.zeros((1, 32), np.float64)},
            "tensor 'input': expected datatype FP32, got FP64",
        ),
        (
            {"input": np.zeros((1, 32), np.int64)},
            "tensor 'input': expected datatype FP32, got INT64",
        ),
        ({"input": [["a"] * 32]}, "tensor 'input': expected FP32 data, got strings"),
    ],
)
def test_a_mismatched_input_names_the_tensor_the_expectation_and_what_came(
    mlp_package: Path, inputs: dict[str, object], message: str
) -> None:
    with torchport.load(mlp_package) as m, pytest.raises(InvalidInput, match=message):
        m.predict(inputs)


def test_a_tampered_package_is_refused_before_any_code_runs(
    mlp_package: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"

    def inject(files: dict[str, bytes]) -> dict[str, bytes]:
        files["model.py"] += f"\nopen({str(marker)!r}, 'w').write('x')\n".encode()
        return files

    with pytest.raises(IntegrityError, match="'model.py' was changed after packaging"):
        torchport.load(rewrite(mlp_package, tmp_path / "evil.tpa", inject))
    assert not marker.exists()


def test_a_package_whose_weights_are_a_pickle_is_refused(mlp_package: Path, tmp_path: Path) -> None:
    import hashlib
    import pickle

    evil = pickle.dumps({"0.weight": "x"})

    def swap(files: dict[str, bytes]) -> dict[str, bytes]:
        files["weights.safetensors"] = evil
        manifest = json.loads(files["MANIFEST.json"])
        manifest["files"]["weights.safetensors"] = hashlib.sha256(evil).hexdigest()
        files["MANIFEST.json"] = json.dumps(manifest).encode()
        return files

    with pytest.raises(UnsafeContent, match="not a valid safetensors file"):
        torchport.load(rewrite(mlp_package, tmp_path / "pickled.tpa", swap))


def test_a_package_from_a_newer_format_is_refused(mlp_package: Path, tmp_path: Path) -> None:
    newer = edit_manifest(mlp_package, tmp_path / "v2.tpa", lambda m: {**m, "format_version": 2})
    with pytest.raises(PackageError, match="format_version 2 is not supported"):
        torchport.load(newer)


def test_load_by_name_from_a_store_uses_the_default_version(
    mlp_package: Path, store_dir: Path, mlp_input: np.ndarray
) -> None:
    Management(SQLiteStore(store_dir)).upload(mlp_package)
    with torchport.load("mlp", store=store_dir) as m:
        assert m.version == 1
        assert m.predict({"input": mlp_input})["output"].shape == (3, 8)
    with pytest.raises(NotFound, match="no version 9"):
        torchport.load("mlp", store=store_dir, version=9)
    with pytest.raises(NotFound, match="model 'nope' not found"):
        torchport.load("nope", store=store_dir)


def test_close_removes_the_unpacked_files(mlp_package: Path) -> None:
    m = torchport.load(mlp_package)
    files = m._runner.handler.context.files
    assert (files / "model.py").exists()
    m.close()
    assert not files.exists()
