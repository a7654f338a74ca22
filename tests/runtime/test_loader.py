"""Loading models: what cannot be compiled says so."""

from __future__ import annotations

import pytest
import torch

from torchport.errors import ModelLoadError
from torchport.runtime.loader import compile_model


def test_a_torchscript_model_cannot_be_compiled() -> None:
    scripted = torch.jit.script(torch.nn.Linear(2, 2))  # type: ignore[no-untyped-call]
    with pytest.raises(ModelLoadError, match="TorchScript model cannot be compiled"):
        compile_model(scripted)
