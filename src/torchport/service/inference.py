"""Inference: find the model and version, run it, keep track of what is loaded.

Transport-neutral: requests and responses are named numpy arrays. Every protocol (OIP v2
REST and gRPC, KServe v1, the TorchServe-compatible routes) calls `infer` here.

Versions are loaded once and shared. A request takes a reference to the version it
resolved (the model's `default` unless it names one) for its whole life, so promote and
rollback switch new requests at once while requests in flight finish where they started;
an unloaded version is closed only when its last request is done.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from torchport.errors import InvalidInput, NotFound, TorchportError, Unavailable
from torchport.runtime import (
    BatchingRunner,
    BatchObserver,
    BatchPolicy,
    LocalRunner,
    PackageRunner,
    ProcessPoolRunner,
    ThreadBudget,
    open_runner,
)
from torchport.service.compare import RECENT_MAX_BYTES, RECENT_REQUESTS, compare_versions
from torchport.service.logs import new_request_id, request_id, requests_log
from torchport.service.metrics import Metrics, VersionGauges
from torchport.settings import Limits
from torchport.store import ModelStore, VersionInfo
from torchport.types import Signature, Tensors

if TYPE_CHECKING:  # ray is imported only by a server on the Ray backend
    from torchport.runtime.ray_backend import Scaling

log = logging.getLogger("torchport.inference")


@dataclass(frozen=True)
class InferRequest:
    model: str
    inputs: Tensors
    version: int | None = None
    outputs: list[str] | None = None
    """Names of the outputs wanted, in order; all of them when None."""
    id: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    protocol: str = "python"
    """The protocol the request came in by (a metrics label)."""
    timeout_s: float | None = None
    """Drop the request (`DeadlineExceeded`) if it cannot be served within this time."""


def timeout_parameter(parameters: dict[str, Any]) -> float | None:
    """Seconds from the Open Inference Protocol's `timeout` parameter (µs), if given."""
    micros = parameters.get("timeout")
    if micros is None:
        return None
    if not isinstance(micros, int | float) or isinstance(micros, bool) or micros <= 0:
        raise InvalidInput("parameter 'timeout' must be a positive number of µs", field="timeout")
    return float(micros) / 1_000_000


@dataclass(frozen=True)
class InferResponse:
    model: str
    version: int
    outputs: Tensors
    id: str | None = None


@dataclass(eq=False)
class LoadedVersion:
    model: str
    version: int
    runner: PackageRunner
    load_seconds: float
    threads: ThreadBudget | None = None
    compiled: bool = False
    observer: BatchObserver | None = None
    batcher: BatchingRunner = field(init=False)
    inflight: int = 0
    retired: bool = False

    def __post_init__(self) -> None:
        self.batcher = BatchingRunner(self.runner, BatchPolicy(), self.threads, self.observer)

    @property
    def signature(self) -> Signature:
        return self.runner.signature

    def close(self) -> None:
        self.batcher.close()


@dataclass(frozen=True)
class VersionState:
    model: str
    version: int
    state: str  # READY, UNAVAILABLE, UNLOADED
    reason: str = ""


