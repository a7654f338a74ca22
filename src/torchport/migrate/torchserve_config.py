"""`torchport serve --torchserve-config config.properties`: TorchServe's settings file read
as torchport settings, and the archives it loads at start.

The keys that matter map onto torchport's settings (addresses and ports, the model store,
`allowed_urls`, TLS files, the request size and timeout) and onto the archives to register
at start (`load_models`, `models` with per-version `batchSize`, `maxBatchDelay`,
`minWorkers`, `defaultVersion`, `default_workers_per_model`). Every other key is reported
once, with why it is not used.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from torchport.errors import InvalidInput


@dataclass(frozen=True)
class ArchiveToLoad:
    """One archive `load_models` or `models` registers at start."""

    url: str
    model_name: str | None = None
    workers: int = 1
    batch_size: int | None = None
    max_batch_delay: float | None = None
    default: bool = False


@dataclass
class TorchServeConfig:
    settings: dict[str, Any] = field(default_factory=dict)
    """torchport settings, by name (`load_settings` flags)."""
    archives: list[ArchiveToLoad] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """One line per key not used, saying why."""


IGNORED = {
    "metrics_address": "metrics are on the inference port's /metrics (Prometheus text)",
    "metrics_mode": "metrics are Prometheus text on the inference port",
    "metrics_config": "metrics are Prometheus text on the inference port",
    "enable_metrics_api": "metrics are always on the inference port's /metrics",
    "grpc_inference_port": "TorchServe's own gRPC API is not served; the Open Inference "
    "Protocol's gRPC service is on --grpc-port",
    "grpc_management_port": "TorchServe's own gRPC API is not served",
    "enable_grpc_ssl": "TorchServe's own gRPC API is not served",
    "disable_token_authorization": "torchport's management ports always need its bearer token",
    "enable_token_authorization": "torchport's management ports always need its bearer token",
    "install_py_dep_per_model": "torchport never installs packages while loading a model",
    "number_of_netty_threads": "torchport's event loop and front ends replace Netty's threads",
    "netty_client_threads": "torchport's event loop and front ends replace Netty's threads",
    "job_queue_size": "each version's queue is its max_queue (per-version config)",
    "max_response_size": "answers are not size-limited",
    "number_of_gpu": "torchport runs models on the CPU",
    "vmargs": "no Java virtual machine runs",
    "async_logging": "torchport logs to standard error (--log-format)",
    "cors_allowed_origin": "CORS headers are not sent",
    "cors_allowed_methods": "CORS headers are not sent",
    "cors_allowed_headers": "CORS headers are not sent",
    "workflow_store": "workflows are not supported",
    "enable_envvars_config": "torchport reads TORCHPORT_* variables always",
    "keystore": "give a PEM certificate and key (certificate_file, private_key_file)",
    "keystore_pass": "give a PEM certificate and key (certificate_file, private_key_file)",
    "keystore_type": "give a PEM certificate and key (certificate_file, private_key_file)",
    "snapshot_store": "the store keeps every version and alias; no snapshots are needed",
    "model_snapshot": "the store keeps every version and alias; no snapshots are needed",
    "decode_input_request": "bodies reach handlers as TorchServe decodes them by default",
    "model_server_home": "no TorchServe installation is used",
    "plugins_path": "TorchServe plugins are not supported",
    "default_startup_timeout": "loading has no time limit",
    "use_native_io": "no Java virtual machine runs",
    "limit_max_image_pixels": "handlers get TorchServe's default (limited)",
}


def read_properties(path: Path) -> dict[str, str]:
    """A Java .properties file: `key=value` or `key: value` lines, `#`/`!` comments,
    backslash continuations."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read {path}: {exc}", field="torchserve_config") from None
    out: dict[str, str] = {}
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line.startswith(("#", "!")):
            continue
        if line.endswith("\\") and not line.endswith("\\\\"):
            pending = line[:-1]
            continue
        match = re.match(r"^([^=:\s]+)\s*[=:\s]\s*(.*)$", line)
        if match is None:
            out[line] = ""
            continue
        out[match.group(1)] = _unescape(match.group(2))
    return out


def _unescape(value: str) -> str:
    """Java's escapes: `\\t`, `\\n`, `\\r`, `\\f`; any other escaped character is itself."""
    out: list[str] = []
    chars = iter(value)
    for char in chars:
        if char == "\\":
            char = next(chars, "")
            char = {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}.get(char, char)
        out.append(char)
    return "".join(out)


