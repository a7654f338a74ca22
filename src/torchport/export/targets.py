"""Writing a model as each export target: TorchScript, a `torch.export` program, an
AOTInductor package, ONNX. Each takes the module and sample positional arguments (what
the package's handler passes its model) and returns the package's new model entry."""

from __future__ import annotations

import contextlib
import copy
import enum
import io
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import torch

from torchport.archive import ModelEntry, ModelKind
from torchport.errors import TorchportError


class Target(enum.StrEnum):
    TORCHSCRIPT = "torchscript"
    EXPORTED = "exported"
    AOTI = "aoti"
    ONNX = "onnx"

    @property
    def kind(self) -> ModelKind:
        return ModelKind(self.value)

    @property
    def file(self) -> str:
        return _FILES[self]


FIXED_PRECISION = frozenset({Target.AOTI, Target.ONNX})
"""Targets that run in the precision they were exported in (float32): not torch modules,
so no weights to cast at load."""

_FILES = {
    Target.TORCHSCRIPT: "model.pt",
    Target.EXPORTED: "model.pt2",
    Target.AOTI: "model_aoti.pt2",
    Target.ONNX: "model.onnx",
}


class ExportFailed(TorchportError):
    """The model could not be written as the requested target."""

    code = "export_failed"


def write_model(
    target: Target, model: Any, args: tuple[Any, ...], dest: Path, device: str = "cpu"
) -> ModelEntry:
    """Write `model` as `target` into directory `dest`; raises `ExportFailed` naming why.

    AOTInductor compiles kernels for one kind of device: `device`'s (the model and its
    sample arguments are copied there to compile). The other targets are written from the
    CPU and run on any device."""
    path = dest / target.file
    compiled_for: Literal["cpu", "cuda"] | None = None
    try:
        with warnings.catch_warnings(), _quiet(), torch.no_grad():
            warnings.simplefilter("ignore")
            if target is Target.TORCHSCRIPT:
                _torchscript(model, args, path)
            elif target is Target.EXPORTED:
                torch.export.save(_program(model, args), str(path))
            elif target is Target.AOTI:
                compiled_for = "cuda" if device.startswith("cuda") else "cpu"
                on_device, moved = _on(model, args, device)
                torch._inductor.aoti_compile_and_package(
                    _program(on_device, moved), package_path=str(path)
                )
            else:
                _onnx(model, args, path)
    except ExportFailed:
        raise
    except torch.cuda.OutOfMemoryError as exc:
        raise ExportFailed(f"{_label(target)} ran out of memory on {device}: {cause(exc)}") from exc
    except Exception as exc:
        raise ExportFailed(f"{_label(target)} failed: {cause(exc)}") from exc
    return ModelEntry(kind=target.kind, file=target.file, compiled_for=compiled_for)


def _on(model: Any, args: tuple[Any, ...], device: str) -> tuple[Any, tuple[Any, ...]]:
    """A copy of `model` and `args` on `device` (the originals, on the CPU, as they are)."""
    if device == "cpu" or not isinstance(model, torch.nn.Module):
        return model, args
    moved = tuple(a.to(device) if isinstance(a, torch.Tensor) else a for a in args)
    return copy.deepcopy(model).to(device), moved


def _torchscript(model: Any, args: tuple[Any, ...], path: Path) -> None:
    if isinstance(model, torch.jit.ScriptModule):
        scripted = model
    else:
        if not isinstance(model, torch.nn.Module):
            raise ExportFailed(f"TorchScript needs a torch.nn.Module, not {type(model).__name__}")
        # Tracing records the operations run on the sample; the parity check then tries
        # other batch sizes and lengths, which catches a trace that specialised on them.
        scripted = torch.jit.trace(_eval_mode(model), args, check_trace=False)  # type: ignore[no-untyped-call]
    torch.jit.save(scripted, str(path))


def _eval_mode(model: torch.nn.Module) -> torch.nn.Module:
    """The model in eval mode. A loaded exported program's module has no training mode to
    leave, and refuses `.eval()`."""
    try:
        return model.eval()
    except NotImplementedError:
        return model


def dynamic_shapes(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """Every axis of every tensor argument left for torch.export to decide (batch and
    sequence axes stay dynamic; the sample has no axis of size 1 to specialise on)."""
    return tuple(
        {i: torch.export.Dim.AUTO for i in range(a.dim())} if isinstance(a, torch.Tensor) else None
        for a in args
    )


def _program(model: Any, args: tuple[Any, ...]) -> torch.export.ExportedProgram:
    if isinstance(model, torch.export.ExportedProgram):
        return model
    if not isinstance(model, torch.nn.Module):
        raise ExportFailed(f"torch.export needs a torch.nn.Module, not {type(model).__name__}")
    return torch.export.export(_eval_mode(model), args, dynamic_shapes=dynamic_shapes(args))


def _onnx(model: Any, args: tuple[Any, ...], path: Path) -> None:
    try:
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency)
    except ImportError:
        raise ExportFailed(
            "ONNX export needs onnx and onnxscript: pip install 'torchport[onnx]'"
        ) from None
    program = _program(model, args)
    onnx_program = torch.onnx.export(program, args, dynamo=True, verbose=False, optimize=True)
    if onnx_program is None:
        raise ExportFailed("the ONNX exporter returned nothing")
    onnx_program.save(str(path), external_data=False)


def cause(exc: BaseException) -> str:
    """The line of an exporter's error that says why (a graph break, an operator)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    keys = ("unsupported", "data-dependent", "not supported", "could not", "cannot", "guard")
    why = next((line for line in lines if any(k in line.lower() for k in keys)), None)
    text = why or (lines[0] if lines else "")
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__


def _label(target: Target) -> str:
    return {
        Target.TORCHSCRIPT: "TorchScript tracing",
        Target.EXPORTED: "torch.export",
        Target.AOTI: "AOTInductor compilation",
        Target.ONNX: "ONNX export",
    }[target]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Exporters log at warning for things the parity check judges anyway, and
    torch.export prints the partial graph to stderr when it fails: the error says why."""
    loggers = [logging.getLogger(n) for n in ("torch", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)
