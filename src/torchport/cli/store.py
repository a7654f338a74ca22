"""`torchport store …`: a store (a directory or `s3://bucket/prefix`), directly, without a
server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from torchport.cli.output import err, human_size, out, print_json, status
from torchport.errors import Conflict, StoreError
from torchport.settings import default_store_dir
from torchport.store import ModelStore, VersionInfo, open_store

app = typer.Typer(help="Work on a model store directly (no server needed).")

StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="TORCHPORT_STORE",
        help="A store directory, or s3://BUCKET/PREFIX (default: the local one).",
    ),
]
EndpointOpt = Annotated[
    str | None,
    typer.Option(
        "--s3-endpoint",
        envvar="TORCHPORT_S3_ENDPOINT",
        help="URL of an S3-compatible service (default: AWS_ENDPOINT_URL_S3, else AWS).",
    ),
]


def _store(store: str | None, endpoint: str | None = None) -> ModelStore:
    return open_store(store or default_store_dir(), s3_endpoint=endpoint)


@app.command("list")
def list_cmd(
    store: StoreOpt = None,
    s3_endpoint: EndpointOpt = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Every model, its versions and its default."""
    repo = _store(store, s3_endpoint)
    models = repo.list_models()
    if as_json:
        print_json(
            [
                {
                    "name": m.name,
                    "default": m.default,
                    "previous": m.previous,
                    "versions": [v.version for v in m.versions],
                }
                for m in models
            ]
        )
        return
    if not models:
        out.print(f"no models in {repo.url}")
        return
    table = Table("model", "default", "previous", "versions", "size", "inputs → outputs")
    for m in models:
        latest = m.versions[-1] if m.versions else None
        sig = latest.metadata.get("signature", {}) if latest else {}
        io = " → ".join(
            ", ".join(f"{s['name']} {s['datatype']}{s['shape']}" for s in sig.get(k, []))
            for k in ("inputs", "outputs")
        )
        table.add_row(
            m.name,
            str(m.default or "-"),
            str(m.previous or "-"),
            ", ".join(str(v.version) for v in m.versions),
            human_size(latest.size) if latest else "-",
            io,
        )
    out.print(table)


@app.command("add")
def add_cmd(
    package: Annotated[Path, typer.Argument(help="A package file (.tpa).")],
    store: StoreOpt = None,
    s3_endpoint: EndpointOpt = None,
    promote: Annotated[bool, typer.Option(help="Make it the default version.")] = False,
) -> None:
    """Verify a package (hashes, load, its examples) and register it as the next version."""
    from torchport.service import Management

    with status(f"verifying {package.name}"):
        report = Management(_store(store, s3_endpoint)).upload(package, promote=promote)
    v = report.version
    out.print(f"registered {v.model} v{v.version} ({human_size(v.size)}, verified)")


@app.command("promote")
def promote_cmd(
    model: str, version: int, store: StoreOpt = None, s3_endpoint: EndpointOpt = None
) -> None:
    """Make VERSION the default of MODEL (the old default becomes previous)."""
    info = _store(store, s3_endpoint).promote(model, version)
    out.print(f"{model}: default is v{info.default} (previous v{info.previous})")


@app.command("rollback")
def rollback_cmd(model: str, store: StoreOpt = None, s3_endpoint: EndpointOpt = None) -> None:
    """Point MODEL's default back at its previous version."""
    info = _store(store, s3_endpoint).rollback(model)
    out.print(f"{model}: default is v{info.default} (previous v{info.previous})")


@app.command("delete")
def delete_cmd(
    model: str, version: int, store: StoreOpt = None, s3_endpoint: EndpointOpt = None
) -> None:
    """Delete a version (refused while it is the default)."""
    _store(store, s3_endpoint).delete_version(model, version)
    out.print(f"deleted {model} v{version}")


@app.command("audit")
def audit_cmd(
    model: Annotated[str | None, typer.Argument()] = None,
    store: StoreOpt = None,
    s3_endpoint: EndpointOpt = None,
    limit: int = 50,
) -> None:
    """The most recent changes, newest first."""
    table = Table("at", "actor", "action", "model", "version", "detail")
    for e in _store(store, s3_endpoint).audit(model, limit):
        table.add_row(e.at, e.actor, e.action, e.model, str(e.version or "-"), json.dumps(e.detail))
    out.print(table)


@app.command("verify")
def verify_cmd(store: StoreOpt = None, s3_endpoint: EndpointOpt = None) -> None:
    """Check every registered package is present and intact; exit 1 if not."""
    repo = _store(store, s3_endpoint)
    problems = repo.verify()
    for p in problems:
        out.print(f"problem: {p}")
    if problems:
        raise StoreError(f"{len(problems)} problem(s) in {repo.url}")
    out.print(f"store {repo.url} is consistent")


@app.command("gc")
def gc_cmd(store: StoreOpt = None, s3_endpoint: EndpointOpt = None) -> None:
    """Remove package files no version names (left by deletes and crashes)."""
    repo = _store(store, s3_endpoint)
    removed = repo.gc()
    out.print(f"removed {removed} unreferenced files from {repo.url}")


@app.command("copy")
def copy_cmd(
    source: Annotated[str, typer.Argument(help="The store to copy from (directory or s3://…).")],
    destination: Annotated[str, typer.Argument(help="The store to copy into.")],
    model: Annotated[
        list[str] | None, typer.Option("--model", help="Copy only this model; repeatable.")
    ] = None,
    s3_endpoint: EndpointOpt = None,
) -> None:
    """Copy every model (versions, defaults, configs, rollouts, audit) from SOURCE to
    DESTINATION, e.g. a local store to an object store; a model DESTINATION has already is
    refused before anything is copied."""
    from rich.progress import BarColumn, Progress, TextColumn, TransferSpeedColumn

    src = _store(source, s3_endpoint)
    dst = _store(destination, s3_endpoint)
    names = model or [m.name for m in src.list_models()]
    histories = [src.history(name) for name in names]
    held = {m.name for m in dst.list_models()}
    clash = [h.info.name for h in histories if h.info.name in held]
    if clash:
        raise Conflict(
            f"{dst.url} has {', '.join(clash)} already: nothing was copied (copy the other "
            "models with --model)",
            field="model",
        )
    total = sum(v.size for h in histories for v in h.info.versions)
    with Progress(
        TextColumn("{task.description}"), BarColumn(), TransferSpeedColumn(), console=err
    ) as progress:
        task = progress.add_task("copying", total=total)
        for history in histories:

            def package(version: VersionInfo) -> Path:
                progress.update(task, description=f"{version.model} v{version.version}")
                path = src.package_path(version)
                progress.advance(task, version.size)
                return path

            dst.restore(history, package)
    versions = sum(len(h.info.versions) for h in histories)
    out.print(
        f"copied {len(histories)} models ({versions} versions, {human_size(total)}) "
        f"from {src.url} to {dst.url}"
    )
