"""A torchport package as a plain Ray Serve application, for teams that already run Ray:
Ray Serve's HTTP proxy in front, one deployment whose replicas each serve torchport's own
inference app for the package (a microservice per replica). So the Ray path answers every
inference protocol, with torchport's batching, deadlines, errors and metrics, exactly as
`torchport serve PACKAGE --microservice` does, under the application's route prefix.

Serve config (what `torchport ray deploy` writes and deploys):

    applications:
      - name: torchport-mlp
        route_prefix: /mlp
        import_path: torchport.ray_app:build_app
        args: {package: /models/mlp.tpa, replicas: 2}
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application

from torchport.archive import read_package
from torchport.errors import InvalidInput
from torchport.runtime import Scaling
from torchport.scratch import scratch_dir
from torchport.server import open_services
from torchport.settings import Settings
from torchport.store import SQLiteStore
from torchport.transports.http import build_inference_app


@serve.ingress()
class Replica:
    """One replica: the package verified into a private store of its own, loaded, and
    served by torchport's inference app."""

    def __init__(
        self,
        package: str,
        torch_threads: int = 1,
        max_request_bytes: int | None = None,
        device: str = "cpu",
    ) -> None:
        import torch

        settings = Settings(torch_threads=torch_threads, device=device)
        if max_request_bytes:
            settings = settings.model_copy(update={"max_request_bytes": max_request_bytes})
        torch.set_num_threads(torch_threads)
        self._dir = scratch_dir("replica")
        try:
            self._store = SQLiteStore(self._dir)
            # The replica owns `torch_threads` CPUs: a lone batch takes those, no more.
            self.registry, self.dataplane, management = open_services(
                self._store, settings, torch_threads
            )
            management.upload(Path(package), actor="ray")
            self.registry.start()
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self._settings = settings

    def __serve_build_asgi_app__(self) -> Any:
        return build_inference_app(self.dataplane, self._settings)

    def __del__(self) -> None:  # Ray Serve's graceful shutdown of a replica
        registry = getattr(self, "registry", None)
        if registry is not None:
            registry.close()
            self._store.close()
        shutil.rmtree(self._dir, ignore_errors=True)


def build_app(args: dict[str, Any]) -> Application:
    """The Serve application builder named in the config's `import_path`. Replicas and
    autoscaling come from the package's runtime config (`workers`, `max_workers`, the
    scale delays); `replicas` and `max_replicas` in `args` override them."""
    package = args.get("package")
    if not isinstance(package, str) or not package:
        raise InvalidInput("args.package: the path of the .tpa on the cluster's nodes",
                           field="package")  # fmt: skip
    runtime = read_package(Path(package)).manifest.runtime
    settings = runtime.model_dump()
    if args.get("max_replicas") is not None:
        settings["max_workers"] = int(args["max_replicas"])
    scaling = Scaling.of(settings, int(args.get("replicas") or runtime.workers or 1))
    threads = int(args.get("torch_threads", 1))
    gpus = float(args.get("num_gpus", 0))
    options: dict[str, Any] = {"num_cpus": max(1, threads)}
    if gpus:  # Ray gives the replica its GPU(s): CUDA_VISIBLE_DEVICES names them
        options["num_gpus"] = gpus
    device = "cuda" if gpus else "cpu"
    batch = runtime.batch_size_on(device)
    deployment = serve.deployment(
        name=str(args.get("name", "torchport")),
        ray_actor_options=options,
        max_ongoing_requests=4 * batch,
        # Scale on requests in flight: a replica is busy with one full batch.
        **scaling.serve_options(target_ongoing=batch),
    )(Replica)
    limit = args.get("max_request_bytes")
    app: Application = deployment.bind(package, threads, int(limit) if limit else None, device)
    return app
