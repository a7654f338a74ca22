"""The model server: the one place that wires store, services and transports together."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from torchport.archive.signing import load_trusted_keys
from torchport.examples import register_examples
from torchport.observability.live import LiveStats
from torchport.observability.logs import configure_logging
from torchport.ports import (
    Server,
    ServerInfo,
    Tls,
    address,
    bind,
    http_server,
    microservice_settings,
    run,
    url,
    warn_if_clear,
)
from torchport.runtime import Backend
from torchport.runtime.devices import allow_tf32
from torchport.scratch import remove, scratch, scratch_dir, sweep
from torchport.service import DataPlane, Management, Registry, RequestLoads
from torchport.service.auth import TOKEN_FILE, resolve_token
from torchport.service.compare import RecentRequests
from torchport.service.intake import Intake
from torchport.service.management import LocalRepository
from torchport.service.residency import Residency
from torchport.settings import Settings, available_cores
from torchport.store import ModelStore, SQLiteStore, open_store
from torchport.transports.grpc import GrpcServer
from torchport.transports.http import build_inference_app, build_management_app

log = logging.getLogger("torchport.server")


@dataclass(frozen=True)
class EngineRole:
    """This process as the engine of a server whose protocols run in front-end processes
    (`supervisor`): no inference ports here, a Unix socket front ends hand requests to."""

    intake: str
    """The intake's address (`handoff.intake_address`)."""
    management_fd: int | None
    """The management port's listening socket, made (and kept) by the supervisor."""
    store: Path | None = None
    """A microservice's private store, made (and removed) by the supervisor."""
    token: Callable[[str | None], None] | None = None
    """Told the management token once known (front ends check it on gRPC's repository)."""


def serve(
    settings: Settings,
    packages: list[Path] | None = None,
    *,
    examples: bool = False,
    microservice: bool = False,
    announce: Callable[[ServerInfo], None] | None = None,
    progress: Callable[[str], None] | None = None,
    engine: EngineRole | None = None,
) -> None:
    """Run the model server until SIGINT or SIGTERM. Blocks.

    With `microservice`, serve the one package given, read-only: no management port, no
    store kept (the package is verified into a private one, removed at exit), SageMaker's
    `/invocations` beside the other protocols, and the HTTP port from
    `SAGEMAKER_BIND_TO_PORT` when set.

    On SIGTERM (or SIGINT) readiness turns false at once; requests are still served for
    `unready_seconds`, then the ports close and requests in flight get `drain_seconds` to
    finish. A second signal stops at once.

    With `engine`, this process is the engine of a supervised server: the inference ports
    are the front ends' (`frontend.py`), which reach it through `engine.intake`.
    """
    started = time.perf_counter()
    say = progress or (lambda _m: None)
    configure_logging(settings.log_format, settings.access_log)
    if microservice:
        settings = microservice_settings(settings, packages or [], examples)
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)  # once, for the process, at start
    # Process-wide in torch: here, and in the worker processes this one starts.
    os.environ["TORCHPORT_TF32"] = "1" if settings.tf32 else "0"
    allow_tf32(settings.tf32)
    tls = Tls.of(settings)
    # Ports first: a port in use fails at once, before minutes of model loading.
    http_socket = None if engine else bind(settings.host, settings.http_port)
    if engine is not None:
        mgmt_socket = (
            None if engine.management_fd is None else socket.socket(fileno=engine.management_fd)
        )
        if mgmt_socket is not None:
            mgmt_socket.setblocking(False)
    else:
        mgmt_socket = (
            None if microservice else bind(settings.management_host, settings.management_port)
        )
        if mgmt_socket is not None:
            warn_if_clear(settings, tls)
        if settings.grpc_port:
            bind(settings.host, settings.grpc_port).close()  # gRPC binds its own, once loaded
        swept = sweep()
        if swept:
            say(f"removed {swept} temporary files left by stopped torchport processes")
    ts_socket = None
    if not microservice and settings.torchserve_management_port is not None:
        ts_socket = bind(settings.management_host, settings.torchserve_management_port)
    private_store = None
    if microservice:
        private_store = engine.store if engine is not None else None
        private_store = private_store or scratch_dir("microservice")
    store = (
        SQLiteStore(private_store)
        if private_store is not None
        else open_store(
            settings.store, s3_endpoint=settings.s3_endpoint, cache_dir=settings.store_cache
        )
    )
    token = None if microservice else resolve_token(settings.token, store.root)
    if engine is not None and engine.token is not None:
        engine.token(token)
    ray_started = False
    if settings.backend == "ray":
        from torchport.runtime import ray_backend

        say("connecting to Ray" + (f" at {settings.ray_address}" if settings.ray_address else ""))
        ray_started = ray_backend.connect(settings.ray_address, available_cores())
    registry, dataplane, management = open_services(store, settings, available_cores())
    if examples:
        with scratch("examples") as tmp:
            register_examples(management, tmp, say)
    for package in packages or []:
        report = management.upload_if_new(package, actor="serve")
        done = f"registered v{report.version.version}" if report else "already registered"
        say(f"{package.name}: {done}")
    registry.start(say)
    if settings.torchserve_config is not None and not microservice:
        from torchport.migrate.torchserve_config import read_torchserve_config
        from torchport.service.torchserve import TorchServeModels

        archives = read_torchserve_config(settings.torchserve_config, settings.model_store).archives
        TorchServeModels(management, settings).load_at_start(archives, say)
    # What start-up made (torch, the models) is never scanned by the collector again:
    # full collections stay short under load instead of pausing every request behind them.
    gc.collect()
    gc.freeze()

    models = [(m.name, m.default) for m in store.list_models()]
    repository = None if microservice else LocalRepository(management)
    live = LiveStats(registry.metrics.registry)
    servers: list[Server] = []
    sockets: list[socket.socket] = []
    if http_socket is not None:
        inference = build_inference_app(
            dataplane, settings, sagemaker_model=models[0][0] if microservice else None
        )
        servers.append(http_server(inference, settings, tls, client_address=False))
        sockets.append(http_socket)
    if token is not None and mgmt_socket is not None:
        servers.append(
            http_server(build_management_app(management, token, settings, live), settings, tls)
        )
        sockets.append(mgmt_socket)
    if token is not None and ts_socket is not None:
        from torchport.service.torchserve import TorchServeModels
        from torchport.transports.http.torchserve_management import (
            build_torchserve_management_app,
        )

        torchserve_app = build_torchserve_management_app(
            TorchServeModels(management, settings), token
        )
        servers.append(http_server(torchserve_app, settings, tls))
        sockets.append(ts_socket)
    info = ServerInfo(
        inference_url=url(settings.host, http_socket.getsockname()[1], tls) if http_socket else "",
        grpc_address="",
        management_url=(
            url(settings.management_host, mgmt_socket.getsockname()[1], tls) if mgmt_socket else ""
        ),
        store=store.url,
        token_source=_token_source(settings, store.root) if token is not None else "",
        models=models,
        seconds_to_ready=0.0,
        torchserve_management_url=(
            url(settings.management_host, ts_socket.getsockname()[1], tls) if ts_socket else ""
        ),
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        grpc = None
        intake = None
        if engine is None:
            grpc = GrpcServer(
                dataplane,
                repository,
                token,
                host=settings.host,
                port=settings.grpc_port,
                max_message_bytes=settings.max_request_bytes,
                max_calls=settings.max_grpc_calls,
                tls=tls.grpc_pair() if tls else None,
            )
        else:
            intake = Intake(dataplane, repository)

        def close() -> None:
            for server in servers:
                server.should_exit = True
            stopped.set()

        def stop() -> None:
            if registry.draining:  # a second signal: no more waiting
                for server in servers:
                    server.force_exit = True
                close()
                return
            registry.draining = True
            log.info(
                "stopping: not ready now, serving %.1f s more, then up to %.1f s for "
                "requests in flight",
                settings.unready_seconds,
                settings.drain_seconds,
            )
            loop.call_later(settings.unready_seconds, close)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop)
        if grpc is not None:
            await grpc.start()
        if intake is not None and engine is not None:
            await intake.start(engine.intake)
        tasks = [
            asyncio.create_task(server.serve(sockets=[sock]))
            for server, sock in zip(servers, sockets, strict=True)
        ]
        while not all(server.started for server in servers) and not any(t.done() for t in tasks):
            await asyncio.sleep(0.005)
        if announce and all(server.started for server in servers):
            announce(
                replace(
                    info,
                    grpc_address=address(settings.host, grpc.port) if grpc else "",
                    seconds_to_ready=time.perf_counter() - started,
                )
            )
        background = [
            asyncio.create_task(_refresh(registry, stopped, settings.store_poll_s)),
            asyncio.create_task(_sample(live, stopped)),
        ]
        try:
            if tasks:
                await asyncio.gather(*tasks)
            else:
                await stopped.wait()
        finally:
            for task in background:
                task.cancel()
            if grpc is not None:
                await grpc.stop(grace=settings.drain_seconds)
            if intake is not None:
                await intake.close()

    try:
        run(main())
    finally:
        registry.close()
        store.close()
        if settings.backend == "ray":
            from torchport.runtime import ray_backend

            ray_backend.disconnect(ray_started)
        if private_store is not None and engine is None:
            remove(private_store)


