"""`torchport import model.tar.gz`: a SageMaker PyTorch model as a verified package.

The archive is what SageMaker's PyTorch containers read: model artifacts at its root (a
TorchScript `model.pt`, weights, vocabularies, …) and, optionally, `code/inference.py`
with any of `model_fn`, `input_fn`, `predict_fn`, `output_fn` (or `transform_fn`) and the
helper modules beside it. Every file ships in the package under its own path; the script
runs unchanged (`torchport.runtime.sagemaker`) with the PyTorch container's defaults for
the functions it leaves out, and `/invocations` answers as that container does.

A script without `model_fn` needs the TorchScript model the default loads (`model.pt`, or
the archive's one `.pt`/`.pth` file); a requirements file is refused unless its packages
are installed here (`requirements_installed`), as for a `.mar`.
"""

from __future__ import annotations

import re
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from torchport.archive import RuntimeDefaults, check_model_name
from torchport.archive.paths import check_member_name
from torchport.errors import InvalidInput, PackageError, TooLarge, UnsafeContent
from torchport.migrate.mar import (
    Imported,
    check_requirements_text,
    example_request,
    is_torchscript,
)
from torchport.packaging import package
from torchport.raw_io import RAW_SIGNATURE
from torchport.settings import Limits

SCRIPT = "code/inference.py"
_FUNCTION = re.compile(r"^def\s+(model_fn)\s*\(", re.MULTILINE)


def import_sagemaker(
    archive: str | Path,
    out: str | Path | None = None,
    *,
    name: str | None = None,
    example: str | Path | None = None,
    example_content_type: str | None = None,
    accept: str | None = None,
    requirements_installed: bool = False,
    limits: Limits | None = None,
    progress: Callable[[str], None] | None = None,
) -> Imported:
    """Convert a SageMaker `model.tar.gz` to a package at `out` (default: `NAME.tpa`
    beside it). `name` defaults to the archive's file name before `.tar.gz`."""
    say = progress or (lambda _line: None)
    archive = Path(archive)
    model_name = check_model_name(name or _stem(archive))
    with tempfile.TemporaryDirectory(prefix="torchport-sagemaker-") as tmp:
        say(f"reading {archive.name}")
        files = read_tar(archive, Path(tmp) / "files", limits or Limits())
        requirements = files.get("code/requirements.txt")
        if requirements is not None:
            check_requirements_text(
                "code/requirements.txt", requirements.read_text(), requirements_installed
            )
        script = files.get(SCRIPT)
        if script is None:  # no script: SageMaker's defaults throughout
            script = Path(tmp) / "inference.py"
            script.write_text('"""SageMaker\'s default handlers (no inference.py)."""\n')
        has_model_fn = bool(_FUNCTION.search(script.read_text(errors="replace")))
        torchscript = None if has_model_fn else _default_model(files)
        extras = {m: p for m, p in files.items() if m != SCRIPT}
        if torchscript is not None:
            extras = {m: p for m, p in extras.items() if p != torchscript}
        if "MANIFEST.json" in extras:
            raise PackageError("the archive holds 'MANIFEST.json', a name the package uses")
        target = Path(out) if out is not None else archive.with_name(f"{model_name}.tpa")
        say(f"checking the model and script of '{model_name}'")
        written = package(
            name=model_name,
            out=target,
            torchscript=torchscript,
            model_from_handler=torchscript is None,
            handler=script,
            handler_api="sagemaker",
            handler_member=SCRIPT,
            signature=RAW_SIGNATURE,
            example=example_request(example, example_content_type, accept),
            extra_files=extras,
            runtime=RuntimeDefaults(max_batch_size=1, workers=1),
            description=f"imported from {archive.name} (SageMaker PyTorch model)",
        )
        return Imported(written, target, "1")


def read_tar(archive: Path, into: Path, limits: Limits) -> dict[str, Path]:
    """Unpack `archive` (a tar, gzipped or not) into `into`: regular files only, names
    checked, sizes bounded."""
    if not archive.is_file():
        raise InvalidInput(f"{archive} does not exist", field="archive")
    if archive.stat().st_size > limits.max_package_bytes:
        raise TooLarge(f"{archive.name} is larger than max_package_bytes", field="archive")
    try:
        tar = tarfile.open(archive, mode="r:*")  # noqa: SIM115 (closed by `with tar` below)
    except (tarfile.TarError, OSError):
        raise PackageError(
            f"{archive.name} is neither a TorchServe .mar nor a SageMaker model.tar.gz",
            field="archive",
        ) from None
    files: dict[str, Path] = {}
    total = 0
    with tar:
        for member in tar:
            if member.isdir():
                continue
            name = check_member_name(member.name.removeprefix("./"))
            if not member.isfile():
                raise UnsafeContent(f"{archive.name}: '{name}' is not a regular file")
            total += member.size
            if total > limits.max_unpacked_bytes or len(files) >= limits.max_package_files:
                raise TooLarge(f"{archive.name} unpacks to more than the package limits")
            source = tar.extractfile(member)
            if source is None:
                raise UnsafeContent(f"{archive.name}: '{name}' cannot be read")
            dest = into / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            with source, dest.open("wb") as sink:
                sink.write(source.read())
            files[name] = dest
    return files


def _default_model(files: Mapping[str, Path]) -> Path:
    """What the container's default model_fn loads: `model.pt`, or the one .pt/.pth."""
    chosen = files.get("model.pt")
    if chosen is None:
        found = [p for m, p in files.items() if "/" not in m and p.suffix in (".pt", ".pth")]
        if len(found) != 1:
            raise PackageError(
                "the archive has no model_fn in code/inference.py and not exactly one "
                f".pt/.pth file at its root (found {len(found)}): add model.pt (TorchScript) "
                "or a model_fn",
                field="model_fn",
            )
        chosen = found[0]
    if not is_torchscript(chosen):
        raise UnsafeContent(
            f"{chosen.name} is not TorchScript: the default model_fn loads TorchScript only "
            "(torch.jit.save); write a model_fn that builds the model and loads its weights",
            field="model_fn",
        )
    return chosen


def _stem(archive: Path) -> str:
    name = archive.name
    for suffix in (".tar.gz", ".tgz", ".tar"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return archive.stem
