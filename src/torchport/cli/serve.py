"""`torchport serve`: the model server."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from torchport.cli.output import err, out

Opt = typer.Option
SPIN_COUNT = 20_000
"""libgomp's spins before an idle thread sleeps: minilm at c=1 answers as with threads that
never sleep (5.0 against 11.6 ms with none, 5.7 with 5,000; benchmarks/README.md)."""


def serve_cmd(
    packages: Annotated[
        list[Path] | None, typer.Argument(help="Packages to register at start (skipped if held).")
    ] = None,
    store: Annotated[
        str | None,
        Opt(help="A store directory, or s3://BUCKET/PREFIX [env TORCHPORT_STORE]."),
    ] = None,
    s3_endpoint: Annotated[
        str | None,
        Opt(help="URL of an S3-compatible service for an s3:// store (default: AWS)."),
    ] = None,
    host: Annotated[
        str | None, Opt(help="Address inference binds, HTTP and gRPC (default 127.0.0.1).")
    ] = None,
    management_host: Annotated[
        str | None, Opt(help="Address management binds (default 127.0.0.1, whatever --host).")
    ] = None,
    tls_cert: Annotated[
        Path | None, Opt(help="PEM certificate: every port speaks TLS only (with --tls-key).")
    ] = None,
    tls_key: Annotated[Path | None, Opt(help="PEM private key of --tls-cert.")] = None,
    trusted_key: Annotated[
        list[Path] | None,
        Opt(
            help="Take only packages signed by this key (a .pub from torchport keygen); repeatable."
        ),
    ] = None,
    http_port: Annotated[int | None, Opt(help="Inference port (default 8080).")] = None,
    grpc_port: Annotated[int | None, Opt(help="gRPC inference port (default 8081).")] = None,
    management_port: Annotated[int | None, Opt(help="Management port (default 8082).")] = None,
    config: Annotated[Path | None, Opt(help="A TOML settings file.")] = None,
    examples: Annotated[
        bool, Opt("--examples", help="Build and register the example models first.")
    ] = False,
    backend: Annotated[
        str | None, Opt(help="local (default) or ray: each version a Ray Serve deployment.")
    ] = None,
    ray_address: Annotated[
        str | None, Opt(help="With --backend ray: auto, ray://HOST:10001 (default: a local Ray).")
    ] = None,
    frontends: Annotated[
        int | None,
        Opt(
            help="Processes that run the inference protocols and hand requests to the one "
            "that holds the models; 0: one process does all (default: 0 under 4 cores, "
            "then one per two cores, at most 4).",
        ),
    ] = None,
    torchserve_management_port: Annotated[
        int | None,
        Opt(help="TorchServe's management API (/models) on this port too, same token."),
    ] = None,
    model_store: Annotated[
        Path | None,
        Opt(help="TorchServe's model store: where registrations' url=NAME.mar are found."),
    ] = None,
    allowed_url: Annotated[
        list[str] | None,
        Opt(
            "--allowed-url",
            help="A regular expression a registration url outside the model store must "
            "match whole (repeatable; none by default: nothing is fetched).",
        ),
    ] = None,
    torchserve_config: Annotated[
        Path | None,
        Opt(
            help="A TorchServe config.properties: its addresses, model store, allowed_urls "
            "and models, read as torchport's settings (flags win).",
        ),
    ] = None,
    microservice: Annotated[
        bool,
        Opt(
            "--microservice",
            help="Serve the one PACKAGE given, read-only: no management port, no store kept; "
            "SageMaker's /invocations too (port from SAGEMAKER_BIND_TO_PORT if set).",
        ),
    ] = False,
) -> None:
    """Run the model server: inference on one port, management (token) on another; or,
    with --microservice, one model behind its endpoints."""
    # Read by OpenMP (libgomp) when torch loads: an idle torch thread spins briefly, then
    # sleeps. A request's many parallel regions find its threads awake (sleeping at once,
    # OMP_WAIT_POLICY=PASSIVE, made minilm's 5.8 ms answer take 11 ms), and between
    # batches they leave the event loop's core alone. A user's own setting wins.
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", str(SPIN_COUNT))
    from torchport.ports import ServerInfo
    from torchport.settings import available_cores, default_frontends, load_settings

    from_torchserve: dict[str, object] = {}
    if torchserve_config is not None:
        from torchport.migrate.torchserve_config import read_torchserve_config

        read = read_torchserve_config(torchserve_config)
        for note in read.notes:
            err.print(f"  {torchserve_config.name}: {note}", markup=False, highlight=False)
        from_torchserve = {**read.settings, "torchserve_config": torchserve_config}
    flags = {
        "store": store,
        "s3_endpoint": s3_endpoint,
        "host": host,
        "management_host": management_host,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "trusted_keys": trusted_key or None,
        "http_port": http_port,
        "grpc_port": grpc_port,
        "management_port": management_port,
        "backend": backend,
        "ray_address": ray_address,
        "frontends": frontends,
        "torchserve_management_port": torchserve_management_port,
        "model_store": model_store,
        "allowed_urls": allowed_url or None,
    }
    given = {k: v for k, v in flags.items() if v is not None}
    settings = load_settings(config, **{**from_torchserve, **given})

    def announce(info: ServerInfo) -> None:
        if microservice:
            out.print(f"torchport microservice ready in {info.seconds_to_ready:.1f} s")
        else:
            out.print(f"torchport ready in {info.seconds_to_ready:.1f} s — store {info.store}")
        sagemaker = ", SageMaker /invocations" if microservice else ""
        out.print(
            f"  inference   {info.inference_url}   "
            f"(OIP v2 /v2, KServe v1 /v1, TorchServe /predictions{sagemaker})"
        )
        out.print(f"  grpc        {info.grpc_address}   (OIP v2 inference.GRPCInferenceService)")
        if info.management_url:
            out.print(f"  management  {info.management_url}   (bearer token: {info.token_source})")
        if info.torchserve_management_url:
            out.print(
                f"  torchserve  {info.torchserve_management_url}   "
                "(TorchServe's management API, same token)"
            )
        served = ", ".join(f"{name} v{version}" for name, version in info.models) or "none yet"
        out.print(f"  models      {served}")
        for line in try_lines(info):
            out.print(f"  try: {line}", markup=False)
        out.print("  Ctrl-C stops it.")

    say = lambda message: err.print(f"  {message}", markup=False)  # noqa: E731
    processes = settings.frontends
    if processes is None:
        processes = default_frontends(available_cores())
    if processes:
        from torchport.supervisor import serve_supervised

        serve_supervised(
            settings,
            processes,
            packages or [],
            examples=examples,
            microservice=microservice,
            announce=announce,
            progress=say,
        )
        return
    from torchport.server import serve

    serve(
        settings,
        packages or [],
        examples=examples,
        microservice=microservice,
        announce=announce,
        progress=say,
    )


def try_lines(info: object) -> list[str]:
    from torchport.ports import ServerInfo

    assert isinstance(info, ServerInfo)
    url = info.inference_url
    names = {name for name, _ in info.models}
    lines = [f"curl {url}/v2/health/ready"]
    if "mlp" in names:
        row = "[" + ",".join(["0.1"] * 32) + "]"
        lines += [
            f'curl {url}/v2/models/mlp/infer -d \'{{"inputs":[{{"name":"input","shape":[1,32],'
            f'"datatype":"FP32","data":{row}}}]}}\'',
            f"curl {url}/v1/models/mlp:predict -d '{{\"instances\":[{row}]}}'",
        ]
    if "minilm" in names:
        lines.append(
            f"curl {url}/predictions/minilm -H 'Content-Type: text/plain' -d 'hello world'"
        )
    if info.management_url:
        # The token from the environment variable it came from, else from its file.
        source = info.token_source
        token = f"${source}" if source == "TORCHPORT_TOKEN" else f"$(cat {source})"
        lines.append(f'curl -H "Authorization: Bearer {token}" {info.management_url}/models')
    return lines
