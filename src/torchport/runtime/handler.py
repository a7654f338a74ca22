"""The handler: pre-processing, inference and post-processing of one batch.

A package may ship `handler.py` with a subclass of `Handler`; without one, `Handler`
itself feeds the inputs to the model in signature order and names the outputs. The same
handler runs in `torchport.load(...)`, the microservice and the model server, so a result
is the same everywhere. Every method receives and returns a whole batch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from torchport.errors import InvalidInput, TorchportError
from torchport.types import Array, Signature, Tensors


@dataclass(frozen=True)
class HandlerContext:
    """What a handler may know about its package."""

    name: str
    files: Path
    """Directory holding the package's files (vocabularies, label lists, tokenizers)."""
    input_names: list[str]
    output_names: list[str] | None = None
    """Names for the model's outputs, when the package's signature declares them."""
    signature: Signature | None = None
    options: dict[str, Any] = field(default_factory=dict)


class Handler:
    """Turns a batch of named input arrays into a batch of named output arrays.

    Override `preprocess` and `postprocess` (and rarely `inference`); do one-time work such
    as loading a tokenizer in `__init__`, never per request. Handlers must not change
    global torch state.
    """

    def __init__(self, model: Any, context: HandlerContext) -> None:
        self.model = model
        self.context = context

    def preprocess(self, inputs: Tensors) -> Any:
        """Default: the inputs as torch tensors, in the signature's order."""
        tensors = []
        for name in self.context.input_names:
            array = inputs[name]
            if array.dtype == object:
                raise InvalidInput(
                    f"input '{name}' is BYTES: this package needs a handler that pre-processes it",
                    field=name,
                )
            # Writable: tensors from request bytes are read-only views, and torch would warn.
            tensors.append(torch.from_numpy(np.require(array, requirements=["C", "W"])))
        return tuple(tensors)

    def inference(self, model_inputs: Any) -> Any:
        """Default: call the model with the pre-processed inputs (a tuple is spread)."""
        if isinstance(model_inputs, tuple):
            return self.model(*model_inputs)
        if isinstance(model_inputs, Mapping):
            return self.model(**model_inputs)
        return self.model(model_inputs)

    def postprocess(self, model_outputs: Any) -> Tensors:
        """Default: one output is `output`, a tuple `output_0`, `output_1`, …, unless named."""
        return name_outputs(model_outputs, self.context.output_names)

    def __call__(self, inputs: Tensors) -> Tensors:
        return self.postprocess(self.inference(self.preprocess(inputs)))

    def recorded_metrics(self) -> list[tuple[str, str, str, float]]:
        """Metrics the handler recorded itself: (name, unit, dimensions, value); none here."""
        return []


def name_outputs(outputs: Any, names: Sequence[str] | None = None) -> Tensors:
    """Name a model's raw outputs (tensor, tuple/list of tensors, or dict) as numpy arrays."""
    if isinstance(outputs, Mapping):
        return {str(k): to_numpy(v) for k, v in outputs.items()}
    items = list(outputs) if isinstance(outputs, tuple | list) else [outputs]
    if names is None:
        names = ["output"] if len(items) == 1 else [f"output_{i}" for i in range(len(items))]
    if len(names) != len(items):
        raise TorchportError(
            f"the model returned {len(items)} outputs but the signature names {len(names)}"
        )
    return {n: to_numpy(v) for n, v in zip(names, items, strict=True)}


def to_numpy(value: Any) -> Array:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)
