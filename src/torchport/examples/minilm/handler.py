"""The `minilm` handler: UTF-8 text in, L2-normalised 384-float sentence embeddings out.

Tokenises with the checkpoint's own `tokenizer.json` (shipped in the package), truncates at
256 tokens as sentence-transformers does, and mean-pools over the real (unpadded) tokens.
"""

from typing import Any

import torch
from tokenizers import Tokenizer
from torch.nn import functional as F

from torchport.errors import InvalidInput
from torchport.runtime import Handler as BaseHandler
from torchport.runtime import HandlerContext
from torchport.types import Tensors

MAX_TOKENS = 256


class Handler(BaseHandler):
    def __init__(self, model: Any, context: HandlerContext) -> None:
        super().__init__(model, context)
        self.tokenizer = Tokenizer.from_file(str(context.files / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=MAX_TOKENS)
        self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest in the batch

    def preprocess(self, inputs: Tensors) -> Any:
        try:
            texts = [item.decode("utf-8") for item in inputs["text"].reshape(-1)]
        except UnicodeDecodeError as exc:
            raise InvalidInput(f"input 'text' is not UTF-8: {exc}", field="text") from None
        encodings = self.tokenizer.encode_batch(texts)
        ids = torch.tensor([e.ids for e in encodings], dtype=torch.int64)
        mask = torch.tensor([e.attention_mask for e in encodings], dtype=torch.int64)
        return ids, mask

    def inference(self, model_inputs: Any) -> Any:
        ids, mask = model_inputs
        return self.model(ids, mask), mask

    def postprocess(self, model_outputs: Any) -> Tensors:
        hidden, mask = model_outputs
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return {"embedding": F.normalize(pooled, p=2, dim=1).numpy()}
