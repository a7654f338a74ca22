"""Reading request bodies within a size limit, to memory or to a file, and as JSON."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio.to_thread
import orjson
from starlette.requests import Request

from torchport.errors import InvalidInput, RequestTimeout, TooLarge, out_of_space
from torchport.tensors import HEAVY_BYTES


def _declared(request: Request) -> int | None:
    declared = request.headers.get("content-length", "")
    return int(declared) if declared.isascii() and declared.isdigit() else None


def _check_declared(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise InvalidInput("Content-Length is not a number", field="Content-Length") from None
        if size > limit:
            raise TooLarge(f"request body of {size} bytes is over the limit of {limit} bytes")


@dataclass(frozen=True)
class BodyLimit:
    """How much a body may hold, and how long it may take to arrive."""

    max_bytes: int
    timeout_s: float
    setting: str = "body_timeout_s"
    """The setting that says `timeout_s`, named in the 408."""

    @asynccontextmanager
    async def clock(self) -> AsyncIterator[None]:
        # asyncio's own timeout: a third of anyio's cost, paid by every request.
        try:
            async with asyncio.timeout(self.timeout_s):
                yield
        except TimeoutError:
            raise RequestTimeout(
                f"the request body did not arrive within {self.timeout_s:g} s ({self.setting})",
                field="body",
            ) from None


async def read_body(request: Request, limit: BodyLimit) -> bytes:
    """The whole body, refused with 413 as soon as it passes `limit.max_bytes` bytes, and
    with 408 if it has not all arrived within `limit.timeout_s`."""
    _check_declared(request, limit.max_bytes)
    chunks = []
    size = 0
    async with limit.clock():
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit.max_bytes:
                raise TooLarge(f"request body is over the limit of {limit.max_bytes} bytes")
            chunks.append(chunk)
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
