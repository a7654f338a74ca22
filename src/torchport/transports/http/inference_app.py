"""The inference port: every inference protocol on one Starlette app."""

from __future__ import annotations

from starlette.applications import Starlette

from torchport.service.inference import InferenceService
from torchport.transports.http import kserve_v1, oip, torchserve
from torchport.transports.http.errors import HANDLERS


def build_inference_app(service: InferenceService, *, max_body: int) -> Starlette:
    routes = [
        *oip.routes(service, max_body),
        *kserve_v1.routes(service, max_body),
        *torchserve.routes(service, max_body),
    ]
    return Starlette(routes=routes, exception_handlers=dict(HANDLERS))
