"""The runner: handlers run on whole batches, outputs are named and checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from torchport.errors import InvalidInput, TorchportError
from torchport.runtime import Handler, HandlerContext, check_examples, name_outputs, open_runner


def test_outputs_are_named_output_or_output_i_unless_the_signature_names_them() -> None:
    one = torch.ones(2, 3)
    assert list(name_outputs(one)) == ["output"]
    assert list(name_outputs((one, one))) == ["output_0", "output_1"]
    assert list(name_outputs((one, one), ["a", "b"])) == ["a", "b"]
    assert list(name_outputs({"x": one})) == ["x"]
    with pytest.raises(TorchportError, match="returned 2 outputs but the signature names 1"):
        name_outputs((one, one), ["a"])


def test_the_default_handler_refuses_bytes_inputs_with_a_hint(tmp_path: Path) -> None:
    handler = Handler(
        torch.nn.Identity(), HandlerContext(name="m", files=tmp_path, input_names=["t"])
    )
    with pytest.raises(InvalidInput, match="needs a handler"):
        handler({"t": np.array([b"x"], dtype=object)})


def test_the_runner_runs_in_inference_mode_and_checks_examples(mlp_package: Path) -> None:
    runner = open_runner(mlp_package)
    try:
        seen = []
        original = runner.handler.inference

        def spy(inputs: object) -> object:
            seen.append(torch.is_inference_mode_enabled())
            return original(inputs)

        runner.handler.inference = spy  # type: ignore[method-assign]
        assert check_examples(runner) == []
        assert seen == [True]
    finally:
        runner.close()


def test_outputs_that_break_the_signature_are_reported_as_a_package_fault(
    mlp_package: Path,
) -> None:
    runner = open_runner(mlp_package)
    try:
        runner.handler.postprocess = lambda _out: {"output": np.zeros((1, 3), np.float32)}  # type: ignore[method-assign]
        with pytest.raises(TorchportError, match="output error") as info:
            runner.predict({"input": np.zeros((1, 32), np.float32)})
        assert not isinstance(info.value, InvalidInput)
    finally:
        runner.close()
