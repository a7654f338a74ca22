"""What every serving process opens: listening sockets, TLS, uvicorn servers and the event
loop — shared by the single-process server, the engine and the front-end processes."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import math
import os
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from torchport.errors import TorchportError
from torchport.settings import Settings

log = logging.getLogger("torchport.server")


@dataclass(frozen=True)
class ServerInfo:
    inference_url: str
    grpc_address: str
    management_url: str
    store: str
    """Where the store is (a directory, or `s3://bucket/prefix`)."""
    token_source: str
    models: list[tuple[str, int | None]]
    seconds_to_ready: float
    torchserve_management_url: str = ""


class Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its process, which runs several."""

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


def http_server(
    app: object, settings: Settings, tls: Tls | None, *, client_address: bool = True
) -> Server:
    """`client_address` False: the app never asks who the client is (the inference port),
    so uvicorn's X-Forwarded-For middleware is left out of every request's path."""
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
        proxy_headers=client_address,
        http="httptools",
        loop="none",
        timeout_graceful_shutdown=math.ceil(settings.drain_seconds),
        limit_concurrency=settings.max_connections,
        ssl_certfile=tls.cert if tls else None,
        ssl_keyfile=tls.key if tls else None,
    )
    return Server(config)


def bind(host: str, port: int, *, share: bool = False, listen: bool = True) -> socket.socket:
    """A listening socket on `host:port` (port 0: any free port). `share`: SO_REUSEPORT,
    for the front-end processes of one server, each listening on the port; `listen`
    False only checks the port (and learns which, for port 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if share:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
        if listen:
            sock.listen(1024)
    except OSError as exc:
        sock.close()
        raise TorchportError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.setblocking(False)
    return sock


def url(host: str, port: int, tls: Tls | None) -> str:
    return f"{'https' if tls else 'http'}://{address(host, port)}"


def loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def address(host: str, port: int) -> str:
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)
    return f"{shown}:{port}"


def microservice_settings(settings: Settings, packages: list[Path], examples: bool) -> Settings:
    """A microservice's settings: one package, the HTTP port SageMaker asks for."""
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


def warn_if_clear(settings: Settings, tls: Tls | None) -> None:
    if tls is None and not loopback(settings.management_host):
        log.warning(
            "management listens on %s without TLS: its bearer token crosses the network "
            "in clear (set tls_cert and tls_key)",
            settings.management_host,
        )


def run(coro: object) -> None:
    """Run `coro` on a new event loop (uvloop's where installed)."""
    try:
        import uvloop

        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(coro)  # type: ignore[arg-type]


__all__ = [
    "Server",
    "ServerInfo",
    "Tls",
    "address",
    "bind",
    "http_server",
    "loopback",
    "microservice_settings",
    "run",
    "url",
    "warn_if_clear",
]
