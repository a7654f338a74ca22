"""What every inference protocol calls, as an interface: the requests and answers (named
numpy arrays), and the two services a transport talks to — inference and, for the
Open Inference Protocol's model repository extension, the repository.

Two implementations: the engine's own (`DataPlane`, in the process that holds the
models) and a front end's (`RemoteDataPlane`, in a protocol process that hands decoded
requests to the engine). Importing this module loads no model code (no torch): front-end
processes import only this side of the services.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import anyio.to_thread

from torchport.errors import InvalidInput
from torchport.observability.requests import Tracked
from torchport.tensors import HEAVY_BYTES
from torchport.types import Signature, Tensors

T = TypeVar("T")


@dataclass(frozen=True)
class InferRequest:
    model: str
    inputs: Tensors
    version: int | None = None
    outputs: list[str] | None = None
    """Names of the outputs wanted, in order; all of them when None."""
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    timeout_s: float | None = None
    """Drop the request (`DeadlineExceeded`) if it cannot be served within this time."""


request_headers: ContextVar[Mapping[str, str] | None] = ContextVar(
    "torchport_request_headers", default=None
)
"""The headers of the request the running task serves (lower-case names), set by the
transports: a sticky rollout reads the one it hashes."""


@dataclass(frozen=True)
class InferResponse:
    model: str
    version: int
    outputs: Tensors
    id: str | None = None


@dataclass(frozen=True)
class ModelMetadata:
    """What a protocol's metadata call tells of a model (or one version of it)."""

    name: str
    versions: list[int]
    """The version asked for, or every version the store holds."""
    version: int
    """The version that serves requests that name none (or the one asked for)."""
    signature: Signature


@dataclass(frozen=True)
class VersionState:
    model: str
    version: int
    state: str  # READY, UNAVAILABLE, UNLOADED
    reason: str = ""


def timeout_parameter(parameters: dict[str, Any]) -> float | None:
    """Seconds from the Open Inference Protocol's `timeout` parameter (µs), if given."""
    micros = parameters.get("timeout")
    if micros is None:
        return None
    if not isinstance(micros, int | float) or isinstance(micros, bool) or micros <= 0:
        raise InvalidInput("parameter 'timeout' must be a positive number of µs", field="timeout")
    return float(micros) / 1_000_000


def wanted_outputs(signature: Signature, requested: list[str] | None) -> list[str]:
    """The outputs a request asked for (all when none), each one the signature declares."""
    names = [s.name for s in signature.outputs]
    if requested is None:
        return names
    for name in requested:
        if name not in names:
            raise InvalidInput(f"unknown output '{name}' (outputs: {', '.join(names)})", field=name)
    return list(dict.fromkeys(requested))


class Codec:
    """Where a transport decodes and encodes bodies: on the event loop when small, else on
    a thread of its own, so one large body never stalls the loop that serves every port,
    health probes included. One thread: decoding holds the GIL, so a second would not
    decode faster, only take the GIL from the event loop more often."""

    def __init__(self) -> None:
        self._limiter = anyio.CapacityLimiter(1)

    async def offload(self, size: int, work: Callable[..., T], *args: object) -> T:
        if size < HEAVY_BYTES:
            return work(*args)
        return await anyio.to_thread.run_sync(work, *args, limiter=self._limiter)


class InferenceService(Protocol):
    """What the inference transports call."""

    @property
    def draining(self) -> bool:
        """The server is shutting down (it reports not ready from then on)."""
        ...

    async def offload(self, size: int, work: Callable[..., T], *args: object) -> T:
        """`work(*args)` — decoding or encoding `size` bytes — where `Codec` runs it."""
        ...

    def track(
        self, protocol: str, model: str = "", version: int | None = None
    ) -> AbstractContextManager[Tracked]:
        """Count the request handled inside, once, by its outcome."""
        ...

    async def infer(self, request: InferRequest) -> InferResponse:
        """Check the inputs against the signature, run the model, select the outputs."""
        ...

    async def resolve(self, model: str, version: int | None = None) -> int:
        """The version that serves a request; `NotFound` naming the model or version."""
        ...

    async def signature(self, model: str, version: int | None = None) -> Signature: ...

    async def version_named(self, model: str, name: str) -> int:
        """The version another server's client names `name` (TorchServe's `1.0`: the
        archive's version it was registered with), or its number; `NotFound` if none."""
        ...

    async def metadata(self, model: str, version: int | None = None) -> ModelMetadata: ...

    async def models(self) -> list[str]:
        """The names of every model in the store."""
        ...

    async def ready(self, model: str, version: int | None = None) -> bool:
        """Whether the version that serves `model` is loaded (`NotFound` if unknown)."""
        ...

    async def server_ready(self) -> bool: ...

    async def metrics_text(self) -> bytes:
        """The Prometheus exposition of the whole server."""
        ...


class Repository(Protocol):
    """The Open Inference Protocol's model repository extension (behind the token)."""

    async def index(self) -> list[VersionState]: ...

    async def load(self, model: str) -> None: ...

    async def unload(self, model: str) -> None: ...


__all__ = [
    "Codec",
    "InferRequest",
    "InferResponse",
    "InferenceService",
    "ModelMetadata",
    "Repository",
    "VersionState",
    "timeout_parameter",
    "wanted_outputs",
]
