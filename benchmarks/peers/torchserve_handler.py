"""TorchServe handler for the benchmark: the same model code and weights torchport serves.

Runs inside TorchServe's own virtual environment (benchmarks/peers/torchserve.py makes it).
Handles `mlp` (JSON `{"input": [[32 floats]]}`) and `minilm` (text), a batch at a time.
"""

import importlib.util
import json
import os

import torch
from safetensors.torch import load_file
from ts.torch_handler.base_handler import BaseHandler


class Handler(BaseHandler):
    def initialize(self, context):
        threads = int(os.environ.get("BENCH_TORCH_THREADS", "0"))
        if threads:
            torch.set_num_threads(threads)
        model_dir = context.system_properties["model_dir"]
        spec = importlib.util.spec_from_file_location(
            "bench_model", os.path.join(model_dir, "model.py")
        )
        code = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(code)
        self.model = code.build()
        self.model.load_state_dict(load_file(os.path.join(model_dir, "weights.safetensors")))
        self.model.eval()
        self.tokenizer = None
        tokenizer_file = os.path.join(model_dir, "tokenizer.json")
        if os.path.exists(tokenizer_file):
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(tokenizer_file)
            self.tokenizer.enable_truncation(max_length=256)
            self.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
        self.initialized = True

    def handle(self, data, context):
        bodies = [row.get("data") or row.get("body") for row in data]
        with torch.inference_mode():
            if self.tokenizer is None:
                rows = [
                    json.loads(b)["input"][0]
                    if isinstance(b, (bytes, bytearray))
                    else b["input"][0]
                    for b in bodies
                ]
                out = self.model(torch.tensor(rows, dtype=torch.float32))
                return [json.dumps({"output": [row]}) for row in out.tolist()]
            texts = [
                b.decode("utf-8") if isinstance(b, (bytes, bytearray)) else str(b) for b in bodies
            ]
            encodings = self.tokenizer.encode_batch(texts)
            ids = torch.tensor([e.ids for e in encodings])
            mask = torch.tensor([e.attention_mask for e in encodings])
            hidden = self.model(ids, mask)
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            embeddings = torch.nn.functional.normalize(pooled, dim=1)
            return [json.dumps({"embedding": e}) for e in embeddings.tolist()]
