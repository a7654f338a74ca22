"""The data plane: what every inference protocol calls (OIP v2 REST and gRPC, KServe v1,
the TorchServe-compatible routes, SageMaker's). Transport-neutral: requests and responses
are named numpy arrays.

An inference is find → check → predict → count: the registry finds the loaded version,
its signature checks the inputs, its batcher runs them, and the request counter (which
the transport opened around the whole request) counts it once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import replace
from typing import TypeVar

import anyio.to_thread

from torchport.errors import NotFound, TorchportError, Unavailable
from torchport.observability.logs import new_request_id, request_id
from torchport.observability.requests import RequestCounter, Tracked, tracked
from torchport.service.compare import RecentRequests
from torchport.service.inference import (
    Codec,
    InferRequest,
    InferResponse,
    ModelMetadata,
    VersionState,
    request_headers,
    timeout_parameter,
    wanted_outputs,
)
from torchport.service.labels import torchserve_name
from torchport.service.registry import LoadedVersion, Registry
from torchport.service.rollouts import CLIENT_ERRORS, RolloutStats, pick
from torchport.types import Signature

T = TypeVar("T")


class DataPlane:
    def __init__(self, registry: Registry, recent: RecentRequests | None = None) -> None:
        self.registry = registry
        self.recent = recent or RecentRequests()
        self.counter = RequestCounter(registry.metrics, registry.labels)
        self._loads = anyio.CapacityLimiter(1)
        self._codec = Codec()

    async def offload(self, size: int, work: Callable[..., T], *args: object) -> T:
        """`work(*args)` — a transport's decoding or encoding of `size` bytes — where
        `Codec` runs it."""
        return await self._codec.offload(size, work, *args)

    def track(
        self, protocol: str, model: str = "", version: int | None = None
    ) -> AbstractContextManager[Tracked]:
        """Count the request handled inside, once, by its outcome (see `RequestCounter`)."""
        return self.counter.track(protocol, model, version)

    async def infer(self, request: InferRequest) -> InferResponse:
        """Check the inputs against the signature, run the model, select the outputs."""
        if request_id.get() is None:  # no X-Request-ID: the OIP id, or a new one
            request_id.set(new_request_id(request.id))
        registry = self.registry
        rollout = None if request.version is not None else registry.rollouts.active(request.model)
        if rollout is not None:
            return await self._infer_in_rollout(request, rollout)
        loaded = registry.acquire_loaded(request.model, request.version)
        if loaded is None:
            loaded = await self._load(request.model, request.version)
        try:
            signature = loaded.signature
            signature.check_inputs(request.inputs)
            wanted = wanted_outputs(signature, request.outputs)
            deadline = None if request.timeout_s is None else time.monotonic() + request.timeout_s
            outputs = await loaded.batcher.predict(request.inputs, deadline=deadline)
        finally:
            registry.release(loaded)
        counted = tracked()
        if counted is not None:
            counted.answered(request.model, loaded.version)
        self.recent.note(request.model, request.inputs)
        recorder = registry.recorder
        if recorder.wants(request.model) and loaded.version == registry.resolve(
            request.model, None
        ):
            # The default's answers only: what a replay compares a version with.
            recorder.note(request.model, loaded.version, request_id.get(), request.inputs, outputs)
        return InferResponse(
            model=request.model,
            version=loaded.version,
            outputs={name: outputs[name] for name in wanted},
            id=request.id,
        )

    async def _load(self, model: str, version: int | None) -> LoadedVersion:
        """The version a request needs, loaded for it: refused at once unless it may be
        (an on-demand model, or `RequestLoads`); then one load at a time, on threads of its
        own (waiting requests hold none, and the management and health routes keep
        theirs), for at most `RequestLoads.wait_seconds`, then 503."""
        registry = self.registry
        wait = registry.request_loads.wait_seconds
        try:
            with anyio.fail_after(wait):
                while True:
                    resolved = registry.resolve(model, version)
                    registry.check_request_load(model, resolved)
                    await anyio.to_thread.run_sync(
                        registry.load_for_request,
                        model,
                        resolved,
                        limiter=self._loads,
                        abandon_on_cancel=True,
                    )
                    # Taken on the loop: a load left behind by a request that gave up
                    # holds no reference; one evicted meanwhile is loaded again.
                    loaded = registry.acquire_loaded(model, version)
                    if loaded is not None:
                        return loaded
        except TimeoutError:
            raise Unavailable(
                f"model '{model}' is loading and was not ready within {wait:g} s "
                "(load_wait_s); try again",
                field="model",
            ) from None

    async def _infer_in_rollout(self, request: InferRequest, stats: RolloutStats) -> InferResponse:
        """A request for a model whose candidate is proving itself: answered by the candidate
        (a canary's share) or the default, the other side run off the request path on the
        same inputs and compared; its figures noted per version."""
        rollouts = self.registry.rollouts
        rollouts.start()
        plan = stats.rollout
        chosen = pick(stats, request_headers.get())
        answering = plan.candidate if plan.mode == "canary" and chosen else plan.baseline
        held = self.registry.acquire_loaded(request.model, answering)
        if held is None:
            answering, chosen = plan.baseline, False  # the candidate is not loaded (yet)
        else:
            self.registry.release(held)
        started = time.perf_counter()
        try:
            response = await self.infer(replace(request, version=answering))
        except Exception as exc:  # a model's failure is any exception; a client's, not
            if not (isinstance(exc, TorchportError) and exc.code in CLIENT_ERRORS):
                stats.note(answering, time.perf_counter() - started, ok=False)
            raise
        stats.note(answering, time.perf_counter() - started, ok=True)
        if chosen:
            other = plan.baseline if answering == plan.candidate else plan.candidate
            rollouts.offload(lambda: self._compare(request, response, other, stats), stats)
        return response

    async def _compare(
        self, request: InferRequest, answered: InferResponse, other: int, stats: RolloutStats
    ) -> None:
        """Run the other side of a rollout on a request's inputs and compare the outputs."""
        loaded = self.registry.acquire_loaded(request.model, other)
        if loaded is None:
            return
        started = time.perf_counter()
        try:
            outputs = await loaded.batcher.predict(request.inputs)
        except Exception:
            if other == stats.rollout.candidate:  # a shadow's failure counts against it
                stats.note(other, time.perf_counter() - started, ok=False)
            raise
        finally:
            self.registry.release(loaded)
        if other == stats.rollout.candidate:
            stats.note(other, time.perf_counter() - started, ok=True)
            stats.compare(answered.outputs, outputs)
        else:
            stats.compare(outputs, answered.outputs)

    # -- what the protocols tell of the models ------------------------------------------

    async def resolve(self, model: str, version: int | None = None) -> int:
        """The version that serves a request; `NotFound` naming the model or version."""
        return self.registry.resolve(model, version)

    async def signature(self, model: str, version: int | None = None) -> Signature:
        return self.registry.signature(model, version)[1]

    async def version_named(self, model: str, name: str) -> int:
        info = self.registry.store.get_model(model)
        for version in info.versions:
            if torchserve_name(version) == name:
                return version.version
        raise NotFound(f"model '{model}' has no version {name}", field="version")

    async def metadata(self, model: str, version: int | None = None) -> ModelMetadata:
        resolved, signature = self.registry.signature(model, version)
        versions = (
            [version]
            if version is not None
            else [v.version for v in self.registry.store.get_model(model).versions]
        )
        return ModelMetadata(model, versions, resolved, signature)

    async def models(self) -> list[str]:
        """The names of every model in the store."""
        return [m.name for m in self.registry.store.list_models()]

    async def ready(self, model: str, version: int | None = None) -> bool:
        """Whether the version that serves `model` is loaded (`NotFound` if unknown)."""
        return self.registry.is_ready(model, version)

    async def server_ready(self) -> bool:
        return self.registry.server_ready()

    @property
    def draining(self) -> bool:
        return self.registry.draining

    async def metrics_text(self) -> bytes:
        return self.registry.metrics.exposition()


__all__ = [
    "DataPlane",
    "InferRequest",
    "InferResponse",
    "ModelMetadata",
    "VersionState",
    "timeout_parameter",
]
