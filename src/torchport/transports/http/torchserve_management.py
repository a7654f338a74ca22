"""TorchServe's management API on a port of its own (`--torchserve-management-port`),
behind the same bearer token as torchport's: TorchServe's documented `curl` commands for
registering, describing, scaling, set-default and unregistering work unchanged, with
TorchServe's answer shapes (`{"status": …}`, errors as `{"code", "type", "message"}`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from torchport.errors import InvalidInput, TorchportError
from torchport.service.torchserve import Answer, TorchServeModels
from torchport.transports.http.management_app import BearerAuth
from torchport.transports.http.responses import STATUS
from torchport.transports.http.torchserve import error_type

log = logging.getLogger("torchport.torchserve")

IGNORED = ("response_timeout", "startup_timeout", "runtime", "handler", "s3_sse_kms")
"""Registration parameters accepted and not used (torchport's request timeout is a server
setting; the handler and runtime come from the archive)."""


def _json(body: Any, status: int = 200) -> Response:
    return Response(
        json.dumps(body, indent=2) + "\n", status_code=status, media_type="application/json"
    )


def _answer(answer: Answer) -> Response:
    return _json({"status": answer.message}, answer.status)


async def _on_error(_request: Request, exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return _json({"code": exc.status_code, "type": "BadRequestException",
                      "message": exc.detail}, exc.status_code)  # fmt: skip
    if not isinstance(exc, TorchportError):
        log.exception("TorchServe management API: unexpected error")
        exc = TorchportError("the request failed unexpectedly; the server's log says why")
    status = STATUS.get(exc.code, 500)
    kind = error_type(exc)
    if exc.code == "forbidden" and exc.field == "version":
        kind = "InvalidModelVersionException"
    return _json({"code": status, "type": kind, "message": str(exc)}, status)


def _int(request: Request, name: str, default: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise InvalidInput(
            f"Parameter {name} must be an integer, got {raw!r}", field=name
        ) from None


def _number(request: Request, name: str) -> float | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return float(raw)
    except ValueError:
        raise InvalidInput(f"Parameter {name} must be a number, got {raw!r}", field=name) from None


def _flag(request: Request, name: str, default: bool) -> bool:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise InvalidInput(f"Parameter {name} must be true or false, got {raw!r}", field=name)


def build_torchserve_management_app(models: TorchServeModels, token: str) -> Starlette:
    async def call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await run_in_threadpool(lambda: function(*args, **kwargs))

    async def list_models(request: Request) -> Response:
        limit = _int(request, "limit")
        start = _int(request, "next_page_token")
        if start is not None and start < 0:
            raise InvalidInput(
                "Parameter next_page_token must be 0 or more", field="next_page_token"
            )
        return _json(await call(models.list_models, 100 if limit is None else limit, start or 0))

    async def register(request: Request) -> Response:
        params = request.query_params
        ignored = [p for p in IGNORED if p in params]
        if ignored:
            log.info("TorchServe registration: ignoring %s", ", ".join(ignored))
        answer = await call(
            models.register,
            params.get("url"),
            model_name=params.get("model_name") or None,
            initial_workers=_int(request, "initial_workers", 0),
            batch_size=_int(request, "batch_size"),
            max_batch_delay=_number(request, "max_batch_delay"),
            synchronous=_flag(request, "synchronous", False),
        )
        return _answer(answer)

    async def describe(request: Request) -> Response:
        model = request.path_params["model"]
        version = request.path_params.get("version")
        return _json(await call(models.describe, model, version))

    async def scale(request: Request) -> Response:
        answer = await call(
            models.scale,
            request.path_params["model"],
            request.path_params.get("version"),
            min_worker=_int(request, "min_worker"),
            max_worker=_int(request, "max_worker"),
            synchronous=_flag(request, "synchronous", False),
        )
        return _answer(answer)

    async def set_default(request: Request) -> Response:
        answer = await call(
            models.set_default, request.path_params["model"], request.path_params["version"]
        )
        return _answer(answer)

    async def unregister(request: Request) -> Response:
        answer = await call(
            models.unregister, request.path_params["model"], request.path_params.get("version")
        )
        return _answer(answer)

    routes = [
        Route("/models", list_models, methods=["GET"]),
        Route("/models", register, methods=["POST"]),
        Route("/models/{model}", describe, methods=["GET"]),
        Route("/models/{model}", scale, methods=["PUT"]),
        Route("/models/{model}", unregister, methods=["DELETE"]),
        Route("/models/{model}/{version}/set-default", set_default, methods=["PUT"]),
        Route("/models/{model}/{version}", describe, methods=["GET"]),
        Route("/models/{model}/{version}", scale, methods=["PUT"]),
        Route("/models/{model}/{version}", unregister, methods=["DELETE"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(BearerAuth, token=token)],
        exception_handlers={
            TorchportError: _on_error,
            HTTPException: _on_error,
            Exception: _on_error,
        },
    )
