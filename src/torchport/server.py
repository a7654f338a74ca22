"""The model server: the one place that wires store, services and transports together."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import math
import os
import signal
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import uvicorn

from torchport.archive.signing import load_trusted_keys
from torchport.errors import TorchportError
from torchport.examples import register_examples
from torchport.observability.live import LiveStats
from torchport.observability.logs import configure_logging
from torchport.runtime import Backend
from torchport.scratch import remove, scratch, scratch_dir, sweep
from torchport.service import DataPlane, Management, Registry, RequestLoads
from torchport.service.auth import TOKEN_FILE, resolve_token
from torchport.service.compare import RecentRequests
from torchport.settings import Settings, available_cores
from torchport.store import ModelStore, SQLiteStore
from torchport.transports.grpc import GrpcServer
from torchport.transports.http import build_inference_app, build_management_app

log = logging.getLogger("torchport.server")

REFRESH_SECONDS = 2.0


@dataclass(frozen=True)
class ServerInfo:
    inference_url: str
    grpc_address: str
    management_url: str
    store: Path
    token_source: str
    models: list[tuple[str, int | None]]
    seconds_to_ready: float


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to `serve`, which runs several."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass(frozen=True)
class Tls:
    """A certificate and its key, checked to load before any port opens."""

    cert: Path
    key: Path

    @staticmethod
    def of(settings: Settings) -> Tls | None:
        if settings.tls_cert is None or settings.tls_key is None:
            return None
        tls = Tls(settings.tls_cert, settings.tls_key)
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls.cert, tls.key)
        except (OSError, ssl.SSLError) as exc:
            raise TorchportError(
                f"cannot use tls_cert {tls.cert} with tls_key {tls.key}: "
                f"{getattr(exc, 'strerror', None) or exc}"
            ) from None
        return tls

    def grpc_pair(self) -> tuple[bytes, bytes]:
        return self.key.read_bytes(), self.cert.read_bytes()


def _uvicorn(app: object, settings: Settings, tls: Tls | None) -> _Server:
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
        http="httptools",
        loop="none",
        timeout_graceful_shutdown=math.ceil(settings.drain_seconds),
        limit_concurrency=settings.max_connections,
        ssl_certfile=tls.cert if tls else None,
        ssl_keyfile=tls.key if tls else None,
    )
    return _Server(config)


def serve(
    settings: Settings,
    packages: list[Path] | None = None,
    *,
    examples: bool = False,
    microservice: bool = False,
    announce: Callable[[ServerInfo], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Run the model server until SIGINT or SIGTERM. Blocks.

    With `microservice`, serve the one package given, read-only: no management port, no
    store kept (the package is verified into a private one, removed at exit), SageMaker's
    `/invocations` beside the other protocols, and the HTTP port from
    `SAGEMAKER_BIND_TO_PORT` when set.

    On SIGTERM (or SIGINT) readiness turns false at once; requests are still served for
    `unready_seconds`, then the ports close and requests in flight get `drain_seconds` to
    finish. A second signal stops at once.
    """
    started = time.perf_counter()
    say = progress or (lambda _m: None)
    configure_logging(settings.log_format, settings.access_log)
    if microservice:
        settings = _microservice_settings(settings, packages or [], examples)
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)  # once, for the process, at start
    tls = Tls.of(settings)
    # Ports first: a port in use fails at once, before minutes of model loading.
    http_socket = bind(settings.host, settings.http_port)
    mgmt_socket = None if microservice else bind(settings.management_host, settings.management_port)
    if mgmt_socket is not None and tls is None and not _loopback(settings.management_host):
        log.warning(
            "management listens on %s without TLS: its bearer token crosses the network in "
            "clear (set tls_cert and tls_key)",
            settings.management_host,
        )
    if settings.grpc_port:
        bind(settings.host, settings.grpc_port).close()  # gRPC binds its own, once loaded
    swept = sweep()
    if swept:
        say(f"removed {swept} temporary files left by stopped torchport processes")
    private_store = scratch_dir("microservice") if microservice else None
    store = SQLiteStore(private_store or settings.store)
    token = None if microservice else resolve_token(settings.token, store.root)
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
    # What start-up made (torch, the models) is never scanned by the collector again:
    # full collections stay short under load instead of pausing every request behind them.
    gc.collect()
    gc.freeze()

    models = [(m.name, m.default) for m in store.list_models()]
    http = _uvicorn(
        build_inference_app(
            dataplane, settings, sagemaker_model=models[0][0] if microservice else None
        ),
        settings,
        tls,
    )
    live = LiveStats(registry.metrics.registry)
    servers = [http]
    if token is not None and mgmt_socket is not None:
        servers.append(
            _uvicorn(
                build_management_app(management, token, settings, live),
                settings,
                tls,
            )
        )
    info = ServerInfo(
        inference_url=_url(settings.host, http_socket, tls),
        grpc_address="",
        management_url=_url(settings.management_host, mgmt_socket, tls) if mgmt_socket else "",
        store=store.root,
        token_source=_token_source(settings, store.root) if token is not None else "",
        models=models,
        seconds_to_ready=0.0,
    )

    async def main() -> None:
        loop = asyncio.get_running_loop()
        grpc = GrpcServer(
            dataplane,
            None if microservice else management,
            token,
            host=settings.host,
            port=settings.grpc_port,
            max_message_bytes=settings.max_request_bytes,
            max_calls=settings.max_grpc_calls,
            tls=tls.grpc_pair() if tls else None,
        )

        def close() -> None:
            for server in servers:
                server.should_exit = True

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
        await grpc.start()
        sockets = [http_socket] if mgmt_socket is None else [http_socket, mgmt_socket]
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
                    grpc_address=_address(settings.host, grpc.port),
                    seconds_to_ready=time.perf_counter() - started,
                )
            )
        background = [
            asyncio.create_task(_refresh(registry, servers)),
            asyncio.create_task(_sample(live, servers)),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in background:
                task.cancel()
            await grpc.stop(grace=settings.drain_seconds)

    try:
        _run(main())
    finally:
        registry.close()
        store.close()
        if settings.backend == "ray":
            from torchport.runtime import ray_backend

            ray_backend.disconnect(ray_started)
        if private_store is not None:
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
    )
    loads = RequestLoads(
        settings.load_on_request, settings.max_loaded_on_request, settings.load_retry_seconds
    )
    registry = Registry(store, backend, request_loads=loads)
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


