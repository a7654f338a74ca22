"""Exporting a package: the same package with its model as another target, checked for
parity against the original.

The new package keeps the handler, extra files, signature, examples and runtime settings;
only the model changes, and `MANIFEST.json` records the source and the parity report. An
export whose parity fails is not written (unless asked, for inspection), and the server
refuses to register one.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from torchport.agreement import Tolerance
from torchport.archive import ExportInfo, Manifest, Parity, write_package
from torchport.archive.hashing import sha256_file
from torchport.archive.manifest import now, referenced_files
from torchport.errors import InvalidInput, TorchportError
from torchport.export.parity import BATCH_SIZES, compare, parity_cases
from torchport.export.targets import (
    FIXED_PRECISION,
    ExportFailed,
    Target,
    cause,
    write_model,
)
from torchport.runtime import LocalRunner, example_inputs, open_runner
from torchport.runtime.devices import Device, parse_device, place, visible_devices
from torchport.types import Array, Tensors

Progress = Callable[[str], None]


class ParityFailed(TorchportError):
    """An export that runs but answers differently from its source model."""

    code = "parity_failed"

    def __init__(self, message: str, parity: Parity) -> None:
        super().__init__(message, field="parity")
        self.parity = parity


@dataclass(frozen=True)
class ExportResult:
    target: Target
    out: Path
    """The package written (marked failed when parity failed and `keep_failed` kept it)."""
    manifest: Manifest
    parity: Parity
    export_seconds: float
    check_seconds: float
    example_args: tuple[Array, ...] = ()
    """What the handler passes the model for the package's first example: the inputs
    a program calling the exported model directly (C++, ONNX Runtime) gives it."""


def export_package(
    source: Path,
    target: Target | str,
    out: Path,
    *,
    tolerance: Tolerance | None = None,
    batch_sizes: tuple[int, ...] = BATCH_SIZES,
    keep_failed: bool = False,
    device: str = "cpu",
    progress: Progress | None = None,
) -> ExportResult:
    """Export the package at `source` to `target`, check parity, and write `out`.

    `device` (`cpu`, `cuda`, `cuda:N`) is where the export will run: AOTInductor compiles
    its kernels for it, and every target's parity is checked there, against the source on
    the CPU in float32. An AOTInductor export for a GPU is written with the runtime
    setting `device: cuda` (it runs nowhere else).

    Raises `ExportFailed` (naming the cause, and which other targets work) or
    `ParityFailed` (with the report; nothing is written). With `keep_failed`, an export
    whose parity fails is written all the same, marked failed, and returned.
    """
    target = Target(target)
    say = progress or (lambda _m: None)
    on = export_device(device)
    say(f"loading {source.name}")
    with _open(source) as runner, tempfile.TemporaryDirectory(prefix="torchport-export-") as tmp:
        cases, expected, args, first = _reference(runner, batch_sizes)
        say(f"exporting to {target.value}")
        try:
            trial = _export_and_check(runner, target, Path(tmp), cases, expected, args,
                                      tolerance, say, on)  # fmt: skip
        except ExportFailed as exc:
            say("trying the other targets")
            works = _what_works(runner, target, cases, expected, args, tolerance, on)
            raise ExportFailed(f"{exc}. {works}") from exc
        parity = trial.parity
        if not parity.passed and not keep_failed:
            raise ParityFailed(describe_failure(parity, target), parity)
        info = ExportInfo(
            source_digest=sha256_file(source),
            source_kind=runner.manifest.model.kind,
            parity=parity,
            checked_on=str(on),
        )
        say(f"writing {out}")
        manifest = write_package(out, trial.manifest.model_copy(update={"export": info}),
                                 trial.files)  # fmt: skip
    return ExportResult(
        target, out, manifest, parity, trial.export_seconds, trial.check_seconds, first
    )


def export_device(device: str) -> Device:
    """The device an export is for: `cpu`, or a GPU this machine has (`auto` is the
    server's choice among GPUs, not a device to compile for)."""
    if parse_device(device) == "auto":
        raise InvalidInput(
            "device auto: export for a named device (cpu, cuda or cuda:N)", field="device"
        )
    return place(device, 0, visible_devices())


def describe_failure(parity: Parity, target: Target) -> str:
    worst = next(o for o in parity.outputs if not o.passed)
    return (
        f"the {target.value} export does not match the original model: output "
        f"'{worst.name}' has {worst.mismatched} element(s) past the tolerance (max abs "
        f"error {worst.max_abs_error:.3g}, atol {worst.atol:.3g}, rtol {worst.rtol:.3g}) "
        f"over {parity.cases} batches; nothing was written"
    )


@contextlib.contextmanager
def _open(source: Path) -> Iterator[LocalRunner]:
    runner = open_runner(source, warm_up=False, compile=False, precision="fp32")
    try:
        handler = runner.manifest.handler
        if handler is not None and handler.api is not None:
            raise ExportFailed(
                f"{source.name} runs a {handler.api} handler on raw request bodies: its model "
                "is the handler's to call, and there is nothing to export; package the model "
                "itself (torchport package) to export it"
            )
        yield runner
    finally:
        runner.close()


def _reference(
    runner: LocalRunner, batch_sizes: tuple[int, ...]
) -> tuple[list[Tensors], list[Tensors], tuple[Any, ...], tuple[Array, ...]]:
    """The parity cases, the source's outputs for them, sample model arguments (what the
    handler passed the model on the case whose smallest axis is largest: an axis of size
    1 would be specialised by the exporters), and the model arguments of the first case."""
    manifest = runner.manifest
    examples = [example_inputs(manifest, i) for i in range(len(manifest.examples))]
    cases = parity_cases(manifest.signature, examples, batch_sizes=batch_sizes)
    handler = runner.handler
    model = handler.model
    calls: list[tuple[Any, ...]] = []

    def recorder(*args: Any, **kwargs: Any) -> Any:
        if kwargs:
            raise ExportFailed(
                "export needs the handler to call the model with positional tensors; "
                f"it passed keyword arguments {sorted(kwargs)}"
            )
        calls.append(args)
        return model(*args)

    handler.model = recorder
    try:
        expected = [runner.predict(case) for case in cases]
    finally:
        handler.model = model
    tensors = [c for c in calls if c and all(isinstance(a, torch.Tensor) for a in c)]
    if not tensors:
        raise ExportFailed("the handler passes its model something other than tensors")
    sample = max(tensors, key=lambda c: min(d for a in c for d in (*a.shape, 1 << 30)))
    first = tuple(a.numpy().copy() for a in tensors[0])
    # Tensors made under inference mode cannot be traced or exported: plain copies can.
    return cases, expected, tuple(a.clone() for a in sample), first


@dataclass(frozen=True)
class _Trial:
    manifest: Manifest
    files: dict[str, Path]
    parity: Parity
    export_seconds: float
    check_seconds: float


def _export_and_check(
    runner: LocalRunner,
    target: Target,
    stage: Path,
    cases: list[Tensors],
    expected: list[Tensors],
    args: tuple[Any, ...],
    tolerance: Tolerance | None,
    say: Progress,
    device: Device,
) -> _Trial:
    """Write the model as `target` into `stage`, package it with the source's other
    files, and compare its answers (on `device`) with the source's."""
    manifest = runner.manifest
    files_dir = runner.files
    assert files_dir is not None
    started = time.perf_counter()
    entry = write_model(target, runner.handler.model, args, stage, str(device))
    export_seconds = time.perf_counter() - started
    dropped = {manifest.model.file, manifest.model.weights}
    files = {n: files_dir / n for n in manifest.files if n not in dropped}
    files[entry.file] = stage / entry.file
    runtime: dict[str, Any] = {}
    if entry.compiled_for == "cuda":
        runtime["device"] = "cuda"
    if target in FIXED_PRECISION:
        runtime["precision"] = "fp32"
    placed = manifest.runtime.model_copy(update=runtime)
    update = {"model": entry, "created_at": now(), "export": None, "runtime": placed}
    draft = manifest.model_copy(update=update)
    for ref in referenced_files(draft):
        if ref not in files:
            raise ExportFailed(f"the package's handler needs {ref}, which the model held")
    trial = stage / f"trial-{target.value}.tpa"
    draft = write_package(trial, draft, files)
    say(f"checking parity on {len(cases)} batches")
    started = time.perf_counter()
    parity = _parity(trial, cases, expected, tolerance, device)
    return _Trial(draft, files, parity, export_seconds, time.perf_counter() - started)


def _parity(
    package: Path,
    cases: list[Tensors],
    expected: list[Tensors],
    tolerance: Tolerance | None,
    device: Device,
) -> Parity:
    try:
        # In float32 whatever the package's precision: the export's own answers.
        runner = open_runner(package, warm_up=False, compile=False, device=device,
                             precision="fp32")  # fmt: skip
    except TorchportError as exc:
        raise ExportFailed(f"the exported model does not load: {exc}") from exc
    try:
        actual = [runner.predict(case) for case in cases]
    except Exception as exc:
        raise ExportFailed(
            f"the exported model fails where the original runs: {cause(exc)}"
        ) from exc
    finally:
        runner.close()
    return compare(runner.manifest.signature, expected, actual, tolerance)


def _what_works(
    runner: LocalRunner,
    failed: Target,
    cases: list[Tensors],
    expected: list[Tensors],
    args: tuple[Any, ...],
    tolerance: Tolerance | None,
    device: Device,
) -> str:
    """Which of the quick targets export this model and match it (AOTInductor, which
    compiles for minutes, is left out: it needs torch.export to work anyway)."""
    matching: list[str] = []
    differing: list[str] = []
    for other in (Target.TORCHSCRIPT, Target.EXPORTED, Target.ONNX):
        if other is failed:
            continue
        with tempfile.TemporaryDirectory(prefix="torchport-probe-") as tmp:
            try:
                trial = _export_and_check(runner, other, Path(tmp), cases, expected, args,
                                          tolerance, lambda _m: None, device)  # fmt: skip
            except ExportFailed:
                continue
        (matching if trial.parity.passed else differing).append(other.value)
    parts = []
    if matching:
        parts.append(f"exports that work and match: {', '.join(matching)}")
    if differing:
        parts.append(f"exports that run but do not match: {', '.join(differing)}")
    if not parts:
        return "No other export of this model works; serve it as code and weights"
    return "; ".join(parts).capitalize()
