"""`torchport traffic replay`: recorded requests run again against any version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from torchport.cli.output import out, status

app = typer.Typer(help="Recorded traffic: replay it against any version.")
Opt = typer.Option


@app.command("replay")
def replay_cmd(
    model: str,
    version: Annotated[int, Opt("--version", help="The version to run the requests on.")],
    from_files: Annotated[
        list[Path] | None,
        Opt("--from", help="Recorded JSON Lines (repeatable; default: the store's recordings)."),
    ] = None,
    store: Annotated[
        str | None,
        Opt(envvar="TORCHPORT_STORE", help="The store: a directory or s3://… (default: local)."),
    ] = None,
    package: Annotated[
        Path | None, Opt(help="The version's package file, instead of the store's copy.")
    ] = None,
    server: Annotated[
        str | None,
        Opt(help="Run the requests on this server (its inference URL), where VERSION is loaded."),
    ] = None,
    report: Annotated[Path | None, Opt("--out", help="Write the report here as JSON.")] = None,
) -> None:
    """Replay MODEL's recorded requests against VERSION and compare with the answers the
    default gave when they were recorded."""
    from torchport import traffic
    from torchport.settings import default_store_dir
    from torchport.store import open_store

    opened = open_store(store or default_store_dir())
    try:
        files = list(from_files or []) or traffic.recorded_files(opened.root, model)
        with status(f"replaying {model} on v{version}"):
            if server is not None:
                signature = traffic.server_signature(server, model, version)
                run = traffic.on_server(server, model, version, signature)
            else:
                stored = package or opened.package_path(opened.get_version(model, version))
                run, signature = traffic.in_process(stored)
            result = traffic.replay(model, version, traffic.read_records(files), run, signature)
    finally:
        opened.close()
    for line in traffic.report_lines(result):
        out.print(line, markup=False, highlight=False)
    if report is not None:
        report.write_text(json.dumps(result, indent=2) + "\n")
        out.print(f"wrote {report}")
