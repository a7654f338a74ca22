"""`torchport import MODEL.mar`: a TorchServe model archive as a verified torchport package.

What the archive's `MAR-INF/MANIFEST.json` names becomes the package's parts:
- an eager model (`modelFile` + `serializedFile`, a state dict) → the model file and its
  one `nn.Module` class, the state dict read with `weights_only=True` and stored as
  safetensors; TorchScript (`serializedFile` alone) → the TorchScript file;
- the handler — a custom file (a `BaseHandler` subclass or a `handle` function, run
  unchanged) or the built-in `image_classifier` — with the raw signature
  (`torchport.raw_io`), so TorchServe's routes answer as TorchServe did;
- every other file of the archive ships as an extra file under its own name, and the
  archive's manifest as `MAR-INF/MANIFEST.json`; `model-config.yaml`'s `batchSize`,
  `maxBatchDelay` and `minWorkers` become the package's runtime defaults.

Refused, each with what to do instead: a pickled full model, a requirements file whose
packages are not installed here, handlers and model formats that are not supported.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from torchport.archive import Manifest, RuntimeDefaults, check_model_name
from torchport.archive.paths import check_member_name
from torchport.errors import InvalidInput, PackageError, TooLarge, UnsafeContent
from torchport.packaging import package
from torchport.raw_io import BODY, HEADERS, RAW_SIGNATURE
from torchport.runtime.loader import import_file
from torchport.runtime.torchserve import MAR_MANIFEST
from torchport.settings import Limits

BUILTIN_HANDLERS = {"image_classifier": ("image_classifier", "ImageClassifier")}
"""TorchServe's built-in handler names that torchport runs, and their class."""

TORCHSERVE_BUILTINS = {
    "base_handler", "image_classifier", "image_segmenter", "object_detector",
    "text_classifier", "text_handler", "densenet_handler", "vision_handler",
    "dali_image_classifier", "trt_llm_handler", "vllm_handler",
}  # fmt: skip
"""Every handler name TorchServe 0.12 knows as built-in."""

RESERVED = {"MANIFEST.json", "model.py", "handler.py", "weights.safetensors", "model.pt"}
"""Names the package itself uses: an archive file of one of these names is refused."""

_EXAMPLE_TYPES = {
    ".json": "application/json",
    ".txt": "text/plain",
    ".csv": "text/csv",
    ".npy": "application/x-npy",
}
_REQUIREMENT_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


@dataclass(frozen=True)
class Imported:
    """What `import_mar` wrote."""

    manifest: Manifest
    path: Path
    model_version: str
    """The archive's own version (`modelVersion`), as TorchServe names it."""


@dataclass
class MarContents:
    """An archive, unpacked and checked: its manifest and its files by member name."""

    manifest: dict[str, Any]
    root: Path
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def model(self) -> dict[str, Any]:
        model = self.manifest.get("model")
        return model if isinstance(model, dict) else {}


