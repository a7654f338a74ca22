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
    str | None,
    typer.Option("--store", envvar="TORCHPORT_STORE", help="Where to find the token file."),
]
DEFAULT_URL = "http://127.0.0.1:8082"


def _client(url: str, token: str | None, store: str | None) -> ManagementClient:
    if not token:
        from torchport.settings import default_store_dir
        from torchport.store.location import S3Location, default_cache_dir, is_remote

        if store is not None and is_remote(store):
            # A server on an object store keeps its token beside its cache.
            path = default_cache_dir(S3Location.parse(store)) / "token"
        else:
            path = Path(store or default_store_dir()) / "token"
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
    table = Table()
    table.add_column("model", no_wrap=True)  # names are never folded
    for header in ("version", "alias", "state", "size", "in memory", "created (UTC)"):
        table.add_column(header)
    for m in models:
        for v in m["versions"]:
            alias = {m["default"]: "default", m["previous"]: "previous"}.get(v["version"], "")
            held = v.get("resident")
            # What the version holds, and when a request last took it (on-demand models).
            memory = f"{human_size(held['bytes'])} {held['last_used'][11:19]}" if held else "-"
            if held and (held.get("device", "cpu"), held.get("precision", "fp32")) != (
                "cpu",
                "fp32",
            ):
                memory += f" {held['device']} {held['precision']}"
            table.add_row(
                m["name"],
                str(v["version"]),
                alias,
                v.get("state", ""),
                human_size(v["size"]),
                memory,
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
        overview = client.overview()
    models = overview["models"]
    if as_json:
        print_json(models)
    elif not models:
        out.print("no models yet: torchport models upload PACKAGE.tpa")
    else:
        out.print(_versions_table(models))
    if not as_json:
        for line in device_lines(overview["devices"]):
            out.print(line, markup=False)


def device_lines(devices: list[dict[str, Any]]) -> list[str]:
    """A line per GPU: its memory in use (every process), this server's share of it, and
    how busy it was (NVML's last sample, where NVML is at hand)."""
    lines = []
    for d in devices:
        busy = "" if d.get("utilization") is None else f", {d['utilization']:.0%} busy"
        lines.append(
            f"cuda:{d['index']} {d['name']}: {human_size(d['used_bytes'])} used of "
            f"{human_size(d['total_bytes'])} (this server: "
            f"{human_size(d['allocated_bytes'])} allocated, "
            f"{human_size(d['reserved_bytes'])} reserved){busy}"
        )
    return lines


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


rollout_app = typer.Typer(help="Let a candidate version prove itself on live traffic.")
app.add_typer(rollout_app, name="rollout")


@rollout_app.command("start")
def rollout_start_cmd(
    model: str,
    candidate: Annotated[int, typer.Option("--candidate", help="The version on trial.")],
    mode: Annotated[str, typer.Option(help="canary (answers its share) or shadow.")] = "canary",
    share: Annotated[float, typer.Option(help="Share of the requests, 0 to 1.")] = 0.1,
    sticky_header: Annotated[
        str | None, typer.Option(help="A request header whose value keeps a caller on a side.")
    ] = None,
    rules: Annotated[
        str | None, typer.Option(help="The rules as JSON, or @FILE (default: the defaults).")
    ] = None,
    report_only: Annotated[
        bool, typer.Option("--report-only", help="No rules: figures only, no decisions.")
    ] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    store: Store = None,
) -> None:
    """Start a rollout of CANDIDATE on MODEL's traffic."""
    parsed = _rules(rules) if rules else None
    with _client(url, token, store) as client:
        started = client.start_rollout(
            model, candidate, mode=mode, share=share, sticky_header=sticky_header,
            rules=parsed, report_only=report_only,
        )  # fmt: skip
    out.print(
        f"{model}: {started['mode']} of v{started['candidate']} against v{started['baseline']}, "
        f"share {started['share']:g}" + (" (report only)" if not started["rules"] else "")
    )


@rollout_app.command("status")
def rollout_status_cmd(
    model: str,
    as_json: Annotated[bool, typer.Option("--json", help="Print the rollout as JSON.")] = False,
    url: Url = DEFAULT_URL,
    token: Token = None,
    store: Store = None,
) -> None:
    """Show MODEL's rollout (running, else the last) and its figures."""
    with _client(url, token, store) as client:
        found = client.rollout(model)
    if as_json:
        print_json(found)
        return
    rollout, figures = found["rollout"], found["figures"]
    if rollout is None:
        out.print(f"{model}: no rollout yet")
        return
    out.print(
        f"{model}: {rollout['mode']} of v{rollout['candidate']} against v{rollout['baseline']}, "
        f"share {rollout['share']:g}: {rollout['state']}"
    )
    if rollout["decision"]:
        decision = rollout["decision"]
        out.print(f"  decided by {decision.get('by')}: {decision.get('why')}", markup=False)
    if figures:
        table = Table("version", "role", "requests", "errors", "p50 ms", "p99 ms (window)")
        for version, side in figures["versions"].items():
            total, window = side["total"], side["window"]
            table.add_row(
                version, side["role"], str(total["requests"]), str(total["errors"]),
                _ms(window["p50_ms"]), _ms(window["p99_ms"]),
            )  # fmt: skip
        out.print(table)
        for name, output in figures["outputs"].items():
            agreement = output["agreement"]
            shown = f"{agreement:.2%}" if agreement is not None else "-"
            out.print(f"  {name} ({output['measure']}): agreement {shown}, "
                      f"max abs diff {output['max_abs_diff']:.3g}")  # fmt: skip


def _ms(value: float | None) -> str:
    return f"{value:.2f}" if value is not None else "-"


def _rules(text: str) -> dict[str, Any]:
    from torchport.errors import InvalidInput

    raw = Path(text[1:]).read_text() if text.startswith("@") else text
    try:
        parsed = json.loads(raw)
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"--rules is not JSON: {exc}", field="rules") from None
    if not isinstance(parsed, dict):
        raise InvalidInput("--rules must be a JSON object", field="rules")
    return parsed


def _end(action: str, model: str, url: str, token: str | None, store: str | None) -> None:
    with _client(url, token, store) as client:
        ended = client.end_rollout(model, action)
    out.print(f"{model}: rollout of v{ended['candidate']} {ended['state'].replace('_', ' ')}")


@rollout_app.command("promote")
def rollout_promote_cmd(
    model: str, url: Url = DEFAULT_URL, token: Token = None, store: Store = None
) -> None:
    """Promote the candidate of MODEL's running rollout."""
    _end("promote", model, url, token, store)


@rollout_app.command("rollback")
def rollout_rollback_cmd(
    model: str, url: Url = DEFAULT_URL, token: Token = None, store: Store = None
) -> None:
    """Send the candidate back: it stops taking traffic and is unloaded."""
    _end("rollback", model, url, token, store)


@rollout_app.command("stop")
def rollout_stop_cmd(
    model: str, url: Url = DEFAULT_URL, token: Token = None, store: Store = None
) -> None:
    """Stop MODEL's running rollout, deciding nothing."""
    _end("stop", model, url, token, store)
