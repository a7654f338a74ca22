"""The gRPC server: the Open Inference Protocol service, gRPC health checking and reflection."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2

from torchport.errors import TorchportError
from torchport.service.inference import InferenceService, Repository
from torchport.transports.grpc import convert
from torchport.transports.grpc.servicer import Context, HealthServicer, InferenceServicer, parsed


class GrpcServer:
    """A `grpc.aio` server bound to `host:port`, reporting readiness through gRPC health."""

    def __init__(
        self,
        service: InferenceService,
        repository: Repository | None,
        token: str | None,
        *,
        host: str,
        port: int,
        max_message_bytes: int,
        max_calls: int | None = None,
        tls: tuple[bytes, bytes] | None = None,
        share_port: bool = False,
    ) -> None:
        """`max_calls`: calls in progress at once (the next is RESOURCE_EXHAUSTED); `tls`: a
        PEM private key and certificate (chain): TLS only on the port; `share_port`: bind
        with SO_REUSEPORT, for front-end processes that each serve the port."""
        self.server = grpc.aio.server(
            maximum_concurrent_rpcs=max_calls,
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                # Two servers on one port would split the traffic silently: refuse, but
                # for the front-end processes of one server, which share it on purpose.
                ("grpc.so_reuseport", 1 if share_port else 0),
            ],
        )
        self.server.add_generic_rpc_handlers(
            (convert.method_handlers(InferenceServicer(service, repository, token)),)
        )
        names = (
            convert.SERVICE_NAME,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
            convert.REFLECTION_V1,
        )
        self.server.add_generic_rpc_handlers(
            (
                _health(HealthServicer(service)),
                *_reflection(names),
            )
        )
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            if tls is None:
                self.port = self.server.add_insecure_port(address)
            else:
                credentials = grpc.ssl_server_credentials([tls])
                self.port = self.server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise TorchportError(f"cannot listen for gRPC on {address}: {exc}") from None
        if not self.port:
            raise TorchportError(f"cannot listen for gRPC on {address}")

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace)


# Both take the request's bytes and parse them themselves (`parsed`), so that bytes
# that are no message are INVALID_ARGUMENT rather than grpcio's UNKNOWN.


def _health(servicer: HealthServicer) -> grpc.GenericRpcHandler:
    response = health_pb2.HealthCheckResponse.SerializeToString
    return grpc.method_handlers_generic_handler(
        health.SERVICE_NAME,
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                servicer.Check, response_serializer=response
            ),
            "Watch": grpc.unary_stream_rpc_method_handler(
                servicer.Watch, response_serializer=response
            ),
        },
    )


def _reflection(names: tuple[str, ...]) -> list[grpc.GenericRpcHandler]:
    """grpcio's reflection servicer (answering from torchport's descriptor pool) under the
    stable name and v1alpha: the same messages on the wire."""
    servicer = reflection.aio.ReflectionServicer(names, pool=convert.POOL)

    async def info(raw: AsyncIterator[bytes], context: Context) -> AsyncIterator[Any]:
        async def requests() -> AsyncIterator[Any]:
            async for message in raw:
                yield await parsed(reflection_pb2.ServerReflectionRequest, message, context)

        async for answer in servicer.ServerReflectionInfo(requests(), context):  # type: ignore[attr-defined]
            yield answer

    handler: grpc.RpcMethodHandler[Any, Any] = grpc.stream_stream_rpc_method_handler(
        info, response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString
    )
    return [
        grpc.method_handlers_generic_handler(name, {"ServerReflectionInfo": handler})
        for name in (reflection.SERVICE_NAME, convert.REFLECTION_V1)
    ]
