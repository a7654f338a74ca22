"""`torchport examples …`: build the example models and register them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from torchport.cli.output import err, human_size, out

app = typer.Typer(help="Build the example models (mlp, digits, minilm) with no downloads.")


@app.command("build")
def build_cmd(
    names: Annotated[
        list[str] | None, typer.Argument(help="Which examples (default: all).")
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o")] = Path("build/examples"),
) -> None:
    """Build example packages into OUT/NAME.tpa."""
    from torchport.examples import NAMES, build_examples

    with err.status("building examples") as spinner:
        built = build_examples(out_dir, tuple(names or NAMES), progress=lambda m: spinner.update(m))
    for b in built:
        out.print(f"{b.path}  {human_size(b.path.stat().st_size)}  {b.note}")


@app.command("register")
def register_cmd(
    store: Annotated[
        str | None,
        typer.Option("--store", envvar="TORCHPORT_STORE", help="A store directory or s3://…."),
    ] = None,
    out_dir: Annotated[Path, typer.Option("--out", "-o")] = Path("build/examples"),
) -> None:
    """Build (once) and register every example the store does not hold yet."""
    from torchport.examples import register_examples
    from torchport.service import Management
    from torchport.settings import default_store_dir
    from torchport.store import open_store

    management = Management(open_store(store or default_store_dir()))
    register_examples(management, out_dir, lambda message: out.print(message, markup=False))
