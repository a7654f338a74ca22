"""Typed settings: flags over `TORCHPORT_*` environment variables over a TOML file.

Unknown keys are an error, and every default is the secure choice (loopback only, size
limits on).
"""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from torchport.errors import InvalidInput

GiB = 1024**3


def default_store_dir() -> Path:
    """`$XDG_DATA_HOME/torchport/store`, i.e. `~/.local/share/torchport/store` by default."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "torchport" / "store"


class Limits(BaseSettings):
    """Size limits applied to every package read, whoever reads it."""

    model_config = SettingsConfigDict(env_prefix="TORCHPORT_", extra="forbid")

    max_package_bytes: int = Field(default=2 * GiB, gt=0)
    """Largest package file accepted (compressed)."""
    max_unpacked_bytes: int = Field(default=8 * GiB, gt=0)
    """Largest total size of a package's files once unpacked (zip-bomb guard)."""
    max_package_files: int = Field(default=10_000, gt=0)


class Settings(BaseSettings):
    """Everything a torchport process can be configured with."""

    model_config = SettingsConfigDict(env_prefix="TORCHPORT_", extra="forbid")

    @field_validator("store", mode="before")
    @classmethod
    def _store_location(cls, value: Any) -> Any:
        # `s3://bucket/prefix` stays a URL (a Path would fold its `//`); the rest are paths.
        if isinstance(value, str) and "://" in value:
            if not value.startswith("s3://"):
                raise ValueError("give a directory or s3://bucket/prefix")
            return value
        return Path(value).expanduser() if isinstance(value, str | Path) else value

    store: Path | str = Field(default_factory=default_store_dir)
    """A local directory (SQLite and package files), or `s3://bucket/prefix`: a store on
    S3-compatible object storage that every replica naming it shares."""
    s3_endpoint: str | None = None
    """The URL of an S3-compatible service (MinIO, Ceph, a local server) for an `s3://`
    store; none: `AWS_ENDPOINT_URL_S3`, else AWS itself. Region and credentials come from
    the usual variables (`AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_PROFILE` …)."""
    store_cache: Path | None = None
    """Where an `s3://` store's packages are cached, verified (each blob downloaded once);
    none: `$XDG_CACHE_HOME/torchport/s3/<bucket>-<prefix hash>`."""
    store_poll_s: float = Field(default=2.0, gt=0, le=60)
    """How often the server re-reads the store for changes made elsewhere (another
    replica, `torchport store`): a new version, a promote or rollback, a config change, a
    delete is served within this plus the new version's load time."""
    host: str = "127.0.0.1"
    """Where inference listens (HTTP and gRPC)."""
    management_host: str = "127.0.0.1"
    """Where management listens: loopback unless said, even when `host` is public."""
    http_port: int = Field(default=8080, ge=0, le=65535)
    grpc_port: int = Field(default=8081, ge=0, le=65535)
    management_port: int = Field(default=8082, ge=0, le=65535)
    tls_cert: Path | None = None
    """A PEM certificate (chain): with `tls_key`, every port speaks TLS only (HTTPS, gRPC
    over TLS), so the management token never crosses a network in clear."""
    tls_key: Path | None = None
    """The PEM private key of `tls_cert`."""
    trusted_keys: list[Path] = Field(default_factory=list)
    """Ed25519 public keys (PEM, `torchport keygen`): when any is given, only packages
    signed by one of them are taken (`torchport sign`); others get 403."""
    token: str | None = Field(default=None, min_length=16)
    """The management token; by default generated once into `<store>/token`."""
    max_request_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    """Largest inference request body accepted (413 past it)."""
    body_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    """An inference (or management JSON) body must arrive whole within this (408 past it,
    and the connection is closed): a client dripping bytes cannot hold a connection."""
    upload_timeout_s: float = Field(default=600.0, gt=0, le=86400)
    """A package upload's body must arrive whole within this (408 past it)."""
    max_inflight: int = Field(default=512, ge=1, le=100_000)
    """Requests in progress on each HTTP port (reading their bodies included); the next
    gets 503 with Retry-After at once. Health probes and /metrics are never refused."""
    max_connections: int = Field(default=2048, ge=1, le=100_000)
    """Open connections (or requests) on each HTTP port past which every new request gets
    503 (uvicorn's limit, a backstop behind `max_inflight`)."""
    max_grpc_calls: int = Field(default=512, ge=1, le=100_000)
    """gRPC calls in progress at once; the next gets RESOURCE_EXHAUSTED."""
    request_timeout_s: float = Field(default=120.0, gt=0, le=86400)
    """A batch running longer than this fails its requests with 504, and its worker is
    replaced: a worker process is killed and restarted; a thread, which cannot be killed,
    is abandoned to its batch and another takes its place."""
    torch_threads: int = Field(default=1, ge=0, le=1024)
    """torch intra-op threads of a batch that runs beside others under load; a batch that
    runs alone on an idle server uses every core. 0 leaves torch's settings alone.

    Versions get cores ÷ this many workers unless they say otherwise: on CPU, batches
    running side by side serve more than one batch spread over every core (see README)."""
    log_format: Literal["text", "json"] = "text"
    """`json`: one JSON object a line, for log collectors."""
    access_log: bool = False
    """Log one line per inference request (request id, model, version, outcome, timings)."""
    unready_seconds: float = Field(default=0.0, ge=0, le=600)
    """On SIGTERM: how long to go on serving while reporting not ready, so that a load
    balancer (a Kubernetes Service) stops sending requests before the ports close."""
    drain_seconds: float = Field(default=30.0, ge=0, le=3600)
    """On SIGTERM, after `unready_seconds`: the longest wait for requests in flight."""
    backend: Literal["local", "ray"] = "local"
    """Where versions run: `local` (threads or worker processes of this server) or `ray`
    (a Ray Serve deployment per version; torchport stays the front end)."""
    ray_address: str | None = None
    """With `backend = "ray"`: the cluster to join (`auto`, `ray://host:10001`); none
    starts a local Ray on 127.0.0.1."""
    load_on_request: bool = False
    """Let an inference request load a version the server does not hold (one it names,
    or a default that failed to load). Off: only the management port (promote, load)
    changes what is loaded, and such requests get 503 naming the version."""
    max_loaded_on_request: int = Field(default=4, ge=1, le=1000)
    """With `load_on_request`: versions loaded that way at once (503 past it)."""
    max_resident_bytes: int | None = Field(default=None, gt=0)
    """Memory the loaded versions may hold together (their tensors, as `/metrics`'
    `torchport_resident_bytes` counts them); a load that needs room evicts on-demand
    versions, least recently used first, never one a request holds. None: no budget."""
    residency: Literal["always", "on_demand"] = "always"
    """The residency of a model whose default version's config (or package) names none:
    `always` (loaded at start, kept) or `on_demand` (loaded by its first request, evicted
    when the budget needs room)."""
    device: str = Field(default="cpu", pattern=r"^(cpu|auto|cuda(:\d{1,2})?)$")
    """Where a version runs when its config (or package) names no device: `cpu`, `cuda`,
    `cuda:N`, or `auto` (the GPU with the most free memory that fits it, else the CPU)."""
    tf32: bool = False
    """Let float32 matrix products and convolutions on NVIDIA GPUs use TF32 (faster, about
    three significant digits fewer). torch holds this for the whole process, so it is a
    server setting, not a version's."""
    load_wait_s: float = Field(default=30.0, gt=0, le=3600)
    """How long a request waits for the version it needs to load (an on-demand model that
    is not resident) before it gets 503."""
    load_retry_seconds: float = Field(default=30.0, ge=0, le=3600)
    """After a failed load: 503 for this long (doubling per failure, up to 10 minutes)
    before a request may try again."""
    frontends: int | None = Field(default=None, ge=0, le=64)
    """Processes that run the inference protocols (HTTP and gRPC, sharing the ports) and
    hand decoded requests to the engine process, which holds the models. 0: one process
    does everything. None: `default_frontends(available_cores())`."""
    torchserve_management_port: int | None = Field(default=None, ge=0, le=65535)
    """TorchServe's management API (`/models`, register by url, scale, set-default,
    unregister) on a port of its own, on `management_host`, behind the same token; None:
    off."""
    model_store: Path | None = None
    """TorchServe's model store: where a registration's `url=NAME.mar` is looked for."""
    allowed_urls: list[str] = Field(default_factory=list)
    """Regular expressions (TorchServe's `allowed_urls`): a registration `url` that is not
    a file in `model_store` must match one of them whole, and is then fetched (with no
    redirect to a URL that does not match). None by default: nothing is ever fetched."""
    torchserve_config: Path | None = None
    """A TorchServe `config.properties`: its addresses, model store, allowed URLs, TLS files
    and limits become these settings (flags win), and the archives it loads are registered
    at start (`torchport.migrate.torchserve_config`)."""
    limits: Limits = Field(default_factory=Limits)

    @field_validator("allowed_urls")
    @classmethod
    def _patterns(cls, patterns: list[str]) -> list[str]:
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
        return patterns

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: give both, or neither")
        return self


