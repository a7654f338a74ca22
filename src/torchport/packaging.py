"""Building a package: `torchport.package(...)` and `torchport package`.

The model is loaded from the staged files through the same runtime path a user's
`torchport.load` takes, run on the example, and only then written: the signature's
outputs and the example's expected outputs come from that run.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from torchport.archive import (
    Example,
    HandlerEntry,
    Manifest,
    ModelEntry,
    ModelKind,
    RuntimeDefaults,
    check_model_name,
    write_package,
)
from torchport.archive.manifest import FORMAT_VERSION, describe_validation_error, now
from torchport.archive.paths import check_member_name
from torchport.errors import InvalidInput, ModelLoadError, PackageError, UnsafeContent
from torchport.runtime import Handler
from torchport.runtime.handler import HandlerContext
from torchport.runtime.loader import load_handler, load_model, one_line, read_safetensors
from torchport.tensors import as_numpy, infer_spec, to_jsonable
from torchport.types import Signature, Tensors
from torchport.version import __version__


def package(
    module: torch.nn.Module | None = None,
    *,
    name: str,
    out: str | Path,
    example: Mapping[str, Any] | None = None,
    signature: Signature | Mapping[str, Any] | None = None,
    code: str | None = None,
    weights: str | Path | None = None,
    exported: str | Path | None = None,
    torchscript: str | Path | None = None,
    handler: str | Path | None = None,
    handler_api: Literal["torchserve", "sagemaker"] | None = None,
    handler_member: str = "handler.py",
    model_from_handler: bool = False,
    extra_files: Sequence[str | Path] | Mapping[str, str | Path] = (),
    runtime: RuntimeDefaults | Mapping[str, Any] | None = None,
    description: str = "",
    labels: Mapping[str, str] | None = None,
) -> Manifest:
    """Write a package to `out` and return its manifest.

    Give the model one way:
    - `module` alone: a live `nn.Module`, saved as a `torch.export` program (no code needed);
      with `code="model.py:build"`, saved instead as that code plus the module's weights;
      a `torch.jit.ScriptModule` is saved as TorchScript;
    - `code` (+ `weights`, a safetensors file): a file and a factory that builds the module;
    - `exported`: a `.pt2` file from `torch.export.save`;
    - `torchscript`: a TorchScript file from `torch.jit.save`.

    `example` (input name → numpy array, tensor or nested list) is run through the model;
    the signature's outputs, when not given, and the example's expected outputs come from
    that run. `handler` is `handler.py` or `handler.py:ClassName`; with
    `handler_api="torchserve"` it is a TorchServe handler (`handler.py[:function]`), with
    `"sagemaker"` a SageMaker inference script, and the signature is
    `torchport.raw_io.RAW_SIGNATURE`; `handler_member` names it in the package, and
    `model_from_handler` says the handler loads the model itself (no model is given).
    `extra_files` ship beside the model, each under its own name, or under the member
    names a mapping gives. Raises
    `torchport.errors.TorchportError` subclasses, and writes nothing on failure.
    """
    check_model_name(name)
    out = Path(out)
    sources = sum(x is not None for x in (exported, torchscript)) + (
        module is not None or code is not None or model_from_handler
    )
    if sources != 1:
        raise InvalidInput(
            "give the model exactly one way: a module, code (with weights), "
            "exported or torchscript",
            field="model",
        )
    sig = _as_signature(signature)
    if example is None and sig is None:
        raise InvalidInput(
            "give an example (or a full signature): it defines the inputs and is checked "
            "on every load",
            field="example",
        )
    with tempfile.TemporaryDirectory(prefix="torchport-package-") as tmp:
        stage = Path(tmp)
        files: dict[str, Path] = {}
        handler_entry = _stage_handler(handler, handler_api, handler_member, stage, files)
        extras = (
            extra_files
            if isinstance(extra_files, Mapping)
            else {Path(extra).name: extra for extra in extra_files}
        )
        for member, extra in extras.items():
            _stage_copy(Path(extra), stage, files, check_member_name(member))

        if module is not None and code is None and torchscript is None:
            if isinstance(module, torch.jit.ScriptModule):
                target = stage / "model.pt"
                torch.jit.save(module, str(target))
                torchscript = target
            else:
                exported = _export(module, name, example, sig, handler_entry, stage, files)
        if model_from_handler:
            if handler_entry is None or handler_entry.api is None:
                raise InvalidInput(
                    "only a TorchServe or SageMaker handler loads its model itself",
                    field="handler",
                )
            entry = ModelEntry(kind=ModelKind.HANDLER, file=handler_entry.file)
        else:
            entry = _stage_model(module, code, weights, exported, torchscript, stage, files)

        inputs = _example_arrays(example, sig) if example is not None else None
        input_names = [s.name for s in sig.inputs] if sig else list(inputs or {})
        runtime_defaults = _as_runtime(runtime)
        handler_obj = _load_staged(
            name, entry, handler_entry, sig, input_names, runtime_defaults, stage, files
        )
        examples: list[Example] = []
        if inputs is not None:
            outputs = _run_example(handler_obj, inputs)
            if sig is None:
                sig = Signature(
                    inputs=[infer_spec(k, v) for k, v in inputs.items()],
                    outputs=[infer_spec(k, v) for k, v in outputs.items()],
                )
            sig.check_outputs(outputs)
            examples.append(
                Example(
                    inputs={k: to_jsonable(v) for k, v in inputs.items()},
                    outputs={k: to_jsonable(v) for k, v in outputs.items()},
                )
            )
        assert sig is not None
        manifest = Manifest(
            format_version=FORMAT_VERSION,
            name=name,
            created_at=now(),
            torchport_version=__version__,
            torch_version=torch.__version__.split("+")[0],
            description=description,
            model=entry,
            handler=handler_entry,
            signature=sig,
            runtime=runtime_defaults,
            files={},
            examples=examples,
            labels=dict(labels) if labels else None,
        )
        return write_package(out, manifest, files)


# -- staging files --------------------------------------------------------------------


def _stage_copy(src: Path, stage: Path, files: dict[str, Path], member: str) -> Path:
    if not src.is_file():
        raise InvalidInput(f"file {src} does not exist", field=member)
    if member in files:
        raise InvalidInput(f"two files would both be named '{member}' in the package")
    dest = stage / member
    if src.resolve() != dest.resolve():  # exports are written straight into the stage
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    files[member] = dest
    return dest


def _split_ref(ref: str, default: str | None) -> tuple[Path, str | None]:
    path, sep, obj = str(ref).rpartition(":")
    if not sep or not path.endswith(".py"):
        return Path(ref), default
    return Path(path), obj or default


def _stage_handler(
    handler: str | Path | None,
    api: Literal["torchserve", "sagemaker"] | None,
    member: str,
    stage: Path,
    files: dict[str, Path],
) -> HandlerEntry | None:
    if handler is None:
        return None
    default = {"torchserve": "handle", "sagemaker": "model_fn"}.get(api or "", "Handler")
    path, obj = _split_ref(str(handler), default)
    _stage_copy(path, stage, files, check_member_name(member))
    return HandlerEntry(file=member, object=obj or default, api=api)


def _stage_model(
    module: torch.nn.Module | None,
    code: str | None,
    weights: str | Path | None,
    exported: str | Path | None,
    torchscript: str | Path | None,
    stage: Path,
    files: dict[str, Path],
) -> ModelEntry:
    if exported is not None:
        _stage_copy(Path(exported), stage, files, "model.pt2")
        return ModelEntry(kind=ModelKind.EXPORTED, file="model.pt2")
    if torchscript is not None:
        _stage_copy(Path(torchscript), stage, files, "model.pt")
        return ModelEntry(kind=ModelKind.TORCHSCRIPT, file="model.pt")
    assert code is not None
    path, factory = _split_ref(code, None)
    if factory is None:
        raise InvalidInput(
            f"--model {code}: name the factory too, as FILE.py:FUNCTION", field="model"
        )
    _stage_copy(path, stage, files, "model.py")
    weights_member: str | None = None
    if module is not None:
        if weights is not None:
            raise InvalidInput("give weights or a module, not both", field="weights")
        weights_member = "weights.safetensors"
        _save_state(module.state_dict(), stage / weights_member)
        files[weights_member] = stage / weights_member
    elif weights is not None:
        weights_member = "weights.safetensors"
        _stage_weights(Path(weights), stage / weights_member)
        files[weights_member] = stage / weights_member
    return ModelEntry(kind=ModelKind.CODE, file="model.py", factory=factory, weights=weights_member)


def _stage_weights(src: Path, dest: Path) -> None:
    """Accept safetensors as is; a torch.save'd state dict only through `weights_only=True`."""
    if not src.is_file():
        raise InvalidInput(f"weights file {src} does not exist", field="weights")
    head = src.read_bytes()[:8] if src.stat().st_size >= 8 else b""
    if src.suffix == ".safetensors":
        read_safetensors(src)  # refuses anything that is not safetensors
        shutil.copyfile(src, dest)
        return
    if head[:2] != b"PK":
        # Not a torch.save zip: a raw pickle (or something else) is never loaded.
        raise UnsafeContent(
            f"weights {src.name} are neither safetensors nor a torch.save file; pickles are "
            "refused: save them with safetensors.torch.save_file(model.state_dict(), ...)",
            field="weights",
        )
    try:
        state = torch.load(str(src), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UnsafeContent(
            f"weights {src.name} hold more than tensors and are refused "
            f"(weights_only loading failed: {str(exc).splitlines()[0][:160]}); "
            "save them with safetensors",
            field="weights",
        ) from None
    if not isinstance(state, Mapping) or not all(
        isinstance(v, torch.Tensor) for v in state.values()
    ):
        raise UnsafeContent(f"weights {src.name} are not a state dict of tensors", field="weights")
    _save_state(state, dest)


def _save_state(state: Mapping[str, torch.Tensor], dest: Path) -> None:
    # safetensors refuses shared storage; contiguous copies keep tied weights loadable.
    save_file({k: v.detach().contiguous().clone() for k, v in state.items()}, str(dest))


def _export(
    module: torch.nn.Module,
    name: str,
    example: Mapping[str, Any] | None,
    sig: Signature | None,
    handler_entry: HandlerEntry | None,
    stage: Path,
    files: dict[str, Path],
) -> Path:
    if example is None:
        raise InvalidInput("exporting a module needs an example", field="example")
    inputs = _example_arrays(example, sig)
    if handler_entry is not None and handler_entry.api is not None:
        raise InvalidInput(
            "a package with a TorchServe handler keeps its model as code or TorchScript: "
            "give code= or torchscript=",
            field="handler",
        )
    context = HandlerContext(name=name, files=stage, input_names=list(inputs))
    handler = load_handler(handler_entry, module.eval(), context)
    args = handler.preprocess(inputs)
    if not isinstance(args, tuple):
        args = (args,)
    args = tuple(_at_least_two(a) for a in args)
    dims = tuple({i: torch.export.Dim.AUTO for i in range(a.dim())} for a in args)
    try:
        program = torch.export.export(module, args, dynamic_shapes=dims)
    except Exception as exc:
        raise ModelLoadError(
            f"torch.export failed for this module ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0][:200]}); package it as code instead with "
            "code='model.py:FACTORY'"
        ) from exc
    target = stage / "model.pt2"
    torch.export.save(program, str(target))
    return target


def _at_least_two(arg: Any) -> Any:
    # torch.export specializes axes of size 1; a batch of two keeps axis 0 dynamic.
    if isinstance(arg, torch.Tensor) and arg.dim() > 0 and arg.shape[0] == 1:
        return torch.cat([arg, arg])
    return arg


# -- the manifest --------------------------------------------------------------------


def _as_signature(signature: Signature | Mapping[str, Any] | None) -> Signature | None:
    if signature is None or isinstance(signature, Signature):
        return signature
    try:
        return Signature.model_validate(signature)
    except ValidationError as exc:
        raise InvalidInput(
            f"signature: {describe_validation_error(exc)}", field="signature"
        ) from None


def _example_arrays(example: Mapping[str, Any], sig: Signature | None) -> Tensors:
    if not isinstance(example, Mapping) or not example:
        raise InvalidInput("the example must map each input name to its data", field="example")
    if sig is None:
        return {str(k): as_numpy(v, str(k)) for k, v in example.items()}
    arrays = {str(k): as_numpy(v, str(k), sig.input(str(k)).datatype) for k, v in example.items()}
    sig.check_inputs(arrays)
    return arrays


def _as_runtime(runtime: RuntimeDefaults | Mapping[str, Any] | None) -> RuntimeDefaults:
    if runtime is None or isinstance(runtime, RuntimeDefaults):
        return runtime or RuntimeDefaults()
    try:
        return RuntimeDefaults.model_validate(runtime)
    except ValidationError as exc:
        raise InvalidInput(f"runtime: {describe_validation_error(exc)}", field="runtime") from None


def _load_staged(
    name: str,
    entry: ModelEntry,
    handler_entry: HandlerEntry | None,
    sig: Signature | None,
    input_names: list[str],
    runtime: RuntimeDefaults,
    stage: Path,
    files: dict[str, Path],
) -> Handler:
    """The model and handler, loaded as `torchport.load` will load them, from a copy of
    the staged files laid out as in the package."""
    files_dir = stage / "_files"
    files_dir.mkdir()
    for member, src in files.items():
        dest = files_dir / member
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    model = load_model(entry, files_dir)
    context = HandlerContext(
        name=name,
        files=files_dir,
        input_names=input_names,
        output_names=[s.name for s in sig.outputs] if sig else None,
        signature=sig,
        options={"max_batch_size": runtime.batch_size_on("cpu")},  # examples run on the CPU
    )
    return load_handler(handler_entry, model, context)


def _run_example(handler: Handler, inputs: Tensors) -> Tensors:
    try:
        with torch.inference_mode():
            return handler(inputs)
    except (InvalidInput, PackageError, ModelLoadError):
        raise
    except Exception as exc:
        raise ModelLoadError(f"the model failed on the example: {one_line(exc)}") from exc


def read_example(path: Path) -> dict[str, Any]:
    """An example/input file: a JSON object from input name to a nested list."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InvalidInput(f"example file {path} does not exist", field="example") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(
            f"example file {path} is not valid JSON: {exc}", field="example"
        ) from None
    if not isinstance(data, dict):
        raise InvalidInput(
            f"example file {path} must hold a JSON object from input name to a nested list",
            field="example",
        )
    return data
