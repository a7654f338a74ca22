"""Open Inference Protocol v2 REST routes (health, metadata, infer)."""

from __future__ import annotations

from dataclasses import replace

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from torchport.service.inference import InferenceService
from torchport.tensors import weight
from torchport.transports.http.body import BodyLimit, read_body
from torchport.transports.http.oip_codec import HEADER_LENGTH, decode_request, encode_response
from torchport.transports.http.params import header, model_and_version, timeout_seconds
from torchport.transports.http.responses import json_response
from torchport.version import __version__

EXTENSIONS = ["binary_tensor_data", "model_repository"]


def routes(service: InferenceService, max_body: BodyLimit) -> list[BaseRoute]:
    async def server_metadata(_request: Request) -> Response:
        return json_response(
            {"name": "torchport", "version": __version__, "extensions": EXTENSIONS}
        )

    async def live(_request: Request) -> Response:
        return json_response({"live": True})

    async def ready(_request: Request) -> Response:
        ok = await service.server_ready()
        return json_response({"ready": ok}, 200 if ok else 503)

    async def model_metadata(request: Request) -> Response:
        model, version = model_and_version(request)
        meta = await service.metadata(model, version)
        return json_response(
            {
                "name": meta.name,
                "versions": [str(v) for v in meta.versions],
                "platform": "pytorch_torchport",
                "inputs": [s.metadata() for s in meta.signature.inputs],
                "outputs": [s.metadata() for s in meta.signature.outputs],
                **(
                    {"parameters": {"default_version": str(meta.version)}}
                    if version is None
                    else {}
                ),
            }
        )

    async def model_ready(request: Request) -> Response:
        model, version = model_and_version(request)
        ok = await service.ready(model, version)
        return json_response({"name": model, "ready": ok}, 200 if ok else 503)

    async def infer(request: Request) -> Response:
        model, version = model_and_version(request)
        await service.resolve(model, version)  # an unknown model is a 404 before its body is read
        body = await read_body(request, max_body)
        infer_request, fmt = await service.offload(
            len(body), decode_request, body, header(request, HEADER_LENGTH), model, version
        )
        timeout = timeout_seconds(request, infer_request.parameters)
        if timeout is not None:
            infer_request = replace(infer_request, timeout_s=timeout)
        response = await service.infer(infer_request)
        content, headers = await service.offload(
            weight(response.outputs), encode_response, response, fmt
        )
        return Response(content, headers=headers)

    return [
        Route("/v2", server_metadata),
        Route("/v2/health/live", live),
        Route("/v2/health/ready", ready),
        Route("/v2/models/{model}", model_metadata),
        Route("/v2/models/{model}/ready", model_ready),
        Route("/v2/models/{model}/infer", infer, methods=["POST"]),
        Route("/v2/models/{model}/versions/{version}", model_metadata),
        Route("/v2/models/{model}/versions/{version}/ready", model_ready),
        Route("/v2/models/{model}/versions/{version}/infer", infer, methods=["POST"]),
    ]
