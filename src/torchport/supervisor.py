"""A server in several processes: one engine (the store, registry, batching, models,
management and the dashboard — `server.serve` in its engine role) and N front ends (the
inference protocols, `frontend.serve_frontend`), watched by this supervisor, which holds
no model and imports no torch.

The supervisor checks the ports first, starts the engine, waits until it is ready, then
starts the front ends. A front end that dies is started again (only the requests it held
fail: their connections close); an engine that dies is started again on the same store
while the front ends answer 503 and report not ready, then reconnect. On SIGTERM the
front ends drain first (not ready, `unready_seconds`, then requests in flight get
`drain_seconds`), then the engine stops. A second signal stops everything at once.

Children are `python -m torchport.supervisor engine|frontend`, given their settings as
JSON on stdin (never on the command line: the token is in them) and telling the
supervisor how they are doing as JSON lines on a pipe of their own.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torchport.errors import TorchportError
from torchport.observability.logs import configure_logging
from torchport.ports import (
    ServerInfo,
    Tls,
    address,
    bind,
    microservice_settings,
    url,
    warn_if_clear,
)
from torchport.scratch import remove, scratch_dir, sweep
from torchport.service.handoff import intake_address
from torchport.settings import Settings

log = logging.getLogger("torchport.supervisor")

START_TIMEOUT_S = 600.0
"""The longest wait for the engine (building examples, loading models) or a front end."""
POLL_S = 0.1


@dataclass
class _Child:
    """A child process and what it has said so far."""

    kind: str
    proc: subprocess.Popen[bytes]
    said: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)

    def wait_for(self, kind: str, on_progress: Callable[[str], None]) -> dict[str, Any]:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                message = self.said.get(timeout=POLL_S)
            except queue.Empty:
                if self.proc.poll() is not None and self.said.empty():
                    raise TorchportError(
                        f"the {self.kind} process stopped while starting "
                        f"(exit {self.proc.returncode}); its log is above"
                    ) from None
                continue
            if message["kind"] == "progress":
                on_progress(message["message"])
            elif message["kind"] == "error":
                raise TorchportError(message["message"])
            elif message["kind"] == kind:
                return message
        raise TorchportError(f"the {self.kind} process did not start in {START_TIMEOUT_S:.0f} s")


def _spawn(kind: str, config: dict[str, Any], pass_fds: tuple[int, ...] = ()) -> _Child:
    read, write = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "torchport.supervisor", kind],
        stdin=subprocess.PIPE,
        pass_fds=(write, *pass_fds),
        # Ctrl-C reaches the supervisor alone, which stops the children in order.
        start_new_session=True,
    )
    os.close(write)
    assert proc.stdin is not None
    proc.stdin.write(json.dumps({**config, "status_fd": write}).encode())
    proc.stdin.close()
    child = _Child(kind, proc)

    def listen() -> None:
        with os.fdopen(read, "rb") as lines:
            for line in lines:
                try:
                    child.said.put(json.loads(line))
                except ValueError:
                    continue

    threading.Thread(target=listen, name=f"torchport-{kind}-status", daemon=True).start()
    return child


def _free_port(host: str, port: int) -> int:
    """Check that `host:port` is free (port 0: pick one) and say which it is."""
    sock = bind(host, port, listen=False)
    try:
        return int(sock.getsockname()[1])
    finally:
        sock.close()


def serve_supervised(
    settings: Settings,
    frontends: int,
    packages: list[Path] | None = None,
    *,
    examples: bool = False,
    microservice: bool = False,
    announce: Callable[[ServerInfo], None] | None = None,
    progress: Callable[[str], None] | None = None,
) -> None:
    """Run the server as an engine and `frontends` front-end processes until SIGTERM."""
    started = time.perf_counter()
    say = progress or (lambda _m: None)
    configure_logging(settings.log_format, settings.access_log)
    if microservice:
        settings = microservice_settings(settings, packages or [], examples)
    tls = Tls.of(settings)
    http_port = _free_port(settings.host, settings.http_port)
    grpc_port = _free_port(settings.host, settings.grpc_port)
    management = None
    if not microservice:
        management = bind(settings.management_host, settings.management_port)
        management.set_inheritable(True)
        warn_if_clear(settings, tls)
    swept = sweep()
    if swept:
        say(f"removed {swept} temporary files left by stopped torchport processes")
    # A microservice's private store outlives an engine that dies, not the supervisor.
    private_store = scratch_dir("microservice") if microservice else None
    intake = intake_address()
    engine_config = {
        # The front ends go unready on SIGTERM; the engine then stops without waiting.
        "settings": settings.model_copy(update={"unready_seconds": 0.0}).model_dump(mode="json"),
        "packages": [str(p) for p in packages or []],
        "examples": examples,
        "microservice": microservice,
        "intake": intake,
        "management_fd": management.fileno() if management else None,
        "store": str(private_store) if private_store else None,
    }
    fds = (management.fileno(),) if management else ()
    stopping = threading.Event()
    signals = [0]

    def on_signal(_signum: int, _frame: object) -> None:
        signals[0] += 1
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    children: list[_Child] = []
    try:
        engine = _spawn("engine", engine_config, fds)
        children.append(engine)
        token = engine.wait_for("token", say).get("token")
        ready = engine.wait_for("ready", say)
        frontend_config = {
            "settings": settings.model_dump(mode="json"),
            "intake": intake,
            "http_port": http_port,
            "grpc_port": grpc_port,
            "token": token,
            "sagemaker_model": ready["models"][0][0] if microservice else None,
        }
        fronts = [_spawn("frontend", frontend_config) for _ in range(frontends)]
        children += fronts
        for front in fronts:
            front.wait_for("listening", say)
        if announce is not None:
            announce(
                ServerInfo(
                    inference_url=url(settings.host, http_port, tls),
                    grpc_address=address(settings.host, grpc_port),
                    management_url=ready["management_url"],
                    store=str(ready["store"]),
                    token_source=ready["token_source"],
                    models=[(name, version) for name, version in ready["models"]],
                    seconds_to_ready=time.perf_counter() - started,
                )
            )
        while not stopping.wait(POLL_S):
            for i, child in enumerate(fronts):
                if child.proc.poll() is not None:
                    log.warning(
                        "a front-end process (pid %d) stopped (exit %s): starting another",
                        child.proc.pid,
                        child.proc.returncode,
                    )
                    fronts[i] = _spawn("frontend", frontend_config)
                    children.append(fronts[i])
            if engine.proc.poll() is not None:
                log.error(
                    "the engine process (pid %d) stopped (exit %s): starting it again; "
                    "inference answers 503 meanwhile",
                    engine.proc.pid,
                    engine.proc.returncode,
                )
                engine = _spawn("engine", engine_config, fds)
                children.append(engine)
        _stop(fronts, settings.unready_seconds + settings.drain_seconds, signals)
        _stop([engine], settings.drain_seconds, signals)
    finally:
        for child in children:
            if child.proc.poll() is None:
                child.proc.kill()
                child.proc.wait()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if management is not None:
            management.close()
        if private_store is not None:
            remove(private_store)


def _stop(children: list[_Child], patience: float, signals: list[int]) -> None:
    """SIGTERM `children` and wait for them: a second signal to the supervisor is passed
    on (they stop at once); past `patience` (and a margin) they are killed."""
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGTERM)
    passed_on = signals[0]
    deadline = time.monotonic() + patience + 10
    while any(c.proc.poll() is None for c in children) and time.monotonic() < deadline:
        if signals[0] > passed_on:
            passed_on = signals[0]
            for child in children:
                if child.proc.poll() is None:
                    child.proc.send_signal(signal.SIGTERM)
        time.sleep(POLL_S / 2)


# -- the children ----------------------------------------------------------------------


def _die_with_parent() -> None:
    """Let the kernel stop this child if the supervisor is killed outright (SIGKILL)."""
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the call
        os.kill(os.getpid(), signal.SIGTERM)


def _engine(config: dict[str, Any], tell: Callable[..., None]) -> None:
    from torchport.server import EngineRole, serve

    def ready(info: ServerInfo) -> None:
        tell(
            "ready",
            management_url=info.management_url,
            store=str(info.store),
            token_source=info.token_source,
            models=info.models,
        )

    store = config.get("store")
    role = EngineRole(
        intake=str(config["intake"]),
        management_fd=config.get("management_fd"),
        store=Path(store) if store else None,
        token=lambda token: tell("token", token=token),
    )
    serve(
        Settings.model_validate(config["settings"]),
        [Path(p) for p in config["packages"]],
        examples=bool(config["examples"]),
        microservice=bool(config["microservice"]),
        announce=ready,
        progress=lambda message: tell("progress", message=message),
        engine=role,
    )


def _frontend(config: dict[str, Any], tell: Callable[..., None]) -> None:
    from torchport.frontend import FrontendRole, serve_frontend

    role = FrontendRole(
        intake=str(config["intake"]),
        http_port=int(config["http_port"]),
        grpc_port=int(config["grpc_port"]),
        token=config.get("token"),
        sagemaker_model=config.get("sagemaker_model"),
    )
    serve_frontend(Settings.model_validate(config["settings"]), role, lambda: tell("listening"))


def main(kind: str) -> None:
    _die_with_parent()
    config = json.loads(sys.stdin.read())
    status = os.fdopen(int(config["status_fd"]), "w", buffering=1)

    def tell(what: str, **data: Any) -> None:
        with contextlib.suppress(OSError):  # the supervisor went away: so does this one
            status.write(json.dumps({"kind": what, **data}) + "\n")

    try:
        (_engine if kind == "engine" else _frontend)(config, tell)
    except TorchportError as exc:
        tell("error", message=str(exc))
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1])


__all__ = ["serve_supervised"]