def open_services(
    store: ModelStore, settings: Settings, cores: int
) -> tuple[Registry, DataPlane, Management]:
    """The services of a server on `store`: the registry of loaded versions, the data plane
    every protocol calls, and management (nothing is loaded until `registry.start`)."""
    backend = Backend(
        settings.backend,
        settings.limits,
        cores=cores,
        torch_threads=settings.torch_threads,
        request_timeout_s=settings.request_timeout_s,
        weights_dir=store.root / "weights",
        device=settings.device,
    )
    loads = RequestLoads(
        settings.load_on_request,
        settings.max_loaded_on_request,
        settings.load_retry_seconds,
        settings.load_wait_s,
    )
    residency = Residency(settings.max_resident_bytes, settings.residency)
    registry = Registry(store, backend, request_loads=loads, residency=residency)
    registry.metrics.resident_budget.set(settings.max_resident_bytes or 0)
    recent = RecentRequests()
    trusted = load_trusted_keys(settings.trusted_keys) if settings.trusted_keys else []
    return (
        registry,
        DataPlane(registry, recent),
        Management(store, settings.limits, registry, recent, trusted),
    )


def _token_source(settings: Settings, store_root: Path) -> str:
    """Where the management token comes from, as `serve` tells the person starting it."""
    return "TORCHPORT_TOKEN" if settings.token else str(store_root / TOKEN_FILE)


async def _refresh(registry: Registry, stopped: asyncio.Event, every_s: float) -> None:
    # Another process (`torchport store promote`, another replica) may change the store.
    while not stopped.is_set():
        await asyncio.sleep(every_s)
        try:
            await asyncio.to_thread(registry.refresh)
        except Exception:
            log.exception("refreshing aliases from the store failed")


async def _sample(live: LiveStats, stopped: asyncio.Event) -> None:
    # On the loop itself: reading the registry takes well under a millisecond per model.
    while not stopped.is_set():
        try:
            live.sample()
        except Exception:
            log.exception("sampling the live figures failed")
        await asyncio.sleep(live.interval)


__all__ = ["EngineRole", "ServerInfo", "bind", "open_services", "serve"]
