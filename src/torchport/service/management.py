"""Management: registering packages as versions, promote, rollback, delete, config, what
the repository holds, comparing two versions, and the Open Inference Protocol's model
repository extension (index, load, unload).

An upload is verified completely before anything is registered: sizes, names and hashes,
then the model is loaded and its bundled examples must reproduce their recorded outputs.
A refused package leaves the store exactly as it was. With a `Registry` (on a server),
changes take effect on live traffic: a version is loaded before any request is routed to
it.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

import anyio.to_thread
from pydantic import ValidationError

from torchport.archive import Manifest, RuntimeDefaults, check_model_name, read_manifest
from torchport.archive.hashing import sha256_file
from torchport.archive.manifest import describe_validation_error
from torchport.archive.signing import TrustedKey, check_signature
from torchport.errors import (
    Conflict,
    InvalidInput,
    ModelLoadError,
    NotFound,
    PackageError,
    TooLarge,
    TorchportError,
    out_of_space,
)
from torchport.runtime import LocalRunner, check_examples, open_runner
from torchport.runtime.devices import CPU, device_figures
from torchport.runtime.precision import Precision
from torchport.scratch import scratch
from torchport.service.compare import RecentRequests, compare_versions
from torchport.service.inference import VersionState
from torchport.service.recording import RecordingConfig
from torchport.service.registry import Registry
from torchport.service.replay import read_records, recorded_files, replay
from torchport.service.rollouts import RolloutSpec, measures
from torchport.settings import Limits
from torchport.store import AuditEntry, ModelInfo, ModelStore, Rollout, VersionInfo
from torchport.types import Signature

log = logging.getLogger("torchport.management")


@dataclass(frozen=True)
class UploadReport:
    version: VersionInfo
    manifest: Manifest
    load_seconds: float
    default: int | None


P = ParamSpec("P")
R = TypeVar("R")


def _counted(
    operation: str,
) -> Callable[[Callable[Concatenate[Management, P], R]], Callable[Concatenate[Management, P], R]]:
    """Count the operation in the server's metrics, by outcome (ok or the error code)."""

    def wrap(
        method: Callable[Concatenate[Management, P], R],
    ) -> Callable[Concatenate[Management, P], R]:
        def counted(self: Management, /, *args: P.args, **kwargs: P.kwargs) -> R:
            metrics = self.registry.metrics if self.registry is not None else None
            try:
                result = method(self, *args, **kwargs)
            except TorchportError as exc:
                if metrics is not None:
                    metrics.management.labels(operation, exc.code).inc()
                raise
            if metrics is not None:
                metrics.management.labels(operation, "ok").inc()
            return result

        counted.__name__, counted.__doc__ = method.__name__, method.__doc__
        return counted

    return wrap


