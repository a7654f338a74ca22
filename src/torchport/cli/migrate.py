"""`torchport import`: a TorchServe model archive (.mar) as a torchport package."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from torchport.cli.output import human_size, out, status

Opt = typer.Option


def import_cmd(
    archive: Annotated[Path, typer.Argument(help="A TorchServe model archive (.mar).")],
    out_path: Annotated[
        Path | None, Opt("-o", "--out", help="The package to write (default: NAME.tpa beside it).")
    ] = None,
    name: Annotated[
        str | None, Opt("--name", help="Model name (default: the archive's modelName).")
    ] = None,
    example: Annotated[
        Path | None,
        Opt("--example", help="A request body: run once, kept as the package's self-check."),
    ] = None,
    example_content_type: Annotated[
        str | None,
        Opt(help="The example's Content-Type (default: from its suffix: .json, .txt, .csv)."),
    ] = None,
    requirements_installed: Annotated[
        bool,
        Opt(
            "--requirements-installed",
            help="Accept an archive's requirements file: its packages are installed here.",
        ),
    ] = False,
) -> None:
    """Convert a TorchServe .mar (model, handler, extra files) to a verified package."""
    from torchport.migrate import import_mar

    started = time.perf_counter()
    with status(f"importing {archive.name}") as progress:
        imported = import_mar(
            archive,
            out_path,
            name=name,
            example=example,
            example_content_type=example_content_type,
            requirements_installed=requirements_installed,
            progress=progress,
        )
    manifest, written = imported.manifest, imported.path
    seconds = time.perf_counter() - started
    out.print(
        f"wrote {written} ({human_size(written.stat().st_size)}): model '{manifest.name}', "
        f"{manifest.model.kind.value} model, TorchServe handler, in {seconds:.1f} s"
    )
    if not manifest.examples:
        out.print(
            "note: the package has no example, so nothing checks its answers when it loads; "
            "import again with --example BODY_FILE (a request body) to add one"
        )
