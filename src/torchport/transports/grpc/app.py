"""The gRPC server: the Open Inference Protocol service, gRPC health checking and reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from torchport.errors import TorchportError
from torchport.service.inference import InferenceService
from torchport.transports.grpc import convert
from torchport.transports.grpc.service import HealthServicer, InferenceServicer


class GrpcServer:
    """A `grpc.aio` server bound to `host:port`, reporting readiness through gRPC health."""

    def __init__(
        self,
        service: InferenceService,
        token: str | None,
        *,
        host: str,
        port: int,
        max_message_bytes: int,
    ) -> None:
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", max_message_bytes),
                ("grpc.max_send_message_length", max_message_bytes),
                # Two servers on one port would split the traffic silently: refuse instead.
                ("grpc.so_reuseport", 0),
            ]
        )
        self.server.add_generic_rpc_handlers(
            (convert.method_handlers(InferenceServicer(service, token)),)
        )
        health_pb2_grpc.add_HealthServicer_to_server(HealthServicer(service), self.server)
        names = (
            convert.SERVICE_NAME,
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
            convert.REFLECTION_V1,
        )
        reflection.enable_server_reflection(names, self.server, pool=convert.POOL)
        self.server.add_generic_rpc_handlers((_reflection_v1(names),))
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        try:
            self.port = self.server.add_insecure_port(address)
        except RuntimeError as exc:
            raise TorchportError(f"cannot listen for gRPC on {address}: {exc}") from None
        if not self.port:
            raise TorchportError(f"cannot listen for gRPC on {address}")

    async def start(self) -> None:
        await self.server.start()

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace)


def _reflection_v1(names: tuple[str, ...]) -> grpc.GenericRpcHandler:
    """Server reflection's stable name, answered as v1alpha (same messages on the wire)."""
    servicer = reflection.aio.ReflectionServicer(names, pool=convert.POOL)
    info = grpc.stream_stream_rpc_method_handler(
        servicer.ServerReflectionInfo,
        request_deserializer=reflection_pb2.ServerReflectionRequest.FromString,
        response_serializer=reflection_pb2.ServerReflectionResponse.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(
        convert.REFLECTION_V1, {"ServerReflectionInfo": info}
    )
