"""A front-end process: the inference protocols (HTTP and gRPC) on ports it shares with
the server's other front ends (SO_REUSEPORT), each request decoded and checked here and
handed to the engine process (`service.remote`). Started by the supervisor; imports no
model code (no torch).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable
from dataclasses import dataclass

from torchport.observability.logs import configure_logging
from torchport.ports import Tls, bind, http_server, run
from torchport.service.remote import RemoteDataPlane, RemoteRepository
from torchport.settings import Settings
from torchport.transports.grpc import GrpcServer
from torchport.transports.http import build_inference_app

ENGINE_WAIT_S = 600.0
"""How long a front end waits for the engine before it serves 503s (it keeps trying)."""


@dataclass(frozen=True)
class FrontendRole:
    intake: str
    http_port: int
    grpc_port: int
    token: str | None
    """The management token: gRPC's model repository calls are checked here."""
    sagemaker_model: str | None = None


def serve_frontend(
    settings: Settings, role: FrontendRole, listening: Callable[[], None] | None = None
) -> None:
    """Serve the inference ports until SIGTERM (then drain as the server does)."""
    configure_logging(settings.log_format, settings.access_log)
    tls = Tls.of(settings)
    http_socket = bind(settings.host, role.http_port, share=True)
    service = RemoteDataPlane(role.intake)
    app = build_inference_app(service, settings, sagemaker_model=role.sagemaker_model)
    http = http_server(app, settings, tls, client_address=False)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        link = asyncio.create_task(service.run())
        with contextlib.suppress(TimeoutError):  # started after the engine: moments
            await asyncio.wait_for(service.connected.wait(), ENGINE_WAIT_S)
        grpc = GrpcServer(
            service,
            RemoteRepository(service) if role.token else None,
            role.token,
            host=settings.host,
            port=role.grpc_port,
            max_message_bytes=settings.max_request_bytes,
            max_calls=settings.max_grpc_calls,
            tls=tls.grpc_pair() if tls else None,
            share_port=True,
        )

        def close() -> None:
            http.should_exit = True

        def stop() -> None:
            if service.draining:
                http.force_exit = True
                close()
                return
            service.draining = True
            loop.call_later(settings.unready_seconds, close)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        await grpc.start()
        serving = asyncio.create_task(http.serve(sockets=[http_socket]))
        while not http.started and not serving.done():
            await asyncio.sleep(0.005)
        if listening is not None:
            listening()
        try:
            await serving
        finally:
            await grpc.stop(grace=settings.drain_seconds)
            service.close()
            link.cancel()

    run(main())


__all__ = ["FrontendRole", "serve_frontend"]