class Management:
    """Changes to the model repository, each verified and audited."""

    def __init__(
        self,
        store: ModelStore,
        limits: Limits | None = None,
        registry: Registry | None = None,
        recent: RecentRequests | None = None,
        trusted: Sequence[TrustedKey] = (),
    ) -> None:
        self.store = store
        self.limits = limits or Limits()
        self.registry = registry
        self.recent = recent
        """The traffic versions are compared on (the data plane notes it)."""
        self.trusted = list(trusted)
        """When any: only packages signed by one of these keys are taken."""
        if registry is not None:
            registry.rollouts.decide = self._decided

    @_counted("upload")
    def upload(
        self,
        package: Path,
        *,
        name: str | None = None,
        promote: bool = False,
        actor: str = "local",
        labels: Mapping[str, str] | None = None,
    ) -> UploadReport:
        """Verify `package` (hashes, load, examples) and register it as the next version.

        `name` registers it under another name than its manifest's. The model's first
        version, or any with `promote`, becomes its default (and, on a server, live).
        `labels` are kept with the version (e.g. the TorchServe version it was registered as).
        """
        if name is not None:
            check_model_name(name)
        with scratch("upload") as tmp:
            # What is verified is a private copy, and that same copy is what gets stored.
            private = tmp / "package.tpa"
            _copy_limited(package, private, self.limits.max_package_bytes)
            if self.trusted:  # before anything in it runs: loading a package runs its code
                signer = check_signature(private, self.trusted)
                log.info("upload signed by trusted key %s", signer)
            started = time.perf_counter()
            # On a server, mapped from the shared weights copy: the runner it keeps (adopt)
            # shares pages with the version's other copies.
            weights = self.registry.backend.weights_dir if self.registry is not None else None
            device, precision = (
                self.registry.placement({}, read_manifest(private).runtime.model_dump(), 0)
                if self.registry is not None
                else (CPU, None)
            )
            # Loaded where and how it will run: its examples are checked there, in its
            # precision (a reduced one within that precision's tolerance).
            runner: LocalRunner | None = open_runner(
                private,
                self.limits,
                warm_up=False,
                weights_dir=weights,
                device=device,
                precision=precision,
            )
            try:
                assert runner is not None
                manifest = runner.manifest
                _refuse_failed_export(manifest)
                problems = check_examples(runner)
                if problems:
                    raise ModelLoadError(
                        f"package '{manifest.name}' does not reproduce its own example: "
                        f"{problems[0]}"
                    )
                load_seconds = time.perf_counter() - started
                model = name or manifest.name
                info = self.store.add_version(
                    model,
                    private,
                    metadata=_metadata(manifest, labels),
                    actor=actor,
                    promote=promote,
                )
                default = self.store.get_model(model).default
                if self.registry is not None and default == info.version:
                    # The verified runner goes live as it is: no second load.
                    self.registry.adopt(info, runner, load_seconds)
                    runner = None
            finally:
                if runner is not None:
                    runner.close()
        return UploadReport(
            version=info, manifest=manifest, load_seconds=load_seconds, default=default
        )

    def upload_if_new(self, package: Path, *, actor: str = "local") -> UploadReport | None:
        """Register `package` unless its model already has a version with the same bytes."""
        digest = sha256_file(package)
        for info in self.store.list_models():
            if any(v.digest == digest for v in info.versions):
                return None
        return self.upload(package, actor=actor)

    @_counted("promote")
    def promote(self, name: str, version: int, *, actor: str = "local") -> ModelInfo:
        self.store.get_version(name, version)
        if self.registry is not None:
            self.registry.preload(name, version)
        info = self.store.promote(name, version, actor=actor)
        self._go_live(info)
        self._end_rollout_by_hand(name, version, actor)
        return info

    @_counted("rollback")
    def rollback(self, name: str, *, actor: str = "local") -> ModelInfo:
        previous = self.store.get_model(name).previous
        if self.registry is not None and previous is not None:
            self.registry.preload(name, previous)
        info = self.store.rollback(name, actor=actor)
        self._go_live(info)
        self._end_rollout_by_hand(name, None, actor)
        return info

    # -- rollouts ------------------------------------------------------------------------

    @_counted("rollout")
    def start_rollout(self, name: str, body: Any, *, actor: str = "local") -> Rollout:
        """Start a rollout of a candidate version (`RolloutSpec`): it is loaded, then takes
        its share of the model's traffic. 400 naming the field for a bad spec, a candidate
        with another signature, or a rule on an output that does not exist; 409 for a
        second rollout."""
        spec = RolloutSpec.parse(body)
        info = self.store.get_model(name)
        candidate = self.store.get_version(name, spec.candidate)
        if info.default is None:
            raise Conflict(f"model '{name}' has no default to compare with", field="model")
        default = self.store.get_version(name, info.default)
        signature = Signature.model_validate(candidate.metadata.get("signature"))
        if candidate.metadata.get("signature") != default.metadata.get("signature"):
            raise InvalidInput(
                f"version {spec.candidate} of '{name}' has another signature than the default "
                f"(version {info.default}): a rollout compares versions that take the same "
                "requests",
                field="candidate",
            )
        if spec.rules is not None:
            measures(signature, spec.rules.outputs)  # a rule on an unknown output is a 400
        running = self.store.rollouts(name, running=True)
        if running:
            raise Conflict(
                f"model '{name}' has a rollout running already (of version "
                f"{running[0].candidate}): end it first",
                field="model",
            )
        if self.registry is not None:
            self.registry.preload(name, spec.candidate)
        with self._rollout_change():
            rollout = self.store.start_rollout(
                name,
                candidate=spec.candidate,
                mode=spec.mode,
                share=spec.share,
                sticky_header=spec.sticky_header,
                rules=spec.rules.model_dump() if spec.rules is not None else {},
                actor=actor,
            )
            if self.registry is not None:
                self.registry.rollouts.follow(rollout, signature)
        return rollout

    def _rollout_change(self) -> AbstractContextManager[object]:
        """The registry's rollout lock (a store write and the following of it, together)."""
        return self.registry.rollout_lock if self.registry is not None else nullcontext()

    def rollout(self, name: str) -> dict[str, Any]:
        """The model's rollout (running, else the last one) and its figures."""
        self.store.get_model(name)
        found = self.store.rollouts(name)
        if not found:
            return {"rollout": None, "figures": None}
        stats = self.registry.rollouts.active(name) if self.registry is not None else None
        return {
            "rollout": asdict(found[0]),
            "figures": stats.figures()
            if stats is not None and found[0].state == "running"
            else None,
        }

    @_counted("rollout")
    def end_rollout(
        self, name: str, action: str, *, actor: str = "local", why: str = "", figures: Any = None
    ) -> Rollout:
        """`promote` the candidate, `roll_back` (it stops taking traffic and is unloaded)
        or `stop` the model's running rollout."""
        if action not in ("promote", "roll_back", "stop"):
            raise InvalidInput(
                f"unknown rollout action {action!r} (promote, roll_back or stop)", field="action"
            )
        running = self.store.rollouts(name, running=True)
        if not running:
            raise NotFound(f"model '{name}' has no rollout running", field="model")
        rollout = running[0]
        stats = self.registry.rollouts.active(name) if self.registry is not None else None
        decision = {
            "action": action,
            "by": actor,
            "why": why or f"{action} by {actor}",
            "figures": figures if figures is not None else (stats.figures() if stats else {}),
        }
        if action == "promote":
            self.store.get_version(name, rollout.candidate)
            if self.registry is not None:
                self.registry.preload(name, rollout.candidate)
            info = self.store.promote(name, rollout.candidate, actor=actor)
            self._go_live(info)
        state = {"promote": "promoted", "roll_back": "rolled_back", "stop": "stopped"}[action]
        with self._rollout_change():
            ended = self.store.end_rollout(name, state, decision, actor=actor)
            if self.registry is not None:
                self.registry.rollouts.forget(name)
        if self.registry is not None and action != "promote":
            self.registry.unload(name, rollout.candidate)
        return ended

    # -- recorded traffic ----------------------------------------------------------------

    @_counted("recording")
    def set_recording(self, name: str, body: Any, *, actor: str = "local") -> dict[str, Any]:
        """Record a sample of the model's traffic (`RecordingConfig`); 400 naming the field
        for a bad setting or a redacted input the model does not have."""
        info = self.store.get_model(name)
        if info.default is None:
            raise NotFound(f"model '{name}' has no default version", field="model")
        signature = Signature.model_validate(
            self.store.get_version(name, info.default).metadata.get("signature")
        )
        config = RecordingConfig.parse(body if body is not None else {}, signature)
        self.store.set_recording(name, config.model_dump(), actor=actor)
        if self.registry is not None:
            self.registry.recorder.configure(name, config)
        return self.recording(name)

    @_counted("recording")
    def stop_recording(self, name: str, *, actor: str = "local") -> dict[str, Any]:
        self.store.set_recording(name, None, actor=actor)
        if self.registry is not None:
            self.registry.recorder.configure(name, None)
        return self.recording(name)

    def recording(self, name: str) -> dict[str, Any]:
        """The model's recording settings (None when off), counts and files."""
        self.store.get_model(name)
        if self.registry is not None:
            return self.registry.recorder.status(name)
        config = self.store.recordings().get(name)
        return {"recording": config, "recorded": 0, "dropped": 0, "files": []}

    @_counted("replay")
    def replay(self, name: str, body: Any) -> dict[str, Any]:
        """Run the model's recorded requests (the newest `limit`, default 1000) on one of
        its versions — loaded here if it is not — and compare with the recorded answers."""
        if not isinstance(body, dict) or not isinstance(body.get("version"), int):
            raise InvalidInput('send {"version": N}: the version to replay on', field="version")
        version, limit = body["version"], body.get("limit", 1000)
        if not isinstance(limit, int) or not 1 <= limit <= 100_000:
            raise InvalidInput("limit must be a whole number from 1 to 100000", field="limit")
        if self.registry is None:
            raise InvalidInput("replaying needs a running server", field="version")
        info = self.store.get_version(name, version)
        signature = Signature.model_validate(info.metadata.get("signature"))
        records = list(read_records(recorded_files(self.store.root, name)))[-limit:]
        loaded = self.registry.acquire(name, version, by_request=False)
        try:
            return replay(name, version, records, loaded.runner.predict, signature)
        finally:
            self.registry.release(loaded)

    def _decided(self, name: str, action: str, why: str, figures: dict[str, Any]) -> None:
        """A rollout's rules decided (called off the event loop)."""
        log.info("rollout of %s: the rules decided to %s (%s)", name, action, why)
        self.end_rollout(name, action, actor="rules", why=why, figures=figures)

    def _end_rollout_by_hand(self, name: str, version: int | None, actor: str) -> None:
        """A promote or rollback made by hand ends a running rollout: promoted if the
        candidate was promoted, else stopped."""
        running = self.store.rollouts(name, running=True)
        if not running:
            return
        promoted = version == running[0].candidate
        state = "promoted" if promoted else "stopped"
        decision = {"action": state, "by": actor, "why": "the default was changed by hand"}
        self.store.end_rollout(name, state, decision, actor=actor)
        if self.registry is not None:
            self.registry.rollouts.forget(name)

    @_counted("delete")
    def delete(self, name: str, version: int, *, actor: str = "local") -> None:
        running = self.store.rollouts(name, running=True)
        if running and running[0].candidate == version:
            raise Conflict(
                f"version {version} of '{name}' is the candidate of a running rollout: stop "
                "it first",
                field="version",
            )
        self.store.delete_version(name, version, actor=actor)
        if self.registry is not None:
            if any(m.name == name for m in self.store.list_models()):
                self.registry.unload(name, version)
            else:  # its last version: the model is gone
                self.registry.forget(name)

    @_counted("load")
    def load_version(self, name: str, version: int) -> None:
        """Load a version beside the default (for requests that name it), retrying one
        that failed; it stays loaded until unloaded, deleted, or the server restarts."""
        if self.registry is None:
            raise InvalidInput("loading a version needs a running server", field="version")
        self.registry.load(name, version)

    @_counted("unload")
    def unload_version(self, name: str, version: int) -> None:
        """Stop serving one version (requests in flight finish); not the default, unless
        the model is on demand (its next request loads it again: an eviction by hand)."""
        on_demand = self.registry is not None and self.registry.on_demand(name)
        if self.store.get_model(name).default == version and not on_demand:
            raise Conflict(
                f"version {version} is the default of '{name}': promote another version "
                f"first, or unload the model (POST /v2/repository/models/{name}/unload)",
                field="version",
            )
        self.store.get_version(name, version)
        if self.registry is not None:
            self.registry.unload(name, version)

    @_counted("config")
    def set_config(
        self, name: str, version: int, config: dict[str, Any], *, actor: str = "local"
    ) -> VersionInfo:
        if not isinstance(config, dict):
            raise InvalidInput("the config must be a JSON object", field="config")
        try:
            checked = RuntimeDefaults.model_validate(config)
        except ValidationError as exc:
            raise InvalidInput(
                f"config: {describe_validation_error(exc)}", field="config"
            ) from None
        if "precision" in config:
            self._check_precision(name, version, checked.precision)
        if "device" in config and self.registry is not None:
            # A device this machine lacks (or that lacks room) is refused before it is
            # stored: the version goes on running where it is.
            info = self.store.get_version(name, version)
            self.registry.placement(
                {**info.config, **config}, info.metadata.get("runtime", {}), info.size
            )
        info = self.store.set_config(
            name, version, checked.model_dump(include=set(config)), actor=actor
        )
        if self.registry is not None:
            self.registry.apply_config(name, version)
        return info

    # -- what the repository holds -------------------------------------------------------

    def list_models(self) -> list[ModelInfo]:
        return self.store.list_models()

    def get_model(self, name: str) -> ModelInfo:
        """The model's versions and aliases; `NotFound` naming it if the store has none."""
        return self.store.get_model(name)

    def audit(self, model: str | None = None, limit: int = 100) -> list[AuditEntry]:
        return self.store.audit(model, limit)

    def states(self, model: str | None = None) -> dict[tuple[str, int], str]:
        """READY, UNAVAILABLE or UNLOADED for each version (on a server)."""
        return {(s.model, s.version): s.state for s in self.index() if model in (None, s.model)}

    def _check_precision(self, name: str, version: int, precision: Precision) -> None:
        """Refuse a precision in which the version does not reproduce its examples (on
        the CPU, within that precision's tolerance)."""
        info = self.store.get_version(name, version)
        runner = open_runner(self.store.package_path(info), self.limits, precision=precision)
        try:
            problems = check_examples(runner)
        finally:
            runner.close()
        if problems:
            raise InvalidInput(
                f"config: {name} v{version} in {precision} does not reproduce its example: "
                f"{problems[0]}",
                field="precision",
            )

    def residents(self, model: str | None = None) -> dict[tuple[str, int], dict[str, Any]]:
        """What each resident version holds (on a server): bytes, last use, policy, and
        where it runs (device, precision)."""
        if self.registry is None:
            return {}
        residents = {}
        for key, held in self.registry.residents().items():
            if model not in (None, key[0]):
                continue
            device, precision = self.registry.placed(*key) or ("cpu", "fp32")
            residents[key] = {
                "bytes": held.bytes,
                "last_used": datetime.fromtimestamp(held.last_used, UTC).isoformat(
                    timespec="milliseconds"
                ),
                "policy": held.policy,
                "device": device,
                "precision": precision,
            }
        return residents

    def devices(self) -> list[dict[str, Any]]:
        """The GPUs of a server's machine and their figures now: memory used (every
        process), allocated and reserved (this server's), NVML utilisation; none on a
        machine without one, or without a server."""
        if self.registry is None:
            return []
        return [asdict(figures) for figures in device_figures()]

    def workers(self, model: str, version: int) -> dict[str, Any] | None:
        """What runs a loaded version's batches (on a server; may ask remote replicas)."""
        return self.registry.workers(model, version) if self.registry is not None else None

    async def compare(self, model: str, a: int, b: int) -> dict[str, Any]:
        """Run versions `a` and `b` on the model's recent requests and say how their outputs
        and latencies differ."""
        registry = self.registry
        if registry is None or self.recent is None:
            raise InvalidInput("comparing versions needs a running server", field="model")
        await anyio.to_thread.run_sync(self.store.get_model, model)  # 404 for an unknown model
        samples = self.recent.of(model)
        # An operator's call: it loads the versions it compares whatever `RequestLoads` says.
        first = await anyio.to_thread.run_sync(registry.acquire, model, a, False)
        try:
            second = await anyio.to_thread.run_sync(registry.acquire, model, b, False)
        except BaseException:
            registry.release(first)
            raise
        try:
            return await compare_versions(model, first, second, samples)
        finally:
            registry.release(first)
            registry.release(second)

    # -- the Open Inference Protocol's model repository extension -------------------------

    def index(self) -> list[VersionState]:
        """Every version in the store and its state."""
        return self.registry.states() if self.registry is not None else []

    def load(self, model: str) -> None:
        """(Re)load the model's default version and serve it."""
        info = self.store.get_model(model)
        if info.default is None:
            raise NotFound(f"model '{model}' has no default version", field="model")
        if self.registry is not None:
            self.registry.switch_default(model, info.default)

    def unload(self, model: str) -> None:
        """Stop serving the model (in-flight requests finish) until it is loaded again."""
        self.store.get_model(model)  # NotFound for an unknown model
        if self.registry is not None:
            self.registry.unload(model)

    def _go_live(self, info: ModelInfo) -> None:
        if self.registry is not None and info.default is not None:
            self.registry.switch_default(info.name, info.default)


