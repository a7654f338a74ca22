"""`inference.GRPCInferenceService` (the Open Inference Protocol) and `grpc.health.v1.Health`.

Thin: each call converts the message (`convert`), calls the same inference service as
REST, and converts back. Errors from the one error tree become gRPC status codes with the
message naming the field; the model repository calls need the management token, sent as
`authorization: Bearer <token>` metadata.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import replace
from functools import wraps
from typing import Any, TypeVar
from urllib.parse import quote

import grpc
from grpc_health.v1 import health_pb2

from torchport.errors import InvalidInput, NotFound, TorchportError, Unauthorized
from torchport.observability.logs import new_request_id, request_id
from torchport.service.auth import check_bearer
from torchport.service.inference import (
    InferenceService,
    Repository,
    request_headers,
    timeout_parameter,
)
from torchport.tensors import weight
from torchport.transports.grpc import convert
from torchport.version import __version__

log = logging.getLogger("torchport.grpc")

EXTENSIONS = ["model_repository"]
REQUEST_ID_KEY = "x-request-id"
MODEL_VERSION_KEY = "x-model-version"
"""Trailing metadata: the version that answered (a rollout's canary share is the candidate)."""

Context = grpc.aio.ServicerContext[Any, Any]
Resp = TypeVar("Resp")
Method = Callable[[Any, Any, Context], Awaitable[Resp]]
Handler = Callable[[Any, bytes, Context], Awaitable[Resp]]


def answers_errors(method: Method[Resp]) -> Handler[Resp]:
    """A method of the inference service as grpcio calls it, with the request's bytes.

    The message is parsed here, so that a malformed one is INVALID_ARGUMENT naming the
    message (grpcio's own parsing answers UNKNOWN with a Python exception's name).
    torchport's errors become their gRPC status; anything else is INTERNAL, logged, with
    no internals in the message. Every `ModelInfer` is counted by the data plane, once,
    whatever its outcome.
    """
    message_type = convert.METHODS[method.__name__][0]
    counts = method.__name__ == "ModelInfer"

    async def call(self: InferenceServicer, raw: bytes, context: Context) -> Resp:
        if not counts:
            return await method(self, convert.parse(message_type, raw), context)
        with self.service.track("oip_grpc") as tracked:
            request = await self.service.offload(len(raw), convert.parse, message_type, raw)
            tracked.model = request.model_name
            return await method(self, request, context)

    @wraps(method)
    async def wrapper(self: InferenceServicer, raw: bytes, context: Context) -> Resp:
        try:
            return await call(self, raw, context)
        except TorchportError as exc:
            await _abort(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("gRPC %s failed", method.__name__)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")
        raise AssertionError("unreachable")  # abort() raises

    return wrapper


class InferenceServicer:
    """One coroutine per method of the service; `convert.method_handlers` registers them."""

    def __init__(
        self, service: InferenceService, repository: Repository | None, token: str | None
    ) -> None:
        self.service = service
        self.repository = repository
        """The model repository extension's calls (none on a read-only microservice)."""
        self.token = token

    @answers_errors
    async def ServerLive(self, request: Any, context: Context) -> Any:
        return convert.server_live()

    @answers_errors
    async def ServerReady(self, request: Any, context: Context) -> Any:
        return convert.server_ready(await self.service.server_ready())

    @answers_errors
    async def ModelReady(self, request: Any, context: Context) -> Any:
        version = convert.version_of(request.version, "version")
        try:
            ready = await self.service.ready(_name(request.name), version)
        except NotFound:
            ready = False  # as clients expect: an unknown model is simply not ready
        return convert.model_ready(ready)

    @answers_errors
    async def ServerMetadata(self, request: Any, context: Context) -> Any:
        return convert.server_metadata("torchport", __version__, EXTENSIONS)

    @answers_errors
    async def ModelMetadata(self, request: Any, context: Context) -> Any:
        model = _name(request.name)
        version = convert.version_of(request.version, "version")
        meta = await self.service.metadata(model, version)
        return convert.model_metadata(model, [str(v) for v in meta.versions], meta.signature)

    @answers_errors
    async def ModelInfer(self, request: Any, context: Context) -> Any:
        metadata = _Metadata(context)
        given = metadata.get(REQUEST_ID_KEY)
        request_id.set(new_request_id(given) if given else None)
        request_headers.set(metadata)  # a sticky rollout's header, read only if asked
        response = await self._infer(request, context)
        # With the status, in the one batch that ends the call: initial metadata sent on
        # its own would cost another round through the completion queue (~10 % of a call).
        context.set_trailing_metadata(
            (
                (REQUEST_ID_KEY, metadata_value(request_id.get() or "")),
                (MODEL_VERSION_KEY, response.model_version),
            )
        )
        return response

    async def _infer(self, request: Any, context: Context) -> Any:
        infer_request, raw = await self.service.offload(
            request.ByteSize(), convert.decode_request, request
        )
        timeout = timeout_parameter(infer_request.parameters)
        remaining = context.time_remaining()  # the client's gRPC deadline, if it set one
        if remaining is not None and (timeout is None or remaining < timeout):
            timeout = max(0.0, remaining)
        if timeout is not None:
            infer_request = replace(infer_request, timeout_s=timeout)
        response = await self.service.infer(infer_request)
        return await self.service.offload(
            weight(response.outputs), convert.encode_response, response, raw
        )

    # -- the model repository extension (management token) ------------------------------

    def _repository(self, context: Context) -> Repository:
        if self.token is None or self.repository is None:
            raise Unauthorized("this is a read-only microservice: it has no model repository")
        check_bearer(_metadata(context, "authorization"), self.token)
        return self.repository

    @answers_errors
    async def RepositoryIndex(self, request: Any, context: Context) -> Any:
        states = await self._repository(context).index()
        return convert.repository_index(states, ready_only=request.ready)

    @answers_errors
    async def RepositoryModelLoad(self, request: Any, context: Context) -> Any:
        await self._repository(context).load(_name(request.model_name))
        return convert.repository_loaded()

    @answers_errors
    async def RepositoryModelUnload(self, request: Any, context: Context) -> Any:
        await self._repository(context).unload(_name(request.model_name))
        return convert.repository_unloaded()


WATCH_INTERVAL_S = 0.5
"""How often a health `Watch` looks for a change of status."""


class HealthServicer:
    """`grpc.health.v1.Health` for the server ("") and the inference service, read live
    from the server's readiness: SERVING once the models are loaded, NOT_SERVING while
    loading or draining (Kubernetes `grpc:` probes)."""

    def __init__(self, service: InferenceService) -> None:
        self.service = service

    async def _status(self, name: str) -> Any:
        if name not in ("", convert.SERVICE_NAME):
            return health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
        if await self.service.server_ready():
            return health_pb2.HealthCheckResponse.SERVING
        return health_pb2.HealthCheckResponse.NOT_SERVING

    async def Check(self, raw: bytes, context: Context) -> Any:
        request = await parsed(health_pb2.HealthCheckRequest, raw, context)
        status = await self._status(request.service)
        if status == health_pb2.HealthCheckResponse.SERVICE_UNKNOWN:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, raw: bytes, context: Context) -> AsyncIterator[Any]:
        request = await parsed(health_pb2.HealthCheckRequest, raw, context)
        last = None
        while True:
            status = await self._status(request.service)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if self.service.draining:
                # NOT_SERVING is sent: end the stream rather than hold the shutdown up
                # for the drain time and be cancelled at its end (UNAVAILABLE).
                return
            await asyncio.sleep(WATCH_INTERVAL_S)


async def parsed(message_type: Any, raw: bytes, context: Context) -> Any:
    """A request message from its bytes, or INVALID_ARGUMENT naming the message."""
    try:
        return convert.parse(message_type, raw)
    except InvalidInput as exc:
        await _abort(context, exc)
    raise AssertionError("unreachable")  # abort() raises


async def _abort(context: Context, exc: TorchportError) -> None:
    """End the call with the error's gRPC status, its message, and its code (and field,
    and the request id) in trailing metadata. Raises."""
    metadata = [("torchport-error-code", exc.code)]
    if request_id.get():
        metadata.append((REQUEST_ID_KEY, metadata_value(request_id.get() or "")))
    if exc.field:
        metadata.append(("torchport-error-field", metadata_value(exc.field)))
    context.set_trailing_metadata(tuple(metadata))
    await context.abort(convert.status_of(exc), exc.message)


_METADATA_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) != "%")


def metadata_value(value: str) -> str:
    """`value` as gRPC text metadata may carry it (printable ASCII): anything else — a
    tensor named with a control character, a request id in Unicode — percent-encoded, as
    gRPC encodes status messages. (grpcio fails the whole call on an invalid value.)"""
    return quote(value, safe=_METADATA_SAFE)


def _name(name: str) -> str:
    if not name:
        raise InvalidInput("the model name is empty", field="name")
    return name


def _metadata(context: Context, key: str) -> str | None:
    """A value the client sent as metadata (keys arrive lower-case)."""
    return _Metadata(context).get(key)


class _Metadata(Mapping[str, str]):
    """A call's metadata as the headers of a request (read when asked, not before)."""

    def __init__(self, context: Context) -> None:
        self._context = context
        self._items: dict[str, str] | None = None

    def _read(self) -> dict[str, str]:
        if self._items is None:
            self._items = {
                str(k): v.decode("latin-1") if isinstance(v, bytes) else str(v)
                for k, v in self._context.invocation_metadata() or ()
            }
        return self._items

    def __getitem__(self, key: str) -> str:
        return self._read()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._read())

    def __len__(self) -> int:
        return len(self._read())
