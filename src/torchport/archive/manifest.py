"""`MANIFEST.json`: what a package holds and how to run it."""

from __future__ import annotations

import enum
import json
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from torchport.errors import InvalidInput, PackageError
from torchport.types import Signature

FORMAT_VERSION = 1
MANIFEST_NAME = "MANIFEST.json"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
"""A model's name: in a package's manifest, and in the store (under another name)."""
_NAME = re.compile(NAME_PATTERN)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_model_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidInput(
            f"model name {name!r} is invalid: use letters, digits, '.', '_' and '-' "
            "(up to 128, starting with a letter or digit)",
            field="name",
        )
    return name


class ModelKind(enum.StrEnum):
    """How the model is stored in the package."""

    CODE = "code"  # model.py with a factory, plus safetensors weights
    EXPORTED = "exported"  # torch.export program (.pt2)
    TORCHSCRIPT = "torchscript"  # TorchScript archive (.pt)
    ONNX = "onnx"
    AOTI = "aoti"  # AOTInductor package (.pt2)
    HANDLER = "handler"  # the handler builds the model itself (a SageMaker script's model_fn)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelEntry(_Strict):
    kind: ModelKind
    file: str
    """The model file inside the package (model.py, model.pt2, ...)."""
    factory: str | None = None
    """For `code`: the function or class in `file` that builds the module (no arguments)."""
    weights: str | None = None
    """For `code`: the safetensors file loaded into the module with `strict=True`."""
    compiled_for: Literal["cpu", "cuda"] | None = None
    """For `aoti`: the device its kernels were compiled for (None: cpu); it runs only
    there. Other kinds run on any device."""


class HandlerEntry(_Strict):
    file: str
    object: str = "Handler"
    """The `Handler` subclass in `file`; for a TorchServe handler, the function TorchServe
    would call (its `module:function`), used when the module has it."""
    api: Literal["torchserve", "sagemaker"] | None = None
    """`torchserve`: `file` is a TorchServe handler; `sagemaker`: a SageMaker inference
    script; each run unchanged (the package has the raw signature, `torchport.raw_io`).
    None: a torchport `Handler`."""


CPU_BATCH_SIZE = 8
GPU_BATCH_SIZE = 64
"""A version's batch size on each kind of device when its package and config leave it
open: a GPU runs 64 rows in little more time than 8, a CPU's time grows with the rows."""


class RuntimeDefaults(_Strict):
    """Default serving settings; a server may override them per version."""

    max_batch_size: int | None = Field(default=None, ge=1, le=4096)
    """Most rows in one batch. None: the device's default (`batch_size_on`): 8 on the CPU,
    64 on a GPU, where more rows cost a batch's kernels little more time."""
    max_batch_delay_ms: float = Field(default=2.0, ge=0, le=10_000)
    workers: int | None = Field(default=None, ge=1, le=64)
    """Batches run side by side; None: as many as the server's cores allow."""
    max_queue: int = Field(default=256, ge=1, le=100_000)
    target_p99_ms: float | None = Field(default=None, gt=0, le=600_000)
    """A latency target: batch sizes are chosen to keep p99 under it."""
    compile: bool = False
    """Compile the model with `torch.compile` once at load (warm-up runs the compiled
    model at several batch sizes, so no request waits for compilation)."""
    worker_kind: Literal["thread", "process"] = "thread"
    """`thread`: batches run on threads of the server (models that release the GIL);
    `process`: in worker processes, for heavy Python pre/post-processing."""
    max_workers: int | None = Field(default=None, ge=1, le=64)
    """On Ray (`--backend ray`, `torchport ray deploy`): replicas scale with load between
    `workers` and this; None: always `workers`. The local backend runs `workers`."""
    scale_up_delay_s: float = Field(default=10.0, ge=0, le=3600)
    """How long load must call for more Ray replicas before one is added."""
    scale_down_delay_s: float = Field(default=300.0, ge=0, le=86_400)
    """How long load must allow fewer Ray replicas before one is removed."""
    residency: Literal["always", "on_demand"] | None = None
    """`always`: loaded at start and kept; `on_demand`: loaded by the first request and
    evicted (least recently used) when another load needs room within the server's
    `max_resident_bytes`. None: the server's `residency` setting."""
    device: str | None = Field(default=None, pattern=r"^(cpu|auto|cuda(:\d{1,2})?)$")
    """`cpu`, `cuda` (the first GPU), `cuda:N`, or `auto` (the GPU with the most free
    memory that fits the version; the CPU on a machine without one). None: the server's
    `device` setting."""
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    """Weights cast at load and floating inputs cast on the way in; outputs come back as
    float32. Checked against the package's examples when set (FP16's tolerance; bf16's is
    5e-2)."""

    def batch_size_on(self, device: str) -> int:
        """The most rows in one batch on `device` (`cpu`, `cuda:N`): the setting, else
        the device's default."""
        if self.max_batch_size is not None:
            return self.max_batch_size
        return GPU_BATCH_SIZE if device.startswith("cuda") else CPU_BATCH_SIZE

    @model_validator(mode="after")
    def _max_workers_at_least_workers(self) -> RuntimeDefaults:
        most, least = self.max_workers, self.workers
        if most is not None and least is not None and most < least:
            raise ValueError(f"max_workers ({most}) is below workers ({least})")
        return self


