"""A front end's services: the inference service and the model repository of the engine
process, reached through the hand-off (`handoff`, `intake`).

The front end decodes each request and checks it against the signature the engine told
it (kept until the engine says what serves a model changed), then hands the tensors
over; requests from every front end meet in the engine's batchers. Requests are counted
here, once, and the counts sent to the engine, which keeps the metrics and writes the
log line. While the engine is away (restarting) inference answers 503 and the server
reports not ready.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
from collections.abc import Callable
from typing import Any, TypeVar

from torchport import shm_tensors
from torchport.errors import Unavailable
from torchport.observability.logs import new_request_id, request_id
from torchport.observability.requests import Counter, Tracked, tracked
from torchport.service import handoff
from torchport.service.handoff import Channel, Header
from torchport.service.inference import (
    Codec,
    InferRequest,
    InferResponse,
    ModelMetadata,
    VersionState,
    request_headers,
    wanted_outputs,
)
from torchport.tensors import weight
from torchport.types import Signature

log = logging.getLogger("torchport.frontend")

T = TypeVar("T")
RECONNECT_S = (0.05, 1.0)
"""The first and the longest wait between attempts to reach the engine."""


class EngineAway(Unavailable):
    """The engine process is not there (starting, or restarting after it stopped)."""


class RemoteDataPlane(Counter):
    """`InferenceService` over the hand-off to the engine's intake at `address`."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._codec = Codec()
        self._channel: Channel | None = None
        self._calls: dict[int, asyncio.Future[tuple[Header, bytes]]] = {}
        self._next_call = 0
        self._signatures: dict[tuple[str, int | None], tuple[int, Signature, str | None]] = {}
        """Per model (and version): what serves it, its signature, and the header a sticky
        rollout of it keys on."""
        self._counts: list[list[Any]] = []
        self._flush_scheduled = False
        self._draining = False
        self._closed = False
        self.connected = asyncio.Event()

    # -- the connection ------------------------------------------------------------------

    async def run(self) -> None:
        """Stay connected to the engine until `close`: reconnect whenever it goes."""
        loop = asyncio.get_running_loop()
        wait = RECONNECT_S[0]
        while not self._closed:
            lost = asyncio.Event()
            channel = Channel(self._frame, lost.set)
            try:
                # uvloop connects to no abstract address itself: a connected socket, then.
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.connect(self.address)
                except OSError:
                    sock.close()
                    raise
                sock.setblocking(False)
                await loop.create_unix_connection(functools.partial(_same, channel), sock=sock)
            except OSError:
                await asyncio.sleep(wait)
                wait = min(wait * 2, RECONNECT_S[1])
                continue
            wait = RECONNECT_S[0]
            self._channel = channel
            self.connected.set()
            log.debug("connected to the engine")
            await lost.wait()
            self._lost()

    def _lost(self) -> None:
        self._channel = None
        self.connected.clear()
        self._signatures.clear()
        calls, self._calls = self._calls, {}
        if calls and not self._closed:
            log.warning("the engine went away: %d requests in flight there fail", len(calls))
        for future in calls.values():
            if not future.done():
                future.set_exception(
                    EngineAway("the engine process stopped while serving this request; retry")
                )

    def close(self) -> None:
        self._closed = True
        if self._channel is not None:
            self._flush()
            self._channel.close()

    async def _call(self, header: Header, payload: bytes = b"") -> tuple[Header, bytes]:
        channel = self._channel
        if channel is None:
            raise EngineAway("the engine process is not running (it is being started); retry")
        self._next_call += 1
        call = header["c"] = self._next_call
        future: asyncio.Future[tuple[Header, bytes]] = asyncio.get_running_loop().create_future()
        self._calls[call] = future
        try:
            channel.send(header, payload)
            return await future
        finally:
            self._calls.pop(call, None)

    def _frame(self, header: Header, payload: bytes) -> None:
        kind = header["t"]
        if kind == "g":
            self._signatures.clear()
            return
        future = self._calls.get(header["c"])
        if future is None or future.done():
            # Its client went away meanwhile: let go of what the answer holds.
            if header.get("b"):
                shm_tensors.unlink(header["b"])
            return
        if kind == "e":
            future.set_exception(handoff.error_of(header))
        else:
            future.set_result((header, payload))

    async def _ask(self, question: str, *args: Any) -> Any:
        header, _ = await self._call({"t": "q", "q": question, "a": list(args)})
        return header["r"]

    # -- counting: here, once; the engine keeps the figures --------------------------------

    def count(self, item: Tracked, outcome: str, seconds: float) -> None:
        rid = request_id.get()
        self._counts.append(
            [item.protocol, item.model, item.version, item.known, outcome, seconds, rid]
        )
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._counts and self._channel is not None:
            self._channel.send({"t": "n", "l": self._counts})
        self._counts = []  # while the engine is away, its figures restart anyway

    # -- InferenceService ----------------------------------------------------------------

    @property
    def draining(self) -> bool:
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = value

    async def offload(self, size: int, work: Callable[..., T], *args: object) -> T:
        return await self._codec.offload(size, work, *args)

    async def _signature(
        self, model: str, version: int | None
    ) -> tuple[int, Signature, str | None]:
        key = (model, version)
        known = self._signatures.get(key)
        if known is None:
            resolved, data, sticky = await self._ask("signature", model, version)
            known = (int(resolved), Signature.model_validate(data), sticky)
            self._signatures[key] = known
        return known

    async def infer(self, request: InferRequest) -> InferResponse:
        if request_id.get() is None:
            request_id.set(new_request_id(request.id))
        _, signature, sticky = await self._signature(request.model, request.version)
        signature.check_inputs(request.inputs)
        key = None
        if sticky is not None:
            value = (request_headers.get() or {}).get(sticky.lower())
            key = None if value is None else [sticky, value]
        wanted = wanted_outputs(signature, request.outputs)
        described, data, block = await self.offload(
            weight(request.inputs), handoff.pack, request.inputs
        )
        try:
            header, payload = await self._call(
                {
                    "t": "i",
                    "m": request.model,
                    "v": request.version,
                    "o": wanted,
                    "id": request.id,
                    "r": request_id.get(),
                    "to": request.timeout_s,
                    "x": described,
                    "b": block,
                    "k": key,
                },
                data,
            )
        finally:
            if block is not None:  # the engine removes it once read, unless it went away
                shm_tensors.unlink(block)
        outputs = await self.offload(
            handoff.size_of(header["x"]), handoff.unpack, header["x"], payload, header["b"]
        )
        if header["b"] is not None and self._channel is not None:
            self._channel.send({"t": "f", "b": [header["b"]]})
        version = int(header["v"])
        counted = tracked()
        if counted is not None:
            counted.answered(request.model, version)
        return InferResponse(request.model, version, outputs, request.id)

    async def resolve(self, model: str, version: int | None = None) -> int:
        return (await self._signature(model, version))[0]

    async def signature(self, model: str, version: int | None = None) -> Signature:
        return (await self._signature(model, version))[1]

    async def version_named(self, model: str, name: str) -> int:
        return int(await self._ask("version_named", model, name))

    async def metadata(self, model: str, version: int | None = None) -> ModelMetadata:
        data = await self._ask("metadata", model, version)
        return ModelMetadata(
            data["name"],
            [int(v) for v in data["versions"]],
            int(data["version"]),
            Signature.model_validate(data["signature"]),
        )

    async def models(self) -> list[str]:
        return [str(name) for name in await self._ask("models")]

    async def ready(self, model: str, version: int | None = None) -> bool:
        return bool(await self._ask("ready", model, version))

    async def server_ready(self) -> bool:
        if self._draining or self._channel is None:
            return False
        try:
            return bool(await self._ask("server_ready"))
        except EngineAway:
            return False

    async def metrics_text(self) -> bytes:
        return str(await self._ask("metrics")).encode()


def _same(channel: Channel) -> Channel:
    return channel


class RemoteRepository:
    """The model repository extension of the engine (`Repository`)."""

    def __init__(self, remote: RemoteDataPlane) -> None:
        self.remote = remote

    async def index(self) -> list[VersionState]:
        return [VersionState(**state) for state in await self.remote._ask("index")]

    async def load(self, model: str) -> None:
        await self.remote._ask("load", model)

    async def unload(self, model: str) -> None:
        await self.remote._ask("unload", model)


__all__ = ["EngineAway", "RemoteDataPlane", "RemoteRepository"]
