"""The benchmark models as an MLServer 1.7 inference runtime (run by `mlserver start` in
build/mlserver-venv; see peers/mlserver.py): the same `model.py` and weights torchport
serves, over the Open Inference Protocol. `predict` takes a batch, as MLServer's adaptive
batching hands it one.

Model parameters: `uri` is the directory of the model's files; `extra.kind` is `mlp` or
`minilm`; `extra.torch_threads` (0: torch's default) is set in each process that loads it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlserver import MLModel
from mlserver.codecs import NumpyCodec, StringCodec
from mlserver.types import InferenceRequest, InferenceResponse

from benchmarks.peers.plain_model import module


class TorchModel(MLModel):
    async def load(self) -> bool:
        params = self.settings.parameters
        assert params is not None
        assert params.uri is not None
        extra: dict[str, Any] = params.extra or {}
        threads = int(extra.get("torch_threads", 0))
        if threads:
            torch.set_num_threads(threads)
        files = Path(params.uri)
        self.kind = extra["kind"]
        self.model = module(files)
        if self.kind == "minilm":
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(files / "tokenizer.json"))
            self.tokenizer.enable_truncation(max_length=256)
            self.tokenizer.enable_padding()
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if self.kind == "mlp":
            x = torch.from_numpy(NumpyCodec.decode_input(payload.inputs[0]).astype(np.float32))
            with torch.inference_mode():
                y = self.model(x).numpy()
            output = NumpyCodec.encode_output("output", y)
        else:
            texts = StringCodec.decode_input(payload.inputs[0])
            encodings = self.tokenizer.encode_batch(texts)
            ids = torch.tensor([e.ids for e in encodings])
            mask = torch.tensor([e.attention_mask for e in encodings])
            with torch.inference_mode():
                hidden = self.model(ids, mask)
                pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
                y = torch.nn.functional.normalize(pooled, dim=1).numpy()
            output = NumpyCodec.encode_output("embedding", y)
        return InferenceResponse(model_name=self.name, outputs=[output])
