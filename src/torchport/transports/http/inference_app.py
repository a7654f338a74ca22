"""The inference port: every inference protocol on one Starlette app."""

from __future__ import annotations

from collections.abc import Callable

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from torchport.errors import InvalidInput, TorchportError
from torchport.observability.logs import new_request_id, request_id
from torchport.observability.metrics import CONTENT_TYPE
from torchport.service.inference import InferenceService, request_headers
from torchport.settings import Settings
from torchport.transports.http import kserve_v1, oip, openapi, sagemaker, torchserve
from torchport.transports.http.body import BodyLimit
from torchport.transports.http.limits import InflightLimit
from torchport.transports.http.params import header, headers
from torchport.transports.http.responses import (
    HANDLERS,
    error_response,
    json_response,
    on_unexpected,
)
from torchport.types import version_number

PROBES = frozenset({"/v2/health/live", "/v2/health/ready", "/ping", "/metrics"})
"""Never refused for load: a busy server is still alive, and says whether it is ready."""


def _observed(
    service: InferenceService,
    route: BaseRoute,
    protocol: str,
    model: str = "",
    errors: Callable[[TorchportError], Response] = error_response,
) -> BaseRoute:
    """An inference route with a request id (`X-Request-ID` in, and back on the answer),
    each request counted once by the data plane, whatever its outcome; `errors` answers
    a failed one in its protocol's shape."""
    if not isinstance(route, Route) or "POST" not in (route.methods or ()):
        return route
    endpoint = route.endpoint

    async def observed(request: Request) -> Response:
        given = header(request, "x-request-id")
        token = request_id.set(new_request_id(given) if given else None)
        request_headers.set(headers(request))  # this request's task alone
        params = request.path_params
        wanted = _version_label(params.get("version"))
        try:
            try:
                with service.track(protocol, params.get("model", model), wanted) as counted:
                    response: Response = await endpoint(request)
            except TorchportError as exc:
                response = errors(exc)
            rid = request_id.get() or new_request_id()  # printable ASCII (`new_request_id`)
            response.raw_headers.append((b"x-request-id", rid.encode("latin-1")))
            if counted.known and counted.version is not None:
                # Which version answered: a rollout's canary share is the candidate.
                response.raw_headers.append((b"x-model-version", b"%d" % counted.version))
            return response
        finally:
            request_id.reset(token)

    return ObservedRoute(route.path, observed, methods=list(route.methods or ()))


class ObservedRoute(Route):
    """An inference route: `_observed` wraps its endpoint, which answers its own errors."""


def _version_label(raw: str | None) -> int | None:
    """The version a path names, for counting; a bad one is the route's to refuse."""
    try:
        return version_number(raw) if raw else None
    except InvalidInput:
        return None


def build_inference_app(
    service: InferenceService, settings: Settings, *, sagemaker_model: str | None = None
) -> ASGIApp:
    """Every inference protocol; with `sagemaker_model` (the microservice), SageMaker's
    `POST /invocations` for that model too. At most `settings.max_inflight` requests at
    once (health probes and /metrics aside)."""
    max_body = BodyLimit(settings.max_request_bytes, settings.body_timeout_s)

    async def metrics(_request: Request) -> Response:
        return Response(await service.metrics_text(), media_type=CONTENT_TYPE)

    async def document(_request: Request) -> Response:
        signatures = {name: await service.signature(name) for name in await service.models()}
        return json_response(openapi.inference_document(signatures))

    async def model_document(request: Request) -> Response:
        name = request.path_params["model"]
        await service.resolve(name)  # 404 for a model the store does not hold
        doc = openapi.inference_document({})
        doc["paths"] = openapi.model_paths(name, await service.signature(name))
        return json_response(doc)

    routes = [
        Route("/metrics", metrics),
        Route("/openapi.json", document),
        Route("/v2/models/{model}/openapi.json", model_document),
        *(_observed(service, r, "oip_rest") for r in oip.routes(service, max_body)),
        *(_observed(service, r, "kserve_v1") for r in kserve_v1.routes(service, max_body)),
        *(
            _observed(service, r, "torchserve", errors=torchserve.error_response)
            for r in torchserve.routes(service, max_body)
        ),
    ]
    if sagemaker_model is not None:
        routes += [
            _observed(service, r, "sagemaker", sagemaker_model)
            for r in sagemaker.routes(service, max_body, sagemaker_model)
        ]
    app = Starlette(routes=routes, exception_handlers=dict(HANDLERS))
    hot = [r for r in routes if isinstance(r, ObservedRoute)]
    return InflightLimit(InferenceRoutes(app, hot), settings.max_inflight, exempt=PROBES)


class InferenceRoutes:
    """ASGI: an inference request goes straight to its route's endpoint; anything else to
    `app`. Starlette's routing and middleware stack cost a sixth of a small request's CPU,
    and an inference route answers its own errors already (`_observed`)."""

    def __init__(self, app: ASGIApp, hot: list[ObservedRoute]) -> None:
        self.app = app
        self.hot = hot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT"):
            for route in self.hot:
                match, child = route.matches(scope)
                if match is Match.FULL:
                    scope.update(child)
                    request = Request(scope, receive)
                    try:
                        response = await route.endpoint(request)
                    except Exception as exc:  # answered 500 and logged, as Starlette would
                        response = await on_unexpected(request, exc)
                    await response(scope, receive, send)
                    return
        await self.app(scope, receive, send)
