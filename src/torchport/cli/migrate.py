"""`torchport import`: a TorchServe model archive (.mar) or a SageMaker PyTorch
`model.tar.gz` as a torchport package."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from torchport.cli.output import human_size, out, status

Opt = typer.Option


def import_cmd(
    archive: Annotated[
        Path, typer.Argument(help="A TorchServe .mar, or a SageMaker PyTorch model.tar.gz.")
    ],
    out_path: Annotated[
        Path | None, Opt("-o", "--out", help="The package to write (default: NAME.tpa beside it).")
    ] = None,
    name: Annotated[
        str | None,
        Opt("--name", help="Model name (default: the .mar's modelName, or the file's name)."),
    ] = None,
    example: Annotated[
        Path | None,
        Opt("--example", help="A request body: run once, kept as the package's self-check."),
    ] = None,
    example_content_type: Annotated[
        str | None,
        Opt(help="The example's Content-Type (default: from its suffix: .json, .txt, .csv, .npy)."),
    ] = None,
    accept: Annotated[
        str | None, Opt(help="SageMaker: the Accept the example is answered in (default JSON).")
    ] = None,
    requirements_installed: Annotated[
        bool,
        Opt(
            "--requirements-installed",
            help="Accept an archive's requirements file: its packages are installed here.",
        ),
    ] = False,
) -> None:
    """Convert a TorchServe .mar or a SageMaker model.tar.gz (model, handler or inference
    script, extra files) to a verified package."""
    from torchport.migrate import import_archive

    started = time.perf_counter()
    with status(f"importing {archive.name}") as progress:
        imported = import_archive(
            archive,
            out_path,
            name=name,
            example=example,
            example_content_type=example_content_type,
            accept=accept,
            requirements_installed=requirements_installed,
            progress=progress,
        )
    manifest, written = imported.manifest, imported.path
    seconds = time.perf_counter() - started
    api = _API[manifest.handler.api if manifest.handler else None]
    out.print(
        f"wrote {written} ({human_size(written.stat().st_size)}): model '{manifest.name}', "
        f"{manifest.model.kind.value} model, {api}, in {seconds:.1f} s"
    )
    if not manifest.examples:
        out.print(
            "note: the package has no example, so nothing checks its answers when it loads; "
            "import again with --example BODY_FILE (a request body) to add one"
        )


_API = {"torchserve": "TorchServe handler", "sagemaker": "SageMaker script", None: "handler"}
