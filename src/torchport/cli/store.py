"""`torchport store …`: the embedded store, directly, without a server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from torchport.cli.output import human_size, out, print_json, status
from torchport.errors import StoreError
from torchport.settings import default_store_dir
from torchport.store import SQLiteStore

app = typer.Typer(help="Work on a local model store directly (no server needed).")

StoreOpt = Annotated[
    Path | None,
    typer.Option("--store", envvar="TORCHPORT_STORE", help="Store directory."),
]


def _store(store: Path | None) -> SQLiteStore:
    return SQLiteStore(store or default_store_dir())


@app.command("list")
def list_cmd(
    store: StoreOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False
) -> None:
    """Every model, its versions and its default."""
    repo = _store(store)
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
        out.print(f"no models in {repo.root}")
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
    promote: Annotated[bool, typer.Option(help="Make it the default version.")] = False,
) -> None:
    """Verify a package (hashes, load, its examples) and register it as the next version."""
    from torchport.service import Management

    with status(f"verifying {package.name}"):
        report = Management(_store(store)).upload(package, promote=promote)
    v = report.version
    out.print(f"registered {v.model} v{v.version} ({human_size(v.size)}, verified)")


@app.command("promote")
def promote_cmd(model: str, version: int, store: StoreOpt = None) -> None:
    """Make VERSION the default of MODEL (the old default becomes previous)."""
    info = _store(store).promote(model, version)
    out.print(f"{model}: default is v{info.default} (previous v{info.previous})")


@app.command("rollback")
def rollback_cmd(model: str, store: StoreOpt = None) -> None:
    """Point MODEL's default back at its previous version."""
    info = _store(store).rollback(model)
    out.print(f"{model}: default is v{info.default} (previous v{info.previous})")


@app.command("delete")
def delete_cmd(model: str, version: int, store: StoreOpt = None) -> None:
    """Delete a version (refused while it is the default)."""
    _store(store).delete_version(model, version)
    out.print(f"deleted {model} v{version}")


@app.command("audit")
def audit_cmd(
    model: Annotated[str | None, typer.Argument()] = None,
    store: StoreOpt = None,
    limit: int = 50,
) -> None:
    """The most recent changes, newest first."""
    table = Table("at", "actor", "action", "model", "version", "detail")
    for e in _store(store).audit(model, limit):
        table.add_row(e.at, e.actor, e.action, e.model, str(e.version or "-"), json.dumps(e.detail))
    out.print(table)


@app.command("verify")
def verify_cmd(store: StoreOpt = None) -> None:
    """Check every registered package is present and intact; exit 1 if not."""
    repo = _store(store)
    problems = repo.verify()
    for p in problems:
        out.print(f"problem: {p}")
    if problems:
        raise StoreError(f"{len(problems)} problem(s) in {repo.root}")
    out.print(f"store {repo.root} is consistent")
