"""The management port: models, versions, promote/rollback, config, live figures, the OIP
repository extension, and the dashboard page. Every route needs `Authorization: Bearer
<token>` but the page's own files, which hold no data (the page asks for the token)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from torchport import dashboard
from torchport.errors import InvalidInput, TorchportError
from torchport.observability.live import LiveStats
from torchport.scratch import scratch
from torchport.service.auth import check_bearer
from torchport.service.management import Management
from torchport.settings import Settings
from torchport.store import ModelInfo
from torchport.transports.http import openapi
from torchport.transports.http.body import BodyLimit, parse_json, read_body, save_body
from torchport.transports.http.params import model_and_version
from torchport.transports.http.responses import HANDLERS, error_response, json_response
from torchport.types import version_number

DASHBOARD = "/dashboard"
# The page talks only to this origin, draws with its own script and styles, and is never
# framed (promote and rollback buttons must not be clickjacked).
DASHBOARD_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _is_page(scope: Scope) -> bool:
    path: str = scope["path"]
    return scope["method"] in ("GET", "HEAD") and (
        path == DASHBOARD or path.startswith(DASHBOARD + "/")
    )


class BearerAuth:
    """Refuses every request without the right bearer token, before any route runs (the
    dashboard's static files excepted)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not _is_page(scope):
            headers = dict(scope["headers"])
            auth = headers.get(b"authorization", b"").decode("latin-1")
            try:
                check_bearer(auth, self.token)
            except TorchportError as exc:
                await error_response(exc)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def model_json(
    info: ModelInfo,
    states: dict[tuple[str, int], str] | None = None,
    residents: dict[tuple[str, int], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "name": info.name,
        "default": info.default,
        "previous": info.previous,
        "created_at": info.created_at,
        "versions": [
            {
                "version": v.version,
                "digest": v.digest,
                "size": v.size,
                "created_at": v.created_at,
                "config": v.config,
                "state": (states or {}).get((info.name, v.version), "UNLOADED"),
                "resident": (residents or {}).get((info.name, v.version)),
                **{k: v.metadata.get(k) for k in ("signature", "model_kind", "description")},
            }
            for v in info.versions
        ],
    }


def _actor(request: Request) -> str:
    client = request.client
    return f"api@{client.host}" if client else "api"


async def _json_body(request: Request, limit: BodyLimit) -> Any:
    return parse_json(await read_body(request, limit) or b"{}")


def build_management_app(
    management: Management, token: str, settings: Settings, live: LiveStats | None = None
) -> Starlette:
    json_limit = BodyLimit(1024 * 1024, settings.body_timeout_s)
    upload_limit = BodyLimit(
        management.limits.max_package_bytes, settings.upload_timeout_s, "upload_timeout_s"
    )

    async def list_models(_request: Request) -> Response:
        models = await run_in_threadpool(management.list_models)
        known = await run_in_threadpool(management.states)
        held = management.residents()
        devices = await run_in_threadpool(management.devices)  # NVML: not on the loop
        return json_response(
            {"models": [model_json(m, known, held) for m in models], "devices": devices}
        )

    async def show_model(request: Request) -> Response:
        model, _ = model_and_version(request)
        info = await run_in_threadpool(management.get_model, model)
        audit = await run_in_threadpool(management.audit, model, 20)
        states = await run_in_threadpool(management.states, model)
        body = model_json(info, states, management.residents(model))
        for v in body["versions"]:  # Ray replicas are asked: not on the event loop
            workers = await run_in_threadpool(management.workers, model, v["version"])
            if workers is not None:
                v["workers"] = workers
        body["audit"] = [asdict(e) for e in audit]
        return json_response(body)

    async def upload(request: Request) -> Response:
        model, _ = model_and_version(request)
        promote = request.query_params.get("promote", "false").lower() in ("1", "true", "yes")
        with scratch("body") as tmp:
            path = tmp / "upload.tpa"
            await save_body(request, path, upload_limit)
            report = await run_in_threadpool(
                lambda: management.upload(path, name=model, promote=promote, actor=_actor(request))
            )
        return json_response(
            {
                "name": report.version.model,
                "version": report.version.version,
                "default": report.default,
                "digest": report.version.digest,
            },
            201,
        )

    async def promote(request: Request) -> Response:
        model, _ = model_and_version(request)
        doc = await _json_body(request, json_limit)
        version = doc.get("version") if isinstance(doc, dict) else None
        if not isinstance(version, int) or isinstance(version, bool):
            raise InvalidInput('send {"version": N} with an integer N', field="version")
        info = await run_in_threadpool(
            lambda: management.promote(model, version, actor=_actor(request))
        )
        return json_response(model_json(info, await run_in_threadpool(management.states, model)))

    async def rollback(request: Request) -> Response:
        model, _ = model_and_version(request)
        info = await run_in_threadpool(lambda: management.rollback(model, actor=_actor(request)))
        return json_response(model_json(info, await run_in_threadpool(management.states, model)))

    async def start_rollout(request: Request) -> Response:
        model, _ = model_and_version(request)
        doc = await _json_body(request, json_limit)
        rollout = await run_in_threadpool(
            lambda: management.start_rollout(model, doc, actor=_actor(request))
        )
        return json_response({"rollout": asdict(rollout), "figures": None}, 201)

    async def show_rollout(request: Request) -> Response:
        model, _ = model_and_version(request)
        return json_response(await run_in_threadpool(management.rollout, model))

    async def end_rollout(request: Request) -> Response:
        model, _ = model_and_version(request)
        action = request.path_params["action"]
        actions = {"promote": "promote", "rollback": "roll_back", "stop": "stop"}
        if action not in actions:
            raise InvalidInput(
                f"unknown rollout action '{action}' (promote, rollback or stop)", field="action"
            )
        ended = await run_in_threadpool(
            lambda: management.end_rollout(model, actions[action], actor=_actor(request))
        )
        return json_response({"rollout": asdict(ended), "figures": None})

    async def set_recording(request: Request) -> Response:
        model, _ = model_and_version(request)
        doc = await _json_body(request, json_limit)
        return json_response(
            await run_in_threadpool(
                lambda: management.set_recording(model, doc, actor=_actor(request))
            )
        )

    async def show_recording(request: Request) -> Response:
        model, _ = model_and_version(request)
        return json_response(await run_in_threadpool(management.recording, model))

    async def stop_recording(request: Request) -> Response:
        model, _ = model_and_version(request)
        return json_response(
            await run_in_threadpool(lambda: management.stop_recording(model, actor=_actor(request)))
        )

    async def replay(request: Request) -> Response:
        model, _ = model_and_version(request)
        doc = await _json_body(request, json_limit)
        return json_response(await run_in_threadpool(management.replay, model, doc))

    async def delete_version(request: Request) -> Response:
        model, version = model_and_version(request)
        assert version is not None
        await run_in_threadpool(lambda: management.delete(model, version, actor=_actor(request)))
        return json_response({"name": model, "version": version, "deleted": True})

    async def load_version(request: Request) -> Response:
        model, version = model_and_version(request)
        assert version is not None
        await run_in_threadpool(management.load_version, model, version)
        return json_response({"name": model, "version": version, "state": "READY"})

    async def unload_version(request: Request) -> Response:
        model, version = model_and_version(request)
        assert version is not None
        await run_in_threadpool(management.unload_version, model, version)
        return json_response({"name": model, "version": version, "state": "UNLOADED"})

    async def set_config(request: Request) -> Response:
        model, version = model_and_version(request)
        assert version is not None
        doc = await _json_body(request, json_limit)
        info = await run_in_threadpool(
            lambda: management.set_config(model, version, doc, actor=_actor(request))
        )
        return json_response({"name": model, "version": version, "config": info.config})

    async def audit(request: Request) -> Response:
        model = request.query_params.get("model")
        try:
            limit = int(request.query_params.get("limit", "100"))
        except ValueError:
            raise InvalidInput("limit must be an integer", field="limit") from None
        entries = await run_in_threadpool(management.audit, model, max(1, min(limit, 10_000)))
        return json_response({"audit": [asdict(e) for e in entries]})

    async def compare(request: Request) -> Response:
        model, _ = model_and_version(request)
        versions = []
        for key in ("a", "b"):
            versions.append(version_number(request.query_params.get(key, ""), key))
        return json_response(await management.compare(model, versions[0], versions[1]))

    async def document(_request: Request) -> Response:
        models = await run_in_threadpool(management.list_models)
        return json_response(openapi.management_document([m.name for m in models]))

    async def overview(_request: Request) -> Response:
        return json_response(
            {"interval_s": live.interval if live else 0, "versions": live.latest() if live else []}
        )

    async def model_stats(request: Request) -> Response:
        model, _ = model_and_version(request)
        await run_in_threadpool(management.get_model, model)  # 404 for an unknown model
        return json_response(
            {
                "model": model,
                "interval_s": live.interval if live else 0,
                "keep": live.keep if live else 0,
                "versions": live.series(model) if live else {},
            }
        )

    async def page(request: Request) -> Response:
        name = request.path_params.get("path") or "index.html"
        content, media_type = dashboard.asset(name)
        return Response(content, media_type=media_type, headers=DASHBOARD_HEADERS)

    async def repository_index(_request: Request) -> Response:
        items = await run_in_threadpool(management.index)
        return json_response(
            [
                {"name": s.model, "version": str(s.version), "state": s.state, "reason": s.reason}
                for s in items
            ]
        )

    async def repository_load(request: Request) -> Response:
        model, _ = model_and_version(request)
        await run_in_threadpool(management.load, model)
        return json_response({})

    async def repository_unload(request: Request) -> Response:
        model, _ = model_and_version(request)
        await run_in_threadpool(management.unload, model)
        return json_response({})

    routes = [
        Route("/models", list_models),
        Route("/models/{model}", show_model),
        Route("/models/{model}", upload, methods=["POST"]),
        Route("/models/{model}/default", promote, methods=["PUT"]),
        Route("/models/{model}/rollback", rollback, methods=["POST"]),
        Route("/models/{model}/versions/{version}", delete_version, methods=["DELETE"]),
        Route("/models/{model}/versions/{version}/config", set_config, methods=["PUT"]),
        Route("/models/{model}/versions/{version}/load", load_version, methods=["POST"]),
        Route("/models/{model}/versions/{version}/unload", unload_version, methods=["POST"]),
        Route("/models/{model}/compare", compare),
        Route("/models/{model}/recording", show_recording),
        Route("/models/{model}/recording", set_recording, methods=["PUT"]),
        Route("/models/{model}/recording", stop_recording, methods=["DELETE"]),
        Route("/models/{model}/replay", replay, methods=["POST"]),
        Route("/models/{model}/rollout", show_rollout),
        Route("/models/{model}/rollout", start_rollout, methods=["POST"]),
        Route("/models/{model}/rollout/{action}", end_rollout, methods=["POST"]),
        Route("/audit", audit),
        Route("/openapi.json", document),
        Route("/stats", overview),
        Route("/models/{model}/stats", model_stats),
        Route(DASHBOARD, page),
        Route(DASHBOARD + "/{path:path}", page),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/repository/models/{model}/load", repository_load, methods=["POST"]),
        Route("/v2/repository/models/{model}/unload", repository_unload, methods=["POST"]),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(BearerAuth, token=token)],
        exception_handlers=dict(HANDLERS),
    )
