"""torchport's services and apps in the test's own process: protocol behaviour tested with
no server process to start. The inference and management apps run through Starlette's
TestClient (httpx's client over ASGI) on one event loop, as the server runs them; the gRPC
servicer runs in a `grpc.aio` server on that same loop, on a free loopback port, for
standard gRPC clients."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.from_thread
from starlette.testclient import TestClient

from tests.e2e.server import TOKEN, Samples, free_port, parse_samples
from torchport.observability.live import LiveStats
from torchport.server import open_services
from torchport.service import DataPlane, Management, Registry
from torchport.service.management import LocalRepository
from torchport.settings import Settings
from torchport.store import SQLiteStore
from torchport.transports.grpc import GrpcServer
from torchport.transports.http import build_inference_app, build_management_app

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@dataclass
class InProcess:
    """A server's services and apps in this process."""

    store: SQLiteStore
    registry: Registry
    dataplane: DataPlane
    management: Management
    http: TestClient
    """The inference app (every protocol, `/metrics`)."""
    admin: TestClient
    """The management app, with the token."""
    live: LiveStats
    grpc_address: str

    @property
    def auth(self) -> dict[str, str]:
        return AUTH

    def scrape(self) -> Samples:
        response = self.http.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return parse_samples(response.text)


@contextlib.contextmanager
def in_process(
    store_dir: Path,
    packages: list[Path],
    *,
    max_request_bytes: int = 4 * 1024 * 1024,
    sagemaker: bool = False,
    **settings: Any,
) -> Iterator[InProcess]:
    """The services on a fresh store at `store_dir`, with `packages` registered and loaded,
    and the apps in front of them (`sagemaker`: `/invocations` for the first package)."""
    config = Settings(store=store_dir, max_request_bytes=max_request_bytes, **settings)
    store = SQLiteStore(store_dir)
    registry, dataplane, management = open_services(store, config, cores=2)
    names = [management.upload(p, actor="test").version.model for p in packages]
    registry.start()
    live = LiveStats(registry.metrics.registry)
    inference_app = build_inference_app(
        dataplane, config, sagemaker_model=names[0] if sagemaker else None
    )
    http = TestClient(inference_app, base_url="http://127.0.0.1")
    admin = TestClient(
        build_management_app(management, TOKEN, config, live), base_url="http://127.0.0.1"
    )
    port = free_port()

    async def start_grpc() -> GrpcServer:  # grpc.aio takes the loop it is made on
        grpc = GrpcServer(dataplane, LocalRepository(management), TOKEN, host="127.0.0.1",
                          port=port, max_message_bytes=max_request_bytes)  # fmt: skip
        await grpc.start()
        return grpc

    with anyio.from_thread.start_blocking_portal() as portal:
        # One event loop for both apps and gRPC, as in the server: the batchers' tasks live
        # on it.
        http.portal = admin.portal = portal
        grpc = portal.call(start_grpc)
        try:
            yield InProcess(
                store, registry, dataplane, management, http, admin, live, f"127.0.0.1:{port}"
            )
        finally:
            portal.call(grpc.stop, 0)
            portal.call(registry.close)
            store.close()