class Example(_Strict):
    """An input (JSON-like nested lists) and the output the packaged model gave for it."""

    inputs: dict[str, Any]
    outputs: dict[str, Any]


class OutputParity(_Strict):
    """How far one output of an export is from the original model's, over every case."""

    name: str
    max_abs_error: float
    max_rel_error: float
    atol: float
    rtol: float
    mismatched: int = 0
    """Elements past `atol + rtol * |expected|` (for exact types: elements that differ)."""
    passed: bool


class Parity(_Strict):
    """The parity check an export ran against the model it came from."""

    passed: bool
    cases: int
    """Input batches compared: the package's examples, then random inputs."""
    batch_sizes: list[int]
    outputs: list[OutputParity]


class ExportInfo(_Strict):
    """Where an exported package came from and how closely it matches it."""

    source_digest: str
    """sha256 of the package it was exported from."""
    source_kind: ModelKind
    parity: Parity
    checked_on: str = "cpu"
    """The device the export's parity was checked on (`cpu`, `cuda:N`), against the
    source model on the CPU in float32."""


class Manifest(_Strict):
    format_version: int
    name: str = Field(pattern=NAME_PATTERN)
    created_at: datetime
    torchport_version: str
    torch_version: str
    description: str = ""
    model: ModelEntry
    handler: HandlerEntry | None = None
    signature: Signature
    runtime: RuntimeDefaults = Field(default_factory=RuntimeDefaults)
    files: dict[str, str]
    """sha256 (hex) of every file in the package other than this manifest."""
    examples: list[Example] = Field(default_factory=list)
    export: ExportInfo | None = None
    """Set on packages written by `torchport export`: the source and the parity report."""
    labels: dict[str, str] | None = None
    """Names the model had where it came from (`torchserve_version`: a `.mar`'s own
    version, which TorchServe's clients and calls name it by); kept with each version."""

    @field_validator("files")
    @classmethod
    def _hex_digests(cls, files: dict[str, str]) -> dict[str, str]:
        for name, digest in files.items():
            if not _SHA256.match(digest):
                raise ValueError(f"file '{name}' has no sha256 hex digest")
        return files

    def to_json(self) -> str:
        return self.model_dump_json(indent=2, exclude_none=True)


def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def parse_manifest(raw: bytes) -> Manifest:
    """Parse and validate `MANIFEST.json`, raising `PackageError` with a one-line reason."""
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{MANIFEST_NAME} is not valid JSON: {exc}") from None
    except RecursionError:
        raise PackageError(f"{MANIFEST_NAME} is nested too deeply") from None
    if not isinstance(data, dict):
        raise PackageError(f"{MANIFEST_NAME} must be a JSON object")
    version = data.get("format_version")
    # Checked first, so a newer package is refused for its version, not for its new keys.
    if version != FORMAT_VERSION:
        raise PackageError(
            f"{MANIFEST_NAME}: format_version {version!r} is not supported "
            f"(this torchport reads format_version {FORMAT_VERSION})",
            field="format_version",
        )
    try:
        manifest = Manifest.model_validate(data)
    except ValidationError as exc:
        raise PackageError(f"{MANIFEST_NAME}: {describe_validation_error(exc)}") from None
    for ref in referenced_files(manifest):
        if ref not in manifest.files:
            raise PackageError(f"{MANIFEST_NAME}: '{ref}' is referenced but not in files")
    _check_examples(manifest)
    return manifest


def _check_examples(manifest: Manifest) -> None:
    """Every example names exactly the signature's inputs and outputs."""
    signature = manifest.signature
    for i, example in enumerate(manifest.examples):
        for what, got, specs in (
            ("inputs", example.inputs, signature.inputs),
            ("outputs", example.outputs, signature.outputs),
        ):
            want = {spec.name for spec in specs}
            optional = {spec.name for spec in specs if spec.optional}
            if not want - optional <= set(got) <= want:
                missing, extra = sorted(want - optional - set(got)), sorted(set(got) - want)
                problem = f"lacks '{missing[0]}'" if missing else f"has unknown '{extra[0]}'"
                raise PackageError(
                    f"{MANIFEST_NAME}: examples[{i}].{what} {problem}",
                    field=f"examples[{i}].{what}",
                )


def referenced_files(manifest: Manifest) -> list[str]:
    refs = [manifest.model.file]
    if manifest.model.weights:
        refs.append(manifest.model.weights)
    if manifest.handler:
        refs.append(manifest.handler.file)
    return refs


def describe_validation_error(exc: ValidationError) -> str:
    """One line naming the first bad field: `unknown key 'x'` or `field 'a.b': problem`."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        return f"unknown key '{where}'"
    if err["type"] == "missing":
        return f"missing key '{where}'"
    if not where:  # a check across fields
        return str(err["msg"]).removeprefix("Value error, ")
    return f"field '{where}': {err['msg']}"
