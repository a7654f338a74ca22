"""`torchport ray deploy`: a package as a plain Ray Serve application (Serve config YAML)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from torchport.cli.output import out, status

Opt = typer.Option
app = typer.Typer(help="Ray Serve: a package as a Ray Serve application.", no_args_is_help=True)


@app.command("deploy")
def deploy_cmd(
    package: Annotated[
        Path, typer.Argument(help="The package (.tpa), at this path on every node.")
    ],
    address: Annotated[
        str | None,
        Opt(
            help="The Ray cluster (auto, HOST:6379, ray://HOST:10001); none: a local Ray "
            "on 127.0.0.1 that lives until Ctrl-C."
        ),
    ] = None,
    replicas: Annotated[
        int | None, Opt(help="Replicas (default: the package's workers, else 1).", min=1)
    ] = None,
    max_replicas: Annotated[
        int | None,
        Opt(help="Autoscale up to this many replicas (default: the package's max_workers).", min=1),
    ] = None,
    torch_threads: Annotated[int, Opt(help="torch threads (and CPUs) per replica.", min=1)] = 1,
    http_port: Annotated[int, Opt(help="Ray Serve's HTTP port.")] = 8000,
    max_request_bytes: Annotated[
        int | None,
        Opt(help="Largest request body a replica takes (413 past it; default 64 MiB).", min=1),
    ] = None,
    route_prefix: Annotated[str | None, Opt(help="URL prefix (default: /NAME).")] = None,
    config_out: Annotated[
        Path | None, Opt("--config-out", help="Also write the Serve config YAML here.")
    ] = None,
    config_only: Annotated[
        bool, Opt("--config-only", help="Write the Serve config and deploy nothing.")
    ] = False,
) -> None:
    """Deploy a package on Ray Serve (its proxy in front, Ray's batching), or write the
    Serve config for `serve deploy` and KubeRay."""
    import yaml

    from torchport.archive import read_package
    from torchport.errors import InvalidInput

    if not package.is_file():
        raise InvalidInput(f"package {package} does not exist", field="package")
    if config_only and config_out is None:
        raise InvalidInput("--config-only needs --config-out FILE", field="config_out")
    manifest = read_package(package).manifest
    name = manifest.name
    least = replicas or manifest.runtime.workers or 1
    if max_replicas is not None and max_replicas < least:
        raise InvalidInput(f"--max-replicas ({max_replicas}) is below the replicas ({least})",
                           field="max_replicas")  # fmt: skip
    from ray.serve.schema import ServeDeploySchema

    from torchport.deploy import serve_config
    from torchport.ray_app import build_app

    config = serve_config(name, str(package.resolve()), replicas=replicas,
                          max_replicas=max_replicas, torch_threads=torch_threads,
                          max_request_bytes=max_request_bytes, route_prefix=route_prefix,
                          http_port=http_port)  # fmt: skip
    ServeDeploySchema.model_validate(config)  # Ray's own check of the config
    if config_out is not None:
        config_out.write_text(
            "# Written by `torchport ray deploy`.\n" + yaml.safe_dump(config, sort_keys=False)
        )
        out.print(f"wrote {config_out}", markup=False)
    if config_only:
        return
    import ray
    from ray import serve

    application = config["applications"][0]
    host = "0.0.0.0" if address else "127.0.0.1"
    stop = threading.Event()
    deploying = True

    def on_signal(*_: object) -> None:
        stop.set()
        if deploying:  # interrupt the wait for the replicas
            raise _Stopped

    try:
        with status(f"deploying {name} on Ray Serve"):
            if address:
                ray.init(address=address, log_to_driver=False)
            else:
                ray.init(include_dashboard=False, _node_ip_address="127.0.0.1",
                         log_to_driver=False)  # fmt: skip
            # After ray.init, whose own SIGTERM handler aborts the process: a signal stops
            # cleanly, even while the deployment still waits for its replicas.
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, on_signal)
            serve.start(http_options={"host": host, "port": http_port})
            serve.run(build_app(application["args"]), name=application["name"],
                      route_prefix=application["route_prefix"])  # fmt: skip
            deploying = False
    except _Stopped:
        out.print("stopped before the application was ready", markup=False)
        ray.shutdown()
        return
    url = f"http://{host if address else '127.0.0.1'}:{http_port}{application['route_prefix']}"
    out.print(f"{name} on Ray Serve: {url}/v2/models/{name}/infer", markup=False)
    if address:
        return  # the application lives on the cluster
    out.print("  Ctrl-C stops it (and the local Ray).", markup=False)
    stop.wait()
    ray.shutdown()


class _Stopped(Exception):
    """A signal arrived while the application was still deploying."""
