"""The inference port: every inference protocol on one Starlette app."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from torchport.errors import TorchportError
from torchport.service.inference import InferenceService
from torchport.service.metrics import CONTENT_TYPE
from torchport.transports.http import kserve_v1, oip, torchserve
from torchport.transports.http.errors import HANDLERS


def _counting(service: InferenceService, route: BaseRoute, protocol: str) -> BaseRoute:
    """The route, counting in the metrics the requests it refuses before inference."""
    if not isinstance(route, Route) or "POST" not in (route.methods or ()):
        return route
    endpoint = route.endpoint

    async def counted(request: Request) -> Response:
        try:
            response: Response = await endpoint(request)
            return response
        except TorchportError as exc:
            version = request.path_params.get("version")
            wanted = int(version) if version and version.isdigit() else None
            service.refused(request.path_params.get("model", ""), wanted, protocol, exc)
            raise

    return Route(route.path, counted, methods=list(route.methods or ()))


def build_inference_app(service: InferenceService, *, max_body: int) -> Starlette:
    async def metrics(_request: Request) -> Response:
        return Response(service.metrics.exposition(), media_type=CONTENT_TYPE)

    routes = [
        Route("/metrics", metrics),
        *(_counting(service, r, "oip_rest") for r in oip.routes(service, max_body)),
        *(_counting(service, r, "kserve_v1") for r in kserve_v1.routes(service, max_body)),
        *(_counting(service, r, "torchserve") for r in torchserve.routes(service, max_body)),
    ]
    return Starlette(routes=routes, exception_handlers=dict(HANDLERS))
