"""`torchport models …`: the management API of a running server, from the shell."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from torchport.cli.output import human_size, out, print_json
from torchport.errors import Unauthorized

if TYPE_CHECKING:  # httpx comes with the `client` (or `serve`) extra
    from torchport.client import ManagementClient

app = typer.Typer(help="Manage the models of a running torchport server.")

Url = Annotated[
    str,
    typer.Option("--url", envvar="TORCHPORT_MANAGEMENT_URL", help="The management API."),
]
Token = Annotated[
    str | None,
    typer.Option(
        "--token",
        envvar="TORCHPORT_TOKEN",
        help="Bearer token (default: the store's).",
        show_default=False,
    ),
]
Store = Annotated[
    Path | None,
    typer.Option("--store", envvar="TORCHPORT_STORE", help="Where to find the token file."),
]
DEFAULT_URL = "http://127.0.0.1:8082"


def _client(url: str, token: str | None, store: Path | None) -> ManagementClient:
    if not token:
        from torchport.settings import default_store_dir

        path = (store or default_store_dir()) / "token"
        try:
            token = path.read_text().strip()
        except OSError:
            raise Unauthorized(
                f"no token: set TORCHPORT_TOKEN, pass --token, or run on the server's machine "
                f"(looked for {path})"
            ) from None
    from torchport.client import ManagementClient

    return ManagementClient(url, token)


def _versions_table(models: list[dict[str, Any]]) -> Table:
    table = Table("model", "version", "alias", "state", "size", "created (UTC)")
    for m in models:
        for v in m["versions"]:
            alias = {m["default"]: "default", m["previous"]: "previous"}.get(v["version"], "")
            table.add_row(
                m["name"],
                str(v["version"]),
                alias,
                v.get("state", ""),
                human_size(v["size"]),
                v["created_at"][:16].replace("T", " "),
            )
    return table


def _signature_lines(version: dict[str, Any]) -> list[str]:
    sig = version.get("signature") or {}
    return [
        f"  {kind[:-1]:<6} {s['name']:<16} {s['datatype']:<6} {s['shape']}"
        for kind in ("inputs", "outputs")
        for s in sig.get(kind, [])
    ]


@app.command("list")
def list_cmd(
    url: Url = DEFAULT_URL,
    token: Token = None,
    store: Store = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Every model and version on the server."""
    with _client(url, token, store) as client:
        models = client.list_models()
    if as_json:
        print_json(models)
    elif not models:
        out.print("no models yet: torchport models upload PACKAGE.tpa")
    else:
        out.print(_versions_table(models))


@app.command("show")
def show_cmd(model: str, url: Url = DEFAULT_URL, token: Token = None, store: Store = None) -> None:
    """One model: its versions, states and recent changes."""
    with _client(url, token, store) as client:
        info = client.get_model(model)
    out.print(_versions_table([info]))
    default = next((v for v in info["versions"] if v["version"] == info["default"]), None)
    if default:
        out.print(f"signature of v{default['version']}:")
        for line in _signature_lines(default):
            out.print(line, markup=False)
    out.print("recent changes:")
    for entry in info.get("audit", [])[:10]:
        out.print(
            f"  {entry['at'][:19]}  {entry['actor']:<16} {entry['action']:<9} "
            f"v{entry['version']}  {json.dumps(entry['detail'])}",
            markup=False,
        )


@app.command("upload")
def upload_cmd(
    package: Path,
    name: Annotated[str | None, typer.Option(help="Register under this name.")] = None,
    promote: Annotated[bool, typer.Option(help="Make it the default at once.")] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    store: Store = None,
) -> None:
    """Upload a package: verified by the server, then the next version."""
    from torchport.cli.output import status

    with _client(url, token, store) as client, status(f"uploading {package.name}"):
        result = client.upload(package, name=name, promote=promote)
    out.print(f"{result['name']} v{result['version']} registered (default: v{result['default']})")


@app.command("promote")
def promote_cmd(
    model: str, version: int, url: Url = DEFAULT_URL, token: Token = None, store: Store = None
) -> None:
    """Route MODEL's traffic to VERSION (live; in-flight requests finish first)."""
    with _client(url, token, store) as client:
        info = client.promote(model, version)
    out.print(f"{model}: default v{info['default']} (previous v{info['previous']})")


@app.command("rollback")
def rollback_cmd(
    model: str, url: Url = DEFAULT_URL, token: Token = None, store: Store = None
) -> None:
    """Route MODEL's traffic back to its previous default."""
    with _client(url, token, store) as client:
        info = client.rollback(model)
    out.print(f"{model}: default v{info['default']} (previous v{info['previous']})")


@app.command("load")
def load_cmd(
    model: str, version: int, url: Url = DEFAULT_URL, token: Token = None, store: Store = None
) -> None:
    """Load VERSION beside the default, for requests that name it (retries a failed load)."""
    from torchport.cli.output import status

    with _client(url, token, store) as client, status(f"loading {model} v{version}"):
        client.load(model, version)
    out.print(f"{model} v{version} loaded")


@app.command("unload")
def unload_cmd(
    model: str, version: int, url: Url = DEFAULT_URL, token: Token = None, store: Store = None
) -> None:
    """Stop serving VERSION (requests in flight finish; refused for the default)."""
    with _client(url, token, store) as client:
        client.unload(model, version)
    out.print(f"{model} v{version} unloaded")


@app.command("delete")
def delete_cmd(
    model: str, version: int, url: Url = DEFAULT_URL, token: Token = None, store: Store = None
) -> None:
    """Delete a version (refused while it is the default)."""
    with _client(url, token, store) as client:
        client.delete(model, version)
    out.print(f"deleted {model} v{version}")
