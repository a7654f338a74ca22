"""The engine's side of the hand-off: front-end processes connect to a Unix socket and
send decoded requests, which meet every other front end's in the same batchers.

Everything a front end asks goes through the services here (`DataPlane`, the
repository): the intake is one more caller of the service layer, like a transport.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict
from typing import Any

from torchport import shm_tensors
from torchport.errors import TorchportError
from torchport.observability.logs import request_id
from torchport.observability.requests import Tracked
from torchport.service import handoff
from torchport.service.dataplane import DataPlane
from torchport.service.handoff import Channel, Header
from torchport.service.inference import InferRequest, Repository, request_headers
from torchport.tensors import weight

log = logging.getLogger("torchport.intake")


class Intake:
    """Serves front ends on a Unix socket in the abstract namespace (no file to leave
    behind, no path-length limit); only processes of this user are let in."""

    def __init__(self, dataplane: DataPlane, repository: Repository | None) -> None:
        self.dataplane = dataplane
        self.repository = repository
        self._connections: set[_Connection] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        dataplane.registry.on_change(self._changed)

    async def start(self, address: str) -> None:
        """Listen on `address` (`handoff.intake_address`)."""
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_unix_server(
            lambda: _Connection(self).channel, path=address
        )

    def _changed(self) -> None:
        # From any thread (a load, a promote): front ends forget what they learnt.
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._broadcast, {"t": "g"})

    def _broadcast(self, header: Header) -> None:
        for connection in list(self._connections):
            connection.channel.send(header)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._connections):
            connection.channel.close()
        if self._server is not None:
            await self._server.wait_closed()


class _Connection:
    """One front end: its requests run as tasks, answered in the order they finish."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.channel = Channel(self._frame, self._lost, peer_check=handoff.same_user)
        self.tasks: set[asyncio.Task[None]] = set()
        self.blocks: set[str] = set()
        """Answer blocks sent and not yet removed by the front end."""
        intake._connections.add(self)

    def _frame(self, header: Header, payload: bytes) -> None:
        kind = header["t"]
        if kind == "i":
            self._spawn(self._infer(header, payload))
        elif kind == "q":
            self._spawn(self._question(header))
        elif kind == "n":
            counter = self.intake.dataplane.counter
            for protocol, model, version, known, outcome, seconds, rid in header["l"]:
                item = Tracked(protocol, model, version, known)
                counter.count(item, outcome, seconds, request=rid)
        elif kind == "f":
            self.blocks.difference_update(header["b"])

    def _spawn(self, work: Any) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _lost(self) -> None:
        self.intake._connections.discard(self)
        for task in self.tasks:  # its clients are gone with it
            task.cancel()
        for name in self.blocks:
            shm_tensors.unlink(name)
        self.blocks.clear()

    async def _infer(self, header: Header, payload: bytes) -> None:
        call = header["c"]
        dataplane = self.intake.dataplane
        request_id.set(header.get("r"))
        sticky = header.get("k")
        if sticky:  # the value of a sticky rollout's header, as the front end received it
            request_headers.set({str(sticky[0]).lower(): str(sticky[1])})
        try:
            described = header["x"]
            inputs = await dataplane.offload(
                handoff.size_of(described), handoff.unpack, described, payload, header.get("b")
            )
            response = await dataplane.infer(
                InferRequest(
                    model=header["m"],
                    inputs=inputs,
                    version=header.get("v"),
                    outputs=header.get("o"),
                    id=header.get("id"),
                    timeout_s=header.get("to"),
                )
            )
            out, data, block = await dataplane.offload(
                weight(response.outputs), handoff.pack, response.outputs
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, TorchportError):
                log.exception("a request handed over by a front end failed")
            self.channel.send(handoff.error_header(call, exc))
            return
        if block is not None:
            self.blocks.add(block)
        if (
            not self.channel.send(
                {"t": "a", "c": call, "v": response.version, "x": out, "b": block}, data
            )
            and block is not None
        ):
            shm_tensors.unlink(block)

    async def _question(self, header: Header) -> None:
        call = header["c"]
        try:
            result = await self._answer(str(header["q"]), list(header.get("a") or []))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, TorchportError):
                log.exception("a front end's question %r failed", header["q"])
            self.channel.send(handoff.error_header(call, exc))
            return
        self.channel.send({"t": "r", "c": call, "r": result})

    async def _answer(self, question: str, args: list[Any]) -> Any:
        dataplane = self.intake.dataplane
        if question == "signature":
            resolved, signature = dataplane.registry.signature(*args)
            model, version = args[0], args[1] if len(args) > 1 else None
            rollout = dataplane.registry.rollouts.active(model) if version is None else None
            # A sticky rollout's header: the front end sends its value with each request.
            sticky = rollout.rollout.sticky_header if rollout is not None else None
            return [resolved, signature.model_dump(mode="json"), sticky]
        if question == "metadata":
            meta = await dataplane.metadata(*args)
            return {
                "name": meta.name,
                "versions": meta.versions,
                "version": meta.version,
                "signature": meta.signature.model_dump(mode="json"),
            }
        if question == "models":
            return await dataplane.models()
        if question == "version_named":
            return await dataplane.version_named(*args)
        if question == "ready":
            return await dataplane.ready(*args)
        if question == "server_ready":
            return await dataplane.server_ready()
        if question == "metrics":
            return (await dataplane.metrics_text()).decode()
        repository = self.intake.repository
        if repository is None:
            raise TorchportError(f"no such question: {question!r}")
        if question == "index":
            return [asdict(state) for state in await repository.index()]
        if question == "load":
            await repository.load(*args)
            return None
        if question == "unload":
            await repository.unload(*args)
            return None
        raise TorchportError(f"no such question: {question!r}")


__all__ = ["Intake"]
