"""A torchport package as a plain Ray Serve application, for teams that already run Ray:
Ray Serve's HTTP proxy in front, one deployment whose replicas load the package with its
handler and batch with Ray's own `@serve.batch`. It speaks the Open Inference Protocol's
REST routes (health, metadata, infer) and KServe v1 `:predict` for the one model, under
the application's route prefix.

Serve config (what `torchport ray deploy` writes and deploys):

    applications:
      - name: torchport-mlp
        route_prefix: /mlp
        import_path: torchport.transports.ray_serve:build_app
        args: {package: /models/mlp.tpa, replicas: 2}
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from ray import serve
from ray.serve import Application
from starlette.requests import Request
from starlette.responses import Response

from torchport.archive import read_package
from torchport.errors import InvalidInput, NotFound, TorchportError
from torchport.runtime.ray_backend import Scaling
from torchport.runtime.runner import LocalRunner, open_runner
from torchport.service.inference import InferResponse
from torchport.transports.http.body import parse_json
from torchport.transports.http.errors import error_response, json_response
from torchport.transports.http.kserve_v1 import instances_to_inputs, outputs_to_predictions
from torchport.transports.http.oip_codec import HEADER_LENGTH, decode_request, encode_response
from torchport.types import Tensors
from torchport.version import __version__


class TorchportModel:
    """One replica: the package's model and handler, batching requests with Ray's
    `serve.batch` (rows of concurrent requests are stacked and split back)."""

    def __init__(self, package: str, torch_threads: int = 1) -> None:
        if torch_threads:
            import torch

            torch.set_num_threads(torch_threads)
        self.runner: LocalRunner = open_runner(Path(package))
        self.name = self.runner.manifest.name
        runtime = self.runner.manifest.runtime  # the package's batching settings
        batching: Any = self._predict  # serve.batch's wrapper has these setters
        batching.set_max_batch_size(runtime.max_batch_size)
        batching.set_batch_wait_timeout_s(runtime.max_batch_delay_ms / 1000)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.002)
    async def _predict(self, batches: list[Tensors]) -> list[Tensors]:
        keys = sorted(batches[0])
        if any(sorted(b) != keys for b in batches) or any(
            b[k].shape[1:] != batches[0][k].shape[1:] for b in batches for k in keys
        ):
            return [self.runner.predict(b) for b in batches]  # shapes differ: one by one
        sizes = [len(b[keys[0]]) for b in batches]
        stacked = {k: np.concatenate([b[k] for b in batches]) for k in keys}
        outputs = self.runner.predict(stacked)
        bounds = np.cumsum([0, *sizes])
        return [
            {k: v[bounds[i] : bounds[i + 1]] for k, v in outputs.items()}
            for i in range(len(batches))
        ]

    async def __call__(self, request: Request) -> Response:
        try:
            return await self._route(request)
        except TorchportError as exc:
            return error_response(exc)

    async def _route(self, request: Request) -> Response:
        path = request.url.path.rstrip("/")
        base = f"/v2/models/{self.name}"
        if path.endswith("/v2/health/live"):
            return json_response({"live": True})
        if path.endswith("/v2/health/ready") or path.endswith(f"{base}/ready"):
            return json_response({"ready": True})
        if path.endswith("/v2"):
            return json_response({"name": "torchport", "version": __version__, "extensions": []})
        if path.endswith(base) and request.method == "GET":
            signature = self.runner.signature
            return json_response(
                {
                    "name": self.name,
                    "platform": "pytorch_torchport",
                    "inputs": [s.metadata() for s in signature.inputs],
                    "outputs": [s.metadata() for s in signature.outputs],
                }
            )
        if path.endswith(f"{base}/infer") and request.method == "POST":
            body = await request.body()
            infer, fmt = decode_request(body, request.headers.get(HEADER_LENGTH), self.name, None)
            self.runner.signature.check_inputs(infer.inputs)
            outputs = await self._predict(infer.inputs)
            if infer.outputs:
                outputs = {k: outputs[k] for k in infer.outputs if k in outputs}
            content, headers = encode_response(InferResponse(self.name, 1, outputs, infer.id), fmt)
            return Response(content, headers=headers)
        if path.endswith(f"/v1/models/{self.name}:predict") and request.method == "POST":
            doc = parse_json(await request.body())
            if not isinstance(doc, dict) or "instances" not in doc:
                raise InvalidInput('the request must be {"instances": [...]}', field="instances")
            inputs = instances_to_inputs(doc["instances"], self.runner.signature)
            self.runner.signature.check_inputs(inputs)
            return json_response(
                {"predictions": outputs_to_predictions(await self._predict(inputs))}
            )
        raise NotFound(f"no route {request.method} {path} for model '{self.name}'", field="path")


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
    deployment = serve.deployment(
        name=str(args.get("name", "torchport")),
        ray_actor_options={"num_cpus": max(1, threads)},
        max_ongoing_requests=4 * runtime.max_batch_size,
        # Scale on requests in flight: a replica is busy with one full batch.
        **scaling.serve_options(target_ongoing=runtime.max_batch_size),
    )(TorchportModel)
    app: Application = deployment.bind(package, threads)
    return app