def _refuse_failed_export(manifest: Manifest) -> None:
    """An export whose parity check failed answers differently from its source model."""
    export = manifest.export
    if export is None or export.parity.passed:
        return
    worst = next((o for o in export.parity.outputs if not o.passed), None)
    detail = (
        f": output '{worst.name}' differs by up to {worst.max_abs_error:.3g} "
        f"(tolerance {worst.atol:.3g} + {worst.rtol:.3g} x |value|)"
        if worst
        else ""
    )
    raise PackageError(
        f"package '{manifest.name}' is a {manifest.model.kind.value} export whose parity check "
        f"against its {export.source_kind.value} model failed{detail}; it is not registered",
        field="export.parity",
    )


def _metadata(manifest: Manifest, labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    named = {**(manifest.labels or {}), **(labels or {})}
    return {
        **({"labels": named} if named else {}),
        "signature": manifest.signature.model_dump(mode="json"),
        "model_kind": manifest.model.kind.value,
        "package_name": manifest.name,
        "description": manifest.description,
        "created_at": manifest.created_at.isoformat(),
        "runtime": manifest.runtime.model_dump(mode="json"),
        **(
            {"handler_api": manifest.handler.api}
            if manifest.handler and manifest.handler.api
            else {}
        ),
    }


class LocalRepository:
    """The model repository extension over this process's `Management`, its blocking
    calls (the store, loading a model) on worker threads."""

    def __init__(self, management: Management) -> None:
        self.management = management

    async def index(self) -> list[VersionState]:
        return await anyio.to_thread.run_sync(self.management.index)

    async def load(self, model: str) -> None:
        await anyio.to_thread.run_sync(self.management.load, model)

    async def unload(self, model: str) -> None:
        await anyio.to_thread.run_sync(self.management.unload, model)


def _copy_limited(src: Path, dest: Path, limit: int) -> None:
    try:
        size = src.stat().st_size
    except FileNotFoundError:
        raise NotFound(f"package {src} does not exist", field="package") from None
    if size > limit:
        raise TooLarge(
            f"package {src.name} is {size} bytes, over the limit of {limit} bytes "
            "(max_package_bytes)",
            field="package",
        )
    try:
        shutil.copyfile(src, dest)
    except OSError as exc:
        raise out_of_space(exc, dest.parent, size) or exc from None
