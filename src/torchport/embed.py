"""`torchport.load`: a package as an in-process model, with no server.

`predict` runs the package's own handler through the same `Runner` the servers use, so a
result here is the result a client of the server gets.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from torchport.archive import Manifest
from torchport.errors import InvalidInput
from torchport.runtime import LocalRunner, open_runner
from torchport.runtime.devices import parse_device, place, visible_devices
from torchport.runtime.precision import Precision
from torchport.settings import Limits
from torchport.store import open_store
from torchport.tensors import as_numpy
from torchport.types import Signature, Tensors


class EmbeddedModel:
    """A loaded package. Use as a context manager, or call `close()`, to free its files."""

    def __init__(self, runner: LocalRunner, *, version: int | None = None) -> None:
        self._runner = runner
        self.version = version

    @property
    def name(self) -> str:
        return self._runner.manifest.name

    @property
    def manifest(self) -> Manifest:
        return self._runner.manifest

    @property
    def signature(self) -> Signature:
        return self._runner.signature

    def predict(self, inputs: Mapping[str, Any] | Any) -> Tensors:
        """Outputs (numpy arrays by name) for a batch of inputs.

        `inputs` maps each input name to a numpy array, a torch tensor or a nested list;
        a model with a single input also takes the array alone. Arrays must have the
        declared datatype; lists are converted to it. Raises `InvalidInput` naming the
        tensor, what was expected and what was given.
        """
        specs = self.signature.inputs
        if not isinstance(inputs, Mapping):
            if len(specs) != 1:
                names = ", ".join(s.name for s in specs)
                raise InvalidInput(f"this model has several inputs ({names}): pass a dict")
            inputs = {specs[0].name: inputs}
        by_name = {s.name: s for s in specs}
        batch: Tensors = {}
        for name, value in inputs.items():
            if name not in by_name:
                expected = ", ".join(by_name)
                raise InvalidInput(
                    f"unexpected input '{name}' (expected inputs: {expected})", field=str(name)
                )
            batch[name] = as_numpy(value, name, by_name[name].datatype)
        self.signature.check_inputs(batch)
        return self._runner.predict(batch)

    def close(self) -> None:
        self._runner.close()

    def __enter__(self) -> EmbeddedModel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        ins = ", ".join(f"{s.name}: {s.datatype.value}{s.shape}" for s in self.signature.inputs)
        outs = ", ".join(f"{s.name}: {s.datatype.value}{s.shape}" for s in self.signature.outputs)
        return f"<torchport model {self.name!r} ({ins}) -> ({outs})>"


def load(
    package: str | Path,
    *,
    store: str | Path | None = None,
    version: int | None = None,
    limits: Limits | None = None,
    warm_up: bool = True,
    compile: bool | None = None,
    device: str = "cpu",
    precision: Precision | None = None,
) -> EmbeddedModel:
    """Load a package file, or with `store=` (a directory or `s3://bucket/prefix`) a model by
    name (its `default` unless `version`).

    `compile` runs the model through `torch.compile` (default: as the package says).
    `device` (`cpu`, `cuda`, `cuda:N`, `auto`: the GPU with the most free memory, else the
    CPU) and `precision` (`fp32`, `fp16`, `bf16`; default: the package's) place the model
    as a server does: weights moved and cast once, inputs and outputs converted per call.

    Every file's hash is verified before anything is loaded, and weights are never
    unpickled. Raises `torchport.errors.TorchportError` subclasses with one-line messages.
    """
    where = place(parse_device(device), 0, visible_devices() if device != "cpu" else [])
    options: dict[str, Any] = {
        "warm_up": warm_up,
        "compile": compile,
        "device": where,
        "precision": precision,
    }
    if store is None:
        if version is not None:
            raise InvalidInput("version= needs store=: a package file has no versions")
        return EmbeddedModel(open_runner(Path(package), limits, **options))
    repo = open_store(store)
    try:
        info = repo.get_version(str(package), version)
        runner = open_runner(repo.package_path(info), limits, **options)
    finally:
        repo.close()
    return EmbeddedModel(runner, version=info.version)
