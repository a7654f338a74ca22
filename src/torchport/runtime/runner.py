"""`Runner`: the one interface every execution path shares, and the in-process runner.

`predict(batch) -> batch` takes and returns named numpy arrays whose axis 0 is the batch.
Batching, worker pools and remote backends wrap or implement this same interface.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from torchport.agreement import compare_outputs
from torchport.archive import Manifest, Package, unpack_package
from torchport.errors import InvalidInput, ModelLoadError, TorchportError
from torchport.runtime.devices import CPU, Device
from torchport.runtime.handler import Handler
from torchport.runtime.loader import compile_model, handler_context, load_handler, load_model
from torchport.runtime.placement import Placement, Workers
from torchport.runtime.precision import PRECISION_TOLERANCES, Precision, place_model
from torchport.runtime.weights import resident_bytes
from torchport.scratch import remove, scratch_dir
from torchport.settings import Limits
from torchport.tensors import json_to_arrays, to_array
from torchport.types import Signature, Tensors


@runtime_checkable
class Runner(Protocol):
    @property
    def signature(self) -> Signature: ...

    def predict(self, batch: Tensors) -> Tensors:
        """Outputs for a batch of inputs that already passed `signature.check_inputs`."""
        ...

    def close(self) -> None: ...


@runtime_checkable
class PackageRunner(Runner, Protocol):
    """A `Runner` of one package, whose manifest it knows."""

    manifest: Manifest


class Deployment(PackageRunner, Protocol):
    """A package as a server runs it: where its batches run, and what runs them now."""

    placement: Placement
    compiled: bool
    """Whether the model runs through `torch.compile`."""

    def live_workers(self) -> int | None:
        """Workers alive now, counted cheaply (a metrics scrape asks); None: as many as
        the batcher runs batches at once."""
        ...

    def workers(self) -> Workers:
        """What runs the batches now (may ask remote replicas: not on the event loop)."""
        ...


class LocalRunner:
    """A package's model and handler running in this process (on the batcher's threads)."""

    placement = Placement()

    def __init__(
        self,
        manifest: Manifest,
        handler: Handler,
        unpacked: UnpackedPackage | None = None,
        *,
        compiled: bool = False,
    ) -> None:
        self.manifest = manifest
        self.handler = handler
        self.compiled = compiled
        """Whether the model runs through `torch.compile`."""
        self.resident_bytes = 0
        """What holding the model costs: its tensors' bytes (mapped weights included), or
        its unpacked files' for a model that is not a torch module."""
        self.device: Device = CPU
        self.precision: Precision = "fp32"
        self._unpacked = unpacked  # the directory the model's files live in, owned here

    @property
    def signature(self) -> Signature:
        return self.manifest.signature

    @property
    def files(self) -> Path | None:
        """The directory of the package's unpacked files, while the runner is open."""
        return self._unpacked.files if self._unpacked is not None else None

    def live_workers(self) -> int | None:
        return None

    def workers(self) -> Workers:
        return Workers("thread", None)

    def predict(self, batch: Tensors) -> Tensors:
        with torch.inference_mode():
            outputs = self.handler(batch)
        try:
            self.signature.check_outputs(outputs)
        except InvalidInput as exc:
            # The request was fine; the package broke its own promise.
            raise TorchportError(f"model '{self.manifest.name}' output error: {exc}") from None
        return outputs

    def close(self) -> None:
        if self._unpacked is not None:
            self._unpacked.close()


class UnpackedPackage:
    """A package verified and unpacked into a private directory, removed on `close`."""

    def __init__(self, path: Path, limits: Limits | None = None) -> None:
        self.dir = scratch_dir("unpacked")
        self._cleanup = weakref.finalize(self, remove, self.dir)
        try:
            self.package: Package = unpack_package(path, self.dir / "files", limits)
        except BaseException:
            self._cleanup()
            raise

    @property
    def files(self) -> Path:
        return self.dir / "files"

    def size(self) -> int:
        """Bytes of the unpacked files."""
        return sum(p.stat().st_size for p in self.files.rglob("*") if p.is_file())

    def close(self) -> None:
        self._cleanup()


def open_runner(
    path: Path,
    limits: Limits | None = None,
    *,
    warm_up: bool = True,
    compile: bool | None = None,
    weights_dir: Path | None = None,
    device: Device = CPU,
    precision: Precision | None = None,
) -> LocalRunner:
    """Verify, unpack and load the package at `path` into a `LocalRunner`.

    The model runs on `device` (decided by `devices.place`) in `precision` (default: the
    package's runtime setting): weights moved and cast once, inputs and outputs converted
    on each call (`runtime/precision.py`).

    Weights are mapped from the one copy of their file in `weights_dir` when given (see
    `runtime/weights.py`), so processes and versions with the same weights share them.

    With `warm_up`, the package's first example runs once, so the first real request
    does not pay for lazy initialisation. `compile` (default: the package's runtime
    setting) runs the model through `torch.compile`; warm-up then compiles it for one row
    and for several, so that requests find it compiled.
    """
    unpacked = UnpackedPackage(path, limits)
    try:
        manifest = unpacked.package.manifest
        compiled = manifest.runtime.compile if compile is None else compile
        model = load_model(manifest.model, unpacked.files, manifest.files, weights_dir, str(device))
        chosen = precision or manifest.runtime.precision
        model = place_model(model, device, chosen)
        size = resident_bytes(model)
        if compiled:
            model = compile_model(model)
        context = handler_context(manifest, unpacked.files, str(device))
        handler = load_handler(manifest.handler, model, context)
        runner = LocalRunner(manifest, handler, unpacked, compiled=compiled)
        runner.resident_bytes = size if size is not None else unpacked.size()
        runner.device, runner.precision = device, chosen
        if compiled:
            _compile_by_warming_up(runner)
        elif warm_up and manifest.examples:
            runner.predict(example_inputs(manifest, 0))
        return runner
    except BaseException:
        unpacked.close()
        raise


def _compile_by_warming_up(runner: LocalRunner) -> None:
    # One row, then two and three: torch.compile specialises on a batch of one, then
    # compiles once for any batch size.
    manifest = runner.manifest
    if not manifest.examples:
        raise ModelLoadError("compile needs an example in the package to compile with")
    example = example_inputs(manifest, 0)
    try:
        for rows in (1, 2, 3):
            runner.predict({k: np.concatenate([v[:1]] * rows) for k, v in example.items()})
    except TorchportError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ModelLoadError(
            f"torch.compile failed for '{manifest.name}': {type(exc).__name__}: {first}"
        ) from exc


def example_inputs(manifest: Manifest, index: int) -> Tensors:
    return json_to_arrays(manifest.examples[index].inputs, manifest.signature)


def check_examples(runner: LocalRunner) -> list[str]:
    """Run every example of the package and compare with its recorded outputs, as every
    comparison in torchport does (`torchport.agreement`); a runner in reduced precision
    within that precision's tolerance (`PRECISION_TOLERANCES`).

    Returns one line per output that differs (empty when all agree).
    """
    manifest = runner.manifest
    problems: list[str] = []
    for i, example in enumerate(manifest.examples):
        recorded = {
            spec.name: to_array(example.outputs[spec.name], spec.datatype, name=spec.name)
            for spec in manifest.signature.outputs
        }
        got = runner.predict(example_inputs(manifest, i))
        override = PRECISION_TOLERANCES.get(runner.precision)
        for difference in compare_outputs(manifest.signature.outputs, [recorded], [got], override):
            if not difference.agrees:
                where = f" in {runner.precision}" if override else ""
                problems.append(f"example {i}{where}, {difference.describe()}")
    return problems
