"""TorchServe-compatible routes, so TorchServe clients switch without changes.

`POST /predictions/{m}[/{v}]` takes, as TorchServe does, one sample per request. A
package with a TorchServe handler (imported from a `.mar`) gets the body and headers as
sent and answers what its handler wrote, status and headers included; other packages take:
- a JSON object from input name to a batch (the `torchport predict` format) → the outputs
  as an object of batches;
- for a single-input model, a JSON value (one row, no batch axis) → that row's output;
- for a single BYTES input (text, an image file), the raw body → that row's output.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from torchport.errors import InvalidInput, TorchportError, Unavailable
from torchport.raw_io import answer, is_raw, request_row
from torchport.service.inference import InferenceService, InferRequest
from torchport.tensors import to_array, weight
from torchport.transports.http.body import BodyLimit, parse_json, read_body
from torchport.transports.http.params import (
    header,
    headers,
    model_and_version,
    timeout_seconds,
)
from torchport.transports.http.responses import STATUS, json_ready, json_response
from torchport.transports.http.responses import error_response as torchport_error
from torchport.types import Datatype, Signature, Tensors


def body_to_inputs(body: bytes, content_type: str, signature: Signature) -> tuple[Tensors, bool]:
    """Inputs for the model, and whether the request was a single sample (no batch axis)."""
    names = [s.name for s in signature.inputs]
    single = signature.inputs[0] if len(names) == 1 else None
    is_json = "json" in content_type
    doc: Any = None
    if body and (is_json or single is None or single.datatype is not Datatype.BYTES):
        doc = parse_json(body)
    if isinstance(doc, dict) and set(doc) <= set(names) and doc:
        return {k: to_array(v, signature.input(k).datatype, name=k) for k, v in doc.items()}, False
    if single is None:
        raise InvalidInput(
            f"this model has several inputs: send a JSON object with {', '.join(names)}",
            field="body",
        )
    if doc is None:
        if not body:
            raise InvalidInput("the request body is empty", field="body")
        sample = np.empty(1, dtype=object)
        sample[0] = body
        return {single.name: sample}, True
    return {single.name: to_array([doc], single.datatype, name=single.name)}, True


def _answer(outputs: Tensors, single: bool) -> Response:
    if not single:
        return json_response({k: json_ready(v) for k, v in outputs.items()})
    rows = {k: json_ready(v)[0] for k, v in outputs.items()}
    return json_response(next(iter(rows.values())) if len(rows) == 1 else rows)


def raw_answer(outputs: Tensors) -> Response:
    """A raw package's answer as its handler wrote it: body, status and headers."""
    body, status, headers = answer(outputs)
    if not 100 <= status <= 599:
        raise Unavailable(f"the model's handler answered with HTTP status {status}")
    sent = {k: v for k, v in headers.items() if k.lower() not in _HOP_BY_HOP}
    return Response(body, status_code=status, headers=sent)


_HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "keep-alive"}


def error_type(exc: TorchportError) -> str:
    """The exception TorchServe names in its error bodies for what `exc` says."""
    if exc.code == "not_found":
        version = exc.field == "version"
        return "ModelVersionNotFoundException" if version else "ModelNotFoundException"
    return _ERROR_TYPES.get(exc.code, "InternalServerException")


_ERROR_TYPES = {
    "conflict": "ConflictStatusException",
    "forbidden": "ForbiddenException",
    "invalid_input": "BadRequestException",
    "invalid_package": "BadRequestException",
    "unsafe_content": "BadRequestException",
    "model_load_failed": "BadRequestException",
    "unsupported_media_type": "BadRequestException",
    "not_acceptable": "BadRequestException",
    "too_large": "RequestEntityTooLargeException",
    "unauthorized": "InvalidKeyException",
    "unavailable": "ServiceUnavailableException",
    "overloaded": "ServiceUnavailableException",
    "deadline_exceeded": "RequestTimeoutException",
    "request_timeout": "RequestTimeoutException",
}


def error_response(exc: TorchportError) -> Response:
    """An error as TorchServe writes one: `{"code", "type", "message"}` (indented JSON),
    with torchport's status and headers (Retry-After on 503)."""
    status = STATUS.get(exc.code, 500)
    body = {"code": status, "type": error_type(exc), "message": str(exc)}
    if exc.field:
        body["field"] = exc.field
    response = torchport_error(exc)
    return Response(
        json.dumps(body, indent=2) + "\n",
        status_code=status,
        media_type="application/json",
        headers={k: v for k, v in response.headers.items() if k.lower() in _KEPT},
    )


_KEPT = {"retry-after", "www-authenticate", "connection"}


async def _model_and_version(service: InferenceService, request: Request) -> tuple[str, int | None]:
    """A version is a number, or the name TorchServe gave it (`1.0`: the version of the
    archive it was registered from)."""
    raw = request.path_params.get("version")
    if raw and not (raw.isascii() and raw.isdigit()) and "." in raw:
        model = request.path_params["model"]
        return model, await service.version_named(model, raw)
    return model_and_version(request)


def routes(service: InferenceService, max_body: BodyLimit) -> list[BaseRoute]:
    async def predictions(request: Request) -> Response:
        model, version = await _model_and_version(service, request)
        body = await read_body(request, max_body)
        signature = await service.signature(model, version)
        timeout = timeout_seconds(request)
        if is_raw(signature):
            # A TorchServe handler: the body and headers as sent, its answer as written.
            raw = request_row(body, headers(request))
            response = await service.infer(InferRequest(model, raw, version, timeout_s=timeout))
            return raw_answer(response.outputs)
        content_type = header(request, "content-type") or ""
        inputs, single = await service.offload(
            len(body), body_to_inputs, body, content_type, signature
        )
        response = await service.infer(InferRequest(model, inputs, version, timeout_s=timeout))
        return await service.offload(weight(response.outputs), _answer, response.outputs, single)

    async def ping(_request: Request) -> Response:
        ok = await service.server_ready()
        return json_response({"status": "Healthy" if ok else "Unhealthy"}, 200 if ok else 503)

    return [
        Route("/ping", ping),
        Route("/predictions/{model}", predictions, methods=["POST", "PUT"]),
        Route("/predictions/{model}/{version}", predictions, methods=["POST", "PUT"]),
    ]
