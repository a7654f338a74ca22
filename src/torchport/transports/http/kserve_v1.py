"""KServe v1: `{"instances": [...]}` → `{"predictions": [...]}`.

Each instance is one row: for a single-input model, the row itself; for several inputs, an
object from input name to row. Predictions are rows of the single output, or objects from
output name to row.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from torchport.errors import InvalidInput
from torchport.service.inference import InferenceService, InferRequest
from torchport.tensors import to_array, weight
from torchport.transports.http.body import BodyLimit, parse_json, read_body
from torchport.transports.http.params import model_and_version, timeout_seconds
from torchport.transports.http.responses import json_ready, json_response
from torchport.types import Signature, Tensors


def instances_to_inputs(instances: Any, signature: Signature) -> Tensors:
    if not isinstance(instances, list) or not instances:
        raise InvalidInput("'instances' must be a non-empty list", field="instances")
    names = [s.name for s in signature.inputs]
    if len(names) == 1:
        columns = {names[0]: instances}
    else:
        for i, row in enumerate(instances):
            if not isinstance(row, dict):
                raise InvalidInput(
                    f"instances[{i}] must be an object with the inputs {', '.join(names)}",
                    field=f"instances[{i}]",
                )
        columns = {n: [row.get(n) for row in instances] for n in {k for r in instances for k in r}}
    return {
        name: to_array(rows, signature.input(name).datatype, name=name)
        for name, rows in columns.items()
    }


def outputs_to_predictions(outputs: Tensors) -> list[Any]:
    if len(outputs) == 1:
        return list(json_ready(next(iter(outputs.values()))))
    columns = {name: json_ready(array) for name, array in outputs.items()}
    rows = len(next(iter(columns.values())))
    return [{name: column[i] for name, column in columns.items()} for i in range(rows)]


def _inputs(body: bytes, signature: Signature) -> Tensors:
    doc = parse_json(body)
    if not isinstance(doc, dict) or "instances" not in doc:
        raise InvalidInput('the request must be {"instances": [...]}', field="instances")
    return instances_to_inputs(doc["instances"], signature)


def _predictions(outputs: Tensors) -> Response:
    return json_response({"predictions": outputs_to_predictions(outputs)})


def routes(service: InferenceService, max_body: BodyLimit) -> list[BaseRoute]:
    async def predict(request: Request) -> Response:
        model, version = model_and_version(request)
        body = await read_body(request, max_body)
        signature = await service.signature(model, version)
        inputs = await service.offload(len(body), _inputs, body, signature)
        timeout = timeout_seconds(request)
        response = await service.infer(InferRequest(model, inputs, version, timeout_s=timeout))
        return await service.offload(weight(response.outputs), _predictions, response.outputs)

    async def model_status(request: Request) -> Response:
        model, version = model_and_version(request)
        await service.resolve(model, version)  # an unloaded model is unavailable (503)
        return json_response({"name": model, "ready": await service.ready(model, version)})

    async def list_models(_request: Request) -> Response:
        return json_response({"models": await service.models()})

    return [
        Route("/v1/models", list_models),
        Route("/v1/models/{model}", model_status),
        Route("/v1/models/{model}:predict", predict, methods=["POST"]),
        Route("/v1/models/{model}/versions/{version}", model_status),
        Route("/v1/models/{model}/versions/{version}:predict", predict, methods=["POST"]),
    ]