def load_settings(config_file: Path | None = None, **flags: Any) -> Settings:
    """Build `Settings` from a TOML file, the environment and flags (highest precedence).

    Flags given as `None` are treated as not given. Raises `InvalidInput` naming the key.
    """
    file_values: dict[str, Any] = {}
    if config_file is not None:
        try:
            file_values = tomllib.loads(config_file.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise InvalidInput(f"config file {config_file}: {exc}", field="config") from None
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        # Init values beat the environment in pydantic-settings, so merge file < env < flags here.
        return Settings(**{**file_values, **_env_overrides(), **given})
    except ValidationError as exc:
        raise InvalidInput(_first_error(exc), field=_first_field(exc)) from None


def _env_overrides() -> dict[str, Any]:
    # Explicit values from the environment, so that they override the TOML file.
    prefix = "TORCHPORT_"
    fields = Settings.model_fields
    out: dict[str, Any] = {}
    for key, value in os.environ.items():
        if key.startswith(prefix) and key[len(prefix) :].lower() in fields:
            out[key[len(prefix) :].lower()] = value
    return out


def _first_field(exc: ValidationError) -> str:
    err = exc.errors()[0]
    if err["loc"]:
        return ".".join(str(p) for p in err["loc"])
    # A check across settings has no location: the first setting its message names.
    return next((w for w in str(err["msg"]).split() if w in Settings.model_fields), "settings")


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    if not err["loc"]:
        return str(err["msg"]).removeprefix("Value error, ")
    return f"setting '{_first_field(exc)}': {err['msg']}"


def default_frontends(cores: int) -> int:
    """Front-end processes for `cores` cores: none under four (on two cores one front end
    served `mlp` 1.04x and `minilm` 0.96x of one process at c=32, with 0.15 ms more at c=1
    and 125 MiB more: benchmarks/README.md), then one per two cores, at most four."""
    return 0 if cores < 4 else min(4, cores // 2)


def available_cores(cgroup: Path = Path("/sys/fs/cgroup/cpu.max")) -> int:
    """CPU cores this process may run on: its affinity mask (`docker --cpuset-cpus`), and
    no more than its cgroup's CPU quota allows (`docker --cpus`, a Kubernetes CPU limit),
    rounded up."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = cgroup.read_text().split()[:2]
    except (OSError, ValueError):
        return cores
    if quota == "max" or not quota.isdigit() or not period.isdigit() or int(period) == 0:
        return cores
    return max(1, min(cores, -(-int(quota) // int(period))))
