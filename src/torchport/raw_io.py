"""Packages whose handler reads each request's raw body and writes its raw answer.

TorchServe handlers and SageMaker `inference.py` scripts see a request as its body and
headers, and answer with a body, a status and headers of their own. Such a package has
this signature, one row per request:

- inputs: `body` (BYTES, the request body as sent) and, optionally, `headers` (BYTES: a
  JSON object of the request's headers, names in lower case);
- outputs: `response` (BYTES, the answer's body), `status` (INT32, its HTTP status) and
  `response_headers` (BYTES: a JSON object, `content-type` among them when set).

The HTTP routes that speak those servers' protocols pass the body and headers through and
write the answer as it is; every other protocol sees the tensors.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

from torchport.types import Array, Datatype, Signature, Tensors, TensorSpec

BODY, HEADERS = "body", "headers"
RESPONSE, STATUS, RESPONSE_HEADERS = "response", "status", "response_headers"

RAW_SIGNATURE = Signature(
    inputs=[
        TensorSpec(name=BODY, datatype=Datatype.BYTES, shape=[-1]),
        TensorSpec(name=HEADERS, datatype=Datatype.BYTES, shape=[-1], optional=True),
    ],
    outputs=[
        TensorSpec(name=RESPONSE, datatype=Datatype.BYTES, shape=[-1]),
        TensorSpec(name=STATUS, datatype=Datatype.INT32, shape=[-1]),
        TensorSpec(name=RESPONSE_HEADERS, datatype=Datatype.BYTES, shape=[-1]),
    ],
)


def is_raw(signature: Signature) -> bool:
    return signature == RAW_SIGNATURE


def request_row(body: bytes, headers: Mapping[str, str]) -> Tensors:
    """The inputs of one request."""
    return {
        BODY: _objects([body]),
        HEADERS: _objects([json.dumps({k.lower(): v for k, v in headers.items()}).encode()]),
    }


def answers(rows: Sequence[tuple[bytes, int, Mapping[str, str]]]) -> Tensors:
    """The outputs of a batch: each request's body, status and headers."""
    return {
        RESPONSE: _objects([body for body, _, _ in rows]),
        STATUS: np.array([status for _, status, _ in rows], dtype=np.int32),
        RESPONSE_HEADERS: _objects([json.dumps(dict(h)).encode() for _, _, h in rows]),
    }


def answer(outputs: Tensors, row: int = 0) -> tuple[bytes, int, dict[str, str]]:
    """One request's answer: body, status, headers."""
    headers = json.loads(outputs[RESPONSE_HEADERS][row])
    return bytes(outputs[RESPONSE][row]), int(outputs[STATUS][row]), dict(headers)


def headers_of(inputs: Tensors, rows: int) -> list[dict[str, str]]:
    """Each request's headers (none when the requests did not send them)."""
    sent = inputs.get(HEADERS)
    if sent is None:
        return [{} for _ in range(rows)]
    out = []
    for raw in sent:
        try:
            value = json.loads(raw)
        except ValueError:
            value = None
        out.append({str(k): str(v) for k, v in value.items()} if isinstance(value, dict) else {})
    return out


def _objects(items: list[bytes]) -> Array:
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out