def import_mar(
    mar: str | Path,
    out: str | Path | None = None,
    *,
    name: str | None = None,
    example: str | Path | None = None,
    example_content_type: str | None = None,
    requirements_installed: bool = False,
    limits: Limits | None = None,
    progress: Callable[[str], None] | None = None,
) -> Imported:
    """Convert the TorchServe archive `mar` to a package at `out` (default: `NAME.tpa`
    beside the archive) and say what was written.

    `example` is a request body (its content type from `example_content_type`, else from
    the file's suffix); it is run through the handler and recorded as the package's
    example, which every load checks. `requirements_installed` accepts an archive with a
    requirements file once every package it names is installed here. Raises
    `torchport.errors.TorchportError` subclasses and writes nothing on failure.
    """
    say = progress or (lambda _line: None)
    mar = Path(mar)
    with tempfile.TemporaryDirectory(prefix="torchport-mar-") as tmp:
        say(f"reading {mar.name}")
        contents = read_mar(mar, Path(tmp), limits or Limits())
        model = contents.model
        model_name = check_model_name(name or str(model.get("modelName") or mar.stem))
        _check_requirements(contents, requirements_installed)
        handler, handler_object = _handler(contents, Path(tmp))
        code, weights, torchscript, exported, served_as = _model(contents, Path(tmp))
        runtime = _runtime(contents)
        manifest = dict(contents.manifest)
        manifest["model"] = {
            **model,
            "modelName": model_name,
            "handler": "handler.py",
            **({"serializedFile": served_as} if served_as else {}),
            **({"modelFile": "model.py"} if code else {}),
        }
        manifest_path = Path(tmp) / "mar-manifest.json"
        manifest_path.write_text(json.dumps(manifest, indent=2))
        extras = _extras(contents)
        extras[MAR_MANIFEST] = manifest_path
        example_inputs = example_request(example, example_content_type)
        target = Path(out) if out is not None else mar.with_name(f"{model_name}.tpa")
        say(f"checking the model and handler of '{model_name}'")
        written = package(
            name=model_name,
            out=target,
            code=code,
            weights=weights,
            torchscript=torchscript,
            exported=exported,
            handler=f"{handler}:{handler_object}" if handler_object else handler,
            handler_api="torchserve",
            signature=RAW_SIGNATURE,
            example=example_inputs,
            extra_files=extras,
            runtime=runtime,
            description=(
                f"imported from {mar.name} (TorchServe model {model.get('modelName')!s}, "
                f"version {model.get('modelVersion')!s})"
            ),
            labels={"torchserve_version": str(model.get("modelVersion") or "1.0")},
        )
        return Imported(written, target, str(model.get("modelVersion") or "1.0"))


def mar_identity(mar: Path) -> tuple[str, str]:
    """The archive's model name and version, read from its manifest alone."""
    try:
        with zipfile.ZipFile(mar) as archive:
            manifest = json.loads(archive.read("MAR-INF/MANIFEST.json"))
        model = manifest["model"]
        return str(model["modelName"]), str(model.get("modelVersion") or "1.0")
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, TypeError):
        raise PackageError(f"{mar.name} is not a TorchServe model archive", field="mar") from None


