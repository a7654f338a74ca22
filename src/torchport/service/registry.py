"""The registry of loaded model versions: loading them, counting the requests that hold
them, retiring them, and following the store's aliases.

Versions are loaded once and shared. A request takes a reference to the version it
resolved (the model's `default` unless it names one) for its whole life, so promote and
rollback switch new requests at once while requests in flight finish where they started;
an unloaded version is closed only when its last request is done.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field, replace
from typing import Any

from torchport.errors import NotFound, TorchportError, Unavailable
from torchport.observability.metrics import Metrics, VersionGauges
from torchport.runtime import Backend, Batcher, Deployment, Handler, LocalRunner, open_runner
from torchport.runtime.devices import Device, device_figures, place, visible_devices
from torchport.runtime.precision import Precision
from torchport.runtime.weights import give_back_memory
from torchport.service.inference import VersionState
from torchport.service.recording import Recorder, RecordingConfig
from torchport.service.residency import Policy, Residency, Resident
from torchport.service.rollouts import Rollouts
from torchport.store import ModelInfo, ModelStore, VersionInfo
from torchport.types import Signature

log = logging.getLogger("torchport.registry")

Key = tuple[str, int]  # model, version


@dataclass(eq=False)
class LoadedVersion:
    """A version in service: its deployment and the batcher in front of it."""

    model: str
    version: int
    runner: Deployment
    batcher: Batcher
    load_seconds: float
    inflight: int = 0
    retired: bool = False

    @property
    def resident_bytes(self) -> int:
        return int(getattr(self.runner, "resident_bytes", 0))

    @property
    def signature(self) -> Signature:
        return self.runner.signature

    def close(self) -> None:
        self.batcher.close()


@dataclass(frozen=True)
class RequestLoads:
    """Whether an inference request may load a version the server does not hold (one it
    names, or a default that failed), and how far: by default it may not, so only the
    management port changes what is loaded."""

    allowed: bool = False
    max_versions: int = 4
    """Versions loaded this way at once; past it, requests for others get 503."""
    retry_seconds: float = 30.0
    """After a failed load, requests get 503 for this long (doubling with each failure,
    up to 10 minutes) instead of loading it again."""
    wait_seconds: float = 30.0
    """How long a request waits for the load of the version it needs (an on-demand model
    not resident, or one `allowed` here) before it gets 503."""


@dataclass(frozen=True)
class _Failure:
    reason: str
    count: int
    retry_at: float


@dataclass
class _Routes:
    """Which version serves each model, and what is loaded (guarded by the registry's lock)."""

    loaded: dict[Key, LoadedVersion] = field(default_factory=dict)
    defaults: dict[str, int] = field(default_factory=dict)
    errors: dict[Key, _Failure] = field(default_factory=dict)
    on_request: set[Key] = field(default_factory=set)
    """Versions a request loaded (`RequestLoads`), until unloaded or made the default."""
    unloaded: set[str] = field(default_factory=set)
    """Models unloaded on purpose (OIP repository `unload`): they stay so until loaded."""
    pending: dict[str, int] = field(default_factory=dict)
    """Models whose default in the store is not the one served here yet (being loaded, or
    failing to): requests are served by the old default meanwhile, and the model reports
    not ready."""


class Registry:
    """The loaded versions of every model in a store."""

    def __init__(
        self,
        store: ModelStore,
        backend: Backend | None = None,
        metrics: Metrics | None = None,
        request_loads: RequestLoads | None = None,
        residency: Residency | None = None,
    ) -> None:
        self.store = store
        self.backend = backend or Backend()
        self.metrics = metrics or Metrics()
        self.request_loads = request_loads or RequestLoads()
        self.rollouts = Rollouts(store, changed=self._changed)
        """The models whose candidate version is proving itself on their traffic."""
        self.rollout_lock = threading.Lock()
        """Held while a rollout's state in the store and its following here change
        together (management's start and end, a refresh's re-read): a refresh's stale read
        never forgets a rollout just started here, nor follows one just ended."""
        self.metrics.watch_rollouts(lambda: [s.gauges() for s in self.rollouts.running()])
        self.recorder = Recorder(store.root / "recordings")
        """Samples of models' traffic written for replay."""
        for model, config in store.recordings().items():
            self.recorder.configure(model, RecordingConfig.model_validate(config))
        self._lock = threading.Lock()
        self._switching = threading.Lock()
        """Held while a default is set: a refresh's re-read of the store and its switch
        stay together, so a stale read never undoes a newer promote or rollback."""
        self._routes = _Routes()
        self._load_locks: dict[Key, threading.Lock] = {}
        self._configs: dict[Key, dict[str, Any]] = {}
        """The store's config of each loaded version as last applied here."""
        self.residency = residency or Residency()
        """What the loaded versions hold, and which to evict when a load needs room."""
        self._on_demand: set[str] = set()
        """Models whose default is `on_demand`: loaded by their first request, evictable."""
        self._listeners: list[Callable[[], None]] = []
        self.started = False
        self.draining = False
        """Set when the server is shutting down: it reports not ready from then on."""
        self.metrics.watch(self._gauges)
        self.metrics.watch_devices(device_figures)

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call `listener` (from any thread) after what serves a model may have changed:
        a version loaded or unloaded, a default switched. Front ends drop what they know."""
        self._listeners.append(listener)

    def _changed(self) -> None:
        for listener in self._listeners:
            listener()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self, progress: Callable[[str], None] | None = None) -> None:
        """Load the default (and previous, for instant rollback) version of every model.

        A version that fails to load is reported (state UNAVAILABLE) and the rest start.
        """
        for info in self.store.list_models():
            on_demand = self._note_policy(info)
            for version in (info.default, info.previous):
                if on_demand or version is None or (info.name, version) in self._routes.loaded:
                    continue
                try:
                    loaded = self._ensure_loaded(info.name, version)
                    if progress:
                        progress(f"loaded {info.name} v{version} in {loaded.load_seconds:.2f} s")
                except TorchportError as exc:
                    log.error("cannot load %s v%s: %s", info.name, version, exc)
            if on_demand and progress:
                progress(f"{info.name}: loaded on its first request (residency on_demand)")
            if info.default is not None:
                with self._lock:
                    self._routes.defaults[info.name] = info.default
        self.resume_rollouts(progress)
        self.started = True

    def resume_rollouts(self, progress: Callable[[str], None] | None = None) -> None:
        """Follow the rollouts the store says are running (a restart resumes them): their
        candidates loaded, their figures counted afresh."""
        for rollout in self.store.rollouts(running=True):
            if self.rollouts.active(rollout.model) is not None:
                continue
            try:
                self.preload(rollout.model, rollout.candidate)
                signature = self.signature(rollout.model, rollout.candidate)[1]
            except TorchportError as exc:
                log.error("cannot resume the rollout of %s: %s", rollout.model, exc)
                continue
            self.rollouts.follow(rollout, signature)
            if progress:
                progress(f"resumed the {rollout.mode} of {rollout.model} v{rollout.candidate}")

    def policy(self, info: VersionInfo) -> Policy:
        """A version's residency: its config, else its package's, else the server's."""
        named = info.config.get("residency") or info.metadata.get("runtime", {}).get("residency")
        return (
            "on_demand"
            if named == "on_demand"
            else ("always" if named == "always" else self.residency.default)
        )

    def on_demand(self, model: str) -> bool:
        """Whether the model's default is loaded on demand (and may be evicted)."""
        with self._lock:
            return model in self._on_demand

    def _note_policy(self, info: ModelInfo) -> bool:
        """Record whether the model's default is on demand; return it."""
        default = next((v for v in info.versions if v.version == info.default), None)
        on_demand = default is not None and self.policy(default) == "on_demand"
        with self._lock:
            if on_demand:
                self._on_demand.add(info.name)
            else:
                self._on_demand.discard(info.name)
        return on_demand

    def close(self) -> None:
        self.recorder.close()
        with self._lock:
            loaded = list(self._routes.loaded.values())
            self._routes.loaded.clear()
        for version in loaded:
            version.close()

    def refresh(self) -> None:
        """Follow what another process (another replica, `torchport store`) changed in the
        store: defaults (the new one loaded and warmed before requests switch to it), models
        and versions deleted, configs, rollouts and recordings."""
        models = {info.name: info for info in self.store.list_models()}
        with self._lock:
            held = set(self._routes.defaults) | {m for m, _ in self._routes.loaded}
        for name in held - models.keys():
            with suppress(NotFound):
                self.store.get_model(name)  # listed before an upload here committed
                continue
            log.info("%s was deleted from the store: no longer served", name)
            self.forget(name)
        for info in models.values():
            on_demand = self._note_policy(info)
            self._follow_versions(info)
            if info.default is None:
                continue
            with self._lock:
                if info.name in self._routes.unloaded:
                    continue
                known = self._routes.defaults.get(info.name)
                failure = self._routes.errors.get((info.name, info.default))
            with self._lock:
                if known == info.default:  # e.g. rolled back to what is served here
                    self._routes.pending.pop(info.name, None)
                    continue
                self._routes.pending[info.name] = info.default
            if failure is not None and time.monotonic() < failure.retry_at:
                continue  # tried and failed recently: not ready for the model meanwhile
            try:
                self._follow_store(info.name, info.default, load=not on_demand)
            except TorchportError as exc:
                log.error("cannot switch %s to v%s: %s", info.name, info.default, exc)
        self._follow_rollouts()
        self._follow_recordings(models)

    def _follow_versions(self, info: ModelInfo) -> None:
        """Versions deleted elsewhere are unloaded; configs changed elsewhere applied."""
        stored = {v.version: v for v in info.versions}
        with self._lock:
            loaded = [v for m, v in self._routes.loaded if m == info.name]
        for version in loaded:
            now = stored.get(version)
            if now is None:
                with suppress(NotFound):
                    self.store.get_version(info.name, version)
                    continue
                log.info("%s v%s was deleted from the store: unloaded", info.name, version)
                self.unload(info.name, version)
            elif self._configs.get((info.name, version)) != now.config:
                try:
                    self.apply_config(info.name, version)
                except TorchportError as exc:
                    log.error("cannot apply the config of %s v%s: %s", info.name, version, exc)

    def _follow_rollouts(self) -> None:
        with self.rollout_lock:
            running = {r.model for r in self.store.rollouts(running=True)}
            for stats in self.rollouts.running():
                if stats.rollout.model not in running:  # decided or stopped elsewhere
                    self.rollouts.forget(stats.rollout.model)
            self.resume_rollouts()

    def _follow_recordings(self, models: dict[str, ModelInfo]) -> None:
        stored = self.store.recordings()
        for model in models:
            config = stored.get(model)
            wanted = RecordingConfig.model_validate(config) if config is not None else None
            if self.recorder.config(model) != wanted:
                self.recorder.configure(model, wanted)

    def _follow_store(self, model: str, version: int, *, load: bool = True) -> None:
        """`switch_default` for a refresh, whose list of the store may predate a promote or
        rollback made here since (which has switched already): only the store's default
        now is set, and not for a model unloaded meanwhile. An on-demand model's new
        default is not loaded until a request asks for it."""
        if load:
            self._ensure_loaded(model, version)
        with self._switching, suppress(NotFound):
            current = self.store.get_model(model).default
            with self._lock:
                if current == version and model not in self._routes.unloaded:
                    self._routes.defaults[model] = version
                    self._routes.pending.pop(model, None)
        self._changed()

    # -- loading -------------------------------------------------------------------------

    def _ensure_loaded(self, model: str, version: int) -> LoadedVersion:
        key = (model, version)
        with self._lock:
            if key in self._routes.loaded:
                return self._routes.loaded[key]
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:  # one load per version, however many requests wait for it
            with self._lock:
                if key in self._routes.loaded:
                    return self._routes.loaded[key]
            info = self.store.get_version(model, version)
            policy = self.policy(info)
            self._make_room(key, self.residency.sizes.get(key, info.size), policy)
            started = time.perf_counter()
            try:
                runner = self._open(info)
                loaded = self._serve(info, runner, time.perf_counter() - started)
            except TorchportError as exc:
                # Deleted while it loaded (its package went with it): gone, not broken.
                self.store.get_version(model, version)
                with self._lock:
                    count = self._routes.errors[key].count + 1 if key in self._routes.errors else 1
                    wait = min(600.0, self.request_loads.retry_seconds * 2 ** (count - 1))
                    self._routes.errors[key] = _Failure(str(exc), count, time.monotonic() + wait)
                raise Unavailable(
                    f"model '{model}' version {version} failed to load: {exc}"
                ) from exc
            with self._lock:
                self._routes.loaded[key] = loaded
                self._routes.errors.pop(key, None)
                self.residency.admit(key, loaded.resident_bytes, policy)
            if policy == "on_demand":
                self.metrics.on_demand_loads.labels(model, str(version)).inc()
            self._make_room(key, 0, policy)  # the estimate may have been short
            log.info("loaded %s v%s in %.2f s", model, version, loaded.load_seconds)
            return loaded

    def _make_room(self, key: Key, needed: int, policy: Policy, *, wait: bool = True) -> None:
        """Evict idle on-demand versions, least recently used first, until `needed` more
        bytes fit `max_resident_bytes`. An on-demand load waits (up to the request-load
        bound) for versions in use to come free; an `always` one (or one that may not
        `wait`: a version uploaded here, already loaded) is kept regardless."""
        if self.residency.budget is None:
            return
        # Short of the request's own bound, so that the request hears why.
        deadline = time.monotonic() + 0.9 * self.request_loads.wait_seconds
        while True:
            with self._lock:
                idle = {k for k, v in self._routes.loaded.items() if v.inflight == 0 and k != key}
                victims = self.residency.victims(needed, idle)
                evicted = [self._routes.loaded.pop(k) for k in victims or []]
                for k in victims or []:
                    self.residency.drop(k)
                    self._routes.on_request.discard(k)
                for item in evicted:
                    item.retired = True
            if evicted:
                for item in evicted:
                    log.info("evicted %s v%s (least recently used)", item.model, item.version)
                    self.metrics.evictions.labels(item.model, str(item.version)).inc()
                    item.close()
                gc.collect()
                give_back_memory()
                self._changed()
            if victims is not None:
                return
            if policy == "always" or not wait:
                log.warning(
                    "%s v%s is loaded past max_resident_bytes (%d): the versions held are "
                    "in use or always resident",
                    *key,
                    self.residency.budget,
                )
                return
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"model '{key[0]}' version {key[1]} needs {needed:,} bytes and "
                    f"max_resident_bytes ({self.residency.budget:,}) is held by versions in "
                    "use; try again",
                    field="model",
                )
            time.sleep(0.02)

    def _open(self, info: VersionInfo) -> LocalRunner:
        compile = info.config.get("compile")  # None: as the package says
        device, precision = self._placement(info)
        return open_runner(
            self.store.package_path(info),
            self.backend.limits,
            compile=compile,
            weights_dir=self.backend.weights_dir,
            device=device,
            precision=precision,
        )

    def _placement(self, info: VersionInfo) -> tuple[Device, Precision]:
        need = self.residency.sizes.get((info.model, info.version), info.size)
        return self.placement(info.config, info.metadata.get("runtime", {}), need)

    def placement(
        self, config: dict[str, Any], runtime: dict[str, Any], need: int
    ) -> tuple[Device, Precision]:
        """Where and how a version runs: its config's `device` and `precision`, else its
        package's (`runtime`), else the server's device; the device chosen from what the
        GPUs report now, for `need` bytes."""
        wanted = config.get("device") or runtime.get("device") or self.backend.device
        precision: Precision = config.get("precision") or runtime.get("precision") or "fp32"
        devices = visible_devices() if wanted != "cpu" else []
        return place(wanted, need, devices, spread=config.get("devices")), precision

    def _serve(self, info: VersionInfo, runner: LocalRunner, load_seconds: float) -> LoadedVersion:
        """Deploy a runner loaded (and verified) here as its settings say, batcher in front."""
        model, version = info.model, info.version
        plan = self.backend.plan(self._settings(info, runner))
        labels = (model, str(version))
        deployment = self.backend.deploy(
            runner,
            self.store.package_path(info),
            model,
            version,
            plan.placement,
            on_restart=self.metrics.worker_restarts.labels(*labels).inc,
        )
        self.metrics.load_seconds.labels(*labels).set(load_seconds)
        with self._lock:
            self._configs[(model, version)] = dict(info.config)
        batcher = Batcher(
            deployment,
            plan.policy,
            self.backend.threads_for(deployment),
            self.metrics.observer(model, version),
            self.backend.timeout_for(deployment),
        )
        return LoadedVersion(model, version, deployment, batcher, load_seconds)

    @staticmethod
    def _settings(info: VersionInfo, runner: Deployment) -> dict[str, Any]:
        """The package's runtime defaults, overridden by the version's config in the store;
        a batch size neither sets is the device's default."""
        runtime = runner.manifest.runtime
        settings = {**runtime.model_dump(), **info.config}
        if settings.get("max_batch_size") is None:
            settings["max_batch_size"] = runtime.batch_size_on((_where(runner) or CPU_FP32)[0])
        return settings

    def apply_config(self, model: str, version: int) -> None:
        """Apply a version's changed config to live traffic (if it is loaded)."""
        with suppress(NotFound):
            self._note_policy(self.store.get_model(model))
        with self._lock:
            loaded = self._routes.loaded.get((model, version))
        if loaded is None:
            return
        info = self.store.get_version(model, version)
        with self._lock:
            self._configs[(model, version)] = dict(info.config)
        plan = self.backend.plan(self._settings(info, loaded.runner))
        compile = info.config.get("compile", loaded.runner.manifest.runtime.compile)
        # Thread workers change live; worker processes are started anew for a new count,
        # Ray replicas for a new count or autoscaling range; another device or precision
        # loads the version anew.
        where = _where(loaded.runner)
        device, precision = self._placement(info)
        same_place = where is None or where == (str(device), precision)
        if (
            plan.placement == loaded.runner.placement
            and compile == loaded.runner.compiled
            and same_place
        ):
            loaded.batcher.set_policy(plan.policy)
            return
        # Other workers, or compiled or not: load the version anew beside the old, then
        # swap (no request fails).
        started = time.perf_counter()
        runner = self._open(info)
        self._install(self._serve(info, runner, time.perf_counter() - started))

    def workers(self, model: str, version: int) -> dict[str, Any]:
        """The kind and number of a loaded version's workers, and their process ids."""
        with self._lock:
            loaded = self._routes.loaded.get((model, version))
        if loaded is None:
            return {}
        workers = loaded.runner.workers()
        device, precision = _where(loaded.runner) or CPU_FP32
        shown: dict[str, Any] = {
            "kind": workers.kind,
            "count": loaded.batcher.policy.workers if workers.count is None else workers.count,
            "pids": workers.pids,
            "compiled": loaded.runner.compiled,
            "device": device,
            "precision": precision,
        }
        if workers.most is not None:  # Ray: the replicas running now, within their range
            shown.update(min=workers.least, max=workers.most)
        return shown

    def preload(self, model: str, version: int) -> None:
        """Load a version now (e.g. before it is promoted), so no request waits for it."""
        self._ensure_loaded(model, version)
        with self._lock:
            self._routes.on_request.discard((model, version))

    def adopt(self, info: VersionInfo, runner: LocalRunner, load_seconds: float = 0.0) -> None:
        """Serve a version with an already loaded runner and route new requests to it."""
        self._install(self._serve(info, runner, load_seconds), make_default=True)

    def _install(self, loaded: LoadedVersion, *, make_default: bool = False) -> None:
        """Put `loaded` in service in place of any older copy, which retires when idle."""
        key = (loaded.model, loaded.version)
        info = self.store.get_version(*key)
        self._make_room(key, loaded.resident_bytes, self.policy(info), wait=False)
        with self._lock:
            old = self._routes.loaded.get(key)
            self._routes.loaded[key] = loaded
            self.residency.admit(key, loaded.resident_bytes, self.policy(info))
            if make_default:
                self._routes.defaults[loaded.model] = loaded.version
                self._routes.unloaded.discard(loaded.model)
                self._routes.pending.pop(loaded.model, None)
            close_old = old is not None and _retire(old)
        if make_default:
            with suppress(NotFound):
                self._note_policy(self.store.get_model(loaded.model))
        self._changed()
        if close_old and old is not None:
            old.close()

    def switch_default(self, model: str, version: int) -> None:
        """Route new requests for `model` to `version` (loaded first, so none fail)."""
        self._ensure_loaded(model, version)
        with suppress(NotFound):
            self._note_policy(self.store.get_model(model))
        with self._switching, self._lock:
            self._routes.defaults[model] = version
            self._routes.unloaded.discard(model)
            self._routes.on_request.discard((model, version))
            self._routes.pending.pop(model, None)
        self._changed()

    def unload(self, model: str, version: int | None = None) -> None:
        """Stop serving `model` (every version, or one); in-flight requests finish first."""
        with self._lock:
            routes = self._routes
            keys = [k for k in routes.loaded if k[0] == model and version in (None, k[1])]
            if version is None:
                routes.unloaded.add(model)
                routes.defaults.pop(model, None)
                routes.pending.pop(model, None)
            idle = [item for item in map(routes.loaded.pop, keys) if _retire(item)]
            routes.on_request.difference_update(keys)
            for key in keys:
                self.residency.drop(key)
        self._changed()
        for item in idle:
            item.close()

    def forget(self, model: str) -> None:
        """A model the store no longer has: nothing of it is served or remembered."""
        self.unload(model)
        with self._lock:
            self._routes.unloaded.discard(model)
            for key in [k for k in self._routes.errors if k[0] == model]:
                del self._routes.errors[key]
        self._changed()

    # -- requests ------------------------------------------------------------------------

    def resolve(self, model: str, version: int | None) -> int:
        """The version a request for `model` (and `version`, if given) is served by."""
        with self._lock:
            routes = self._routes
            if model in routes.unloaded:
                raise Unavailable(
                    f"model '{model}' is unloaded; load it with POST /v2/repository/models/"
                    f"{model}/load",
                    field="model",
                )
            # The hot path answers from memory; only the unknown goes to the store.
            if version is None and model in routes.defaults:
                return routes.defaults[model]
            if version is not None and (model, version) in routes.loaded:
                return version
        if version is None:
            # Unknown here: perhaps registered by another process since the last refresh.
            info = self.store.get_model(model)
            if info.default is None:
                raise NotFound(f"model '{model}' has no default version", field="model")
            return info.default
        self.store.get_version(model, version)  # NotFound names the model or the version
        return version

    def acquire(
        self, model: str, version: int | None = None, by_request: bool = True
    ) -> LoadedVersion:
        """The loaded version that serves a request, loading it if needed (blocking): for
        an inference request (`by_request`) only as `RequestLoads` allows, which
        `check_request_load` tells first without blocking.

        Hold it for the whole request and `release` it after.
        """
        loaded = self.acquire_loaded(model, version)
        while loaded is None:
            resolved = self.resolve(model, version)
            if not by_request:
                self.preload(model, resolved)
            else:
                self.check_request_load(model, resolved)
                self.load_for_request(model, resolved)
            loaded = self.acquire_loaded(model, version)
        return loaded

    def load_for_request(self, model: str, version: int) -> None:
        """Load a version a request needs (blocking; `check_request_load` first): an
        on-demand model's default, or a version `RequestLoads` lets requests load."""
        self._ensure_loaded(model, version)
        with self._lock:
            if self._routes.defaults.get(model) != version:
                self._routes.on_request.add((model, version))

    def check_request_load(self, model: str, version: int) -> None:
        """Raise `Unavailable` unless a request may load `version` now (`RequestLoads`)."""
        key = (model, version)
        policy = self.request_loads
        with self._lock:
            if key in self._routes.loaded:
                return
            failure = self._routes.errors.get(key)
            loaded_so = len(self._routes.on_request)
            # An on-demand model's default is loaded by the requests for it, whatever
            # `load_on_request` says.
            on_demand = model in self._on_demand and self._routes.defaults.get(model) == version
        allowed = policy.allowed or on_demand
        if failure is not None and (not allowed or time.monotonic() < failure.retry_at):
            wait = max(0.0, failure.retry_at - time.monotonic())
            retry = f"; the next try is in {wait:.0f} s" if allowed else ""
            raise Unavailable(
                f"model '{model}' version {version} failed to load: {failure.reason}{retry}",
                field="version",
            )
        if on_demand:
            return
        if not policy.allowed:
            raise Unavailable(
                f"model '{model}' version {version} is not loaded: promote it, or load it on "
                f"the management port (POST /models/{model}/versions/{version}/load)",
                field="version",
            )
        if loaded_so >= policy.max_versions:
            raise Unavailable(
                f"model '{model}' version {version} is not loaded, and requests have loaded "
                f"{loaded_so} versions already (max_loaded_on_request)",
                field="version",
            )

    def load(self, model: str, version: int) -> None:
        """Load a version on an operator's word (whatever failed before), and keep it."""
        self.store.get_version(model, version)  # NotFound names the model or the version
        with self._lock:
            self._routes.errors.pop((model, version), None)
        self.preload(model, version)

    def acquire_loaded(self, model: str, version: int | None) -> LoadedVersion | None:
        """`acquire` if the version is loaded already (never blocks on a load)."""
        resolved = self.resolve(model, version)
        with self._lock:
            loaded = self._routes.loaded.get((model, resolved))
            if loaded is not None:
                loaded.inflight += 1
                if self.residency.budget is not None:
                    self.residency.touch((model, resolved))
            return loaded

    def release(self, loaded: LoadedVersion) -> None:
        with self._lock:
            loaded.inflight -= 1
            close = loaded.retired and loaded.inflight == 0
        if close:
            loaded.close()

    def labels(self, model: str, version: int | None) -> tuple[str, int | None]:
        """The model and version as metric labels: those the server holds, else ""/None."""
        with self._lock:
            routes = self._routes
            if model not in routes.defaults and not any(m == model for m, _ in routes.loaded):
                return "", None
            if version is None:
                version = routes.defaults.get(model)
            return model, version if (model, version) in routes.loaded else None

    # -- state ---------------------------------------------------------------------------

    def signature(self, model: str, version: int | None = None) -> tuple[int, Signature]:
        """The signature of a version, from the store's record (no load needed)."""
        resolved = self.resolve(model, version)
        with self._lock:
            loaded = self._routes.loaded.get((model, resolved))
        if loaded is not None:
            return resolved, loaded.signature
        info = self.store.get_version(model, resolved)
        return resolved, Signature.model_validate(info.metadata["signature"])

    def is_ready(self, model: str, version: int | None = None) -> bool:
        """Whether the version (the default the store names, when None) is served here."""
        try:
            resolved = self.resolve(model, version)
        except Unavailable:
            return False
        with self._lock:
            if version is None and model in self._routes.pending:
                return False
            if (model, resolved) in self._routes.loaded:
                return True
            # An on-demand model is ready to load on a request unless its load failed.
            return (
                model in self._on_demand
                and self._routes.defaults.get(model) == resolved
                and (model, resolved) not in self._routes.errors
            )

    def server_ready(self) -> bool:
        with self._lock:
            routes = self._routes
            return (
                self.started
                and not self.draining
                and all(
                    key in routes.loaded
                    for key in routes.defaults.items()
                    if key[0] not in self._on_demand
                )
            )

    def placed(self, model: str, version: int) -> tuple[str, str] | None:
        """The device and precision of a loaded version (None when it is not loaded)."""
        with self._lock:
            loaded = self._routes.loaded.get((model, version))
        if loaded is None:
            return None
        return _where(loaded.runner) or CPU_FP32

    def residents(self) -> dict[Key, Resident]:
        """The loaded versions' memory accounts (copies)."""
        with self._lock:
            return {
                key: replace(held)
                for key in self.residency.order()
                if (held := self.residency.get(key)) is not None
            }

    def states(self) -> list[VersionState]:
        out = []
        for info in self.store.list_models():
            for v in info.versions:
                key = (info.name, v.version)
                with self._lock:
                    if key in self._routes.loaded:
                        out.append(VersionState(info.name, v.version, "READY"))
                    elif key in self._routes.errors:
                        reason = self._routes.errors[key].reason
                        out.append(VersionState(info.name, v.version, "UNAVAILABLE", reason))
                    else:
                        out.append(VersionState(info.name, v.version, "UNLOADED"))
        return out

    def _gauges(self) -> list[VersionGauges]:
        with self._lock:
            loaded = list(self._routes.loaded.values())
            held = {k: self.residency.get(k) for k in self._routes.loaded}
        out = []
        for v in loaded:
            resident = held.get((v.model, v.version))
            device, precision = _where(v.runner) or CPU_FP32
            live = v.runner.live_workers()
            handler = getattr(v.runner, "handler", None)  # a version run in this process
            recorded = handler.recorded_metrics() if isinstance(handler, Handler) else []
            out.append(
                VersionGauges(
                    v.model,
                    v.version,
                    v.batcher.queued,
                    v.batcher.running,
                    v.runner.placement.kind,
                    v.batcher.policy.workers if live is None else live,
                    tuple(recorded),
                    resident_bytes=v.resident_bytes,
                    last_used=resident.last_used if resident else 0.0,
                    residency=resident.policy if resident else "always",
                    device=device,
                    precision=precision,
                )
            )
        return out


CPU_FP32 = ("cpu", "fp32")


def _where(runner: Deployment) -> tuple[str, str] | None:
    """The device and precision a deployment runs its model in; None where it does not
    say (Ray replicas place themselves)."""
    device = getattr(runner, "device", None)
    if device is None:
        return None
    return str(device), str(getattr(runner, "precision", "fp32"))


def _retire(item: LoadedVersion) -> bool:
    """Mark a version out of service (under the registry's lock); True if it can close now."""
    item.retired = True
    return item.inflight == 0
