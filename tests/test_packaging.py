"""`torchport.package`: every way in gives a package whose model answers like the original."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import torchport
from torchport.archive import ModelKind, read_package
from torchport.errors import InvalidInput, ModelLoadError, UnsafeContent

MLP_CODE = Path(__file__).resolve().parents[1] / "examples" / "mlp" / "model.py"


def seeded_mlp() -> torch.nn.Module:
    from torchport.examples.mlp.model import build

    torch.manual_seed(0)
    return build().eval()


def eager(module: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return module(torch.from_numpy(x)).numpy()


class TwoHeads(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(4, 6)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return h[:, :3], h[:, 3:].sum(dim=1)


def test_a_live_module_is_packaged_as_an_exported_program(
    tmp_path: Path, mlp_input: np.ndarray
) -> None:
    module = seeded_mlp()
    manifest = torchport.package(
        module, name="mlp", example={"input": mlp_input[:1]}, out=tmp_path / "m.tpa"
    )
    assert manifest.model.kind is ModelKind.EXPORTED
    assert manifest.signature.inputs[0].shape == [-1, 32]
    assert manifest.signature.outputs[0].model_dump(exclude_none=True) == {
        "name": "output",
        "datatype": "FP32",
        "shape": [-1, 8],
    }
    with torchport.load(tmp_path / "m.tpa") as m:
        # The batch axis stays dynamic although the example had a batch of one.
        got = m.predict({"input": mlp_input})["output"]
    np.testing.assert_allclose(got, eager(module, mlp_input), rtol=1e-5, atol=1e-6)


def test_a_module_with_code_is_packaged_as_code_plus_safetensors(
    tmp_path: Path, mlp_input: np.ndarray
) -> None:
    module = seeded_mlp()
    manifest = torchport.package(
        module,
        name="mlp",
        code=f"{MLP_CODE}:build",
        example={"input": mlp_input},
        out=tmp_path / "m.tpa",
    )
    assert manifest.model.kind is ModelKind.CODE
    assert manifest.model.weights == "weights.safetensors"
    with torchport.load(tmp_path / "m.tpa") as m:
        np.testing.assert_array_equal(
            m.predict({"input": mlp_input})["output"], eager(module, mlp_input)
        )


def test_a_tuple_output_is_named_output_0_output_1(tmp_path: Path) -> None:
    torch.manual_seed(1)
    module = TwoHeads().eval()
    x = np.ones((2, 4), np.float32)
    manifest = torchport.package(module, name="heads", example={"input": x}, out=tmp_path / "h.tpa")
    assert [s.name for s in manifest.signature.outputs] == ["output_0", "output_1"]
    assert [s.shape for s in manifest.signature.outputs] == [[-1, 3], [-1]]


def test_a_signature_names_the_outputs(tmp_path: Path) -> None:
    torch.manual_seed(1)
    x = np.ones((2, 4), np.float32)
    signature = {
        "inputs": [{"name": "features", "datatype": "FP32", "shape": [-1, 4]}],
        "outputs": [
            {"name": "head", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "score", "datatype": "FP32", "shape": [-1]},
        ],
    }
    torchport.package(
        TwoHeads().eval(),
        name="heads",
        example={"features": x},
        signature=signature,
        out=tmp_path / "h.tpa",
    )
    with torchport.load(tmp_path / "h.tpa") as m:
        assert set(m.predict({"features": x})) == {"head", "score"}


def test_an_exported_program_file_and_a_torchscript_file_package_alike(
    tmp_path: Path, mlp_input: np.ndarray
) -> None:
    module = seeded_mlp()
    batch = torch.export.Dim("batch")
    program = torch.export.export(
        module, (torch.from_numpy(mlp_input),), dynamic_shapes=({0: batch},)
    )
    torch.export.save(program, str(tmp_path / "prog.pt2"))
    torch.jit.save(torch.jit.trace(module, torch.from_numpy(mlp_input)), str(tmp_path / "ts.pt"))
    want = eager(module, mlp_input)
    for kind, kwargs in (
        (ModelKind.EXPORTED, {"exported": tmp_path / "prog.pt2"}),
        (ModelKind.TORCHSCRIPT, {"torchscript": tmp_path / "ts.pt"}),
    ):
        out = tmp_path / f"{kind.value}.tpa"
        manifest = torchport.package(name="mlp", example={"input": mlp_input}, out=out, **kwargs)
        assert manifest.model.kind is kind
        with torchport.load(out) as m:
            np.testing.assert_allclose(m.predict({"input": mlp_input})["output"], want, rtol=1e-5)


def test_weights_saved_with_torch_save_are_read_weights_only_and_stored_as_safetensors(
    tmp_path: Path, mlp_input: np.ndarray
) -> None:
    module = seeded_mlp()
    torch.save(module.state_dict(), tmp_path / "w.pt")
    out = tmp_path / "m.tpa"
    manifest = torchport.package(
        name="mlp",
        code=f"{MLP_CODE}:build",
        weights=tmp_path / "w.pt",
        example={"input": mlp_input},
        out=out,
    )
    assert manifest.model.weights == "weights.safetensors"
    with torchport.load(out) as m:
        np.testing.assert_array_equal(
            m.predict({"input": mlp_input})["output"], eager(module, mlp_input)
        )


class Payload:
    """An object a pickle would construct: what weights_only loading refuses."""

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (print, ("pickle code ran",))


def test_pickled_weights_are_refused_and_nothing_is_written(
    tmp_path: Path, mlp_input: np.ndarray, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "raw.pkl").write_bytes(pickle.dumps({"w": Payload()}))
    torch.save({"layer": Payload()}, tmp_path / "objects.pt")
    out = tmp_path / "m.tpa"
    for weights in ("raw.pkl", "objects.pt"):
        with pytest.raises(UnsafeContent, match="refused") as info:
            torchport.package(
                name="mlp",
                code=f"{MLP_CODE}:build",
                weights=tmp_path / weights,
                example={"input": mlp_input},
                out=out,
            )
        assert info.value.field == "weights"
    assert "pickle code ran" not in capsys.readouterr().out
    assert not out.exists()


def test_a_pickle_named_safetensors_is_refused(tmp_path: Path, mlp_input: np.ndarray) -> None:
    (tmp_path / "w.safetensors").write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(UnsafeContent, match="not a valid safetensors file"):
        torchport.package(
            name="mlp",
            code=f"{MLP_CODE}:build",
            weights=tmp_path / "w.safetensors",
            example={"input": mlp_input},
            out=tmp_path / "m.tpa",
        )


def test_weights_that_do_not_fit_the_module_are_refused(
    tmp_path: Path, mlp_input: np.ndarray
) -> None:
    save_file({"0.weight": torch.zeros(3, 3)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ModelLoadError, match="state_dict"):
        torchport.package(
            name="mlp",
            code=f"{MLP_CODE}:build",
            weights=tmp_path / "w.safetensors",
            example={"input": mlp_input},
            out=tmp_path / "m.tpa",
        )


def test_an_example_that_does_not_match_the_signature_is_refused(tmp_path: Path) -> None:
    signature = {
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 32]}],
        "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 8]}],
    }
    with pytest.raises(
        InvalidInput, match=r"tensor 'input': expected shape \[-1, 32\], got \[1, 4\]"
    ):
        torchport.package(
            seeded_mlp(),
            name="mlp",
            example={"input": np.zeros((1, 4), np.float32)},
            signature=signature,
            out=tmp_path / "m.tpa",
        )


def test_model_given_two_ways_or_none_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="exactly one way"):
        torchport.package(name="m", example={"x": [1.0]}, out=tmp_path / "m.tpa")
    with pytest.raises(InvalidInput, match="exactly one way"):
        torchport.package(
            seeded_mlp(),
            name="m",
            exported=tmp_path / "p.pt2",
            example={"x": [1.0]},
            out=tmp_path / "m.tpa",
        )


def test_a_model_that_fails_on_its_example_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="failed on the example"):
        torchport.package(
            name="mlp",
            code=f"{MLP_CODE}:build",
            example={"input": np.zeros((1, 5), np.float32)},
            out=tmp_path / "m.tpa",
        )
    assert not (tmp_path / "m.tpa").exists()


def test_the_manifest_records_the_example_and_its_expected_output(
    tmp_path: Path, mlp_input: np.ndarray
) -> None:
    module = seeded_mlp()
    out = tmp_path / "m.tpa"
    torchport.package(
        module, name="mlp", code=f"{MLP_CODE}:build", example={"input": mlp_input}, out=out
    )
    [example] = read_package(out).manifest.examples
    np.testing.assert_allclose(np.array(example.inputs["input"], np.float32), mlp_input)
    np.testing.assert_allclose(
        np.array(example.outputs["output"], np.float32), eager(module, mlp_input), rtol=1e-6
    )
