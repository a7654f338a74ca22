"""`torchport traffic replay`: recorded requests run again against any version — in this
process through `torchport.load`, or against a server (the comparison:
`service/replay.py`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from torchport.errors import NotFound
from torchport.service.replay import (
    Record,
    Run,
    read_records,
    recorded_files,
    replay,
    report_lines,
)
from torchport.tensors import to_array
from torchport.types import Datatype, Signature, Tensors, TensorSpec


def in_process(package: Path) -> tuple[Run, Signature]:
    """A version's package loaded here (`torchport.load`)."""
    import torchport

    loaded = torchport.load(package)
    return loaded.predict, loaded.signature


def on_server(url: str, model: str, version: int, signature: Signature) -> Run:
    """A version on a running server (the Open Inference Protocol, JSON)."""
    import httpx

    client = httpx.Client(base_url=url.rstrip("/"), timeout=60)
    path = f"/v2/models/{model}/versions/{version}/infer"

    def run(inputs: Tensors) -> Tensors:
        body = {
            "inputs": [
                {"name": name, "datatype": Datatype.from_numpy(a.dtype).value,
                 "shape": list(a.shape), "data": _jsonable(a)}
                for name, a in inputs.items()
            ]
        }  # fmt: skip
        answer = client.post(path, json=body)
        if answer.status_code != 200:
            raise RuntimeError(f"HTTP {answer.status_code}: {answer.text[:200]}")
        out: Tensors = {}
        for tensor in answer.json()["outputs"]:
            datatype = Datatype(tensor["datatype"])
            data = to_array(tensor["data"], datatype, name=tensor["name"])
            out[tensor["name"]] = data.reshape(tensor["shape"])
        return out

    return run


def server_signature(url: str, model: str, version: int) -> Signature:
    """A version's signature as the server's model metadata tells it."""
    import httpx

    answer = httpx.get(f"{url.rstrip('/')}/v2/models/{model}/versions/{version}", timeout=60)
    if answer.status_code != 200:
        raise NotFound(f"the server has no {model} v{version} (HTTP {answer.status_code})")
    doc = answer.json()
    return Signature(
        inputs=[TensorSpec.model_validate(t) for t in doc["inputs"]],
        outputs=[TensorSpec.model_validate(t) for t in doc["outputs"]],
    )


def _jsonable(array: np.ndarray) -> Any:
    from torchport.tensors import to_jsonable

    return to_jsonable(array.reshape(-1))


__all__ = [
    "Record",
    "in_process",
    "on_server",
    "read_records",
    "recorded_files",
    "replay",
    "report_lines",
    "server_signature",
]
