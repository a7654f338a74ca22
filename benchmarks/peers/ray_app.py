"""Ray Serve's own plain deployment of the model: the anchor for torchport's Ray backend.

MODEL_KIND=mlp MODEL_FILES=dir PORT=9000 REPLICAS=2 python -m benchmarks.peers.ray_app

A local Ray on 127.0.0.1 (no dashboard), Serve's HTTP proxy on PORT, one deployment with
REPLICAS replicas of the plain model (no batching), as the Ray Serve docs show it.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import Response


@serve.deployment(ray_actor_options={"num_cpus": 1})
class Plain:
    def __init__(self, kind: str, files: str) -> None:
        import torch

        from benchmarks.peers.plain_model import load

        torch.set_num_threads(1)
        self.predict = load(kind, Path(files))

    async def __call__(self, request: Request) -> Response:
        if request.method == "GET":
            return Response(b'{"ready": true}', media_type="application/json")
        return Response(self.predict(await request.body()), media_type="application/json")


def main() -> None:
    replicas = int(os.environ.get("REPLICAS", "2"))
    ray.init(
        include_dashboard=False,
        _node_ip_address="127.0.0.1",
        num_cpus=replicas,
        log_to_driver=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.getcwd()}},
    )
    serve.start(http_options={"host": "127.0.0.1", "port": int(os.environ["PORT"])})
    app = Plain.options(num_replicas=replicas).bind(os.environ["MODEL_KIND"],
                                                     os.environ["MODEL_FILES"])  # fmt: skip
    serve.run(app, route_prefix="/predict")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    ray.shutdown()


if __name__ == "__main__":
    main()