class InferenceService:
    """The loaded versions of every model in a store, and the requests they serve."""

    def __init__(
        self,
        store: ModelStore,
        limits: Limits | None = None,
        *,
        cores: int = 1,
        torch_threads: int = 0,
        backend: str = "local",
    ) -> None:
        self.store = store
        self.backend = backend
        """`local` (threads or worker processes here) or `ray` (Ray Serve deployments)."""
        self.limits = limits or Limits()
        self.torch_threads = torch_threads
        """Intra-op threads of a batch under load (0: torch's settings are left alone)."""
        self.threads = ThreadBudget(cores, torch_threads) if torch_threads else None
        self.default_workers = max(1, cores // (torch_threads or cores))
        """Workers of a version whose package and config leave the number open."""
        self._lock = threading.Lock()
        self._switching = threading.Lock()
        """Held while a default is set: a refresh's re-read of the store and its switch
        stay together, so a stale read never undoes a newer promote or rollback."""
        self._loaded: dict[tuple[str, int], LoadedVersion] = {}
        self._defaults: dict[str, int] = {}
        self._errors: dict[tuple[str, int], str] = {}
        self._unloaded: set[str] = set()
        self._load_locks: dict[tuple[str, int], threading.Lock] = {}
        self.started = False
        self.draining = False
        """Set when the server is shutting down: it reports not ready from then on."""
        self.metrics = Metrics()
        self.metrics.watch(self._gauges)
        self._recent: dict[str, deque[Tensors]] = {}

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, progress: Callable[[str], None] | None = None) -> None:
        """Load the default (and previous, for instant rollback) version of every model.

        A version that fails to load is reported (state UNAVAILABLE) and the rest start.
        """
        for info in self.store.list_models():
            for version in (info.default, info.previous):
                if version is None or (info.name, version) in self._loaded:
                    continue
                try:
                    loaded = self._ensure_loaded(info.name, version)
                    if progress:
                        progress(f"loaded {info.name} v{version} in {loaded.load_seconds:.2f} s")
                except TorchportError as exc:
                    log.error("cannot load %s v%s: %s", info.name, version, exc)
            if info.default is not None:
                with self._lock:
                    self._defaults[info.name] = info.default
        self.started = True

    def close(self) -> None:
        with self._lock:
            loaded = list(self._loaded.values())
            self._loaded.clear()
        for version in loaded:
            version.close()

    def refresh(self) -> None:
        """Re-read the aliases from the store (it may be changed by another process)."""
        for info in self.store.list_models():
            if info.default is None:
                continue
            with self._lock:
                if info.name in self._unloaded:  # unloaded on purpose: stays so until loaded
                    continue
                known = self._defaults.get(info.name)
            if known != info.default:
                try:
                    self._follow_store(info.name, info.default)
                except TorchportError as exc:
                    log.error("cannot switch %s to v%s: %s", info.name, info.default, exc)

    def _follow_store(self, model: str, version: int) -> None:
        """`switch_default` for a refresh, whose list of the store may predate a promote or
        rollback made here since (which has switched already): only the store's default
        now is set, and not for a model unloaded meanwhile."""
        self._ensure_loaded(model, version)
        with self._switching, suppress(NotFound):
            current = self.store.get_model(model).default
            with self._lock:
                if current == version and model not in self._unloaded:
                    self._defaults[model] = version

    # -- loading -------------------------------------------------------------------------

    def _ensure_loaded(self, model: str, version: int) -> LoadedVersion:
        key = (model, version)
        with self._lock:
            if key in self._loaded:
                return self._loaded[key]
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:  # one load per version, however many requests wait for it
            with self._lock:
                if key in self._loaded:
                    return self._loaded[key]
            info = self.store.get_version(model, version)
            started = time.perf_counter()
            try:
                runner = self._open(info)
            except TorchportError as exc:
                with self._lock:
                    self._errors[key] = str(exc)
                raise Unavailable(
                    f"model '{model}' version {version} failed to load: {exc}"
                ) from exc
            loaded = self._new_loaded(model, version, runner, time.perf_counter() - started)
            with self._lock:
                self._loaded[key] = loaded
                self._errors.pop(key, None)
            log.info("loaded %s v%s in %.2f s", model, version, loaded.load_seconds)
            return loaded

    def _open(self, info: VersionInfo) -> LocalRunner:
        compile = info.config.get("compile")  # None: as the package says
        return open_runner(self.store.package_path(info), self.limits, compile=compile)

    def _new_loaded(
        self, model: str, version: int, runner: LocalRunner, load_seconds: float
    ) -> LoadedVersion:
        policy, scaling = self._plan(self._settings(model, version, runner))
        serving: PackageRunner = runner
        threads = self.threads
        labels = (model, str(version))
        if scaling is not None:
            from torchport.runtime.ray_backend import RayServeRunner

            threads = None  # the replicas run the model, each with its own threads
            path = self.store.package_path(self.store.get_version(model, version))
            serving = RayServeRunner(
                path,
                model,
                version,
                scaling,
                self.limits,
                torch_threads=self.torch_threads,
                compile=runner.compiled,
            )
            runner.close()
        elif policy.worker_kind == "process":
            threads = None  # each worker process sets its own
            # The in-process load verified the package; the workers each load their own.
            path = self.store.package_path(self.store.get_version(model, version))
            serving = ProcessPoolRunner(
                path,
                self.limits,
                policy.workers,
                self.torch_threads,
                compile=runner.compiled,
                on_restart=self.metrics.worker_restarts.labels(*labels).inc,
            )
            runner.close()
        self.metrics.load_seconds.labels(*labels).set(load_seconds)
        loaded = LoadedVersion(
            model,
            version,
            serving,
            load_seconds,
            threads,
            runner.compiled,
            self.metrics.observer(model, version),
        )
        loaded.batcher.set_policy(policy)
        return loaded

    def _settings(self, model: str, version: int, runner: PackageRunner) -> dict[str, Any]:
        """The package's runtime defaults, overridden by the version's config in the store."""
        settings = runner.manifest.runtime.model_dump()
        with suppress(NotFound):
            settings.update(self.store.get_version(model, version).config)
        if settings["workers"] is None:
            settings["workers"] = self.default_workers
        return settings

    def _plan(self, settings: dict[str, Any]) -> tuple[BatchPolicy, Scaling | None]:
        """The batcher's policy; on Ray also the replicas' scaling, with as many batches in
        flight as there may be replicas."""
        policy = _policy(settings)
        if self.backend != "ray":
            return policy, None
        from torchport.runtime.ray_backend import Scaling

        scaling = Scaling.of(settings, policy.workers)
        return replace(policy, workers=scaling.most), scaling

    def apply_config(self, model: str, version: int) -> None:
        """Apply a version's changed config to live traffic (if it is loaded)."""
        with self._lock:
            loaded = self._loaded.get((model, version))
        if loaded is None:
            return
        policy, scaling = self._plan(self._settings(model, version, loaded.runner))
        current = loaded.batcher.policy
        info = self.store.get_version(model, version)
        compile = info.config.get("compile", loaded.runner.manifest.runtime.compile)
        # Thread workers change live; worker processes are started anew for a new count,
        # Ray replicas for a new count or autoscaling range.
        if scaling is not None:
            same_workers = scaling == getattr(loaded.runner, "scaling", None)
        else:
            same_workers = policy.worker_kind == current.worker_kind and (
                policy.worker_kind == "thread" or policy.workers == current.workers
            )
        if same_workers and compile == loaded.compiled:
            loaded.batcher.set_policy(policy)
            return
        # Other workers, or compiled or not: load the version anew beside the old, then
        # swap (no request fails).
        started = time.perf_counter()
        runner = self._open(info)
        self._install(self._new_loaded(model, version, runner, time.perf_counter() - started))

    def workers(self, model: str, version: int) -> dict[str, Any]:
        """The kind and number of a loaded version's workers, and their process ids."""
        with self._lock:
            loaded = self._loaded.get((model, version))
        if loaded is None:
            return {}
        policy = loaded.batcher.policy
        pids: list[int] = getattr(loaded.runner, "pids", [])  # worker processes, Ray replicas
        shown: dict[str, Any] = {
            "kind": "ray" if self.backend == "ray" else policy.worker_kind,
            "count": policy.workers,
            "pids": pids,
            "compiled": loaded.compiled,
        }
        scaling = getattr(loaded.runner, "scaling", None)
        if scaling is not None:  # Ray: the replicas running now, within their range
            live = getattr(loaded.runner, "replicas", 0)
            shown.update(count=live, min=scaling.replicas, max=scaling.most)
        return shown

    def preload(self, model: str, version: int) -> None:
        """Load a version now (e.g. before it is promoted), so no request waits for it."""
        self._ensure_loaded(model, version)

    def adopt(
        self, model: str, version: int, runner: LocalRunner, load_seconds: float = 0.0
    ) -> None:
        """Serve `version` with an already loaded runner and route new requests to it."""
        self._install(self._new_loaded(model, version, runner, load_seconds), make_default=True)

    def _install(self, loaded: LoadedVersion, *, make_default: bool = False) -> None:
        """Put `loaded` in service in place of any older copy, which retires when idle."""
        key = (loaded.model, loaded.version)
        with self._lock:
            old = self._loaded.get(key)
            self._loaded[key] = loaded
            if make_default:
                self._defaults[loaded.model] = loaded.version
                self._unloaded.discard(loaded.model)
            close_old = old is not None and self._retire(old)
        if close_old and old is not None:
            old.close()

    def switch_default(self, model: str, version: int) -> None:
        """Route new requests for `model` to `version` (loaded first, so none fail)."""
        self._ensure_loaded(model, version)
        with self._switching, self._lock:
            self._defaults[model] = version
            self._unloaded.discard(model)

    def load_model(self, model: str) -> None:
        """OIP repository `load`: (re)load the model's default version and serve it."""
        info = self.store.get_model(model)
        if info.default is None:
            raise NotFound(f"model '{model}' has no default version", field="model")
        self.switch_default(model, info.default)

    def unload(self, model: str, version: int | None = None) -> None:
        """Stop serving `model` (every version, or one); in-flight requests finish first."""
        with self._lock:
            keys = [k for k in self._loaded if k[0] == model and version in (None, k[1])]
            if version is None:
                self._unloaded.add(model)
                self._defaults.pop(model, None)
            idle = [item for item in map(self._loaded.pop, keys) if self._retire(item)]
        for item in idle:
            item.close()

    @staticmethod
    def _retire(item: LoadedVersion) -> bool:
        """Mark a version out of service (under the lock); True if it can close now."""
        item.retired = True
        return item.inflight == 0

    # -- requests ------------------------------------------------------------------------

    def resolve(self, model: str, version: int | None) -> int:
        """The version a request for `model` (and `version`, if given) is served by."""
        with self._lock:
            if model in self._unloaded:
                raise Unavailable(
                    f"model '{model}' is unloaded; load it with POST /v2/repository/models/"
                    f"{model}/load",
                    field="model",
                )
            # The hot path answers from memory; only the unknown goes to the store.
            if version is None and model in self._defaults:
                return self._defaults[model]
            if version is not None and (model, version) in self._loaded:
                return version
        if version is None:
            # Unknown here: perhaps registered by another process since the last refresh.
            info = self.store.get_model(model)
            if info.default is None:
                raise NotFound(f"model '{model}' has no default version", field="model")
            return info.default
        self.store.get_version(model, version)  # NotFound names the model or the version
        return version

    def acquire(self, model: str, version: int | None = None) -> LoadedVersion:
        """The loaded version that serves a request, loading it if needed (blocking).

        Hold it for the whole request and `release` it after.
        """
        loaded = self._acquire_loaded(model, version)
        while loaded is None:
            self._ensure_loaded(model, self.resolve(model, version))
            loaded = self._acquire_loaded(model, version)
        return loaded

    def _acquire_loaded(self, model: str, version: int | None) -> LoadedVersion | None:
        resolved = self.resolve(model, version)
        with self._lock:
            loaded = self._loaded.get((model, resolved))
            if loaded is not None:
                loaded.inflight += 1
            return loaded

    def release(self, loaded: LoadedVersion) -> None:
        with self._lock:
            loaded.inflight -= 1
            close = loaded.retired and loaded.inflight == 0
        if close:
            loaded.close()

    async def infer(self, request: InferRequest) -> InferResponse:
        """Check the inputs against the signature, run the model, select the outputs."""
        started = time.perf_counter()
        if request_id.get() is None:  # no X-Request-ID: the OIP id, or a new one
            request_id.set(new_request_id(request.id))
        try:
            response = await self._infer(request)
        except TorchportError as exc:
            self._count(request.model, request.version, request.protocol, exc.code, started)
            exc.counted = True
            raise
        self._count(request.model, response.version, request.protocol, "ok", started, known=True)
        self._remember(request)
        return response

    def _remember(self, request: InferRequest) -> None:
        # A sample of recent traffic, to compare versions on (small requests only).
        size = sum(a.nbytes for a in request.inputs.values() if a.dtype != object)
        if size <= RECENT_MAX_BYTES:
            with self._lock:
                self._recent.setdefault(request.model, deque(maxlen=RECENT_REQUESTS)).append(
                    request.inputs
                )

    async def compare(self, model: str, a: int, b: int) -> dict[str, Any]:
        """Run versions `a` and `b` on the model's recent requests and say how their outputs
        and latencies differ."""
        with self._lock:
            samples = list(self._recent.get(model, ()))
        if not samples:
            raise InvalidInput(
                f"model '{model}' has no recent requests to compare versions on", field="model"
            )
        first = await anyio.to_thread.run_sync(self.acquire, model, a)
        try:
            second = await anyio.to_thread.run_sync(self.acquire, model, b)
        except BaseException:
            self.release(first)
            raise
        try:
            return await compare_versions(model, first, second, samples)
        finally:
            self.release(first)
            self.release(second)

    def refused(self, model: str, version: int | None, protocol: str, exc: TorchportError) -> None:
        """Count a request a transport refused before it reached `infer` (once)."""
        if not exc.counted:
            self._count(model, version, protocol, exc.code, time.perf_counter())
            exc.counted = True

    def _count(
        self,
        model: str,
        version: int | None,
        protocol: str,
        outcome: str,
        started: float,
        *,
        known: bool = False,
    ) -> None:
        # Labels stay bounded: a model or version the server does not hold is counted as
        # "" (an answered request's model and version are `known`: no lookups per request).
        if not known:
            model, version = self._bounded(model, version)
        labels = (model, "" if version is None else str(version), protocol)
        seconds = time.perf_counter() - started
        self.metrics.requests.labels(*labels, outcome).inc()
        self.metrics.request_seconds.labels(*labels).observe(seconds)
        if requests_log.isEnabledFor(logging.INFO):
            requests_log.info(
                "request",
                extra={
                    "request_id": request_id.get(),
                    "model": labels[0],
                    "version": labels[1],
                    "protocol": protocol,
                    "outcome": outcome,
                    "duration_ms": round(seconds * 1000, 3),
                },
            )

    def _bounded(self, model: str, version: int | None) -> tuple[str, int | None]:
        """The model and version as labels: those the server holds, else ""/None."""
        with self._lock:
            if model not in self._defaults and not any(m == model for m, _ in self._loaded):
                return "", None
            if version is None:
                version = self._defaults.get(model)
            return model, version if (model, version) in self._loaded else None

    def _gauges(self) -> list[VersionGauges]:
        with self._lock:
            loaded = list(self._loaded.values())
        out = []
        for v in loaded:
            policy = v.batcher.policy
            workers = (
                len(v.runner.pids) if isinstance(v.runner, ProcessPoolRunner) else policy.workers
            )
            out.append(
                VersionGauges(
                    v.model,
                    v.version,
                    v.batcher.queued,
                    v.batcher.running,
                    policy.worker_kind,
                    workers,
                )
            )
        return out

    async def _infer(self, request: InferRequest) -> InferResponse:
        loaded = self._acquire_loaded(request.model, request.version)
        if loaded is None:  # the first request for a version loads it, off the event loop
            loaded = await anyio.to_thread.run_sync(self.acquire, request.model, request.version)
        try:
            signature = loaded.signature
            signature.check_inputs(request.inputs)
            wanted = self._wanted_outputs(signature, request.outputs)
            deadline = None if request.timeout_s is None else time.monotonic() + request.timeout_s
            outputs = await loaded.batcher.predict(request.inputs, deadline=deadline)
        finally:
            self.release(loaded)
        return InferResponse(
            model=request.model,
            version=loaded.version,
            outputs={name: outputs[name] for name in wanted},
            id=request.id,
        )

    @staticmethod
    def _wanted_outputs(signature: Signature, requested: list[str] | None) -> list[str]:
        names = [s.name for s in signature.outputs]
        if requested is None:
            return names
        for name in requested:
            if name not in names:
                raise InvalidInput(
                    f"unknown output '{name}' (outputs: {', '.join(names)})", field=name
                )
        return list(dict.fromkeys(requested))

    # -- state ---------------------------------------------------------------------------

    def signature(self, model: str, version: int | None = None) -> tuple[int, Signature]:
        """The signature of a version, from the store's record (no load needed)."""
        resolved = self.resolve(model, version)
        with self._lock:
            loaded = self._loaded.get((model, resolved))
        if loaded is not None:
            return resolved, loaded.signature
        info = self.store.get_version(model, resolved)
        return resolved, Signature.model_validate(info.metadata["signature"])

    def is_ready(self, model: str, version: int | None = None) -> bool:
        try:
            resolved = self.resolve(model, version)
        except Unavailable:
            return False
        with self._lock:
            return (model, resolved) in self._loaded

    def server_ready(self) -> bool:
        with self._lock:
            return (
                self.started
                and not self.draining
                and all(
                    (model, version) in self._loaded for model, version in self._defaults.items()
                )
            )

    def states(self) -> list[VersionState]:
        out = []
        for info in self.store.list_models():
            for v in info.versions:
                key = (info.name, v.version)
                with self._lock:
                    if key in self._loaded:
                        out.append(VersionState(info.name, v.version, "READY"))
                    elif key in self._errors:
                        out.append(
                            VersionState(info.name, v.version, "UNAVAILABLE", self._errors[key])
                        )
                    else:
                        out.append(VersionState(info.name, v.version, "UNLOADED"))
        return out


def _policy(settings: dict[str, Any]) -> BatchPolicy:
    return BatchPolicy(**{f.name: settings[f.name] for f in fields(BatchPolicy)})
