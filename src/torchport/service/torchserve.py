"""TorchServe's management API over torchport's store: `TorchServeModels`.

Each of TorchServe's calls maps onto the store and `Management`:
- register (`POST /models?url=…`): the archive is found in the model store (or fetched from
  a URL the allow-list names), imported (`torchport.migrate`), verified and uploaded as the
  model's next version, labelled with the archive's own version (`modelVersion`, which
  names it in every other call); `batch_size`, `max_batch_delay` and `initial_workers`
  become its serving settings;
- describe, list, scale (`min_worker` → the version's workers; 0 stops serving it),
  set-default (promote) and unregister (delete; a model's default goes last).

The url is the one place a client names something this process reads: it must be a file
inside the model store, or match an `allowed_urls` pattern whole; anything else is
refused before anything is opened or fetched.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urljoin, urlsplit

from torchport.archive.manifest import CPU_BATCH_SIZE, GPU_BATCH_SIZE
from torchport.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    TooLarge,
    TorchportError,
    Unavailable,
)
from torchport.migrate import import_mar
from torchport.migrate.mar import mar_identity
from torchport.migrate.torchserve_config import ArchiveToLoad
from torchport.scratch import scratch
from torchport.service.labels import TORCHSERVE_URL, TORCHSERVE_VERSION, label, torchserve_name
from torchport.service.management import Management
from torchport.settings import Settings
from torchport.store import ModelInfo, VersionInfo

MAX_REDIRECTS = 5


@dataclass(frozen=True)
class Answer:
    """A call's answer: TorchServe's status code and `{"status": …}` text."""

    status: int
    message: str
    model: str = ""
    version: str = ""
    """A registration's model and the version TorchServe names it by."""


