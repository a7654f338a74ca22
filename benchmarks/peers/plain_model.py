"""The model as a user would serve it by hand: plain PyTorch, no torchport at run time.

`load(kind, files)` reads `model.py` and `weights.safetensors` (and, for minilm,
`tokenizer.json`) from a directory and returns `predict(body: bytes) -> bytes`.
"""

from __future__ import annotations

import importlib.util
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file


def module(files: Path) -> torch.nn.Module:
    spec = importlib.util.spec_from_file_location("plain_model_code", files / "model.py")
    assert spec is not None
    assert spec.loader is not None
    code = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(code)
    module: torch.nn.Module = code.build()
    module.load_state_dict(load_file(str(files / "weights.safetensors")))
    return module.eval()


def load(kind: str, files: Path) -> Callable[[bytes], bytes]:
    threads = int(os.environ.get("TORCH_THREADS", "0"))
    if threads:  # one worker process of several: its share of the cores
        torch.set_num_threads(threads)
    model = module(files)
    if kind == "mlp":

        def predict_mlp(body: bytes) -> bytes:
            x = torch.tensor(json.loads(body)["input"], dtype=torch.float32)
            with torch.inference_mode():
                return json.dumps({"output": model(x).tolist()}).encode()

        return predict_mlp

    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(files / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=256)
    tokenizer.no_padding()

    def predict_text(body: bytes) -> bytes:
        encoding = tokenizer.encode(body.decode("utf-8"))
        ids = torch.tensor([encoding.ids])
        mask = torch.tensor([encoding.attention_mask])
        with torch.inference_mode():
            hidden = model(ids, mask)
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            embedding = torch.nn.functional.normalize(pooled, dim=1)[0]
        return json.dumps({"embedding": embedding.tolist()}).encode()

    return predict_text
