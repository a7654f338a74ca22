"""The hand-off between front-end processes and the engine: framed messages on a Unix
socket, tensors beside them.

A frame is two little-endian lengths (header, payload), a JSON header and the payload.
Tensors travel in the Open Inference Protocol's raw layout (`shm_tensors`): up to
`INLINE_BYTES` in all, as the frame's payload (one copy into the socket costs less than
making a shared-memory block); larger ones in one shared-memory block the sender makes
and the reader removes once it has copied them out. Nothing is pickled.

Messages (`t`): from a front end, `i` (infer), `q` (a question: metadata, readiness,
metrics, the model repository), `n` (request counts), `f` (answer blocks it removed);
from the engine, `a` (an answer), `e` (an error), `r` (a question's result), `g` (what
serves a model may have changed: forget what was learnt of it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import struct
from collections.abc import Callable
from typing import Any, cast

import orjson

from torchport import shm_tensors
from torchport.errors import TorchportError, error_for
from torchport.scratch import owner
from torchport.types import Tensors

log = logging.getLogger("torchport.handoff")

FRAME = struct.Struct("<II")
INLINE_BYTES = 64 * 1024
"""Tensors up to this size ride in the frame; larger ones in shared memory."""
MAX_FRAME_BYTES = 256 * 1024 * 1024
"""A frame longer than this is a broken peer: the connection is dropped."""

Header = dict[str, Any]
OnFrame = Callable[[Header, bytes], None]


class Channel(asyncio.Protocol):
    """One end of a connection: frames in (to `on_frame`), frames out (`send`)."""

    def __init__(
        self,
        on_frame: OnFrame,
        on_lost: Callable[[], None],
        peer_check: Callable[[asyncio.BaseTransport], bool] | None = None,
    ) -> None:
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._peer_check = peer_check
        self._buffer = bytearray()
        self._pending: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass
        if self._peer_check is not None and not self._peer_check(transport):
            log.error("a process of another user connected to the intake: refused")
            transport.close()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        start = 0
        end = len(buffer)
        while end - start >= FRAME.size:
            head, size = FRAME.unpack_from(buffer, start)
            if head + size > MAX_FRAME_BYTES:
                log.error("a hand-off frame of %d bytes: dropping the connection", head + size)
                self.close()
                return
            body = start + FRAME.size
            stop = body + head + size
            if stop > end:
                break
            header = orjson.loads(memoryview(buffer)[body : body + head])
            payload = bytes(buffer[body + head : stop]) if size else b""
            start = stop
            try:
                self._on_frame(header, payload)
            except Exception:
                log.exception("handling a hand-off frame failed")
        if start:
            del buffer[:start]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self._on_lost()

    def send(self, header: Header, payload: bytes = b"") -> bool:
        """Send a frame (with the others sent in this turn of the event loop: one write,
        one system call, for many requests under load); False when the connection is
        gone."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        head = orjson.dumps(header)
        pending = self._pending
        pending.append(FRAME.pack(len(head), len(payload)))
        pending.append(head)
        if payload:
            pending.append(payload)
        if len(pending) <= 3:
            asyncio.get_running_loop().call_soon(self._flush)
        return True

    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(pending))

    def close(self) -> None:
        if self.transport is not None:
            if self._pending:
                self._flush()
            self.transport.close()


def intake_address() -> str:
    """A new address for an engine's intake: a Unix socket in Linux's abstract namespace,
    named for the process that makes it."""
    return f"\0torchport-intake-{owner()}-{secrets.token_hex(4)}"


def same_user(transport: asyncio.BaseTransport) -> bool:
    """Whether the process at the other end runs as this user (SO_PEERCRED): an abstract
    socket has no file permissions to keep others out."""
    sock = transport.get_extra_info("socket")
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return False
    _pid, uid, _gid = struct.unpack("3i", creds)
    return bool(uid == os.geteuid())


def pack(tensors: Tensors) -> tuple[shm_tensors.Described, bytes, str | None]:
    """Tensors for a frame: their descriptions, and their bytes inline or the name of the
    shared-memory block that holds them (the reader removes it)."""
    described, raws = shm_tensors.describe(tensors)
    if sum(len(raw) for raw in raws) <= INLINE_BYTES:
        return described, b"".join(raws), None
    block = shm_tensors.write(raws)
    shm_tensors.disown(block)
    return described, b"", block.name


def unpack(described: shm_tensors.Described, payload: bytes, block: str | None) -> Tensors:
    """The tensors `pack` sent; a block is read, then removed."""
    if block is None:
        return shm_tensors.read(described, payload)
    return shm_tensors.take(described, block, unlink=True)


def size_of(described: shm_tensors.Described) -> int:
    return sum(int(item["size"]) for item in described)


def error_header(call: int, exc: BaseException) -> Header:
    """An error for the other side: a torchport error as it is, anything else as the
    internal error a client would get from the process itself."""
    if isinstance(exc, TorchportError):
        return {"t": "e", "c": call, **exc.to_dict()}
    message = f"internal error: {type(exc).__name__}"
    return {"t": "e", "c": call, "code": "internal", "error": message}


def error_of(header: Header) -> TorchportError:
    return error_for(str(header["code"]), str(header["error"]), header.get("field"))


__all__ = [
    "INLINE_BYTES",
    "Channel",
    "error_header",
    "error_of",
    "intake_address",
    "pack",
    "same_user",
    "size_of",
    "unpack",
]