class TorchServeModels:
    """The calls of TorchServe's management API, over `management`."""

    def __init__(self, management: Management, settings: Settings) -> None:
        self.management = management
        self.model_store = settings.model_store
        self.allowed = [re.compile(p) for p in settings.allowed_urls]
        self.max_bytes = settings.limits.max_package_bytes
        self.fetch_timeout_s = settings.upload_timeout_s

    # -- register ------------------------------------------------------------------------

    def register(
        self,
        url: str | None,
        *,
        model_name: str | None = None,
        initial_workers: int = 0,
        batch_size: int | None = None,
        max_batch_delay: float | None = None,
        synchronous: bool = True,
    ) -> Answer:
        if not url:
            raise InvalidInput("Parameter url is required.", field="url")
        if initial_workers < 0:
            raise InvalidInput("initial_workers must be 0 or more", field="initial_workers")
        with scratch("torchserve-register") as tmp:
            archive = self._archive(url, tmp)
            name, named = mar_identity(archive)
            name = model_name or name
            if self._find(name, named, missing_ok=True) is not None:
                raise Conflict(
                    f"Model version {named} is already registered for model {name}",
                    field="url",
                )
            imported = import_mar(archive, tmp / "package.tpa", name=name)
            report = self.management.upload(
                imported.path,
                name=name,
                actor="torchserve-api",
                labels={TORCHSERVE_VERSION: named, TORCHSERVE_URL: url},
            )
        version = report.version.version
        config: dict[str, Any] = {}
        if batch_size is not None:
            config["max_batch_size"] = batch_size
        if max_batch_delay is not None:
            config["max_batch_delay_ms"] = float(max_batch_delay)
        if initial_workers > 0:
            config.update(self._workers(report.version, initial_workers))
        if config:
            self.management.set_config(name, version, config, actor="torchserve-api")
        self._serve(name, version, initial_workers > 0)
        message = (
            f'Model "{name}" Version: {named} registered with {initial_workers} initial workers'
        )
        if initial_workers == 0:
            message += ". Use scale workers API to add workers for the model."
        return Answer(200 if synchronous else 202, message, name, named)

    def load_at_start(self, archives: Sequence[ArchiveToLoad], say: Callable[[str], None]) -> None:
        """Register what `config.properties` names, once: an archive whose version the
        model already has (a restart) is left as it is."""
        for archive in archives:
            try:
                done = self.register(
                    archive.url,
                    model_name=archive.model_name,
                    initial_workers=archive.workers,
                    batch_size=archive.batch_size,
                    max_batch_delay=archive.max_batch_delay,
                )
            except Conflict:
                say(f"{archive.url}: already registered")
                continue
            say(f"{archive.url}: {done.message}")
            if archive.default:
                self.set_default(done.model, done.version)

    def _archive(self, url: str, tmp: Path) -> Path:
        """The archive `url` names: a file in the model store, or one an allowed URL gives."""
        parts = urlsplit(url)
        if parts.scheme in ("http", "https"):
            # Matched as it will be requested: dot segments resolved, host in lower case.
            url = _normalized(url)
            if not self._allows(url):
                raise Forbidden(
                    f"url {url} is not allowed: it is not in the model store and matches none "
                    "of allowed_urls (empty by default: put the archive in the model store)",
                    field="url",
                )
            return self._fetch(url, tmp / "download.mar")
        allowed = parts.scheme == "file" and self._allows(url)
        if parts.scheme not in ("", "file"):
            raise Forbidden(f"url scheme {parts.scheme!r} is not supported", field="url")
        relative = parts.path if parts.scheme == "file" else url
        if ".." in PurePosixPath(relative).parts:
            raise NotFound(f"Relative path is not allowed in url: {url}", field="url")
        if self.model_store is None:
            raise InvalidInput(
                "no model store is configured: start the server with --model-store DIR",
                field="url",
            )
        store = self.model_store.resolve()
        candidate = Path(relative) if Path(relative).is_absolute() else store / relative
        candidate = candidate.resolve()
        if not (candidate.is_relative_to(store) or allowed):
            raise Forbidden(f"url {url} is outside the model store", field="url")
        if not candidate.is_file():
            raise NotFound(f"Model not found at: {url}", field="url")
        return candidate

    def _fetch(self, url: str, dest: Path) -> Path:
        """Download an allowed URL, every redirect checked against the allow-list too."""
        import httpx

        deadline = time.monotonic() + self.fetch_timeout_s
        with httpx.Client(follow_redirects=False, timeout=30) as client:
            for _ in range(MAX_REDIRECTS + 1):
                with client.stream("GET", url) as response:
                    if response.is_redirect:
                        target = _normalized(urljoin(url, response.headers.get("location", "")))
                        if not self._allows(target):
                            raise Forbidden(
                                f"url {url} redirects to {target}, which allowed_urls does "
                                "not allow",
                                field="url",
                            )
                        url = target
                        continue
                    if response.status_code != 200:
                        raise InvalidInput(
                            f"Failed to download archive from: {url} (HTTP {response.status_code})",
                            field="url",
                        )
                    size = 0
                    with dest.open("wb") as sink:
                        for chunk in response.iter_bytes():
                            size += len(chunk)
                            if size > self.max_bytes:
                                raise TooLarge(
                                    f"the archive at {url} is larger than max_package_bytes",
                                    field="url",
                                )
                            if time.monotonic() > deadline:
                                raise InvalidInput(
                                    f"downloading {url} took longer than upload_timeout_s",
                                    field="url",
                                )
                            sink.write(chunk)
                    return dest
        raise InvalidInput(f"url {url} redirects more than {MAX_REDIRECTS} times", field="url")

    def _allows(self, url: str) -> bool:
        return any(pattern.fullmatch(url) for pattern in self.allowed)

    # -- describe and list ---------------------------------------------------------------

    def list_models(self, limit: int = 100, next_page_token: int = 0) -> dict[str, Any]:
        if not 0 < limit <= 1000:
            raise InvalidInput("limit must be between 1 and 1000", field="limit")
        models = self.management.list_models()
        page = models[next_page_token : next_page_token + limit]
        out: dict[str, Any] = {}
        if next_page_token + limit < len(models):
            out["nextPageToken"] = str(next_page_token + limit)
        out["models"] = [
            {"modelName": m.name, "modelUrl": _url(_default(m)) if m.default else ""} for m in page
        ]
        return out

    def describe(self, model: str, version: str | None = None) -> list[dict[str, Any]]:
        info = self._model(model)
        if version == "all":
            chosen = info.versions
        else:
            chosen = [self._find(model, version) if version else _default(info)]
        states = self.management.states(model)
        return [self._description(info, v, states.get((model, v.version))) for v in chosen]

    def _description(
        self, info: ModelInfo, version: VersionInfo, state: str | None
    ) -> dict[str, Any]:
        config = effective_config(version)
        workers = int(config.get("workers") or 1) if state == "READY" else 0
        registry = self.management.registry
        placed = registry.placed(info.name, version.version) if registry is not None else None
        gpu = placed is not None and placed[0].startswith("cuda")
        batch = config.get("max_batch_size") or (GPU_BATCH_SIZE if gpu else CPU_BATCH_SIZE)
        return {
            "modelName": info.name,
            "modelVersion": torchserve_name(version),
            "modelUrl": _url(version),
            "runtime": "python",
            "minWorkers": workers,
            "maxWorkers": workers,
            "batchSize": batch,
            "maxBatchDelay": _whole(config.get("max_batch_delay_ms", 0)),
            "deviceType": "gpu" if gpu else "cpu",
            "loadedAtStartup": False,
            "isDefault": info.default == version.version,
            "workers": [
                {
                    "id": str(9000 + i),
                    "startTime": version.created_at,
                    "status": "READY",
                    "memoryUsage": 0,
                    "gpu": gpu,
                    "gpuUsage": "N/A",
                }
                for i in range(workers)
            ],
            "jobQueueStatus": {
                "remainingCapacity": config.get("max_queue", 256),
                "pendingRequests": 0,
            },
        }

    # -- scale, set-default, unregister ---------------------------------------------------

    def scale(
        self,
        model: str,
        version: str | None = None,
        *,
        min_worker: int | None = None,
        max_worker: int | None = None,
        synchronous: bool = False,
    ) -> Answer:
        info = self._model(model)
        chosen = self._find(model, version) if version else _default(info)
        workers = min_worker if min_worker is not None else max_worker
        if workers is None:
            return Answer(202 if not synchronous else 200, "Processing worker updates...")
        if workers < 0:
            raise InvalidInput("min_worker must be 0 or more", field="min_worker")
        if max_worker is not None and min_worker is not None and max_worker < min_worker:
            raise InvalidInput("max_worker is below min_worker", field="max_worker")
        if workers > 0:
            config = self._workers(chosen, workers)
            self.management.set_config(model, chosen.version, config, actor="torchserve-api")
        self._serve(model, chosen.version, workers > 0)
        if synchronous:
            which = f", version: {torchserve_name(chosen)}" if version else ""
            return Answer(200, f"Workers scaled to {workers} for model: {model}{which}")
        return Answer(202, "Processing worker updates...")

    def set_default(self, model: str, version: str) -> Answer:
        chosen = self._find(model, version)
        self.management.promote(model, chosen.version, actor="torchserve-api")
        return Answer(
            200,
            f'Default version successfully updated for model "{model}" to '
            f'"{torchserve_name(chosen)}"',
        )

    def unregister(self, model: str, version: str | None = None) -> Answer:
        info = self._model(model)
        chosen = self._find(model, version) if version else _default(info)
        if chosen.version == info.default and len(info.versions) > 1:
            raise Forbidden(f"Cannot remove default version for model {model}", field="version")
        self.management.delete(model, chosen.version, actor="torchserve-api")
        return Answer(200, f'Model "{model}" unregistered')

    # -- helpers -------------------------------------------------------------------------

    def _model(self, model: str) -> ModelInfo:
        try:
            return self.management.get_model(model)
        except NotFound:
            raise NotFound(f"Model not found: {model}", field="model") from None

    def _find(self, model: str, label: str | None, *, missing_ok: bool = False) -> Any:
        """The version TorchServe calls `label` (its archive's modelVersion, else the
        version's number); None when `missing_ok` and there is none."""
        try:
            info = self.management.get_model(model)
        except NotFound:
            if missing_ok:
                return None
            raise NotFound(f"Model not found: {model}", field="model") from None
        for version in info.versions:
            if torchserve_name(version) == label:
                return version
        if missing_ok:
            return None
        raise NotFound(f"Model version {label} does not exist for model {model}", field="version")

    def _workers(self, version: VersionInfo, workers: int) -> dict[str, Any]:
        """A TorchServe handler runs one batch at a time per worker (its state lives on the
        handler), so more than one worker means worker processes, as in TorchServe."""
        config: dict[str, Any] = {"workers": workers}
        if version.metadata.get("handler_api") == "torchserve":
            config["worker_kind"] = "process" if workers > 1 else "thread"
        return config

    def _serve(self, model: str, version: int, serving: bool) -> None:
        """Serve the version (workers > 0) or stop serving it (0), as TorchServe does."""
        default = self.management.get_model(model).default == version
        try:
            if serving:
                if default:
                    self.management.load(model)
                else:
                    self.management.load_version(model, version)
            elif default:
                self.management.unload(model)
            else:
                self.management.unload_version(model, version)
        except InvalidInput:
            pass  # no running server (a store opened by a tool): nothing to start or stop
        except TorchportError as exc:
            raise Unavailable(f"model {model}: {exc}", field="model") from None


def effective_config(version: VersionInfo) -> dict[str, Any]:
    runtime = version.metadata.get("runtime")
    return {**(runtime if isinstance(runtime, dict) else {}), **version.config}


def _default(info: ModelInfo) -> VersionInfo:
    for version in info.versions:
        if version.version == info.default:
            return version
    raise NotFound(f"Model not found: {info.name}", field="model")


def _url(version: VersionInfo) -> str:
    return label(version, TORCHSERVE_URL) or f"{version.model}.tpa"


def _whole(value: Any) -> Any:
    """TorchServe writes milliseconds as integers."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _normalized(url: str) -> str:
    import httpx

    try:
        return str(httpx.URL(url))
    except httpx.InvalidURL as exc:
        raise InvalidInput(f"url {url!r} is not a valid URL: {exc}", field="url") from None
