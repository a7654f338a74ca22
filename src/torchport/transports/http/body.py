"""Reading request bodies within a size limit, to memory or to a file, and as JSON."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio.to_thread
import orjson
from starlette.requests import ClientDisconnect, Request

from torchport.errors import InvalidInput, RequestTimeout, TooLarge, out_of_space
from torchport.tensors import HEAVY_BYTES
from torchport.transports.http.params import header


def _declared(request: Request) -> int | None:
    declared = header(request, "content-length") or ""
    return int(declared) if declared.isascii() and declared.isdigit() else None


def _check_declared(request: Request, limit: int) -> None:
    declared = header(request, "content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidInput("Content-Length is not a number", field="Content-Length") from None
        if size > limit:
            raise TooLarge(f"request body of {size} bytes is over the limit of {limit} bytes")


TICK_S = 0.1
"""How often late bodies are looked for: a body timeout fires up to this much late."""


class _Deadlines:
    """The tasks reading a body, each with the loop time it must be done by. One task on
    the event loop looks every `TICK_S` and cancels the late ones: a timer per request
    (`asyncio.timeout`) costs uvloop a libuv timer made and closed, a tenth of a small
    request's CPU."""

    def __init__(self) -> None:
        self.due: dict[asyncio.Task[Any], float] = {}
        self.late: set[asyncio.Task[Any]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def watch(self, task: asyncio.Task[Any], seconds: float) -> None:
        loop = task.get_loop()
        sweeper = self._sweeper
        if sweeper is None or sweeper.done() or sweeper.get_loop() is not loop:
            # First use, or on another loop (each test client runs one of its own).
            self.due.clear()
            self.late.clear()
            self._sweeper = loop.create_task(self._sweep(loop))
        self.due[task] = loop.time() + seconds

    def forget(self, task: asyncio.Task[Any]) -> bool:
        """Stop watching `task`; whether it was cancelled for being late."""
        self.due.pop(task, None)
        if task in self.late:
            self.late.discard(task)
            return True
        return False

    async def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = loop.time()
            for task in [t for t, due in self.due.items() if due <= now]:
                del self.due[task]
                self.late.add(task)
                task.cancel()


@dataclass(frozen=True)
class BodyLimit:
    """How much a body may hold, and how long it may take to arrive."""

    max_bytes: int
    timeout_s: float
    setting: str = "body_timeout_s"
    """The setting that says `timeout_s`, named in the 408."""
    _deadlines: _Deadlines = field(default_factory=_Deadlines, compare=False, repr=False)

    def clock(self) -> _Clock:
        """An `async with` block that raises `RequestTimeout` unless it finishes within
        `timeout_s`."""
        return _Clock(self)


class _Clock:
    def __init__(self, limit: BodyLimit) -> None:
        self.limit = limit
        self.task: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> None:
        self.task = asyncio.current_task()
        assert self.task is not None
        self.limit._deadlines.watch(self.task, self.limit.timeout_s)

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        assert self.task is not None
        late = self.limit._deadlines.forget(self.task)
        if late and kind is asyncio.CancelledError and self.task.uncancel() == 0:
            limit = self.limit
            raise RequestTimeout(
                f"the request body did not arrive within {limit.timeout_s:g} s ({limit.setting})",
                field="body",
            ) from None


async def read_body(request: Request, limit: BodyLimit) -> bytes:
    """The whole body, refused with 413 as soon as it passes `limit.max_bytes` bytes, and
    with 408 if it has not all arrived within `limit.timeout_s`."""
    _check_declared(request, limit.max_bytes)
    chunks = []
    size = 0
    more = True
    async with limit.clock():
        while more:  # the ASGI messages themselves: `request.stream()` costs a generator
            message = await request.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect
            chunk: bytes = message.get("body", b"")
            more = message.get("more_body", False)
            size += len(chunk)
            if size > limit.max_bytes:
                raise TooLarge(f"request body is over the limit of {limit.max_bytes} bytes")
            chunks.append(chunk)
    if len(chunks) == 1:
        return chunks[0]
    if size >= HEAVY_BYTES:  # copying megabytes into fresh pages takes the loop ~2 ms a MiB
        return await anyio.to_thread.run_sync(b"".join, chunks)
    return b"".join(chunks)


async def save_body(request: Request, dest: Path, limit: BodyLimit) -> int:
    """Stream the body to `dest`, refused with 413 past `limit.max_bytes` bytes and 408
    past `limit.timeout_s`; returns its size."""
    _check_declared(request, limit.max_bytes)
    size = 0
    with dest.open("wb") as out:
        async with limit.clock():
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit.max_bytes:
                    raise TooLarge(
                        f"upload is over the limit of {limit.max_bytes} bytes (max_package_bytes)"
                    )
                try:
                    out.write(chunk)
                except OSError as exc:
                    raise out_of_space(exc, dest.parent, _declared(request)) or exc from None
    if size == 0:
        raise InvalidInput("the request body is empty: send the package file", field="body")
    return size


def parse_json(body: bytes) -> Any:
    """The body as JSON; a body that is not JSON is bad input naming `body`."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the request is not valid JSON: {exc}", field="body") from None
