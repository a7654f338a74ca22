"""The `digits` handler: logits to class probabilities and the predicted label."""

from typing import Any

import torch

from torchport.runtime import Handler as BaseHandler
from torchport.types import Tensors


class Handler(BaseHandler):
    def postprocess(self, model_outputs: Any) -> Tensors:
        probabilities = torch.softmax(model_outputs, dim=1)
        return {
            "probabilities": probabilities.numpy(),
            "label": probabilities.argmax(dim=1).numpy(),
        }
