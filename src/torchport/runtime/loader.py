"""Building a runnable model and its handler from an unpacked package's files."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from torchport.archive import HandlerEntry, Manifest, ModelEntry, ModelKind
from torchport.errors import ModelLoadError, UnsafeContent
from torchport.runtime.handler import Handler, HandlerContext
from torchport.runtime.weights import assign_weights, loaded_weights, shared_file


def load_model(
    entry: ModelEntry,
    files: Path,
    digests: dict[str, str] | None = None,
    weights_dir: Path | None = None,
    device: str = "cpu",
) -> Any:
    """The callable model described by `entry`, in eval mode: on the CPU, but for a code
    model's weights (read from their file straight to `device`) and the models that run
    where they were built (AOTInductor, ONNX), on `device`.

    Nothing is unpickled: weights are safetensors, programs are read by torch's own
    exported-program, AOTInductor and TorchScript loaders, ONNX files by ONNX Runtime.
    Safetensors weights are mapped, not copied: from the one copy of that file in
    `weights_dir` (by its sha256 in `digests`) when given, shared with every process and
    version that maps it. An ONNX model is run by ONNX Runtime on `device` (its CUDA
    provider for a GPU), an AOTInductor model only on the kind of device it was compiled
    for; other models are placed afterwards (`precision.place_model`).
    """
    path = files / entry.file
    if entry.kind is ModelKind.HANDLER:
        return None  # the handler loads it (a SageMaker script's model_fn)
    try:
        if entry.kind is ModelKind.CODE:
            return _load_code(entry, files, digests or {}, weights_dir, device)
        if entry.kind is ModelKind.EXPORTED:
            return torch.export.load(str(path)).module()
        if entry.kind is ModelKind.TORCHSCRIPT:
            return torch.jit.load(str(path), map_location="cpu").eval()  # type: ignore[no-untyped-call]
        if entry.kind is ModelKind.AOTI:
            from torchport.runtime.aoti_model import AotiModel, check_compiled_for

            check_compiled_for(entry.compiled_for or "cpu", device, entry.file)
            return AotiModel(path, device)
        if entry.kind is ModelKind.ONNX:
            from torchport.runtime.onnx_model import OnnxModel

            return OnnxModel(path, device=device)
    except (ModelLoadError, UnsafeContent):
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load the {entry.kind.value} model {entry.file}: {one_line(exc)}"
        ) from exc
    raise ModelLoadError(f"model kind '{entry.kind.value}' cannot run in this torchport build")


def compile_model(model: Any) -> Any:
    """`torch.compile` the model (lazily: compilation happens on its first calls)."""
    if isinstance(model, torch.jit.ScriptModule):
        raise ModelLoadError(
            "compile: a TorchScript model cannot be compiled with torch.compile; "
            "package the module (code and weights, or exported) instead"
        )
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(
            f"compile: the model is a {type(model).__name__} (already compiled or not torch), "
            "not a Module that torch.compile can take"
        )
    return torch.compile(model)


def _load_code(
    entry: ModelEntry, files: Path, digests: dict[str, str], weights_dir: Path | None, device: str
) -> torch.nn.Module:
    if not entry.factory:
        raise ModelLoadError("a code model needs a factory (FILE.py:FACTORY)")
    module = import_file(files / entry.file)
    factory = getattr(module, entry.factory, None)
    if not callable(factory):
        raise ModelLoadError(f"{entry.file} has no callable '{entry.factory}'")
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(
            f"{entry.file}:{entry.factory}() returned {type(model).__name__}, not a torch.nn.Module"
        )
    if entry.weights:
        path = files / entry.weights
        digest = digests.get(entry.weights)
        mapped = shared_file(path, digest, weights_dir) if digest else path
        # Straight from the mapped file to the device: a GPU's weights keep no host copy.
        assign_weights(model, loaded_weights(read_safetensors(mapped, device)))
    return model.eval()


def read_safetensors(path: Path, device: str = "cpu") -> dict[str, torch.Tensor]:
    """Tensors from a safetensors file, on `device`; anything else (a pickle included) is
    refused."""
    try:
        return load_file(str(path), device=device)
    except (SafetensorError, OSError, ValueError) as exc:
        raise UnsafeContent(
            f"weights {path.name} are not a valid safetensors file ({one_line(exc)}); "
            "only safetensors weights are loaded"
        ) from None


def load_handler(entry: HandlerEntry | None, model: Any, context: HandlerContext) -> Handler:
    if entry is None:
        return Handler(model, context)
    if entry.api == "torchserve":
        from torchport.runtime.torchserve import TorchServeHandler

        return TorchServeHandler(model, context, entry)
    if entry.api == "sagemaker":
        from torchport.runtime.sagemaker import SageMakerHandler

        return SageMakerHandler(model, context, entry)
    module = import_file(context.files / entry.file)
    cls = getattr(module, entry.object, None)
    if not (isinstance(cls, type) and issubclass(cls, Handler)):
        raise ModelLoadError(
            f"{entry.file}:{entry.object} must be a subclass of torchport.runtime.Handler"
        )
    try:
        return cls(model, context)
    except Exception as exc:
        raise ModelLoadError(
            f"{entry.file}:{entry.object} failed to start: {one_line(exc)}"
        ) from exc


def import_file(path: Path, builtins: dict[str, Any] | None = None) -> ModuleType:
    """Import a package's Python file under a name unique to its location and content;
    `builtins`, when given, are the module's own (its `import` statements call their
    `__import__`)."""
    if not path.is_file():
        raise ModelLoadError(f"{path.name} is missing")
    tag = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    name = f"torchport_package_{tag}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ModelLoadError(f"cannot import {path.name}")
    module = importlib.util.module_from_spec(spec)
    if builtins is not None:
        module.__dict__["__builtins__"] = builtins
    sys.modules[name] = module  # dataclasses and pickling-free torch tooling look here
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise ModelLoadError(f"importing {path.name} failed: {one_line(exc)}") from exc
    return module


def handler_context(manifest: Manifest, files: Path, device: str = "cpu") -> HandlerContext:
    return HandlerContext(
        name=manifest.name,
        files=files,
        input_names=[s.name for s in manifest.signature.inputs],
        output_names=[s.name for s in manifest.signature.outputs],
        signature=manifest.signature,
        options={"max_batch_size": manifest.runtime.batch_size_on(device)},
    )


def one_line(exc: BaseException) -> str:
    """`Type: the first line of its message` (at most 200 characters of it), for errors
    that name what failed in a user's code without its traceback."""
    text = str(exc).strip().splitlines()
    first = text[0][:200] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__