def read_mar(mar: Path, into: Path, limits: Limits) -> MarContents:
    """Unpack `mar` into `into/files`, refusing unsafe names, links and oversized contents."""
    if not mar.is_file():
        raise InvalidInput(f"{mar} does not exist", field="mar")
    if mar.stat().st_size > limits.max_package_bytes:
        raise TooLarge(f"{mar.name} is larger than max_package_bytes", field="mar")
    root = into / "files"
    root.mkdir(parents=True)
    try:
        archive = zipfile.ZipFile(mar)
    except (zipfile.BadZipFile, OSError):
        raise PackageError(
            f"{mar.name} is not a TorchServe model archive (not a zip file; a .mar made with "
            "--archive-format no-archive is a folder: zip it, or pass the folder's .mar)",
            field="mar",
        ) from None
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if len(members) > limits.max_package_files:
            raise TooLarge(f"{mar.name} holds more than {limits.max_package_files} files")
        if sum(m.file_size for m in members) > limits.max_unpacked_bytes:
            raise TooLarge(f"{mar.name} unpacks to more than max_unpacked_bytes")
        files: dict[str, Path] = {}
        for member in members:
            member_name = check_member_name(member.filename)
            if (member.external_attr >> 16) & 0o170000 == 0o120000:
                raise UnsafeContent(f"{mar.name}: '{member_name}' is a symbolic link")
            dest = root / member_name
            dest.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as src, dest.open("wb") as sink:
                shutil.copyfileobj(src, sink)
            files[member_name] = dest
    raw = files.get("MAR-INF/MANIFEST.json")
    if raw is None:
        raise PackageError(f"{mar.name} has no MAR-INF/MANIFEST.json: it is not a .mar")
    try:
        manifest = json.loads(raw.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PackageError(f"{mar.name}: MAR-INF/MANIFEST.json is not JSON ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("model"), dict):
        raise PackageError(f"{mar.name}: MAR-INF/MANIFEST.json has no 'model' object")
    return MarContents(manifest=manifest, root=root, files=files)


def _check_requirements(contents: MarContents, installed_ok: bool) -> None:
    requirements = contents.model.get("requirementsFile")
    if not requirements:
        return
    path = contents.files.get(str(requirements))
    check_requirements_text(
        str(requirements), path.read_text() if path is not None else "", installed_ok
    )


def check_requirements_text(where: str, text: str, installed_ok: bool) -> None:
    """Refuse a requirements file unless its packages are installed here (and said so)."""
    names = [
        m.group(1)
        for line in text.splitlines()
        if (m := _REQUIREMENT_NAME.match(line)) and not line.lstrip().startswith(("#", "-"))
    ]
    if not installed_ok:
        raise UnsafeContent(
            f"the archive's {where} would install packages at load "
            f"({', '.join(names) or 'none named'}); torchport never installs packages while "
            "loading a model: install them into the environment torchport runs in, then "
            "import again with --requirements-installed",
            field="requirementsFile",
        )
    missing = []
    for requirement in names:
        try:
            importlib.metadata.distribution(requirement)
        except importlib.metadata.PackageNotFoundError:
            missing.append(requirement)
    if missing:
        raise InvalidInput(
            f"{where} names packages that are not installed here: {', '.join(missing)}",
            field="requirementsFile",
        )


def _handler(contents: MarContents, tmp: Path) -> tuple[Path, str | None]:
    """The handler file to package and the function TorchServe would call in it."""
    declared = str(contents.model.get("handler") or "")
    if not declared:
        raise PackageError("the archive's manifest names no handler", field="handler")
    module, _, function = declared.partition(":")
    module_file = module if module.endswith(".py") else f"{module}.py"
    module_file = module_file.rsplit("/", 1)[-1]
    if module_file in contents.files:
        return contents.files[module_file], function or None
    builtin = module.removesuffix(".py")
    if builtin in BUILTIN_HANDLERS:
        module_name, cls = BUILTIN_HANDLERS[builtin]
        generated = tmp / "builtin_handler.py"
        generated.write_text(
            f'"""TorchServe\'s built-in {builtin} handler."""\n\n'
            f"from ts.torch_handler.{module_name} import {cls} as _BuiltIn\n\n\n"
            f"class {cls}(_BuiltIn):\n    pass\n"
        )
        return generated, None
    supported = ", ".join(sorted(BUILTIN_HANDLERS))
    if builtin in TORCHSERVE_BUILTINS:
        raise PackageError(
            f"TorchServe's built-in handler '{builtin}' is not supported; torchport runs "
            f"these built-ins: {supported}, and any custom handler file: write one (a "
            "BaseHandler subclass) and archive it with --handler handler.py",
            field="handler",
        )
    raise PackageError(
        f"the archive's handler '{declared}' is neither a file in the archive nor a "
        f"supported built-in ({supported})",
        field="handler",
    )


def _model(
    contents: MarContents, tmp: Path
) -> tuple[str | None, Path | None, Path | None, Path | None, str | None]:
    """(code `model.py:Class`, weights, TorchScript file, exported program, the serialized
    file's name in the package) for `package()`."""
    model = contents.model
    serialized = str(model.get("serializedFile") or "") or None
    model_file = str(model.get("modelFile") or "") or None
    weights = contents.files.get(serialized) if serialized else None
    if serialized and weights is None:
        raise PackageError(f"the archive names serializedFile '{serialized}' but lacks it")
    if model_file:
        source = contents.files.get(model_file)
        if source is None:
            raise PackageError(f"the archive names modelFile '{model_file}' but lacks it")
        staged = tmp / "model" / "model.py"
        staged.parent.mkdir()
        shutil.copyfile(source, staged)
        cls = _model_class(staged)
        return (
            f"{staged}:{cls}",
            weights,
            None,
            None,
            "weights.safetensors" if weights is not None else None,
        )
    if weights is None:
        raise PackageError(
            "the archive has neither a model file nor a serialized model; torchport loads "
            "the model from the package (a handler that downloads or builds it is not "
            "supported)",
            field="serializedFile",
        )
    suffix = weights.suffix.lower()
    if suffix in (".pt", ".pth", ".torchscript"):
        if not is_torchscript(weights):
            raise UnsafeContent(
                f"{weights.name} is a pickled model (torch.save(model)); torchport never "
                "unpickles a model: archive its state dict with the model's class "
                "(torch-model-archiver --model-file model.py --serialized-file "
                "state_dict.pt) or a TorchScript file (torch.jit.save(torch.jit.script(m)))",
                field="serializedFile",
            )
        return None, None, weights, None, "model.pt"
    if suffix == ".pt2":
        try:
            torch.export.load(str(weights))
        except Exception as exc:
            raise PackageError(
                f"{weights.name} is not a torch.export program ({type(exc).__name__}); an "
                "AOTInductor package is not imported: export it with `torchport export --to "
                "aoti` from an imported package instead",
                field="serializedFile",
            ) from None
        return None, None, None, weights, "model.pt2"
    raise PackageError(
        f"the archive's serialized model {weights.name} is not supported by the import "
        "(supported: a state dict with a model file, TorchScript, or a torch.export "
        "program); export it with `torchport export` from a package instead",
        field="serializedFile",
    )


def _model_class(model_py: Path) -> str:
    """The one class `model_py` defines (TorchServe's rule), an `nn.Module`."""
    module = import_file(model_py)
    classes = [
        obj
        for obj in vars(module).values()
        if isinstance(obj, type) and obj.__module__ == module.__name__
    ]
    if len(classes) != 1 or not issubclass(classes[0], torch.nn.Module):
        found = ", ".join(c.__name__ for c in classes) or "none"
        raise PackageError(
            f"the archive's model file must define exactly one class, an nn.Module "
            f"(found: {found})",
            field="modelFile",
        )
    return classes[0].__name__


def is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") or "/code/" in n for n in names)


def _runtime(contents: MarContents) -> RuntimeDefaults:
    """TorchServe's defaults (one request a batch, one worker), or model-config.yaml's."""
    settings: dict[str, Any] = {"max_batch_size": 1, "max_batch_delay_ms": 100.0, "workers": 1}
    config_file = contents.model.get("configFile")
    path = contents.files.get(str(config_file)) if config_file else None
    if path is not None:
        import yaml

        try:
            config = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise PackageError(f"{config_file} is not valid YAML: {exc}") from None
        config = config if isinstance(config, dict) else {}
        if isinstance(config.get("batchSize"), int):
            settings["max_batch_size"] = config["batchSize"]
        if isinstance(config.get("maxBatchDelay"), int | float):
            settings["max_batch_delay_ms"] = float(config["maxBatchDelay"])
        workers = config.get("minWorkers")
        if isinstance(workers, int) and workers > 1:
            # A TorchServe worker is a process with its own handler: so is torchport's.
            settings.update(workers=workers, worker_kind="process")
    try:
        return RuntimeDefaults.model_validate(settings)
    except ValueError as exc:
        raise PackageError(f"{config_file}: {exc}") from None


def _extras(contents: MarContents) -> dict[str, Path]:
    """Every file of the archive the package does not hold as its model or handler."""
    model = contents.model
    module = str(model.get("handler") or "").partition(":")[0]
    consumed = {
        "MAR-INF/MANIFEST.json",
        str(model.get("serializedFile") or ""),
        module if module.endswith(".py") else f"{module}.py",
    }
    if model.get("modelFile") == "model.py":
        consumed.add("model.py")
    extras: dict[str, Path] = {}
    for member, path in contents.files.items():
        if member in consumed:
            continue
        if member in RESERVED:
            raise PackageError(
                f"the archive holds '{member}', a name the torchport package uses itself; "
                "rename it in the archive",
                field=member,
            )
        extras[member] = path
    return extras


def example_request(
    example: str | Path | None, content_type: str | None, accept: str | None = None
) -> Mapping[str, Any] | None:
    """A request body file as the package's example (the raw signature's row): its
    content type given, else by its suffix; `accept`, when given, asks for an answer type."""
    if example is None:
        return None
    path = Path(example)
    if not path.is_file():
        raise InvalidInput(f"example file {path} does not exist", field="example")
    media = content_type if content_type is not None else _EXAMPLE_TYPES.get(path.suffix, "")
    headers = {"content-type": media} if media else {}
    if accept:
        headers["accept"] = accept
    return {BODY: [path.read_bytes()], HEADERS: [json.dumps(headers)]}