def _microservice_settings(settings: Settings, packages: list[Path], examples: bool) -> Settings:
    if examples or len(packages) != 1:
        raise TorchportError(
            "a microservice serves exactly one package: torchport serve PACKAGE.tpa --microservice"
        )
    port = os.environ.get("SAGEMAKER_BIND_TO_PORT")
    if port is None:
        return settings
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise TorchportError(f"SAGEMAKER_BIND_TO_PORT={port!r} is not a port number")
    return settings.model_copy(update={"http_port": int(port)})


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on `host:port` (port 0: any free port)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise TorchportError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def _url(host: str, sock: socket.socket, tls: Tls | None) -> str:
    return f"{'https' if tls else 'http'}://{_address(host, sock.getsockname()[1])}"


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _address(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
    return f"{shown}:{port}"


async def _refresh(registry: Registry, servers: list[_Server]) -> None:
    # Another process (`torchport store promote`, a second server) may change the store.
    while not any(s.should_exit for s in servers):
        await asyncio.sleep(REFRESH_SECONDS)
        try:
            await asyncio.to_thread(registry.refresh)
        except Exception:
            log.exception("refreshing aliases from the store failed")


async def _sample(live: LiveStats, servers: list[_Server]) -> None:
    # On the loop itself: reading the registry takes well under a millisecond per model.
    while not any(s.should_exit for s in servers):
        try:
            live.sample()
        except Exception:
            log.exception("sampling the live figures failed")
        await asyncio.sleep(live.interval)


def _run(coro: object) -> None:
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro)  # type: ignore[arg-type]


__all__ = ["ServerInfo", "bind", "open_services", "serve"]
