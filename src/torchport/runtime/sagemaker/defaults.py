"""The SageMaker PyTorch container's defaults, for the functions a script leaves out:
`model_fn` (a TorchScript `model.pt`, or the one `.pt`/`.pth` file), `input_fn` (JSON, CSV
or NPY to a tensor), `predict_fn` (the model under `torch.no_grad`), `output_fn` (JSON, CSV
or NPY, as Accept asks)."""

from __future__ import annotations

import os
from typing import Any

import torch

from torchport.runtime.sagemaker.toolkit import content_types, decoder, encoder, errors, utils

DEFAULT_MODEL_FILENAME = "model.pt"


def default_model_fn(model_dir: str) -> Any:
    """TorchScript only: the container's loader (`torch.jit.load`), no pickles."""
    path = os.path.join(model_dir, DEFAULT_MODEL_FILENAME)
    if not os.path.exists(path):
        found = [
            f
            for f in os.listdir(model_dir)
            if os.path.isfile(os.path.join(model_dir, f))
            and os.path.splitext(f)[1] in (".pt", ".pth")
        ]
        if len(found) != 1:
            raise ValueError(
                f"Exactly one .pth or .pt file is required for PyTorch models: {found}"
            )
        path = os.path.join(model_dir, found[0])
    return torch.jit.load(path, map_location=torch.device("cpu"))  # type: ignore[no-untyped-call]


def default_input_fn(input_data: Any, content_type: str) -> torch.Tensor:
    array = decoder.decode(input_data, content_type)
    if content_type in content_types.UTF8_TYPES:
        return torch.FloatTensor(array)
    return torch.from_numpy(array)


def default_predict_fn(data: Any, model: Any) -> Any:
    with torch.no_grad():
        if isinstance(model, torch.nn.Module):
            model.eval()
        return model(data)


def default_output_fn(prediction: Any, accept: str) -> Any:
    if type(prediction) is torch.Tensor:
        prediction = prediction.detach().cpu().numpy().tolist()
    for content_type in utils.parse_accept(accept):
        if content_type in encoder.SUPPORTED_CONTENT_TYPES:
            encoded = encoder.encode(prediction, content_type)
            if content_type == content_types.CSV:
                encoded = encoded.encode("utf-8")
            return encoded
    raise errors.UnsupportedFormatError(accept)