def read_torchserve_config(path: Path, model_store: Path | None = None) -> TorchServeConfig:
    """Read `config.properties`; raises `InvalidInput` naming a key whose value is wrong.
    `model_store` (where `load_models=all` looks) defaults to the file's own."""
    props = read_properties(path)
    config = TorchServeConfig()
    settings = config.settings
    for key, value in props.items():
        if key == "inference_address":
            host, port = _address(key, value)
            settings.update(host=host, http_port=port)
        elif key == "management_address":
            host, port = _address(key, value)
            settings.update(management_host=host, torchserve_management_port=port)
        elif key == "model_store":
            settings["model_store"] = Path(value).expanduser()
        elif key == "allowed_urls":
            settings["allowed_urls"] = [p.strip() for p in value.split(",") if p.strip()]
        elif key == "certificate_file":
            settings["tls_cert"] = Path(value).expanduser()
        elif key == "private_key_file":
            settings["tls_key"] = Path(value).expanduser()
        elif key == "max_request_size":
            settings["max_request_bytes"] = _number(key, value)
        elif key == "default_response_timeout":
            settings["request_timeout_s"] = _number(key, value)
        elif key in ("load_models", "models", "default_workers_per_model"):
            continue  # below, together
        elif key in IGNORED:
            config.notes.append(f"{key}: not used — {IGNORED[key]}")
        else:
            config.notes.append(f"{key}: not used — torchport has no such setting")
    config.archives = _archives(props, model_store or settings.get("model_store"))
    if (
        settings.get("torchserve_management_port") is not None
        and settings["torchserve_management_port"] == 8081
    ):
        # TorchServe's management port is torchport's default gRPC port: gRPC moves to
        # TorchServe's own gRPC inference port.
        settings.setdefault("grpc_port", 7070)
    return config


def _address(key: str, value: str) -> tuple[str, int]:
    parts = urlsplit(value if "://" in value else f"http://{value}")
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.port is None:
        raise InvalidInput(
            f"{key}: {value!r} is not an address like http://127.0.0.1:8080", field=key
        )
    host = parts.hostname
    return host, parts.port


def _number(key: str, value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise InvalidInput(f"{key}: {value!r} is not a whole number", field=key) from None
    if number <= 0:
        raise InvalidInput(f"{key}: must be positive", field=key)
    return number


def _archives(props: dict[str, str], model_store: Path | None) -> list[ArchiveToLoad]:
    """`models` (per version), then what `load_models` names that `models` does not."""
    workers = 1
    if "default_workers_per_model" in props:
        workers = _number("default_workers_per_model", props["default_workers_per_model"])
    listed = _models(props.get("models"), workers)
    named = {a.url for a in listed}
    load = props.get("load_models", "").strip()
    if load == "all":
        listed += [a for a in all_archives(model_store, workers) if a.url not in named]
    elif load and load != "standalone":
        for item in (i.strip() for i in load.split(",")):
            name, sep, url = item.partition("=")
            url = url if sep else name
            if item and url not in named:
                listed.append(
                    ArchiveToLoad(url=url, model_name=name if sep else None, workers=workers)
                )
    return listed


def _models(models: str | None, workers: int) -> list[ArchiveToLoad]:
    listed: list[ArchiveToLoad] = []
    if models:
        try:
            spec = json.loads(models)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"models: not JSON ({exc})", field="models") from None
        if not isinstance(spec, dict):
            raise InvalidInput("models: must be a JSON object of model names", field="models")
        for name, versions in spec.items():
            if not isinstance(versions, dict):
                raise InvalidInput(f"models.{name}: must map versions to settings", field="models")
            for version, conf in versions.items():
                if not isinstance(conf, dict) or not isinstance(conf.get("marName"), str):
                    raise InvalidInput(f"models.{name}.{version}: needs a marName", field="models")
                listed.append(
                    ArchiveToLoad(
                        url=str(conf["marName"]),
                        model_name=name,
                        workers=int(conf.get("minWorkers", workers)),
                        batch_size=conf.get("batchSize"),
                        max_batch_delay=conf.get("maxBatchDelay"),
                        default=bool(conf.get("defaultVersion", False)),
                    )
                )
    return listed


def all_archives(model_store: Path | None, workers: int = 1) -> list[ArchiveToLoad]:
    """`load_models=all`: every `.mar` in the model store."""
    if model_store is None or not model_store.is_dir():
        return []
    return [ArchiveToLoad(url=p.name, workers=workers) for p in sorted(model_store.glob("*.mar"))]
