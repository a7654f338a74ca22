"""The gRPC server: the Open Inference Protocol service, gRPC health checking and reflection."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

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
        reflection.enable_server_reflection(
            (convert.SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
            self.server,
            pool=convert.POOL,
        )
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
